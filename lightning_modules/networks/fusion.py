"""Stage 4: confidence-guided fusion (SynergyWarpNet, SynergyWarpNet, step 3), then paste-back.

The three candidates of the mouth region, I_e* (TMN's modulated warp: aligned but coarse), I_i* (RBFIN's
inpainting: consistent with the crop) and I_c* (stage 3's reference correction: detail from the
references), are each best somewhere. A small U-Net over [candidates, I_3D, mouth mask] predicts one
confidence logit per candidate and pixel; their softmax blends the candidates (the confidence map), and
the blend is pasted into the crop through the feathered mouth mask, so outside the mouth the frame is
the source's own pixels exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.networks.blocks import ConvNormAct, Up, down


def feather(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """A (B, 1, H, W) {0, 1} mask softened by a box blur of `radius` pixels applied twice (close to a
    Gaussian), kept at 1 inside: no visible seam where the pasted region meets the frame."""
    if radius <= 0:
        return mask
    size = 2 * radius + 1
    soft = mask
    for _ in range(2):
        soft = F.avg_pool2d(F.pad(soft, [radius] * 4, mode="replicate"), size, stride=1)
    return torch.maximum(soft, mask)


class ConfidenceFusionNet(nn.Module):
    """`forward(candidates (B, N, 3, H, W), render3d (B, 3, H, W), mask (B, 1, H, W)) ->
    dict(image, confidence (B, N, H, W))`."""

    def __init__(
        self, num_candidates: int = 3, channels: Sequence[int] = (32, 64, 128), norm: str = "instance"
    ) -> None:
        super().__init__()
        ch = [int(c) for c in channels]
        self.stem = ConvNormAct(3 * num_candidates + 4, ch[0], 3, norm=norm, activation="leaky_relu")
        self.encoder = nn.ModuleList(down(a, b, norm) for a, b in zip(ch[:-1], ch[1:]))
        self.decoder = nn.ModuleList()
        width = ch[-1]
        for skip in reversed(ch[:-1]):
            self.decoder.append(Up(width, skip, norm))
            self.decoder.append(ConvNormAct(2 * skip, skip, 3, norm=norm, activation="leaky_relu"))
            width = skip
        self.head = nn.Conv2d(width, num_candidates, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)  # equal confidences at the start
        self.num_candidates = num_candidates

    def forward(
        self, candidates: torch.Tensor, render3d: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if candidates.shape[1] != self.num_candidates:
            raise ValueError(f"expected {self.num_candidates} candidates, got {candidates.shape[1]}")
        features = [self.stem(torch.cat([candidates.flatten(1, 2), render3d, mask], dim=1))]
        for layer in self.encoder:
            features.append(layer(features[-1]))
        x = features[-1]
        for level in range(len(self.decoder) // 2):
            x = self.decoder[2 * level](x)
            x = self.decoder[2 * level + 1](torch.cat([x, features[-2 - level]], dim=1))
        confidence = self.head(x).softmax(dim=1)  # (B, N, H, W)
        return {"image": (confidence.unsqueeze(2) * candidates).sum(dim=1), "confidence": confidence}


def paste_back(generated: torch.Tensor, frame: torch.Tensor, mask: torch.Tensor, radius: int) -> torch.Tensor:
    """The generated mouth region in the frame: `generated` inside the feathered `mask`, `frame` outside."""
    soft = feather(mask, radius)
    return soft * generated + (1 - soft) * frame

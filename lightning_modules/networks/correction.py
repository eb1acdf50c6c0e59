"""Stage 3: reference-augmented correction (SynergyWarpNet, SynergyWarpNet, seed 000, step 2).

The stage-2 output I_i* is one warp of the references repaired by inpainting; where the warp is wrong
(occluded or distorted regions: teeth, the inside of the lips, a turned cheek) it can only guess. Here
every position of it looks up texture in all K references by cross-attention, guided by 3D keypoints:
- queries: features of I_i* plus an embedding of the target's keypoints (the 68 projected 3DMM
  landmarks, drawn as Gaussian heatmaps), so a query knows which part of the face it is;
- keys: the references' features plus the embeddings of their own keypoints; values: their texture
  features. So attention can match "the lower lip in the target" to "the lower lip in reference k"
  wherever the warp put it;
- `F.scaled_dot_product_attention` over all K x h x w reference tokens, multi-head, at 1/8 resolution,
  then a decoder with skips back to full resolution predicts a correction C_c (I_i* plus a residual
  whose head starts at zero, so the stage starts as the identity) and a mask A_c:
  I_c* = A_c C_c + (1 - A_c) I_i*.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.networks.blocks import ConvNormAct, LayerNorm2d, Up, down


def keypoint_heatmaps(points: torch.Tensor, size: int, image_size: int, sigma: float) -> torch.Tensor:
    """(..., P, 2) pixel keypoints of an `image_size` image -> (..., P, size, size) Gaussian heatmaps on a
    `size` grid (pixel centres, the flow module's convention); `sigma` in grid cells."""
    scale = size / image_size
    centres = (torch.arange(size, device=points.device, dtype=points.dtype) + 0.5) / scale
    dx = (centres.view(1, size) - points[..., 0:1]) * scale  # (..., P, size)
    dy = (centres.view(1, size) - points[..., 1:2]) * scale
    return torch.exp(-(dy.unsqueeze(-1) ** 2 + dx.unsqueeze(-2) ** 2) / (2 * sigma**2))


class ReferenceCorrectionNet(nn.Module):
    """`forward(image, keypoints, references, reference_keypoints)` with image (B, 3, H, W), keypoints
    (B, 68, 2) pixels, references (B, K, 3, H, W), reference_keypoints (B, K, 68, 2) -> dict(image,
    colour, alpha, attention (B, heads, hw, K hw))."""

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128, 256),
        heads: int = 4,
        num_keypoints: int = 68,
        keypoint_sigma: float = 1.0,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        ch = [int(c) for c in channels]
        dim = ch[-1]
        if dim % heads:
            raise ValueError(f"the attention width {dim} must divide into {heads} heads")
        self.stem = ConvNormAct(3, ch[0], 3, norm=norm, activation="leaky_relu")
        self.encoder = nn.ModuleList(down(a, b, norm) for a, b in zip(ch[:-1], ch[1:]))
        self.keypoint_embedding = nn.Conv2d(num_keypoints, dim, 1)
        self.query_norm, self.key_norm = LayerNorm2d(dim), LayerNorm2d(dim)
        self.to_query = nn.Conv2d(dim, dim, 1)
        self.to_key = nn.Conv2d(dim, dim, 1)
        self.to_value = nn.Conv2d(dim, dim, 1)
        self.to_out = nn.Conv2d(dim, dim, 1)
        self.decoder = nn.ModuleList()
        width = dim
        for skip in reversed(ch[:-1]):
            self.decoder.append(Up(width, skip, norm))
            self.decoder.append(ConvNormAct(2 * skip, skip, 3, norm=norm, activation="leaky_relu"))
            width = skip
        self.head = nn.Conv2d(width, 4, 3, padding=1)
        nn.init.zeros_(self.head.weight)  # C_c = I_i* + 0: the stage starts as the identity
        nn.init.zeros_(self.head.bias)
        self.heads = heads
        self.keypoint_sigma = keypoint_sigma

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(images)]
        for layer in self.encoder:
            features.append(layer(features[-1]))
        return features

    def forward(
        self,
        image: torch.Tensor,
        keypoints: torch.Tensor,
        references: torch.Tensor,
        reference_keypoints: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        batch, count = references.shape[:2]
        features = self.encode(image)
        query_map = features[-1]
        size = query_map.shape[-1]
        reference_map = self.encode(references.flatten(0, 1))[-1]  # (B K, d, h, w)
        embed = lambda points: self.keypoint_embedding(  # noqa: E731
            keypoint_heatmaps(points, size, image.shape[-1], self.keypoint_sigma)
        )
        query = self.to_query(self.query_norm(query_map + embed(keypoints)))
        key = self.to_key(self.key_norm(reference_map + embed(reference_keypoints.flatten(0, 1))))
        value = self.to_value(reference_map)

        def tokens(x: torch.Tensor, groups: int) -> torch.Tensor:
            """(B groups, d, h, w) -> (B, heads, groups h w, d / heads)."""
            d = x.shape[1]
            x = x.view(batch, groups, self.heads, d // self.heads, -1)  # (B, g, heads, dh, hw)
            return x.permute(0, 2, 1, 4, 3).reshape(batch, self.heads, -1, d // self.heads)

        q, k, v = tokens(query, 1), tokens(key, count), tokens(value, count)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, hw, dh)
        attended = attended.permute(0, 1, 3, 2).reshape(batch, -1, size, size)
        x = query_map + self.to_out(attended)
        for level in range(len(self.decoder) // 2):
            x = self.decoder[2 * level](x)
            x = self.decoder[2 * level + 1](torch.cat([x, features[-2 - level]], dim=1))
        out = self.head(x)
        colour, alpha = (image + torch.tanh(out[:, :3])).clamp(0, 1), out[:, 3:].sigmoid()
        return {"image": alpha * colour + (1 - alpha) * image, "colour": colour, "alpha": alpha}

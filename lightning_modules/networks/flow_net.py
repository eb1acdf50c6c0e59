"""Stage B of the main paper (main paper, stage B, seed 002): the 3D-face-guided renderer.

Three plain networks, built from `blocks` and warping through `flow` (one convention for every net):
- `FlowNet` (SFM, semantic-guided flow modelling): omega = SFM(I_3D, I_r), a dense flow that carries the
  reference face onto the pose and expression of the rendered 3D face; I_warp = warp(I_r, omega). With K
  references, one flow and one confidence logit each; a per-pixel softmax over the K confidences fuses
  the K warped references (the learned fusion weights).
- `TextureNet` (TMN, motion-aware texture modulation): a decoder with SPADE conditioned on I_3D;
  (C_e, A_e, F_tex) = TMN(I_warp, I_3D) and I_e* = A_e C_e + (1 - A_e) I_warp, with F_tex its decoder
  features at the scales RBFIN fuses.
- `InpaintingNet` (RBFIN, reference-based face inpainting): a U-Net over [I_warp, I_3D, I_crop] whose
  decoder is SPADE-normalised on I_3D and fuses the texture features with `MSAF` at the low (1/4) and
  high (full) scales: (C_i, A_i) = RBFIN(...) and I_i* = A_i C_i + (1 - A_i) I_crop.

Where the paper is silent (it gives only the sizes of Table 7 and the equations) the choices are
written here and the numbers are in conf/model/stage2.yaml: encoder-decoder widths and depths chosen so
that, at 192 x 192, the parameter and multiply-accumulate counts land within 10% of Table 7
(`count_complexity`); flows are predicted at 1/4 resolution and upsampled (SFM's few operations:
most of its weights act at 6 x 6); flow and confidence heads start at zero (identity warp, equal
fusion weights); every image stays in [0, 1]. Each network starts from the warped reference, which is
already a good face, and learns what to change: C_e and C_i are I_warp plus a learned residual whose
head starts at zero, so I_e* starts as I_warp exactly; RBFIN also reads the mouth mask M (as inpainting
networks do: partial and gated convolutions, LaMa), and A_i's logit carries the prior +-`mask_prior`
inside / outside it, so I_i* starts as I_warp pasted into I_crop, the warp baseline, which training can
only improve on. Started from noise instead, a short schedule spends its steps catching up with the
warp the networks are given (measured: 31 dB against the warp's 34 after 600 demo steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.networks.blocks import ConvNormAct, ResBlock, Up, down
from lightning_modules.networks.flow import resize_flow, warp


class FlowNet(nn.Module):
    """SFM: a U-Net from [I_3D, I_r] (6 channels) down to 1/32 resolution, where residual blocks hold
    most of the weights, and back up to `flow_scale` of the input, predicting a pixel flow (2 channels)
    and a fusion confidence logit (1 channel)."""

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        bottleneck_blocks: int = 7,
        decoder_levels: int = 3,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        self.stem = ConvNormAct(6, channels[0], 3, stride=2, norm=norm, activation="leaky_relu")
        self.encoder = nn.ModuleList(down(a, b, norm) for a, b in zip(channels[:-1], channels[1:]))
        self.bottleneck = nn.Sequential(*(ResBlock(channels[-1], norm) for _ in range(bottleneck_blocks)))
        self.decoder = nn.ModuleList()
        width = channels[-1]
        for level in range(decoder_levels):
            skip = channels[-2 - level]
            self.decoder.append(Up(width, skip, norm))
            self.decoder.append(ConvNormAct(2 * skip, skip, 3, norm=norm, activation="leaky_relu"))
            width = skip
        self.head = nn.Conv2d(width, 3, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # The flow comes out at 1 / 2^(levels + 1 - decoder_levels) of the input.
        self.output_stride = 2 ** (len(channels) - decoder_levels)

    def forward(self, render3d: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) each -> (flow (B, 2, H, W) in pixels, confidence logit (B, 1, H, W))."""
        features = [self.stem(torch.cat([render3d, reference], dim=1))]
        for layer in self.encoder:
            features.append(layer(features[-1]))
        x = self.bottleneck(features[-1])
        for level in range(len(self.decoder) // 2):
            x = self.decoder[2 * level](x)
            x = self.decoder[2 * level + 1](torch.cat([x, features[-2 - level]], dim=1))
        out = self.head(x)
        size = render3d.shape[-2:]
        # Predicted in pixels of the coarse map, then scaled with it to the input's pixels.
        flow = resize_flow(out[:, :2], size)
        confidence = F.interpolate(out[:, 2:], size=size, mode="bilinear", align_corners=False)
        return flow, confidence


def warp_references(
    flow_net: FlowNet, render3d: torch.Tensor, references: torch.Tensor
) -> dict[str, torch.Tensor]:
    """SFM over K references (B, K, 3, H, W): each warped by its own flow, then fused by the softmax of
    the confidences. Returns warped (B, 3, H, W), flows (B, K, 2, H, W), weights (B, K, 1, H, W) and the
    single warps (B, K, 3, H, W)."""
    batch, count = references.shape[:2]
    target = render3d.unsqueeze(1).expand(-1, count, -1, -1, -1).flatten(0, 1)
    flat_refs = references.flatten(0, 1)
    flow, confidence = flow_net(target, flat_refs)
    single = warp(flat_refs, flow).unflatten(0, (batch, count))
    weights = confidence.unflatten(0, (batch, count)).softmax(dim=1)
    return {
        "warped": (weights * single).sum(dim=1),
        "flows": flow.unflatten(0, (batch, count)),
        "weights": weights,
        "single_warps": single,
    }

"""RBFIN, the main paper's reference-based face inpainting (stage B), and MSAF, its multi-scale adaptive
fusion of TMN's texture features: a U-Net over [I_warp, I_3D, I_crop, mouth mask] whose decoder is
SPADE-normalised on I_3D and fuses F_tex at the low (1/4) and high (full) scales;
(C_i, A_i) = RBFIN(...) and I_i* = A_i C_i + (1 - A_i) I_crop. Design notes: flow_net.py."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.networks.blocks import ConvNormAct, ResBlock, SPADEResBlock, down

SIGMA_MODES = ("learnable", "fixed")


class MSAF(nn.Module):
    """Multi-scale adaptive fusion of texture features into a decoder feature F_k (main paper, stage B):
    T_s = Conv_sxs(F_tex) for s in 3, 5, 7; W_s = softmax_s(gamma_s), learnable scalars summing to 1;
    M = sigmoid(Conv_1x1([F_k, T_3, T_5, T_7])), one channel; F_k + sigma (M * sum_s W_s T_s).
    sigma is learnable and held in [0, 1] through a sigmoid (`sigma_mode: learnable`), or fixed (Table 5's
    sigma = 0 and sigma = 1 ablations)."""

    def __init__(
        self,
        channels: int,
        texture_channels: int,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        sigma_mode: str = "learnable",
        sigma: float = 0.5,
    ) -> None:
        super().__init__()
        if sigma_mode not in SIGMA_MODES:
            raise ValueError(f"sigma_mode must be one of {SIGMA_MODES}, got {sigma_mode!r}")
        if not 0.0 <= sigma <= 1.0:
            raise ValueError(f"sigma must lie in [0, 1], got {sigma}")
        self.branches = nn.ModuleList(
            nn.Conv2d(texture_channels, channels, k, padding=k // 2) for k in kernel_sizes
        )
        self.scale_logits = nn.Parameter(torch.zeros(len(kernel_sizes)))
        self.gate = nn.Conv2d(channels * (1 + len(kernel_sizes)), 1, 1)
        self.sigma_mode = sigma_mode
        if sigma_mode == "learnable":
            self.sigma_logit = nn.Parameter(torch.logit(torch.tensor(float(min(max(sigma, 1e-4), 1 - 1e-4)))))
        else:
            self.register_buffer("fixed_sigma", torch.tensor(float(sigma)))

    @property
    def sigma(self) -> torch.Tensor:
        return self.sigma_logit.sigmoid() if self.sigma_mode == "learnable" else self.fixed_sigma

    @property
    def scale_weights(self) -> torch.Tensor:
        return self.scale_logits.softmax(dim=0)

    def forward(self, features: torch.Tensor, texture: torch.Tensor) -> dict[str, torch.Tensor]:
        if texture.shape[-2:] != features.shape[-2:]:
            texture = F.interpolate(texture, size=features.shape[-2:], mode="bilinear", align_corners=False)
        branches = [branch(texture) for branch in self.branches]
        gate = torch.sigmoid(self.gate(torch.cat([features, *branches], dim=1)))
        weights = self.scale_weights
        mixed = sum(w * t for w, t in zip(weights, branches))
        return {"features": features + self.sigma * (gate * mixed), "gate": gate}


class InpaintingNet(nn.Module):
    """RBFIN: a U-Net over [I_warp, I_3D, I_crop, M] (10 channels, M the mouth mask). Encoder of
    stride-2 convs to 1/32, residual blocks there, decoder of SPADE residual blocks (conditioned on
    I_3D) with skip connections; `MSAF` at the decoder strides in `msaf_scales` (with TMN's F_tex at the
    same stride). Returns C_i (I_warp plus the predicted residual), A_i (its logit plus
    `mask_prior` (2 M - 1)), I_i* = A_i C_i + (1 - A_i) I_crop, and the MSAF gates."""

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128, 256, 512, 512),
        bottleneck_blocks: int = 3,
        spade_hidden: int = 40,
        msaf_scales: Sequence[int] = (4, 1),
        texture_channels: dict[int, int] | None = None,
        sigma_mode: str = "learnable",
        sigma: float = 0.5,
        mask_prior: float = 6.0,
        norm: str = "instance",
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        ch = [int(c) for c in channels]
        self.mask_prior = mask_prior
        self.stem = ConvNormAct(10, ch[0], 3, norm=norm, activation="leaky_relu")
        self.encoder = nn.ModuleList(down(a, b, norm) for a, b in zip(ch[:-1], ch[1:]))
        self.bottleneck = nn.Sequential(*(ResBlock(ch[-1], norm) for _ in range(bottleneck_blocks)))
        self.decoder = nn.ModuleList()
        self.strides = [2**level for level in range(len(ch) - 2, -1, -1)]  # decoder output strides
        width = ch[-1]
        for level in range(len(self.strides)):
            skip = ch[-2 - level]
            self.decoder.append(SPADEResBlock(width + skip, skip, 3, spade_hidden, spectral_norm))
            width = skip
        texture_channels = dict(texture_channels or {})
        self.msaf = nn.ModuleDict()
        for stride in msaf_scales:
            if stride not in self.strides:
                raise ValueError(f"MSAF scale {stride} is not a decoder stride {self.strides}")
            if stride not in texture_channels:
                raise ValueError(f"MSAF at stride {stride} needs TMN texture features at that stride")
            channels_here = ch[-2 - self.strides.index(stride)]
            self.msaf[str(stride)] = MSAF(
                channels_here, texture_channels[stride], sigma_mode=sigma_mode, sigma=sigma
            )
        self.head = nn.Conv2d(width, 4, 3, padding=1)
        nn.init.zeros_(self.head.weight)  # C_i = I_warp, A_i = the mask prior at the start
        nn.init.zeros_(self.head.bias)

    def forward(
        self,
        warped: torch.Tensor,
        render3d: torch.Tensor,
        masked: torch.Tensor,
        texture: dict[int, torch.Tensor],
        mask: torch.Tensor,
    ) -> dict[str, torch.Tensor | dict]:
        features = [self.stem(torch.cat([warped, render3d, masked, mask], dim=1))]
        for layer in self.encoder:
            features.append(layer(features[-1]))
        x = self.bottleneck(features[-1])
        gates = {}
        for level, (stride, block) in enumerate(zip(self.strides, self.decoder)):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, features[-2 - level]], dim=1), render3d)
            if str(stride) in self.msaf:
                fused = self.msaf[str(stride)](x, texture[stride])
                x, gates[stride] = fused["features"], fused["gate"]
        out = self.head(x)
        colour = (warped + torch.tanh(out[:, :3])).clamp(0, 1)
        alpha = (out[:, 3:] + self.mask_prior * (2 * mask - 1)).sigmoid()
        return {
            "colour": colour,
            "alpha": alpha,
            "image": alpha * colour + (1 - alpha) * masked,
            "gates": gates,
        }

"""Stage B of the main paper (METHOD.md 1.3, seed 002): the 3D-face-guided renderer.

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
from torch.utils.flop_counter import FlopCounterMode

from lightning_modules.networks.blocks import ConvNormAct, ResBlock, SPADEResBlock, Up, down
from lightning_modules.networks.flow import resize_flow, warp

SIGMA_MODES = ("learnable", "fixed")


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


class TextureNet(nn.Module):
    """TMN: encoder over [I_warp, I_3D] to 1/8 resolution, residual blocks, then a decoder of SPADE
    residual blocks conditioned on I_3D back to full resolution. Returns C_e (I_warp plus the predicted
    residual), A_e, I_e* = A_e C_e + (1 - A_e) I_warp and the decoder features at the scales in
    `texture_scales` (the output strides RBFIN's MSAF reads)."""

    def __init__(
        self,
        encoder_channels: Sequence[int] = (64, 128, 256, 256),
        middle_blocks: int = 5,
        decoder_channels: Sequence[int] = (256, 256, 128, 64),
        spade_hidden: int = 64,
        texture_scales: Sequence[int] = (4, 1),
        norm: str = "instance",
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        enc = [int(c) for c in encoder_channels]
        dec = [int(c) for c in decoder_channels]
        if len(dec) != len(enc):
            raise ValueError("TextureNet needs as many decoder as encoder levels")
        self.stem = ConvNormAct(6, enc[0], 3, norm=norm, activation="leaky_relu")
        self.encoder = nn.ModuleList(down(a, b, norm) for a, b in zip(enc[:-1], enc[1:]))
        self.middle = nn.Sequential(*(ResBlock(enc[-1], norm) for _ in range(middle_blocks)))
        self.decoder = nn.ModuleList()
        width = enc[-1]
        for out in dec:
            self.decoder.append(SPADEResBlock(width, out, 3, spade_hidden, spectral_norm))
            width = out
        self.head = nn.Conv2d(width, 4, 3, padding=1)
        nn.init.zeros_(self.head.weight)  # C_e = I_warp + 0 at the start: I_e* = I_warp
        nn.init.zeros_(self.head.bias)
        self.strides = [2 ** (len(dec) - 1 - level) for level in range(len(dec))]
        missing = set(texture_scales) - set(self.strides)
        if missing:
            raise ValueError(f"texture_scales {sorted(missing)} are not decoder strides {self.strides}")
        self.texture_scales = tuple(int(s) for s in texture_scales)

    def texture_channels(self) -> dict[int, int]:
        """Channels of F_tex at each output stride in `texture_scales`."""
        return {
            stride: block.conv_1.out_channels
            for stride, block in zip(self.strides, self.decoder)
            if stride in self.texture_scales
        }

    def forward(self, warped: torch.Tensor, render3d: torch.Tensor) -> dict[str, torch.Tensor | dict]:
        x = self.stem(torch.cat([warped, render3d], dim=1))
        for layer in self.encoder:
            x = layer(x)
        x = self.middle(x)
        texture: dict[int, torch.Tensor] = {}
        for level, (stride, block) in enumerate(zip(self.strides, self.decoder)):
            if level > 0:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(x, render3d)
            if stride in self.texture_scales:
                texture[stride] = x
        out = self.head(x)
        colour, alpha = (warped + torch.tanh(out[:, :3])).clamp(0, 1), out[:, 3:].sigmoid()
        return {
            "colour": colour,
            "alpha": alpha,
            "image": alpha * colour + (1 - alpha) * warped,
            "texture": texture,
        }


class MSAF(nn.Module):
    """Multi-scale adaptive fusion of texture features into a decoder feature F_k (METHOD.md 1.3):
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


def count_complexity(net: nn.Module, inputs: Sequence[torch.Tensor | dict]) -> dict[str, float]:
    """Parameters, multiply-accumulates of one forward pass over `inputs` (FlopCounterMode counts 2 FLOPs
    per MAC) and its activation memory: the bytes of every leaf module's output (the feature maps, as
    torchstat and Table 7 count "memory"), at the batch of `inputs`."""
    params = sum(p.numel() for p in net.parameters())
    activation_bytes = 0

    def record(module: nn.Module, args: tuple, output: object) -> None:
        nonlocal activation_bytes
        if isinstance(output, torch.Tensor):
            activation_bytes += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(record) for m in net.modules() if not list(m.children())]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    return {
        "params": float(params),
        "macs": counter.get_total_flops() / 2,
        "activation_mb": activation_bytes / 2**20,
    }

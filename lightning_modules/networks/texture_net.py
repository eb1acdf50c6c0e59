"""TMN, the main paper's motion-aware texture modulation (stage B): (C_e, A_e, F_tex) = TMN(I_warp, I_3D) and
I_e* = A_e C_e + (1 - A_e) I_warp, a decoder SPADE-conditioned on I_3D whose features F_tex reach RBFIN
(lightning_modules/networks/inpainting_net.py). Sizes: see flow_net.py's notes on Table 7."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.networks.blocks import ConvNormAct, ResBlock, SPADEResBlock, down


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

"""The WGAN-GP critic of the renderer stages (main paper, stage B: Gulrajani et al. 2017).

A patch critic in the style of pix2pix's PatchGAN (Isola et al. 2017): stride-2 convolutions with
LeakyReLU, averaged to one score per image. No batch normalisation: the gradient penalty is taken per
sample, and batch statistics would couple the samples (Gulrajani et al. recommend layer
normalisation; `LayerNorm2d` here). Its score is unbounded (a Wasserstein critic, no sigmoid).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_modules.networks.blocks import LayerNorm2d


class PatchCritic(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B,) scores."""

    def __init__(self, channels: Sequence[int] = (64, 128, 256, 512), in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for index, out in enumerate(int(c) for c in channels):
            layers.append(nn.Conv2d(width, out, 4, stride=2, padding=1))
            if index > 0:
                layers.append(LayerNorm2d(out))
            layers.append(nn.LeakyReLU(0.2))
            width = out
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1).mean(dim=(1, 2, 3))

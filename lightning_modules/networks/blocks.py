"""Small building blocks shared by every network of the suite.

In the spirit of PIRender's `base_function.py` (Ren et al. 2021): one place defines "a convolution
followed by a normalisation and an activation", so that the networks read as lists of blocks and a
normalisation or activation is changed by name. Later stages add SPADE / AdaIN / flow warping here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

NORMS = ("batch", "instance", "none")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """A 2D normalisation layer by name: `batch`, `instance` (affine) or `none`."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


def make_activation(kind: str) -> nn.Module:
    """An activation by name: `relu`, `leaky_relu` (slope 0.2, as in GAN critics), `tanh`, `sigmoid`
    or `none`."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(0.2, inplace=True)
    if kind == "tanh":
        return nn.Tanh()
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")


class ConvNormAct(nn.Module):
    """Conv2d -> norm -> activation, optionally residual (`x + block(x)` before the activation, as in
    Wav2Lip's `Conv2d(..., residual=True)`; needs equal in/out channels and stride 1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        norm: str = "batch",
        activation: str = "relu",
        residual: bool = False,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = _same_padding(kernel_size)
        if residual and (in_channels != out_channels or stride not in (1, (1, 1))):
            raise ValueError("a residual ConvNormAct needs in_channels == out_channels and stride 1")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=norm == "none")
        self.norm = make_norm(norm, out_channels)
        self.activation = make_activation(activation)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        if self.residual:
            y = y + x
        return self.activation(y)


class DeconvNormAct(nn.Module):
    """ConvTranspose2d -> norm -> activation: the up-sampling step of encoder-decoder generators."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 2,
        padding: int | tuple[int, int] = 1,
        output_padding: int | tuple[int, int] = 1,
        norm: str = "batch",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            in_channels, out_channels, kernel_size, stride, padding, output_padding, bias=norm == "none"
        )
        self.norm = make_norm(norm, out_channels)
        self.activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(x)))


@dataclass(frozen=True)
class ConvSpec:
    """One layer of a VGG-style stack: a ConvNormAct, then an optional max-pool."""

    channels: int
    kernel: int | tuple[int, int] = 3
    stride: int | tuple[int, int] = 1
    pool_kernel: int | tuple[int, int] | None = None
    pool_stride: int | tuple[int, int] | None = None


def conv_stack(
    in_channels: int, specs: Sequence[ConvSpec], norm: str = "batch", activation: str = "relu"
) -> nn.Sequential:
    """A VGG-style stack (Chatfield et al. 2014's VGG-M and its SyncNet variants are lists like this):
    each spec is a same-padded ConvNormAct followed, where asked, by a max-pool padded so that a pool
    of stride s divides the size by s (rounded up)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for spec in specs:
        layers.append(ConvNormAct(channels, spec.channels, spec.kernel, spec.stride, None, norm, activation))
        if spec.pool_kernel is not None:
            stride = spec.pool_stride if spec.pool_stride is not None else spec.pool_kernel
            layers.append(nn.MaxPool2d(spec.pool_kernel, stride, padding=_same_padding(spec.pool_kernel)))
        channels = spec.channels
    return nn.Sequential(*layers)


def _same_padding(kernel_size: int | tuple[int, int]) -> int | tuple[int, int]:
    if isinstance(kernel_size, int):
        return kernel_size // 2
    return (kernel_size[0] // 2, kernel_size[1] // 2)

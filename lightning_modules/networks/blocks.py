"""Small building blocks shared by every network of the suite.

In the spirit of PIRender's `base_function.py` (Ren et al. 2021): one place defines "a convolution
followed by a normalisation and an activation", so that the networks read as lists of blocks and a
normalisation or activation is changed by name. The renderer (stages 2-4) adds SPADE (Park et al.
2019), a channel LayerNorm, residual and up/down blocks and spectral normalisation; flow handling lives
in `flow.py`, shared by every network that warps.
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


# --- normalisation and residual blocks of the renderer (stages 2-4) ------------------------------------


def spectral(module: nn.Module, enabled: bool) -> nn.Module:
    """`module` under spectral normalisation (Miyato et al. 2018) when `enabled`: the Lipschitz control
    GAN critics and SPADE generators use."""
    return nn.utils.parametrizations.spectral_norm(module) if enabled else module


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channels of each pixel of an NCHW map (as ConvNeXt's), with affine
    parameters: a batch-size-free norm for critics and attention blocks (batch norm would couple the
    samples that a WGAN-GP gradient penalty must keep apart)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation (Park et al. 2019, "Semantic Image Synthesis with SPADE"):
    parameter-free instance normalisation of `x`, then a per-pixel scale and shift predicted from the
    conditioning map (here the rendered 3D face I_3D, resized to `x`) by a small conv net:
    `norm(x) * (1 + gamma(c)) + beta(c)`."""

    def __init__(
        self, channels: int, condition_channels: int, hidden: int = 128, kernel_size: int = 3
    ) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(
            nn.Conv2d(condition_channels, hidden, kernel_size, padding=padding), nn.ReLU()
        )
        self.gamma = nn.Conv2d(hidden, channels, kernel_size, padding=padding)
        self.beta = nn.Conv2d(hidden, channels, kernel_size, padding=padding)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if condition.shape[-2:] != x.shape[-2:]:
            condition = nn.functional.interpolate(
                condition, size=x.shape[-2:], mode="bilinear", align_corners=False
            )
        hidden = self.shared(condition)
        return self.norm(x) * (1 + self.gamma(hidden)) + self.beta(hidden)


class SPADEResBlock(nn.Module):
    """SPADE's residual block: (SPADE, LeakyReLU, 3x3 conv) twice, with a learned 1x1 shortcut (itself
    SPADE-normalised) when the channel count changes; convs optionally spectrally normalised."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        condition_channels: int,
        hidden: int = 128,
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        middle = min(in_channels, out_channels)
        self.norm_0 = SPADE(in_channels, condition_channels, hidden)
        self.conv_0 = spectral(nn.Conv2d(in_channels, middle, 3, padding=1), spectral_norm)
        self.norm_1 = SPADE(middle, condition_channels, hidden)
        self.conv_1 = spectral(nn.Conv2d(middle, out_channels, 3, padding=1), spectral_norm)
        self.shortcut = None
        if in_channels != out_channels:
            self.norm_s = SPADE(in_channels, condition_channels, hidden)
            self.shortcut = spectral(nn.Conv2d(in_channels, out_channels, 1, bias=False), spectral_norm)
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(self.norm_s(x, condition))
        y = self.conv_0(self.activation(self.norm_0(x, condition)))
        y = self.conv_1(self.activation(self.norm_1(y, condition)))
        return skip + y


class ResBlock(nn.Module):
    """Two 3x3 ConvNormAct units with an identity shortcut (He et al. 2016), the activation after the sum."""

    def __init__(self, channels: int, norm: str = "instance", activation: str = "leaky_relu") -> None:
        super().__init__()
        self.conv_0 = ConvNormAct(channels, channels, 3, norm=norm, activation=activation)
        self.conv_1 = ConvNormAct(channels, channels, 3, norm=norm, activation="none")
        self.activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x + self.conv_1(self.conv_0(x)))


def down(
    in_channels: int, out_channels: int, norm: str = "instance", activation: str = "leaky_relu"
) -> ConvNormAct:
    """A stride-2 3x3 ConvNormAct: halves the resolution."""
    return ConvNormAct(in_channels, out_channels, 3, stride=2, norm=norm, activation=activation)


class Up(nn.Module):
    """Bilinear x2 upsampling, then a 3x3 ConvNormAct (no transposed conv: no checkerboard artefacts)."""

    def __init__(
        self, in_channels: int, out_channels: int, norm: str = "instance", activation: str = "leaky_relu"
    ) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, 3, norm=norm, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))

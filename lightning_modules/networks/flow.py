"""Dense flow and warping, one convention for every network (as PIRender's `flow_util.py` is one module
shared by its warping and editing nets).

A flow is a (B, 2, H, W) tensor of displacements in pixels of the image it belongs to, x then y:
warping an image by it gives `out[y, x] = image[y + flow_y[y, x], x + flow_x[y, x]]` (backward
warping: each output pixel says where in the source it comes from), sampled bilinearly.

`grid_sample` is called with `align_corners=False` everywhere: pixel i of an image of size S has its
centre at the normalised coordinate (2 i + 1) / S - 1, the convention in which resizing an image and
its flow together keeps them aligned. Under it a zero flow is exactly the identity and an integer flow
moves pixels by exactly that many pixels. Outside the source, samples repeat its border
(`padding_mode="border"`) unless asked otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.utils import flow_to_image

ALIGN_CORNERS = False


def pixel_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 2, H, W) pixel coordinates (x, y) of every pixel, on `like`'s device and dtype."""
    ys = torch.arange(height, device=like.device, dtype=like.dtype)
    xs = torch.arange(width, device=like.device, dtype=like.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])[None]


def flow_to_grid(flow: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) pixel flow -> (B, H, W, 2) `grid_sample` grid in normalised coordinates."""
    height, width = flow.shape[-2:]
    position = pixel_grid(height, width, flow) + flow
    scale = position.new_tensor([2.0 / width, 2.0 / height]).view(1, 2, 1, 1)
    return ((position + 0.5) * scale - 1.0).permute(0, 2, 3, 1)


def warp(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Backward-warp `image` (B, C, H, W) by `flow` (B, 2, H', W'), resized to the image first."""
    if flow.shape[-2:] != image.shape[-2:]:
        flow = resize_flow(flow, image.shape[-2:])
    return F.grid_sample(
        image,
        flow_to_grid(flow.to(image.dtype)),
        mode="bilinear",
        padding_mode=padding_mode,
        align_corners=ALIGN_CORNERS,
    )


def resize_flow(flow: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The same flow at another resolution: resampled, and its pixel displacements rescaled."""
    height, width = flow.shape[-2:]
    resized = F.interpolate(flow, size=tuple(size), mode="bilinear", align_corners=ALIGN_CORNERS)
    scale = resized.new_tensor([size[1] / width, size[0] / height]).view(1, 2, 1, 1)
    return resized * scale


def flow_image(flow: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) flow -> (B, 3, H, W) RGB in [0, 1] for the W&B panels (torchvision's colour wheel:
    hue is the direction, saturation the magnitude)."""
    return flow_to_image(flow.detach().float()).float() / 255.0

"""The two image layouts the suite converts between: uint8 (..., H, W, 3) as video frames, crops and shards
store them, and float (..., 3, H, W) in [0, 1] as networks, metrics and batches use them."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def to_float_images(frames: np.ndarray | Tensor, device: torch.device | str | None = None) -> Tensor:
    """uint8 (..., H, W, 3) (array or tensor) -> float32 (..., 3, H, W) in [0, 1], on `device`."""
    images = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if device is not None:
        images = images.to(device)
    return images.movedim(-1, -3).float() / 255.0


def to_uint8_images(images: Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [0, 1] -> uint8 (..., H, W, 3) on the CPU (clamped, rounded), C-contiguous
    (what OpenCV, dlib and the video encoder read)."""
    pixels = images.detach().float().clamp(0, 1).movedim(-3, -1).cpu().numpy()
    return np.ascontiguousarray((pixels * 255).round().astype(np.uint8))

"""Rendering coefficient sequences to numpy images through `face3d.FaceRenderer`, in batches."""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def render_faces(model, camera, coeffs: torch.Tensor, batch: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """coeffs (T, 257) -> (image (T, S, S, 3) float32 in [0, 1] on black, mask (T, S, S, 1) float32),
    S = camera.image_size. Runs on the device of `model` (PyTorch3D's CUDA rasteriser on a GPU)."""
    import face3d

    renderer = face3d.FaceRenderer(model, camera)
    images, masks = [], []
    device = model.mean_shape.device
    for chunk in torch.split(coeffs.to(device), batch):
        out = renderer(chunk)
        images.append(out["image"].permute(0, 2, 3, 1).cpu().numpy())
        masks.append(out["mask"].permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(images).astype(np.float32), np.concatenate(masks).astype(np.float32)

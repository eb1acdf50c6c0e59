"""Losses shared by the stages (METHOD.md 1.2-1.3). Plain functions of tensors; the LightningModules
weight and log them.

The paper writes its stage-1 losses as sums over frames; here they are means (over frames, batch and
coefficients or landmark coordinates), so a loss weight does not depend on the window length or the
batch size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def expression_l1(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_exp: mean absolute error of the 64 expression coefficients (METHOD.md 1.2)."""
    if predicted.shape != target.shape:
        raise ValueError(f"expression shapes differ: {tuple(predicted.shape)} vs {tuple(target.shape)}")
    return (predicted - target).abs().mean()


def landmark_l1(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_shape: mean absolute error, in pixels, of 2D landmark coordinates (..., 68, 2): the landmarks
    of the mesh built with the predicted expression against those built with the ground-truth one."""
    if predicted.shape != target.shape:
        raise ValueError(f"landmark shapes differ: {tuple(predicted.shape)} vs {tuple(target.shape)}")
    return (predicted - target).abs().mean()


def sync_loss(probability: Tensor, in_sync: Tensor) -> Tensor:
    """Wav2Lip's `cosine_loss`: binary cross-entropy of the cosine similarity (clamped away from 0 and
    1 so that the log stays finite) against the in-sync label."""
    return F.binary_cross_entropy(probability.clamp(1e-6, 1 - 1e-6), in_sync.to(probability.dtype))

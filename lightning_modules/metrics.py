"""Evaluation metrics shared by the stages (METHOD.md 1.5).

Each is a plain function of tensors, so LightningModules, callbacks and bench scripts compute a metric
the same way."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# iBUG 68-point order: the mouth is points 48-67 (outer lip 48-59, inner lip 60-67).
MOUTH_LANDMARKS = tuple(range(48, 68))


def average_expression_distance(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AED: the mean absolute difference of 3DMM expression coefficients, over every coefficient of
    every frame (the paper's Table 3 values, about 0.08-0.1, are per-coefficient means)."""
    if predicted.shape != target.shape:
        raise ValueError(f"AED needs equal shapes, got {tuple(predicted.shape)} and {tuple(target.shape)}")
    return (predicted - target).abs().mean()


def landmark_distance(
    predicted: torch.Tensor, target: torch.Tensor, indices: Sequence[int] | None = None
) -> torch.Tensor:
    """LMD: the mean Euclidean distance in pixels between corresponding 2D landmarks (..., 68, 2),
    over the points in `indices` (all when None; `MOUTH_LANDMARKS` for the mouth-only variant of
    Chen et al. 2018)."""
    if predicted.shape != target.shape or predicted.shape[-1] != 2:
        raise ValueError(
            f"LMD needs equal (..., N, 2) shapes, got {tuple(predicted.shape)} and {tuple(target.shape)}"
        )
    if indices is not None:
        predicted, target = predicted[..., list(indices), :], target[..., list(indices), :]
    return (predicted - target).norm(dim=-1).mean()

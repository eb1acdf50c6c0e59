"""Playmate's motion representation: 64 expression + 6 pose values per frame; expression normalised with the
training set's mean / std, pose per identity (per sequence). The statistics are buffers in the checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import lightning as L
import numpy as np
import torch
from torch import nn

import face3d
from face3d import MorphableModel

log = logging.getLogger(__name__)

EXPRESSION_DIM = face3d.COEFF_DIMS["exp"]


POSE_DIM = face3d.COEFF_DIMS["angle"] + face3d.COEFF_DIMS["trans"]


MOTION_DIM = EXPRESSION_DIM + POSE_DIM


def pose_of(coeffs: torch.Tensor) -> torch.Tensor:
    """(..., 257) -> (..., 6): rotation angles then translation."""
    parts = MorphableModel.split_coeffs(coeffs)
    return torch.cat([parts["angle"], parts["trans"]], dim=-1)


def identity_of(coeffs: torch.Tensor) -> torch.Tensor:
    """(B, T, 257) -> (B, 80): the clip's identity coefficients (shared over its frames; averaged)."""
    return MorphableModel.split_coeffs(coeffs)["id"].mean(dim=1)


def expression_moments(coeffs: Iterable[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sum and sum of squares (float64, (64,)) and count of the expressions of (T, 257) arrays."""
    total = torch.zeros(EXPRESSION_DIM, dtype=torch.float64)
    squares = torch.zeros(EXPRESSION_DIM, dtype=torch.float64)
    count = 0
    for array in coeffs:
        expression = face3d.expression_of(torch.as_tensor(np.asarray(array), dtype=torch.float64))
        total += expression.sum(0)
        squares += expression.square().sum(0)
        count += expression.shape[0]
    return total, squares, count


class MotionNormalizer(nn.Module):
    """Motion (B, T, 70) from coefficients and back (module docstring). The expression statistics are
    buffers (in every checkpoint); until `fit` they are 0 / 1."""

    def __init__(self, expression_std_floor: float = 1e-3, pose_std_floor: float = 1e-3) -> None:
        super().__init__()
        self.expression_std_floor = expression_std_floor
        self.pose_std_floor = pose_std_floor
        self.register_buffer("expression_mean", torch.zeros(EXPRESSION_DIM))
        self.register_buffer("expression_std", torch.ones(EXPRESSION_DIM))
        self.register_buffer("expression_count", torch.zeros((), dtype=torch.long))

    @property
    def fitted(self) -> bool:
        return bool(self.expression_count > 0)

    def fit(self, total: torch.Tensor, squares: torch.Tensor, count: int | torch.Tensor) -> None:
        """Set the statistics from `expression_moments` (population std, floored)."""
        count = int(count)
        if count <= 0:
            raise ValueError("no training frames to compute the expression statistics from")
        mean = total.double() / count
        std = (
            (squares.double() / count - mean.square())
            .clamp(min=0)
            .sqrt()
            .clamp(min=self.expression_std_floor)
        )
        self.expression_mean.copy_(mean.to(self.expression_mean))
        self.expression_std.copy_(std.to(self.expression_std))
        self.expression_count.fill_(count)

    def pose_statistics(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sequence (B, 1, 6) mean and std (floored) of the pose over its frames."""
        pose = pose_of(coeffs.float())
        return pose.mean(1, keepdim=True), pose.std(1, keepdim=True, unbiased=False).clamp(
            min=self.pose_std_floor
        )

    def encode(
        self, coeffs: torch.Tensor, pose_statistics: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """(B, T, 257) -> normalised motion (B, T, 70); the pose by its own statistics unless given."""
        mean, std = pose_statistics or self.pose_statistics(coeffs)
        expression = (face3d.expression_of(coeffs.float()) - self.expression_mean) / self.expression_std
        return torch.cat([expression, (pose_of(coeffs.float()) - mean) / std], dim=-1)

    def decode(
        self, motion: torch.Tensor, pose_statistics: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised motion (B, T, 70) -> expression (B, T, 64) and pose (B, T, 6)."""
        mean, std = pose_statistics
        expression = motion[..., :EXPRESSION_DIM] * self.expression_std + self.expression_mean
        return expression, motion[..., EXPRESSION_DIM:] * std + mean

    def to_coeffs(self, motion: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Generated motion (B, T, 70) as coefficients (B, T, 257): identity, texture and light of the
        `reference` clip (B, T_ref, 257) of the same person (its first frame), the generated expression,
        the generated pose put back with the reference's pose statistics."""
        expression, pose = self.decode(motion, self.pose_statistics(reference))
        parts = MorphableModel.split_coeffs(reference[:, :1].float().expand(-1, motion.shape[1], -1))
        parts["exp"] = expression
        parts["angle"], parts["trans"] = pose.split(
            [face3d.COEFF_DIMS["angle"], face3d.COEFF_DIMS["trans"]], -1
        )
        return MorphableModel.join_coeffs(**parts)


def fit_to_training_set(normalizer: MotionNormalizer, trainer: L.Trainer) -> None:
    """`normalizer.fit` on the expressions of the training shards (`datamodule.split_dir("train")`), else of
    one epoch of the datamodule's training loader; summed over the ranks, which is right whether each rank
    read the whole split or its own share."""
    datamodule = trainer.datamodule
    if datamodule is None:
        raise ValueError(
            "the expression statistics come from the training data: fit with a datamodule, or call "
            "module.normalizer.fit(*expression_moments(...)) first"
        )
    if hasattr(datamodule, "split_dir"):
        from datamodules.shards import ShardReader

        moments = expression_moments(clip["coeffs"] for clip in ShardReader(datamodule.split_dir("train")))
    else:
        loader = datamodule.train_dataloader()
        moments = expression_moments(c for batch in loader for c in batch["coeffs"].cpu().numpy())
    strategy = trainer.strategy
    total, squares, count = (
        strategy.reduce(
            torch.as_tensor(x, dtype=torch.float64, device=strategy.root_device), reduce_op="sum"
        ).cpu()
        for x in moments
    )
    normalizer.fit(total, squares, int(count.round().item()))
    log.info("expression statistics from %d training frames", int(count.round().item()))

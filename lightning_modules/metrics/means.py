"""Exact epoch means of per-batch evaluation values under DDP.

Lightning's `self.log(value, sync_dist=True, batch_size=n)` reduces a mean as (the sum of value x n) over
(the sum of n), each averaged over the ranks; its count is an integer tensor, and the average truncates it
(3 samples on 2 ranks become 1), so with unequal shares per rank the epoch value is wrong (measured on the
teacher: 0.238 on two ranks for 0.158 on one). `BatchMeans` keeps a torchmetrics `MeanMetric` per name
instead: float sums of value x weight and of weight, summed over the ranks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import Tensor, nn


class BatchMeans(nn.Module):
    """One `MeanMetric` for each evaluation term (`loss`, `aed`, ...) of each split, made when the module is
    built so that Lightning finds them as the module's attributes; `log` updates them and logs each under
    `<split>/<term>` (Lightning computes and resets it at the end of the epoch)."""

    def __init__(self, terms: Iterable[str], splits: Iterable[str] = ("val", "test")) -> None:
        super().__init__()
        self.means = nn.ModuleDict(
            {f"{split}_{term}": torchmetrics.MeanMetric() for split in splits for term in terms}
        )

    def log(
        self,
        module: L.LightningModule,
        split: str,
        values: dict[str, Tensor],
        weight: float | Tensor,
        **log_kwargs: Any,
    ) -> None:
        """Each value (a scalar: the mean over `weight` samples) into its term's metric, logged."""
        for term, value in values.items():
            metric = self.means[f"{split}_{term}"]
            metric.update(torch.as_tensor(value).detach().float(), weight)
            module.log(f"{split}/{term}", metric, **log_kwargs)

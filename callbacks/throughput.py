"""Step time and samples per second, logged every training step.

Lightning's own ThroughputMonitor needs a FLOP count and a batch-size function per model; this one
only times the loop, which is what a user compares across precisions, strategies and node counts.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


def batch_size_of(batch: Any) -> int:
    """The leading dimension of the first tensor in a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, list | tuple):
        for item in batch:
            size = batch_size_of(item)
            if size:
                return size
    return 0


class ThroughputMonitor(L.Callback):
    """Logs `perf/step_time_s` and `perf/samples_per_s` (all ranks together) after every step; the
    first `warmup_steps` steps (worker start-up, allocator warm-up) are not logged."""

    def __init__(self, warmup_steps: int = 2) -> None:
        self.warmup_steps = warmup_steps
        self._start: float | None = None
        self._steps_seen = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            return
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        step_time = time.perf_counter() - self._start
        self._steps_seen += 1
        if self._steps_seen <= self.warmup_steps:
            return
        samples = batch_size_of(batch) * trainer.world_size
        pl_module.log_dict(
            {"perf/step_time_s": step_time, "perf/samples_per_s": samples / max(step_time, 1e-9)},
            on_step=True,
            on_epoch=False,
            batch_size=max(samples, 1),
        )

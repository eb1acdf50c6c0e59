"""A per-rank record of which samples every training and validation step saw.

For auditing data pipelines: that DDP ranks and nodes see disjoint samples, that a resumed run picks
up exactly where it stopped, that validation scores every example once whatever the number of ranks.
Off by default (`callbacks=ledger` or `+callbacks.sample_ledger=...`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch


def sample_keys(batch: Any) -> list[str]:
    """One key per sample: `clip_id` plus the window start or frame index when the batch has them."""
    if not isinstance(batch, dict) or "clip_id" not in batch:
        return []
    position = batch.get("start", batch.get("frame_index"))
    positions = position.tolist() if isinstance(position, torch.Tensor) else [None] * len(batch["clip_id"])
    return [
        f"{clip}@{pos}" if pos is not None else str(clip) for clip, pos in zip(batch["clip_id"], positions)
    ]


class SampleLedger(L.Callback):
    """Appends `{"step", "epoch", "rank", "samples"}` per training batch to `<dirpath>/rank<r>.jsonl`, and
    per validation batch (sanity check excluded) to `<dirpath>/val_rank<r>.jsonl`."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def _write(self, trainer: L.Trainer, batch: Any, prefix: str) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "rank": trainer.global_rank,
            "samples": sample_keys(batch),
        }
        with open(self.dirpath / f"{prefix}rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._write(trainer, batch, "")

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, batch, "val_")

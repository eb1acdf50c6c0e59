"""The batch size function Lightning's `ThroughputMonitor` needs (conf/callbacks/throughput.yaml): the
suite's batches are dicts of tensors and lists, whose first tensor leads with the batch."""

from __future__ import annotations

from typing import Any

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

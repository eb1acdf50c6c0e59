"""What every LightningModule's `configure_optimizers` returns: one place for Lightning's scheduler dict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def optimizer_config(
    optimizer: torch.optim.Optimizer,
    scheduler: Callable[..., Any] | None,
    interval: str = "epoch",
    monitor: str = "val/loss",
) -> dict[str, Any]:
    """The optimizer, and the scheduler `scheduler(optimizer=...)` builds (None: none), stepped every
    `interval` (epoch | step); `monitor` is what a plateau scheduler watches."""
    if scheduler is None:
        return {"optimizer": optimizer}
    return {
        "optimizer": optimizer,
        "lr_scheduler": {
            "scheduler": scheduler(optimizer=optimizer),
            "monitor": monitor,
            "interval": interval,
            "frequency": 1,
        },
    }

"""Optimisers shared by every stage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_ranger
import torch


class Ranger(pytorch_ranger.Ranger):
    """Ranger (RAdam + Lookahead, Wright 2019; `pytorch_ranger`) whose `step` evaluates the closure.

    `pytorch_ranger.Ranger.step` ignores its closure (the call is commented out upstream); Lightning
    runs forward and backward inside that closure, so with the original class no gradient would ever
    be computed (Lightning stops with "The closure hasn't been executed")."""

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        super().step()
        return loss


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

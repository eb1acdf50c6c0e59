"""Checkpoints hold learned state only, plus the run's configuration.

A stage's fixed helpers (the face model, a frozen SyncNet, the VGG / RAFT / AlexNet measures) are
configuration, rebuilt from the config on load; writing them into every checkpoint would bloat the files
and tie them to one machine's weights. `LearnedStateOnly` drops the submodules under `frozen_prefixes`
when Lightning saves and puts the module's own values back when it loads (so a strict load still fits).
It also stores `run_config` (the resolved `model`, `data` and `face_model` config of the run, plain
values, which `task=training` sets) under `checkpoint["run_config"]`, so that a checkpoint rebuilds its
own networks wherever it is copied (lightning_modules/dubbing.py `load_trained_module`).
"""

from __future__ import annotations

from typing import Any


class LearnedStateOnly:
    """Mixin for a LightningModule whose submodules under `frozen_prefixes` are not learned state."""

    frozen_prefixes: tuple[str, ...] = ()
    run_config: dict[str, Any] | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["run_config"] = self.run_config
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(self.frozen_prefixes)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"].update(
            {key: value for key, value in self.state_dict().items() if key.startswith(self.frozen_prefixes)}
        )

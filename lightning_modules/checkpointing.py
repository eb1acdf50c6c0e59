"""Checkpoints hold learned state only.

A stage's fixed helpers (the face model, a frozen SyncNet, the VGG / RAFT / AlexNet measures) are
configuration, rebuilt from the config on load; writing them into every checkpoint would bloat the files
and tie them to one machine's weights. `LearnedStateOnly` drops the submodules under `frozen_prefixes`
when Lightning saves and puts the module's own values back when it loads (so a strict load still fits).
"""

from __future__ import annotations

from typing import Any


class LearnedStateOnly:
    """Mixin for a LightningModule whose submodules under `frozen_prefixes` are not learned state."""

    frozen_prefixes: tuple[str, ...] = ()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(self.frozen_prefixes)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"].update(
            {key: value for key, value in self.state_dict().items() if key.startswith(self.frozen_prefixes)}
        )

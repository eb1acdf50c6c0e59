"""Reading the suite's own checkpoints: one reader (`read_checkpoint`), a whole trained module rebuilt from
the configuration it carries (`load_trained_module`), and a previous stage's networks loaded into a new
stage (`load_networks`).

Checkpoints hold learned state only, plus the run's configuration. A stage's fixed helpers (the face
model, a frozen SyncNet, the VGG / RAFT / AlexNet measures) are configuration, rebuilt from the config on
load; writing them into every checkpoint would bloat the files and tie them to one machine's weights.
`LearnedStateOnly` drops the submodules under `frozen_prefixes` when Lightning saves and puts the module's
own values back when it loads (so a strict load still fits). It also stores `run_config` (the resolved
`model`, `data` and `face_model` config of the run, plain values, which `task=train` sets) under
`checkpoint["run_config"]`, so that a checkpoint rebuilds its own networks wherever it is copied.

A `run_config` names classes by their import path (`_target_`). Classes that moved since a checkpoint was
written are found through `MOVED_TARGETS`, so checkpoints written before a move still load, dub and
animate.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

log = logging.getLogger(__name__)

# Classes that moved (issue 17: one folder per role), under lightning_modules: (old module, new module,
# class). `MOVED_TARGETS` maps each old `_target_` to the current one.
_MOVES = [
    ("stage1", "audio_to_expression", "AudioToExpressionModule"),
    ("stage2", "renderer.stage2", "RendererStage2"),
    ("stage3", "renderer.stage3", "RendererStage3"),
    ("stage4", "renderer.stage4", "RendererStage4"),
    ("teacher", "wav2lip_teacher", "Wav2LipTeacherModule"),
    ("motion", "motion.dit", "MotionDiffusionModule"),
    ("motion", "motion.emotion", "EmotionControlModule"),
    ("motion_classifier", "motion.judge", "EmotionClassifierModule"),
    ("optim", "common.optim", "Ranger"),
    ("networks.renderer", "networks.flow_net", "FlowNet"),
    ("networks.renderer", "networks.texture_net", "TextureNet"),
    ("networks.renderer", "networks.inpainting_net", "InpaintingNet"),
    ("networks.motion_classifier", "networks.emotion_classifier", "MotionEmotionClassifier"),
    ("dubbing", "inference.generators", "SynergyDubber"),
    ("dubbing", "inference.generators", "Wav2LipDubber"),
]
MOVED_TARGETS = {
    f"lightning_modules.{old}.{name}": f"lightning_modules.{new}.{name}" for old, new, name in _MOVES
}


def current_targets(node: Any) -> Any:
    """A plain config (dicts and lists) with every moved `_target_` replaced by its current path."""
    if isinstance(node, dict):
        return {
            key: MOVED_TARGETS.get(value, value) if key == "_target_" else current_targets(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [current_targets(value) for value in node]
    return node


def read_checkpoint(path: str | Path, what: str, hint: str = "train that stage first") -> dict[str, Any]:
    """A suite checkpoint's contents (read with weights_only=True), or FileNotFoundError naming `what` it
    was for and `hint` (how to make it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: checkpoint {path} not found; {hint}, or set the path")
    return torch.load(path, map_location="cpu", weights_only=True)


def run_config(checkpoint: str | Path) -> DictConfig:
    """The configuration a suite checkpoint was trained with: the `run_config` it carries (the resolved
    `model`, `data` and `face_model` nodes), or, for a checkpoint written before it carried one, its run
    directory's `.hydra/config.yaml`; moved classes under their current paths (`MOVED_TARGETS`)."""
    return _config_of(Path(checkpoint), read_checkpoint(checkpoint, "run config"))


def _config_of(checkpoint: Path, contents: dict[str, Any]) -> DictConfig:
    stored = contents.get("run_config")
    if stored is None:
        run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
        path = run_dir / ".hydra" / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"{checkpoint} carries no run_config and {path} is missing: the networks of a checkpoint "
                "are built from the configuration of the run that wrote it"
            )
        stored = OmegaConf.to_container(OmegaConf.load(path))
    return OmegaConf.create(current_targets(stored))


def load_trained_module(
    checkpoint: str | Path, device: str = "cpu", expected: type | None = None
) -> tuple[nn.Module, DictConfig]:
    """The LightningModule of a suite checkpoint, built from its run's `model` config (no previous-stage
    checkpoint is read: this file holds every network), in eval mode on `device`. Returns (module, run
    config). The training-only measures (VGG, RAFT, LPIPS) are not built. `expected`: the class the
    module must be (a clear error names the checkpoint otherwise)."""
    contents = read_checkpoint(checkpoint, "trained module")
    cfg = _config_of(Path(checkpoint), contents)
    with open_dict(cfg):
        if "init_checkpoint" in cfg.model:
            cfg.model.init_checkpoint = None
        if "weights_dir" in cfg.model:
            cfg.model.weights_dir = None
            for term in ("perceptual", "style", "correspondence"):
                if term in cfg.model.get("losses", {}):
                    cfg.model.losses[term] = 0.0
    with _quiet("lightning_modules.metrics.image"):
        module = hydra.utils.instantiate(cfg.model)
    if expected is not None and not isinstance(module, expected):
        raise ValueError(f"{checkpoint} is a {type(module).__name__} checkpoint, not a {expected.__name__}'s")
    state = contents["state_dict"]
    frozen = tuple(getattr(module, "frozen_prefixes", ()))
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.startswith(frozen)]
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint} does not fit the networks of its run's config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    log.info("loaded %s (%s)", checkpoint, type(module).__name__)
    return module.to(device).eval().requires_grad_(False), cfg


def load_networks(
    module: nn.Module,
    path: str | Path,
    what: str,
    prefixes: tuple[str, ...] | None = None,
    hint: str = "train that stage first (its last.ckpt)",
) -> None:
    """A previous stage's networks from its checkpoint into `module`, by attribute name.
    `prefixes=None`: every tensor the file holds must fit `module` (the keys the file lacks are the new
    stage's). `prefixes=(...)`: every learned tensor of `module` under them must be in the file, and only
    those are loaded. Shapes must match either way."""
    state = read_checkpoint(path, what, hint)["state_dict"]
    own = module.state_dict()
    if prefixes is None:
        keys = sorted(state)
        unknown = [key for key in keys if key not in own]
        if unknown:
            raise ValueError(f"{path} does not fit {type(module).__name__}: unexpected keys {unknown[:5]}")
    else:
        frozen = tuple(getattr(module, "frozen_prefixes", ()))
        keys = [key for key in own if key.startswith(prefixes) and not (frozen and key.startswith(frozen))]
        missing = [key for key in keys if key not in state]
        if missing:
            raise ValueError(
                f"{path} does not fit the configured {what} (configure it as it was trained): "
                f"missing {missing[:5]}"
            )
    wrong = [key for key in keys if state[key].shape != own[key].shape]
    if wrong:
        raise ValueError(f"{path}: shapes differ from the configured {what} for {wrong[:5]}")
    module.load_state_dict({key: state[key] for key in keys}, strict=False)
    log.info("%s: loaded %d tensors from %s", what, len(keys), path)


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


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a logger's warnings (LPIPS "is off" at inference, where no metric is computed)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)

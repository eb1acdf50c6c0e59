"""Hydra helpers: the config resolvers of conf/, one way to compose the suite's config outside `run.py`
(console scripts, tests, benchmarks), and instantiating dict-shaped groups."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_modules.common.runs import last_checkpoint_path

SUITE_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = SUITE_ROOT / "conf"


def last_checkpoint(experiment: str, run_name: str | None = None, *, _root_: DictConfig) -> str:
    """`${last_ckpt:EXPERIMENT}` (or `${last_ckpt:EXPERIMENT,RUN}`): the last.ckpt of that experiment's
    training run under this config's `paths.log_dir` (the deterministic run directory of conf/hydra)."""
    return str(last_checkpoint_path(_root_.paths.log_dir, experiment, run_name))


def register_resolvers() -> None:
    """Config resolvers used in conf/ (registered once, before Hydra composes)."""
    if not OmegaConf.has_resolver("stable_id"):
        # A W&B run id that is the same for the same run directory: resumes continue the W&B run.
        OmegaConf.register_new_resolver(
            "stable_id", lambda text: hashlib.sha1(str(text).encode()).hexdigest()[:12]
        )
    if not OmegaConf.has_resolver("gpus_per_node"):
        # SLURM GPUs per node follow the trainer: one per device on GPU, none on CPU.
        OmegaConf.register_new_resolver(
            "gpus_per_node", lambda accelerator, devices: int(devices) if accelerator == "gpu" else 0
        )
    if not OmegaConf.has_resolver("last_ckpt"):
        OmegaConf.register_new_resolver("last_ckpt", last_checkpoint)


def compose_config(
    overrides: list[str], output_dir: str | Path | None = None, hydra_config: bool = True
) -> DictConfig:
    """The suite's config composed as `python run.py OVERRIDES` would, with its run directory at
    `output_dir` (created; default: `<paths.log_dir>/<task>/cli`, a console script's). `hydra_config`:
    keep the `hydra` node and make it the current HydraConfig (what in-process training jobs read)."""
    os.environ.setdefault("SYNERGYDUB_ROOT", str(SUITE_ROOT))
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=hydra_config)
    if hydra_config:
        HydraConfig.instance().set_config(cfg)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir or Path(cfg.paths.log_dir) / str(cfg.task) / "cli")
    return cfg


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a dict-shaped config group (callbacks, logger)."""
    if not group:
        return []
    return [hydra.utils.instantiate(node) for node in group.values() if node and "_target_" in node]

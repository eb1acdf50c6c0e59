"""A run's files: `metrics.json` (what `python -m lightning_modules.tasks.report` tabulates), the training
run directory of an experiment, `ckpt_path=last` resolution, and closing the W&B run."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from datamodules.media.files import atomic_write

log = logging.getLogger(__name__)


def finish_wandb(failed: bool) -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


METRICS_FILE = "metrics.json"


# The config a checkpoint carries: its networks, its data (how its shards were made), its face model.
RUN_CONFIG_KEYS = ("model", "data", "face_model")


def write_metrics(
    cfg: DictConfig, metrics: dict[str, Any], global_step: int, switched_off: list[str] | None = None
) -> None:
    """The run's last logged metrics as `<run dir>/metrics.json` (with the experiment, the overrides, the
    step, and the loss terms and metrics a missing weights file switched off): what
    `python -m lightning_modules.tasks.report` tabulates over a sweep, without a logger."""
    record = {
        "experiment_name": cfg.experiment_name,
        "task": cfg.task,
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "global_step": int(global_step),
        "switched_off": list(switched_off or []),
        "metrics": {
            key: float(value) for key, value in sorted(metrics.items()) if torch.as_tensor(value).numel() == 1
        },
    }
    path = os.path.join(cfg.paths.output_dir, METRICS_FILE)
    with atomic_write(path) as handle:
        json.dump(record, handle, indent=1)


def last_checkpoint_path(log_dir: str | Path, experiment: str, run_name: str | None = None) -> Path:
    """The last.ckpt of an experiment's training run under `log_dir` (conf/hydra's deterministic run
    directory `train/<experiment>/<run_name>`; the run name defaults to the experiment's name)."""
    return Path(log_dir) / "train" / experiment / (run_name or experiment) / "checkpoints" / "last.ckpt"


def train_run_dir(cfg: DictConfig) -> Path:
    """Where the training run of this experiment and run name keeps its checkpoints: this run's own
    directory when training (a sweep job's too), else logs/train/<experiment_name>/<run_name>."""
    if cfg.task == "train":
        return Path(cfg.paths.output_dir)
    return Path(cfg.paths.log_dir) / "train" / str(cfg.experiment_name) / str(cfg.run_name)


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The most recently written checkpoint of a run: `checkpoints/*.ckpt` (last.ckpt, the best ones) or
    the `hpc_ckpt_*.ckpt` Lightning saves when SLURM signals a time limit."""
    candidates = [*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    return max(candidates, key=lambda path: path.stat().st_mtime) if candidates else None


def resolve_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint `ckpt_path` names. `last`: the newest checkpoint of this experiment's training run
    (whatever the task; a fresh start when training and there is none). Evaluating tasks need one."""
    evaluating = cfg.task in ("test", "validate", "predict")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        if evaluating:
            raise ValueError(
                f"task={cfg.task} needs a checkpoint to evaluate: ckpt_path=PATH, or ckpt_path=last for the "
                f"newest one of {train_run_dir(cfg)}"
            )
        return None
    if str(ckpt_path) == "last":
        run_dir = train_run_dir(cfg)
        found = newest_checkpoint(run_dir)
        if found is None:
            if evaluating:
                raise FileNotFoundError(
                    f"ckpt_path=last: no checkpoint in {run_dir} (checkpoints/*.ckpt or hpc_ckpt_*.ckpt); "
                    f"train it first (`python run.py experiment={cfg.experiment_name} "
                    f"run_name={cfg.run_name}`) or give ckpt_path=PATH"
                )
            log.info("ckpt_path=last: no checkpoint in %s yet, starting fresh", run_dir)
            return None
        log.info("ckpt_path=last: %s", found)
        return str(found)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return str(ckpt_path)

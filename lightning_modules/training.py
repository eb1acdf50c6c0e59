"""What `run.py` runs: the train / test / predict tasks and the data tasks, from one composed config.

Follows the lightning-hydra-template flow (instantiate data, model, callbacks, loggers, trainer from
config; return the optimised metric), with three of its known traps closed:
- run directories are deterministic (conf/hydra/default.yaml), so `ckpt_path=last` and a requeued
  SLURM job find the checkpoints of the run they continue;
- under a `-m` sweep, DDP child processes re-run *this job*, not the whole sweep
  (`_pin_ddp_children_to_this_job`);
- the W&B run is always finished, also when training raises, so an offline run directory is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


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


def run_task(cfg: DictConfig) -> float | None:
    """Dispatch on `cfg.task`; returns the optimised metric for train / test, None otherwise."""
    tasks: dict[str, Callable[[DictConfig], float | None]] = {
        "train": fit_and_evaluate,
        "test": fit_and_evaluate,
        "predict": fit_and_evaluate,
        "synthesize": _synthesize,
        "preprocess": _preprocess,
        "dub": _dub,
        "animate": _animate,
        "eval": _eval,
        "eval_motion": _eval_motion,
    }
    if cfg.task not in tasks:
        raise ValueError(f"task={cfg.task!r} is not one of {sorted(tasks)}")
    return tasks[cfg.task](cfg)


def _synthesize(cfg: DictConfig) -> None:
    from datamodules.synthetic import generate_corpus

    generate_corpus(cfg.data)


def _preprocess(cfg: DictConfig) -> None:
    from datamodules.preprocess import preprocess_corpus

    preprocess_corpus(cfg.data)


def _dub(cfg: DictConfig) -> None:
    from lightning_modules.dub import run_dub

    run_dub(cfg)


def _animate(cfg: DictConfig) -> None:
    from lightning_modules.animate import run_animate

    run_animate(cfg)


def _eval(cfg: DictConfig) -> None:
    from lightning_modules.evaluation import run_evaluation

    run_evaluation(cfg)


def _eval_motion(cfg: DictConfig) -> None:
    from lightning_modules.motion_evaluation import run_motion_evaluation

    run_motion_evaluation(cfg)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a dict-shaped config group (callbacks, logger)."""
    if not group:
        return []
    return [hydra.utils.instantiate(node) for node in group.values() if node and "_target_" in node]


def slurm_plugins() -> list[Any]:
    """Lightning owns SLURM requeue (see conf/hydra/launcher/slurm.yaml): it handles the SIGUSR2 that
    submitit's sbatch script asks for, saves an hpc checkpoint and requeues the job."""
    if SLURMEnvironment.detect():
        _free_requeue_signal(signal.SIGUSR2)
        return [SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR2)]
    return []


def _free_requeue_signal(signum: signal.Signals) -> None:
    """Lightning installs its requeue handler at `fit` only if the signal has none yet, and submitit's job
    runner has installed one (it would requeue the job to start over, without an hpc checkpoint, or not
    at all at a time limit with max_num_timeout 0): reset it so that Lightning's goes in."""
    previous = signal.getsignal(signum)
    if previous not in (signal.SIG_DFL, None):
        log.info("%s: dropping the handler %r, Lightning installs its own at fit", signum.name, previous)
        signal.signal(signum, signal.SIG_DFL)


def share_cpu_threads(trainer: L.Trainer) -> None:
    """N DDP ranks on the CPUs of one machine get cores // N torch threads each, instead of each
    taking every core (oversubscription makes small ops many times slower)."""
    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // trainer.num_devices))


def _release_distributed_state(environ_before: dict[str, str]) -> None:
    """Between the jobs of a sweep run in one process: close the DDP process group and drop the
    rendezvous variables Lightning set (MASTER_PORT, WORLD_SIZE, ...), so the next job's ranks meet
    on a fresh port instead of the last job's closed one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key in set(os.environ) - set(environ_before):
        del os.environ[key]


def _pin_ddp_children_to_this_job() -> None:
    """Lightning starts DDP ranks 1..N-1 by re-running `sys.argv` with `hydra.run.dir` set to the run
    dir. Inside a `-m` sweep that would re-run the whole sweep in fresh directories; so make argv the
    overrides of this job and the run dir this job's directory."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def log_hyperparameters(cfg: DictConfig, model: L.LightningModule, trainer: L.Trainer) -> None:
    """Send the whole resolved config and the parameter counts to every logger."""
    if not trainer.loggers:
        return
    params: dict[str, Any] = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in cfg.items()
        if key != "hydra"
    }
    params["params/total"] = sum(p.numel() for p in model.parameters())
    params["params/trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


def _finish_wandb(failed: bool) -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


METRICS_FILE = "metrics.json"
# The config a checkpoint carries: its networks, its data (how its shards were made), its face model.
RUN_CONFIG_KEYS = ("model", "data", "face_model")


def write_metrics(cfg: DictConfig, metrics: dict[str, Any], global_step: int) -> None:
    """The run's last logged metrics as `<run dir>/metrics.json` (with the experiment, the overrides and the
    step): what `python -m lightning_modules.report` tabulates over a sweep, without a logger."""
    record = {
        "experiment_name": cfg.experiment_name,
        "task": cfg.task,
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "global_step": int(global_step),
        "metrics": {
            key: float(value) for key, value in sorted(metrics.items()) if torch.as_tensor(value).numel() == 1
        },
    }
    path = os.path.join(cfg.paths.output_dir, METRICS_FILE)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(record, handle, indent=1)
    os.replace(tmp, path)


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
    evaluating = cfg.task in ("test", "predict")
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


def fit_and_evaluate(cfg: DictConfig) -> float | None:
    """`task=train` fits (then tests if `test_after_train`); `task=test` / `task=predict` evaluate the
    checkpoint in `ckpt_path` (`last`: the newest of the experiment's training run)."""
    environ_before = dict(os.environ)
    ckpt_path = resolve_checkpoint(cfg)
    L.seed_everything(cfg.seed, workers=True)
    _pin_ddp_children_to_this_job()

    log.info("data: %s | model: %s", cfg.data.get("_target_"), cfg.model.get("_target_"))
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: L.LightningModule = hydra.utils.instantiate(cfg.model)
    # What rebuilds these networks from the checkpoint alone (lightning_modules/checkpointing.py).
    model.run_config = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in RUN_CONFIG_KEYS}
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger")) or False,
        plugins=slurm_plugins() or None,
    )
    share_cpu_threads(trainer)
    environment = getattr(trainer.strategy, "cluster_environment", None)
    log.info(
        "rank %d of %d (cluster environment: %s)",
        trainer.global_rank,
        trainer.world_size,
        type(environment).__name__ if environment else "none",
    )
    failed = True
    try:
        log_hyperparameters(cfg, model, trainer)
        if cfg.task == "train":
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            train_metrics = dict(trainer.callback_metrics)
            if cfg.get("test_after_train"):
                best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
                trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
            metrics = {**train_metrics, **trainer.callback_metrics}
        elif cfg.task == "test":
            trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path)
            metrics = dict(trainer.callback_metrics)
        else:
            # The prediction writer callback (conf/callbacks/predictions.yaml) keeps them, not memory.
            trainer.predict(model, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)
            metrics = {}
        failed = False
    finally:
        _finish_wandb(failed)
        _release_distributed_state(environ_before)

    if trainer.is_global_zero:
        write_metrics(cfg, metrics, trainer.global_step)
    value = metrics.get(cfg.optimized_metric)
    if value is None:
        log.warning("optimized_metric %r was not logged (have: %s)", cfg.optimized_metric, sorted(metrics))
        return None
    log.info("optimized_metric %s = %.6g", cfg.optimized_metric, float(value))
    return float(value)

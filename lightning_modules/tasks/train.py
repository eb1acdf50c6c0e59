"""`task=train | validate | test | predict`: a LightningModule fitted or evaluated from one composed config.

Follows the lightning-hydra-template flow (instantiate data, model, callbacks, loggers, trainer from
config; return the optimised metric), with three of its known traps closed:
- run directories are deterministic (conf/hydra/default.yaml), so `ckpt_path=last` and a requeued
  SLURM job find the checkpoints of the run they continue;
- under a `-m` sweep, DDP child processes re-run *this job*, not the whole sweep
  (`_pin_ddp_children_to_this_job`);
- the W&B run is always finished, also when training raises, so an offline run directory is complete.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lightning_modules.common.config import instantiate_group
from lightning_modules.common.runs import RUN_CONFIG_KEYS, finish_wandb, resolve_checkpoint, write_metrics

log = logging.getLogger(__name__)


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
    """Send the whole resolved config, the parameter counts and what was switched off to every logger."""
    if not trainer.loggers:
        return
    params: dict[str, Any] = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in cfg.items()
        if key != "hydra"
    }
    params["params/total"] = sum(p.numel() for p in model.parameters())
    params["params/trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # What a missing weights file switched off (allow_missing_weights=true): the run's record says so.
    params["switched_off"] = list(getattr(model, "switched_off", []))
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


def fit_and_evaluate(cfg: DictConfig) -> float | None:
    """`task=train` fits (then tests if `test_after_train`); `task=validate` / `task=test` /
    `task=predict` evaluate the checkpoint in `ckpt_path` (`last`: the newest of the experiment's training
    run)."""
    environ_before = dict(os.environ)
    ckpt_path = resolve_checkpoint(cfg)
    L.seed_everything(cfg.seed, workers=True)
    _pin_ddp_children_to_this_job()

    log.info("data: %s | model: %s", cfg.data.get("_target_"), cfg.model.get("_target_"))
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: L.LightningModule = hydra.utils.instantiate(cfg.model)
    # What rebuilds these networks from the checkpoint alone (lightning_modules/common/checkpoints.py).
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
        elif cfg.task == "validate":
            trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path)
            metrics = dict(trainer.callback_metrics)
        else:
            # The prediction writer callback (conf/callbacks/predictions.yaml) keeps them, not memory.
            trainer.predict(model, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)
            metrics = {}
        failed = False
    finally:
        finish_wandb(failed)
        _release_distributed_state(environ_before)

    if trainer.is_global_zero:
        write_metrics(cfg, metrics, trainer.global_step, getattr(model, "switched_off", None))
    value = metrics.get(cfg.optimized_metric)
    if value is None:
        log.warning("optimized_metric %r was not logged (have: %s)", cfg.optimized_metric, sorted(metrics))
        return None
    log.info("optimized_metric %s = %.6g", cfg.optimized_metric, float(value))
    return float(value)

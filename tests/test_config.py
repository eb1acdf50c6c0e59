"""The config tree: every experiment composes and instantiates; launcher and run-dir bindings hold."""

from __future__ import annotations

import hydra
import lightning as L
import pytest
from omegaconf import OmegaConf

from lightning_modules.common.config import compose_config, instantiate_group
from tests.helpers import experiment_names


@pytest.mark.parametrize("experiment", experiment_names())
def test_every_experiment_composes_and_instantiates(experiment: str, tmp_path) -> None:
    cfg = compose_config([f"experiment={experiment}", f"paths.log_dir={tmp_path}"], tmp_path / "run")
    for key in cfg:  # every interpolation of the job's config resolves
        if key != "hydra" and OmegaConf.is_config(cfg[key]):
            OmegaConf.to_container(cfg[key], resolve=True)
    assert isinstance(hydra.utils.instantiate(cfg.data), L.LightningDataModule)
    assert isinstance(hydra.utils.instantiate(cfg.model), L.LightningModule)
    callbacks = instantiate_group(cfg.callbacks)
    loggers = instantiate_group(cfg.logger)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert isinstance(trainer, L.Trainer)
    assert cfg.experiment_name != "default", f"{experiment} should name itself (experiment_name)"


@pytest.mark.parametrize(
    ("trainer", "nodes", "tasks", "gpus"), [("ddp", 2, 8, 8), ("ddp_cpu", 1, 2, 0), ("fsdp", 2, 8, 8)]
)
def test_slurm_launcher_follows_the_trainer(
    trainer: str, nodes: int, tasks: int, gpus: int, tmp_path
) -> None:
    cfg = compose_config(
        [
            f"trainer={trainer}",
            f"trainer.num_nodes={nodes}",
            "hydra/launcher=slurm",
            f"paths.log_dir={tmp_path}",
        ],
        tmp_path / "run",
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (nodes, tasks, gpus)


def test_run_directory_is_deterministic(tmp_path) -> None:
    """No time stamp: a requeued job (or `ckpt_path=last`) must find the directory it wrote."""
    overrides = ["experiment=stage1", "run_name=abc", f"paths.log_dir={tmp_path}"]
    first = compose_config(overrides, tmp_path / "run").hydra.run.dir
    second = compose_config(overrides, tmp_path / "run").hydra.run.dir
    assert first == second == f"{tmp_path}/train/stage1/abc"

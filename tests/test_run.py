"""The suite run the way a user runs it: `python run.py ...` (or the same composed config in-process),
on the tiny synthetic corpus, with temporary run directories.

Covers fast_dev_run of every stage, bf16-mixed on CPU, a 2-process DDP run on CPU whose ranks see
disjoint samples, resume from last.ckpt, a `-m` sweep (with DDP inside it), and a W&B offline run.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import av
import lightning as L
import numpy as np
import pytest
import torch

from datamodules.shards import ShardReader
from lightning_modules.common.config import compose_config
from lightning_modules.tasks.dispatch import run_task
from tests.helpers import QUIET, TINY_STAGE1, instantiate_quietly, run_cli, wandb_history_keys, wandb_records


@pytest.fixture(scope="module")
def random_syncnet_expert(tmp_path_factory) -> Path:
    """A SyncNet expert file in the official `lipsync_expert.pth` layout, randomly initialised and a
    quarter wide (`load_syncnet` reads the width from the file; the teacher's runs need a frozen expert,
    training one is test_syncnet's business)."""
    from lightning_modules.networks.syncnet import SyncNet

    path = tmp_path_factory.mktemp("weights") / "lipsync_expert.pth"
    torch.save({"state_dict": SyncNet(width=0.25).state_dict()}, path)
    return path


def stage_overrides(stage: str, expert: Path) -> list[str]:
    return {
        "stage1": TINY_STAGE1,
        # SyncNet's BatchNorm acts on 1x1 features: two clips per batch at least.
        "syncnet": ["data.batch_size=2", "model.net.width=0.25"],
        "teacher": ["data.batch_size=1", "model.generator.width=0.25", f"model.syncnet_checkpoint={expert}"],
    }[stage]


def read_ledger(run_dir: Path, prefix: str = "") -> dict[int, list[dict]]:
    ledger: dict[int, list[dict]] = {}
    for path in sorted((run_dir / "sample_ledger").glob(f"{prefix}rank*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        ledger[records[0]["rank"]] = records
    return ledger


def read_run_metrics(run_dir: Path) -> dict:
    """The run's metrics.json (`write_metrics`), its values checked finite."""
    record = json.loads((run_dir / "metrics.json").read_text())
    metrics = record["metrics"]
    assert metrics, f"{run_dir / 'metrics.json'} holds no metrics"
    not_finite = {key: value for key, value in metrics.items() if not math.isfinite(value)}
    assert not not_finite, f"logged values that are not finite: {not_finite}"
    return record


@pytest.fixture
def fitted_modules(monkeypatch) -> list[tuple[L.LightningModule, dict[str, torch.Tensor]]]:
    """(module, its parameters as they were when `Trainer.fit` got it) of every fit in the test."""
    fitted = []
    fit = L.Trainer.fit

    def recording_fit(trainer: L.Trainer, model: L.LightningModule, *args, **kwargs):
        fitted.append((model, {name: p.detach().clone() for name, p in model.named_parameters()}))
        return fit(trainer, model, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "fit", recording_fit)
    return fitted


# What each stage validates (lightning_modules/audio_to_expression.py, syncnet.py, wav2lip_teacher.py).
STAGE_VALIDATION_METRICS = {
    "stage1": {"val/loss", "val/loss_exp", "val/loss_shape", "val/aed", "val/lmd", "val/lmd_mouth"},
    "syncnet": {"val/loss", "val/acc", "val/separation", "val/auc", "val/sync_conf", "val/sync_offset"},
    "teacher": {"val/loss", "val/l1", "val/sync"},
}


@pytest.mark.parametrize("stage", ["stage1", "syncnet", "teacher"])
def test_fast_dev_run_of_every_stage(
    stage: str, corpus_args, random_syncnet_expert, fitted_modules, tmp_path
) -> None:
    """One training step and one validation batch: metrics.json holds the stage's finite training loss and
    validation metrics, the value returned is the optimised val/loss, and the step moved the parameters
    the optimiser holds (and none it does not)."""
    cfg = compose_config(
        [f"experiment={stage}", "debug=fdr", "logger=csv", f"paths.log_dir={tmp_path}", *QUIET]
        + corpus_args
        + stage_overrides(stage, random_syncnet_expert),
        tmp_path / "run",
    )
    value = run_task(cfg)  # raises on any failure

    record = read_run_metrics(tmp_path / "run")
    metrics = record["metrics"]
    assert record["task"] == "train" and record["experiment_name"] == stage
    assert record["global_step"] == 1, "fast_dev_run takes exactly one training step"
    assert "train/loss" in metrics, sorted(metrics)
    assert metrics["train/loss"] > 0
    missing = STAGE_VALIDATION_METRICS[stage] - set(metrics)
    assert not missing, f"validation metrics not logged: {sorted(missing)} (have {sorted(metrics)})"
    assert cfg.optimized_metric == "val/loss"
    assert value is not None and value == pytest.approx(metrics["val/loss"], rel=1e-6)

    assert len(fitted_modules) == 1
    model, initial = fitted_modules[0]
    optimised = {
        id(p) for optimizer in model.trainer.optimizers for g in optimizer.param_groups for p in g["params"]
    }
    assert optimised, "the stage has no optimiser parameters"
    moved, still, frozen_moved = [], [], []
    for name, parameter in model.named_parameters():
        if name not in initial:  # built in setup() (the teacher's expert): not there when fit began
            continue
        changed = not torch.equal(parameter.detach(), initial[name])
        if id(parameter) in optimised:
            (moved if changed else still).append(name)
        elif changed:
            frozen_moved.append(name)
    assert moved, f"the training step changed none of the optimised parameters ({len(still)})"
    assert len(moved) >= len(still), f"most optimised parameters did not move: {still}"
    assert not frozen_moved, f"parameters outside the optimiser changed: {frozen_moved}"


def test_bf16_mixed_on_cpu(corpus_args, tmp_path) -> None:
    cfg = compose_config(
        [
            "experiment=stage1",
            "debug=fdr",
            "logger=csv",
            "trainer.precision=bf16-mixed",
            f"paths.log_dir={tmp_path}",
        ]
        + QUIET
        + corpus_args
        + TINY_STAGE1,
        tmp_path / "run",
    )
    loss = run_task(cfg)  # the validation loss of the one fast_dev_run batch
    assert loss is not None and math.isfinite(loss)


def test_ddp_cpu_two_ranks_see_disjoint_samples(corpus_args, tiny_corpus, tmp_path) -> None:
    """Two gloo ranks: training samples disjoint across ranks (one draw of each clip an epoch: disjoint
    clips); validation scores every window of every validation clip exactly once between them (no rank
    repeats one, none is dropped)."""
    from datamodules.datasets import window_starts

    run_cli(
        [
            "experiment=stage1",
            "trainer=ddp_cpu",
            "callbacks=ledger",
            "logger=csv",
            "run_name=ddp",
            "debug=limit",
        ]
        + ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=null"]
        + [f"paths.log_dir={tmp_path}", *QUIET]
        + corpus_args
        + TINY_STAGE1
    )
    run_dir = tmp_path / "train" / "stage1" / "ddp"
    ledger = read_ledger(run_dir)
    assert sorted(ledger) == [0, 1], f"expected ranks 0 and 1, got {sorted(ledger)}"
    seen = [{s for record in ledger[rank] for s in record["samples"]} for rank in (0, 1)]
    assert seen[0] and seen[1]
    clips = [{s.split("@")[0] for s in rank_seen} for rank_seen in seen]
    assert not clips[0] & clips[1], f"ranks shared clips: {clips[0] & clips[1]}"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()

    validated = read_ledger(run_dir, "val_")
    assert sorted(validated) == [0, 1] and all(validated.values())
    scored = [s for rank in (0, 1) for record in validated[rank] for s in record["samples"]]
    window = int(next(a for a in TINY_STAGE1 if a.startswith("data.window_frames=")).split("=")[1])
    expected = [
        f"{clip['clip_id']}@{start}"
        for clip in ShardReader(tiny_corpus.shard_dir / "val")
        for start in window_starts(clip["num_frames"], window)
    ]
    assert sorted(scored) == sorted(expected) and len(expected) >= 2


def test_resume_from_last_checkpoint_continues_the_global_step(corpus_args, tmp_path) -> None:
    common = [
        "experiment=stage1",
        "callbacks=ledger",
        "logger=csv",
        "run_name=resume",
        f"paths.log_dir={tmp_path}",
    ]
    common += ["trainer.limit_val_batches=1", "callbacks.model_checkpoint.every_n_train_steps=3", *QUIET]
    common += corpus_args + TINY_STAGE1
    run_cli([*common, "trainer.max_steps=3"])
    run_dir = tmp_path / "train" / "stage1" / "resume"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3

    run_cli([*common, "trainer.max_steps=5", "ckpt_path=last"])
    steps = [record["step"] for record in read_ledger(run_dir)[0]]
    assert steps == [1, 2, 3, 4, 5], f"the resumed run should go on from step 3, got steps {steps}"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 5


@pytest.mark.slow  # a training run, then test and predict with their renders: some 25 s
def test_test_and_predict_tasks_evaluate_a_trained_checkpoint(corpus_args, tiny_corpus, tmp_path) -> None:
    """`ckpt_path=last` finds the training run's newest checkpoint from task=test and task=predict (their run
    directories hold none); predict writes every test clip whole, as .npz and as a rendered mp4."""
    common = ["experiment=stage1", "logger=csv", "run_name=eval", f"paths.log_dir={tmp_path}", *QUIET]
    common += corpus_args + TINY_STAGE1
    with pytest.raises(ValueError, match="task=test needs a checkpoint"):
        run_task(compose_config([*common, "task=test"], tmp_path / "no_checkpoint"))
    with pytest.raises(FileNotFoundError, match="ckpt_path=last: no checkpoint in"):
        run_task(compose_config([*common, "task=test", "ckpt_path=last"], tmp_path / "no_checkpoint"))

    run_cli([*common, "trainer.max_steps=2", "model.optimizer.lr=0.05"])
    checkpoint = tmp_path / "train" / "stage1" / "eval" / "checkpoints" / "last.ckpt"
    aed = {}
    for name, path in (("explicit", checkpoint), ("last", "last")):
        tested = run_cli([*common, "task=test", f"ckpt_path={path}", "optimized_metric=test/aed"])
        aed[name] = float(re.search(r"optimized_metric test/aed = ([0-9.e+-]+)", tested.stdout).group(1))
    assert aed["last"] == aed["explicit"]
    # the same network untrained scores otherwise: the trained weights were evaluated
    datamodule, model, trainer = instantiate_quietly(compose_config([*common, "task=test"], tmp_path / "x"))
    untrained = trainer.test(model, datamodule=datamodule, verbose=False)[0]["test/aed"]
    assert untrained != pytest.approx(aed["last"], rel=1e-3)
    assert (
        "test/aed_mean_baseline"
        in (tmp_path / "test" / "stage1" / "eval" / "csv" / "metrics.csv").read_text()
    )

    run_cli([*common, "task=predict", "ckpt_path=last", "callbacks.predictions.render_video=true"])
    out = tmp_path / "predict" / "stage1" / "eval" / "predictions"
    test_clips = list(ShardReader(tiny_corpus.shard_dir / "test"))
    for clip in test_clips:
        stem = clip["clip_id"].replace("/", "__")
        saved = np.load(out / f"{stem}.npz")
        assert saved["expression"].shape == (clip["num_frames"], 64)
        np.testing.assert_allclose(saved["coeffs_true"], clip["coeffs"])
        np.testing.assert_allclose(saved["coeffs"][:, 80:144], saved["expression"])
        with av.open(str(out / f"{stem}.mp4")) as video:
            assert video.streams.video[0].frames == clip["num_frames"] and video.streams.audio


@pytest.mark.parametrize(("stage", "metric"), [("syncnet", "test/auc"), ("teacher", "test/l1")])
def test_expert_and_teacher_evaluate_a_trained_checkpoint(
    stage: str, metric: str, corpus_args, random_syncnet_expert, tmp_path
) -> None:
    """`task=test` on a checkpoint of the lip-sync expert and of the teacher; each run's metrics.json holds
    what it logged."""
    common = [f"experiment={stage}", "logger=csv", f"paths.log_dir={tmp_path}", *QUIET, *corpus_args]
    common += stage_overrides(stage, random_syncnet_expert)
    run_task(compose_config([*common, "trainer.max_steps=1"], tmp_path / "train"))
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert trained["task"] == "train" and trained["global_step"] == 1 and "train/loss" in trained["metrics"]
    checkpoint = tmp_path / "train" / "checkpoints" / "last.ckpt"
    run_task(compose_config([*common, "task=test", f"ckpt_path={checkpoint}"], tmp_path / "test"))
    tested = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert tested["task"] == "test" and tested["experiment_name"] == stage
    assert 0.0 <= tested["metrics"][metric] < float("inf")


def test_sweep_with_ddp_inside_yields_one_run_per_job(corpus_args, tmp_path) -> None:
    """`-m` over two learning rates with 2 DDP ranks per job: two job directories, each with its
    metric, and no stray directories from the DDP child processes (the lightning-hydra-template trap).
    The tiny corpus has one validation clip, which DDP cannot split over 2 ranks: the sweep optimises
    the training loss."""
    run_cli(
        ["-m", "experiment=stage1", "model.optimizer.lr=1e-3,2e-3", "trainer=ddp_cpu", "logger=csv"]
        + [
            "run_name=sweep",
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=1",
            "optimized_metric=train/loss",
        ]
        + [f"paths.log_dir={tmp_path}", *QUIET]
        + corpus_args
        + TINY_STAGE1
    )
    stage_dir = tmp_path / "train" / "stage1"
    assert sorted(p.name for p in stage_dir.iterdir()) == ["sweep_sweep"]
    sweep_dir = stage_dir / "sweep_sweep"
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    for job, lr in zip(jobs, ("0.001", "0.002")):
        assert f"model.optimizer.lr={lr}" in (sweep_dir / job / ".hydra" / "overrides.yaml").read_text()
        assert re.search(
            r"optimized_metric train/loss = [0-9.e+-]+", (sweep_dir / job / "train.log").read_text()
        )
        assert "train/loss" in (sweep_dir / job / "csv" / "metrics.csv").read_text().splitlines()[0]


def test_wandb_offline_run_directory_holds_the_logged_metrics(corpus_args, tmp_path) -> None:
    run_cli(
        ["experiment=stage1", "logger=wandb", "run_name=wb", "debug=limit", "trainer.max_epochs=1"]
        + ["trainer.log_every_n_steps=1", "callbacks.a2e_media.every_n_epochs=1", f"paths.log_dir={tmp_path}"]
        + QUIET
        + corpus_args
        + TINY_STAGE1,
        env={"WANDB_SILENT": "true"},
    )
    run_dir = tmp_path / "train" / "stage1" / "wb"
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, f"expected one offline run in {run_dir / 'wandb'}"
    records = wandb_records(next(offline_runs[0].glob("run-*.wandb")))
    history = wandb_history_keys(records)
    config = {update.key for r in records if r.HasField("config") for update in r.config.update}
    run = next(r.run for r in records if r.HasField("run"))
    assert {"train/loss", "val/loss", "val/aed", "val/aed_mean_baseline"} <= history, sorted(history)
    assert {"experiment_name", "model", "data", "params/total"} <= config
    assert (run.project, run.run_group, run.display_name, run.job_type) == (
        "synergydub",
        "stage1",
        "wb",
        "train",
    )
    assert "stage1" in run.tags
    assert list((offline_runs[0] / "files" / "media" / "videos").rglob("*.mp4")), "no validation video panel"


def test_optuna_sweep_records_the_best_of_its_trials(corpus_args, tmp_path) -> None:
    """`hydra/sweeper=stage1_optuna`: two trials of its stage-1 space (lr, lambda_shape), one job directory
    each with its metrics.json, and the study's best value in optimization_results.yaml is the lowest
    trial's optimized_metric (the sweeper sets it to val/lmd_mouth)."""
    from omegaconf import OmegaConf

    run_cli(
        ["-m", "hydra/sweeper=stage1_optuna", "hydra.sweeper.n_trials=2", "experiment=stage1", "logger=csv"]
        + ["run_name=optuna", "trainer.max_steps=2", "trainer.limit_val_batches=1"]
        + ["callbacks.a2e_media=null", f"paths.log_dir={tmp_path}", *QUIET]
        + corpus_args
        + TINY_STAGE1
    )
    sweep_dir = tmp_path / "train" / "stage1" / "optuna_sweep"
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    values, trials = [], []
    for job in jobs:
        record = json.loads((sweep_dir / job / "metrics.json").read_text())
        overrides = dict(o.split("=", 1) for o in record["overrides"])
        values.append(record["metrics"][overrides["optimized_metric"]])
        trials.append({k: float(overrides[k]) for k in ("model.optimizer.lr", "model.lambda_shape")})
        assert 1e-5 <= trials[-1]["model.optimizer.lr"] <= 1e-3
        assert 0.1 <= trials[-1]["model.lambda_shape"] <= 1.0
    assert trials[0] != trials[1], "the two trials should sample different parameters"
    assert overrides["optimized_metric"] == "val/lmd_mouth"
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert set(results.best_params) == {"model.optimizer.lr", "model.lambda_shape"}
    assert results.best_value == pytest.approx(min(values), rel=1e-9), (results.best_value, values)


def readme_experiments() -> list[str]:
    """Every `experiment=...` of a `python run.py` command in the README's shell blocks."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = [line for block in blocks for line in block.splitlines() if "python run.py" in line]
    return sorted({name for line in commands for name in re.findall(r"experiment=([\w/]+)", line)})


@pytest.mark.parametrize("experiment", readme_experiments())
def test_every_experiment_the_readme_shows_runs_on_the_synthetic_corpus(
    experiment: str, corpus_args, random_syncnet_expert, tmp_path
) -> None:
    """`debug=fdr` of each experiment the README shows, at its own (paper or demo) size, on the synthetic
    corpus (the tiny one, which carries semantic images); what would build on another run's checkpoint
    (stages 3 and 4, the emotion stage's DiT, the teacher's expert) starts from fresh networks or a random
    expert here. Training draws enough windows of each clip to fill its batch."""
    overrides = [f"experiment={experiment}", "debug=fdr", "logger=csv", f"paths.log_dir={tmp_path}", *QUIET]
    # The renderers' paper recipes stop without the VGG-19 / RAFT / AlexNet files, which no test downloads.
    overrides += [*corpus_args, "data.examples_per_clip=32", "allow_missing_weights=true"]
    if "stage3" in experiment or "stage4" in experiment or "motion_emotion" in experiment:
        overrides.append("model.init_checkpoint=null")
    if experiment == "teacher":
        overrides.append(f"model.syncnet_checkpoint={random_syncnet_expert}")
    cfg = compose_config(overrides, tmp_path / "run")
    value = run_task(cfg)

    record = read_run_metrics(tmp_path / "run")  # every logged value finite
    metrics = record["metrics"]
    # One training batch: one optimiser step, two where a critic has its own (the renderers' GAN term).
    assert record["task"] == "train" and record["global_step"] in (1, 2), record["global_step"]
    # Every experiment's LightningModule logs its training objective as train/loss.
    assert "train/loss" in metrics, f"{experiment}: no train/loss in {sorted(metrics)}"
    assert any(key.startswith("val/") for key in metrics), f"{experiment}: no validation metric logged"
    if value is not None:  # the optimised metric, when this fast_dev_run logs it
        assert value == pytest.approx(metrics[cfg.optimized_metric], rel=1e-6)

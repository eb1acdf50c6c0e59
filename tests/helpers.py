"""Shared by the tests that run the suite the way a user does: composed configs and `python run.py`."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
os.environ.setdefault("SYNERGYDUB_ROOT", str(ROOT))


# Overrides that make a run.py training job a few steps of plumbing: what the dubbing and animation tests
# train their real checkpoints with (tests/conftest.py `tiny_chain`, `tiny_motion`).
SHORT = [
    "logger=csv",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    "trainer.max_steps=2",
    "trainer.limit_val_batches=1",
    "trainer.check_val_every_n_epoch=1",
    "data.examples_per_clip=1",
    "data.batch_size=2",
]


@dataclass(frozen=True)
class Chain:
    """The checkpoints of the dubbing pipeline trained on the tiny corpus (`tiny_chain`)."""

    a2e: Path
    renderer: Path
    wav2lip: Path
    log_dir: Path


@dataclass(frozen=True)
class MotionCheckpoints:
    """The motion DiT and its emotion stage trained on the tiny corpus (`tiny_motion`)."""

    dit: Path
    emotion: Path


def experiment_names() -> list[str]:
    """Every experiment config, e.g. `stage1`, `ablation/a2e_no_shape`."""
    return sorted(
        str(p.relative_to(CONF_DIR / "experiment").with_suffix(""))
        for p in (CONF_DIR / "experiment").rglob("*.yaml")
    )


def instantiate_quietly(cfg: DictConfig) -> tuple[Any, Any, Any]:
    """(datamodule, module, trainer) of a composed config, the trainer without loggers, callbacks,
    checkpoints, sanity check or progress bar: for tests that train and read `trainer.callback_metrics`."""
    import hydra

    trainer = hydra.utils.instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[],
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    return hydra.utils.instantiate(cfg.data), hydra.utils.instantiate(cfg.model), trainer


def run_cli(
    args: list[str], timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python run.py ARGS` in a subprocess; fails the test with the output's tail if it fails."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"run.py {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
            f"--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def wandb_records(path: Path, timeout: float = 60.0) -> list:
    """The records of a finished offline W&B run file (`run-<id>.wandb`), read once its `exit` record is
    on disk: wandb-core (0.31) may still be flushing the file when `wandb.finish()` returns in-process."""
    deadline = time.monotonic() + timeout
    while True:
        records = _read_wandb_records(path)
        if any(record.HasField("exit") for record in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no exit record after {timeout:.0f} s: the run never finished")
        time.sleep(0.5)


def _read_wandb_records(path: Path) -> list:
    """The records of an offline W&B run file: LevelDB-log framing (32 KiB blocks, 7-byte record headers:
    checksum, length, type) after a 7-byte `:W&B` header, each record one `wandb_internal_pb2.Record` --
    what `wandb sync` uploads."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, position, pending, payloads = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # the rest of a block too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 or position + 7 + length > len(data):  # the end, or a record still being written
            break
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            payloads.append(pending)
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def wandb_history_keys(records: list) -> set[str]:
    """The top-level keys of the history rows of W&B run records: a media item (an image grid) is
    stored as nested keys under its name (`val/renderer` -> `_type`, `filenames`, ...)."""
    return {
        item.key or item.nested_key[0]
        for record in records
        if record.HasField("history")
        for item in record.history.item
    }


# Stage-1 networks at test size: the real architecture with narrow layers (CPU, 2 cores).
TINY_STAGE1 = [
    "model.net.mfcc_channels=[8,8,16,16,16]",
    "model.net.mfcc_hidden_dim=32",
    "model.net.image_channels=[8,8,16,16,16]",
    "model.net.audio_dim=32",
    "model.net.visual_dim=32",
    "model.net.model_dim=32",
    "model.net.lstm_hidden=32",
    "data.window_frames=8",
    # The tiny corpus has 2 training clips, one window each per epoch: 1 per rank under 2-process DDP.
    "data.examples_per_clip=1",
    "data.batch_size=1",
]


QUIET = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null"]


# The motion DiT at test size on the tiny corpus's 30-frame clips: windows of 16 frames (sampling joins
# windows), a few sampling steps, no sampled validation.
TINY_MOTION = [
    "data=synthetic",  # the tiny corpus (the demos train on data=synthetic_emotion)
    "data.window_frames=16",
    "model.net.model_dim=32",
    "model.net.depth=2",
    "model.net.heads=2",
    "model.net.audio_feature_dim=16",
    "model.net.audio_channels=[4,8]",
    "model.net.audio_hidden_dim=16",
    "model.sampling.steps=3",
    "model.sampling.overlap_frames=4",
    "model.validation.steps=3",
]
# The emotion controller at the tiny DiT's size (`tiny_motion`).
TINY_EMOTION = ["model.controller.hidden_dim=16", "model.controller.heads=2"]

"""Numbers that do not depend on the number of ranks: one checkpoint of each LightningModule validated in one
process and in 2 gloo DDP ranks (`python run.py task=validate`, as a user runs it) logs the same value of
every `val/*`, to float tolerance. Each rank scores a different share of the validation windows, in other
batches: the values agree only if every metric sums over samples and ranks, and every random draw of an
evaluation is seeded by its sample (the motion DiT's noise, its sampled windows)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lightning_modules.common.config import compose_config
from lightning_modules.tasks.dispatch import run_task
from tests.helpers import QUIET, SHORT, TINY_EMOTION, TINY_MOTION, run_cli

EXPERT = ["data.batch_size=2", "model.net.width=0.25"]


def validated(experiment: str, checkpoint: Path, overrides: list[str], trainer: str, log_dir: Path) -> dict:
    run_cli(
        [
            "task=validate",
            f"experiment={experiment}",
            f"ckpt_path={checkpoint}",
            f"trainer={trainer}",
            f"run_name={trainer}",
            "logger=csv",
            f"paths.log_dir={log_dir}",
            "trainer.limit_val_batches=null",
            "data.batch_size=2",
            *QUIET,
            *overrides,
        ]
    )
    record = json.loads((log_dir / "validate" / experiment / trainer / "metrics.json").read_text())
    return {key: value for key, value in record["metrics"].items() if key.startswith("val/")}


@pytest.mark.slow
def test_every_module_logs_the_same_validation_values_on_one_and_two_ranks(
    tiny_chain, tiny_motion, corpus_args, tmp_path
) -> None:
    expert_dir = tmp_path / "expert"
    run_task(compose_config(["experiment=syncnet", *SHORT, *corpus_args, *EXPERT], expert_dir))
    cases = {
        # The tiny corpus has one validation clip: windows shorter than the demos' whole-clip ones give each
        # rank some.
        "stage 1": ("demo", tiny_chain.a2e, ["callbacks.a2e_media=null", "data.eval_window_frames=8"]),
        "renderer": ("demo_stage4", tiny_chain.renderer, ["callbacks.renderer_media=null"]),
        "expert": ("syncnet", expert_dir / "checkpoints" / "last.ckpt", EXPERT),
        "teacher": ("demo_wav2lip", tiny_chain.wav2lip, []),
        "motion DiT": (
            "demo_motion_diffusion",
            tiny_motion.dit,
            [*TINY_MOTION, "data.eval_window_frames=16"],
        ),
        "emotion stage": (
            "demo_motion_emotion",
            tiny_motion.emotion,
            [*TINY_MOTION, *TINY_EMOTION, "data.eval_window_frames=16"],
        ),
    }
    table = []
    for name, (experiment, checkpoint, overrides) in cases.items():
        overrides = [*corpus_args, *overrides]
        one = validated(experiment, checkpoint, overrides, "cpu", tmp_path / name.replace(" ", "_"))
        two = validated(experiment, checkpoint, overrides, "ddp_cpu", tmp_path / name.replace(" ", "_"))
        assert one and sorted(one) == sorted(two), (name, sorted(one), sorted(two))
        for key in one:
            # A rank statistic (AUC) moves by one discordant pair when float rounding, which differs with
            # the batch's size, reorders two nearly equal scores of the random expert: 1 / (positives x
            # negatives) of its validation pairs, about 2e-4 here.
            tolerance = 1e-3 if key.endswith("auc") else 1e-6
            same = math.isclose(one[key], two[key], rel_tol=1e-4, abs_tol=tolerance)
            table.append(
                f"{name:14s} {key:28s} {one[key]:<12.6g} {two[key]:<12.6g} {'' if same else 'DIFFERS'}"
            )
    print("\n".join(table))
    assert not [row for row in table if row.endswith("DIFFERS")], "\n".join(table)

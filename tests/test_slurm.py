"""A real SLURM run: a private single-node cluster on loopback, `python run.py -m hydra/launcher=slurm
trainer=ddp_cpu ...` submitted through submitit, two ranks under Lightning's SLURM environment."""

from __future__ import annotations

import re

import pytest

from tests.helpers import run_cli
from tests.slurm_cluster import local_slurm_cluster, missing_programs
from tests.test_run import QUIET, TINY_STAGE1

pytestmark = pytest.mark.slurm


@pytest.mark.skipif(
    bool(missing_programs()),
    reason=f"needs slurm-wlm and munge (`make system-deps`): missing {missing_programs()}",
)
def test_slurm_launcher_runs_two_ddp_ranks(corpus_args, tmp_path) -> None:
    with local_slurm_cluster(tmp_path / "slurm") as env:
        run_cli(
            [
                "-m",
                "hydra/launcher=slurm",
                "trainer=ddp_cpu",
                "experiment=stage1",
                "logger=csv",
                "run_name=slurm",
            ]
            + ["hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15", "debug=limit"]
            + ["trainer.max_epochs=1", "trainer.limit_train_batches=2", f"paths.log_dir={tmp_path / 'logs'}"]
            + QUIET
            + corpus_args
            + TINY_STAGE1,
            env=env,
            timeout=900,
        )
    sweep_dir = tmp_path / "logs" / "train" / "stage1" / "slurm_sweep"
    task_logs = sorted((sweep_dir / ".submitit").glob("*/*_log.out"))
    text = "\n".join(path.read_text() for path in task_logs)
    ranks = sorted(set(re.findall(r"rank (\d) of 2 \(cluster environment: SLURMEnvironment\)", text)))
    for line in text.splitlines():
        if "cluster environment" in line:
            print(line)
    assert ranks == ["0", "1"], (
        f"expected ranks 0 and 1 under SLURMEnvironment in {task_logs}:\n{text[-3000:]}"
    )
    assert (sweep_dir / "0" / "checkpoints" / "last.ckpt").exists()

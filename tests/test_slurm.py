"""Real SLURM runs on a private single-node cluster on loopback, submitted through submitit by
`python run.py -m hydra/launcher=slurm ...`: two DDP ranks under Lightning's SLURM environment, and a
job that gets the time-limit signal mid-run, is requeued and resumes from its hpc checkpoint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from tests.helpers import QUIET, ROOT, TINY_STAGE1, run_cli
from tests.slurm_cluster import job_ids, job_info, local_slurm_cluster, missing_programs

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        bool(missing_programs()),
        reason=f"needs slurm-wlm and munge (`make system-deps`): missing {missing_programs()}",
    ),
]


class Pace(L.Callback):
    """Sleeps after every training step: a run on the tiny corpus then lasts long enough for a signal
    sent after a few steps to arrive mid-run (`+callbacks.pace._target_=tests.test_slurm.Pace`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(self.seconds)


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


MAX_STEPS = 10


def _wait_until(condition: Callable[[], bool], timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:]
            raise AssertionError(f"no {what} within {timeout_s:.0f} s; client output:\n{tail}")
        time.sleep(0.5)


def _ledger_steps(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.slow  # a paced training run, signalled and requeued: some 30 s
def test_time_limit_signal_requeues_and_resumes_from_the_hpc_checkpoint(corpus_args, tmp_path) -> None:
    """SIGUSR2 sent to the job steps mid-run, as SLURM does `signal_delay_s` before the time limit
    (`scancel --signal=USR2` without `--batch` signals the steps, i.e. the srun task, not the batch
    shell): Lightning saves an hpc checkpoint in the run directory and requeues the job, which runs again
    under the same id in the same directory and goes on from the checkpoint's step to max_steps."""
    sweep_dir = tmp_path / "logs" / "train" / "stage1" / "requeue_sweep"
    run_dir = sweep_dir / "0"
    ledger = run_dir / "sample_ledger" / "rank0.jsonl"
    args = ["-m", "hydra/launcher=slurm", "trainer=cpu", "experiment=stage1", "run_name=requeue"]
    args += ["hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15", "logger=csv"]
    args += ["callbacks=ledger", "callbacks.a2e_media=null"]
    args += [f"trainer.max_steps={MAX_STEPS}", "trainer.limit_val_batches=1"]
    args += ["+callbacks.pace._target_=tests.test_slurm.Pace", "+callbacks.pace.seconds=0.5"]
    args += [f"paths.log_dir={tmp_path / 'logs'}", *QUIET, *corpus_args, *TINY_STAGE1]
    client_log = tmp_path / "client.log"
    with local_slurm_cluster(tmp_path / "slurm") as env, client_log.open("w") as out:
        client = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *args],
            cwd=ROOT,
            env={**env, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until(
                lambda: len(_ledger_steps(ledger)) >= 3 or client.poll() is not None,
                timeout_s=90,
                what="three training steps",
                log=client_log,
            )
            assert client.poll() is None, f"the client exited early:\n{client_log.read_text()[-4000:]}"
            (job_id,) = job_ids(env)
            subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True)
            client.wait(timeout=120)
            # The client returns once the job's result file is written; slurmctld may still show the
            # job RUNNING (its epilog) for a moment on a loaded machine.
            _wait_until(
                lambda: job_info(job_id, env).get("JobState") not in ("RUNNING", "COMPLETING"),
                timeout_s=60,
                what="end of the job in slurmctld",
                log=client_log,
            )
            info = job_info(job_id, env)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    assert client.returncode == 0, f"run.py exited {client.returncode}:\n{client_log.read_text()[-4000:]}"
    assert (info.get("JobState"), info.get("Restarts")) == ("COMPLETED", "1"), info

    hpc = sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert hpc, f"no hpc checkpoint in {run_dir}: {sorted(p.name for p in run_dir.iterdir())}"
    resumed_from = torch.load(hpc[-1], map_location="cpu", weights_only=False)["global_step"]
    steps = _ledger_steps(ledger)
    # The first run trains on until SLURM's SIGTERM ends it (a step or so past the checkpoint); the
    # requeued run's steps are the last MAX_STEPS - resumed_from records.
    restart = len(steps) - (MAX_STEPS - resumed_from)
    assert 3 <= resumed_from < MAX_STEPS and restart >= resumed_from, (resumed_from, steps)
    assert steps[:restart] == list(range(1, restart + 1)), steps
    assert steps[restart:] == list(range(resumed_from + 1, MAX_STEPS + 1)), (
        f"the requeued run should go on from step {resumed_from}: {steps}"
    )
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0"]
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == MAX_STEPS

"""A private single-node SLURM cluster on loopback for the SLURM tests.

munge (reused when one already answers), slurmctld and slurmd run with a slurm.conf in a temporary
directory on free ports, as ENVIRONMENT.md checked; everything started here is stopped at the end, the
jobs first (slurmstepd, and the job under it, outlive a stopped slurmd).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

REQUIRED = ("slurmctld", "slurmd", "sbatch", "srun", "sinfo", "munged", "munge", "unmunge")


def missing_programs() -> list[str]:
    return [name for name in REQUIRED if shutil.which(name) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _munge_answers() -> bool:
    encoded = subprocess.run(["munge", "-n"], capture_output=True)
    if encoded.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=encoded.stdout, capture_output=True).returncode == 0


def _start_munge() -> int | None:
    """Start munged as the munge user unless one already answers; returns its pid if we started it."""
    if _munge_answers():
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    for directory in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], check=True)
    for _ in range(50):
        if _munge_answers():
            return int(Path("/run/munge/munged.pid").read_text())
        time.sleep(0.1)
    raise RuntimeError("munged started but `munge -n | unmunge` does not answer")


def _write_conf(root: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    for name in ("state", "spool"):
        (root / name).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=synergydub-test",
                f"SlurmctldHost={host}",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "AuthType=auth/munge",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "SlurmUser=root",
                "SlurmdUser=root",
                "MpiDefault=none",
                "ReturnToService=2",
                "SchedulerType=sched/backfill",
                # A requeued job waits `cred_expire` (default 120 s) before it may start again, and a
                # pending job is only looked at every `sched_interval` (60 s): test-sized instead.
                "AuthInfo=cred_expire=5",
                "SchedulerParameters=sched_interval=1,bf_interval=1",
                "JobRequeue=1",
                # A cancelled or requeued job's processes get SIGKILL this long after SIGTERM.
                "KillWait=5",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "JobCompType=jobcomp/none",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'slurmd.log'}",
                f"NodeName={host} CPUs={os.cpu_count()} RealMemory=8000 State=UNKNOWN",
                f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    return conf


def _stop(pid: int | None, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the daemon is still there after `grace_s`."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 15)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return
            time.sleep(0.2)
        os.kill(pid, 9)


def _pid(pid_file: Path) -> int | None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return int(pid_file.read_text().strip())
    return None


def job_info(job_id: str, env: dict[str, str]) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, Restarts, ...): no accounting is configured, so no sacct."""
    shown = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id], env=env, capture_output=True, text=True
    )
    return dict(field.split("=", 1) for field in shown.stdout.split() if "=" in field)


def job_ids(env: dict[str, str]) -> list[str]:
    """The ids of the jobs this cluster still holds (pending, running or completing)."""
    listed = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True)
    return listed.stdout.split()


def _cancel_jobs(env: dict[str, str], timeout_s: float = 60.0) -> None:
    """Cancel every job of the cluster and wait until they have left it (their processes gone)."""
    deadline = time.monotonic() + timeout_s
    while (ids := job_ids(env)) and time.monotonic() < deadline:
        subprocess.run(["scancel", "--full", *ids], env=env, capture_output=True)
        time.sleep(0.5)


@contextlib.contextmanager
def local_slurm_cluster(root: Path, timeout_s: float = 30.0) -> Iterator[dict[str, str]]:
    """Yields the environment (with SLURM_CONF) under which sbatch / srun / submitit reach the cluster."""
    munge_pid = _start_munge()
    conf = _write_conf(root)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        subprocess.run(["slurmctld"], env=env, check=True)
        subprocess.run(["slurmd"], env=env, check=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                break
            time.sleep(0.5)
        else:
            logs = "".join(p.read_text()[-2000:] for p in root.glob("*.log"))
            raise RuntimeError(f"the SLURM node did not become idle within {timeout_s}s:\n{logs}")
        yield env
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _cancel_jobs(env)
        _stop(_pid(root / "slurmd.pid"))
        _stop(_pid(root / "slurmctld.pid"))
        _stop(munge_pid)

"""What the bench studies share: an experiment config's switches as `run.py` overrides, and one
resumable `python run.py` job (skipped when its result file exists, so a killed study resumes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def hydra_value(value: Any) -> str:
    """A config value in Hydra's override grammar (lists and dicts included)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def config_overrides(node: dict, prefix: str) -> list[str]:
    """`key=value` overrides of every leaf of a plain config dict (a list or None is one leaf), so that a
    row of a study means at demo size what its config file means at paper size."""
    out = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out += config_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={hydra_value(value)}")
    return out


def run_unless_done(args: list[str], done: Path, threads: int | None = None) -> None:
    """`python run.py ARGS` unless `done` exists; stops the study if the job fails."""
    if done.exists():
        print(f"-- skip (done): {done.parent}", flush=True)
        return
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    print(f"-- python run.py {' '.join(args)}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, check=True)
    print(f"-- {time.perf_counter() - started:.0f} s", flush=True)

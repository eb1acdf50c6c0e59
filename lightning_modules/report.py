"""A markdown table of finished runs: `python -m lightning_modules.report RUN_OR_SWEEP_DIR ... --metrics
val/aed,val/lmd [--baseline _mean_baseline]`.

Every run writes `<run dir>/metrics.json` (`lightning_modules.training.write_metrics`); a directory
without one is read as a sweep, one row per job subdirectory that has one (in job order). `--baseline
SUFFIX` adds a first row from the metrics named `<metric><SUFFIX>` of the first row's runs that logged
them, e.g. stage 1's `val/aed_mean_baseline`: the predict-the-mean reference measured in the same runs.
Runs that differ only in their `seed=` override are one row: mean +- sd over the seeds.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_modules.training import METRICS_FILE


def collect_runs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The metrics.json records of the runs under `paths` (run dirs or sweep dirs), with their `run_dir`."""
    records = []
    for path in map(Path, paths):
        if (path / METRICS_FILE).is_file():
            files = [path / METRICS_FILE]
        else:
            jobs = [p for p in path.iterdir() if (p / METRICS_FILE).is_file()] if path.is_dir() else []
            files = [
                job / METRICS_FILE
                for job in sorted(jobs, key=lambda p: (not p.name.isdigit(), p.name.zfill(9)))
            ]
        if not files:
            raise FileNotFoundError(
                f"no {METRICS_FILE} in {path} or in its subdirectories: has the run finished?"
            )
        for file in files:
            record = json.loads(file.read_text())
            record["run_dir"] = str(file.parent)
            records.append(record)
    return records


def _varying(record: dict[str, Any]) -> list[str]:
    """The overrides that name a run, seeds aside (runs that differ only in `seed=` are repeats)."""
    return [o for o in record["overrides"] if not o.startswith("seed=")]


def run_label(record: dict[str, Any], others: Sequence[dict[str, Any]]) -> str:
    """The experiment name, plus the overrides that tell this run from others of the same experiment."""
    same = [r for r in others if r["experiment_name"] == record["experiment_name"]]
    shared = set.intersection(*(set(_varying(r)) for r in same))
    distinct = [o for o in _varying(record) if o not in shared]
    return f"{record['experiment_name']} ({', '.join(distinct)})" if distinct else record["experiment_name"]


def markdown_table(
    records: Sequence[dict[str, Any]], metrics: Sequence[str], baseline: str | None = None, digits: int = 4
) -> str:
    """One row per run, or per group of runs that differ only in their seed (mean +- sample sd, and the
    count), one column per metric; a baseline row first when asked (averaged alike); '-' where no run
    of a row logged the metric."""

    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        mean = sum(values) / len(values)
        if len(values) == 1:
            return f"{mean:.{digits}f}"
        sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        return f"{mean:.{digits}f} ± {sd:.{digits}f} (n={len(values)})"

    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(run_label(record, records), []).append(record)
    lines = ["| run | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    if baseline:
        first = next(
            (g for g in groups.values() if any(m + baseline in r["metrics"] for r in g for m in metrics)), []
        )
        if first:
            cells = [
                cell([r["metrics"][m + baseline] for r in first if m + baseline in r["metrics"]])
                for m in metrics
            ]
            lines.append(f"| baseline ({baseline.strip('_')}) | " + " | ".join(cells) + " |")
    for label, group in groups.items():
        cells = [cell([r["metrics"][m] for r in group if m in r["metrics"]]) for m in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run directories or sweep directories")
    parser.add_argument("--metrics", required=True, help="comma-separated metric names, e.g. val/aed,val/lmd")
    parser.add_argument("--baseline", default=None, help="suffix of baseline metrics, e.g. _mean_baseline")
    parser.add_argument("--digits", type=int, default=4)
    args = parser.parse_args(argv)
    records = collect_runs(args.paths)
    print(markdown_table(records, args.metrics.split(","), args.baseline, args.digits))


if __name__ == "__main__":
    main()

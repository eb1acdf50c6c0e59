"""A markdown table of finished runs: `python -m lightning_modules.tasks.report RUN_OR_SWEEP_DIR ... --metrics
val/aed,val/lmd [--baseline _mean_baseline]`.

Every run writes `<run dir>/metrics.json` (`lightning_modules.common.runs.write_metrics`); a directory
without one is read as a sweep, one row per job subdirectory that has one (in job order). `--baseline
SUFFIX` adds a first row from the metrics named `<metric><SUFFIX>` of the first row's runs that logged
them, e.g. stage 1's `val/aed_mean_baseline`: the predict-the-mean reference measured in the same runs.
Runs that differ only in their `seed=` override are one row: mean +- sd over the seeds. `--reference
LABEL` then says of every other row, metric by metric, whether its difference from that row is within
the seed spread.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_modules.common.runs import METRICS_FILE


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


def _grouped(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(run_label(record, records), []).append(record)
    return groups


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, float("nan")
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def spread_notes(
    records: Sequence[dict[str, Any]], metrics: Sequence[str], reference: str, digits: int = 4
) -> str:
    """One line per other row: its difference from the `reference` row on each metric, and whether it
    lies within the seed spread, i.e. under two standard errors of the difference of the two means
    (2 sqrt(sd_a^2 / n_a + sd_b^2 / n_b); Welch's, about a 95 % two-sided bound). A row of one seed has
    no spread to compare with, and says so."""
    groups = _grouped(records)
    if reference not in groups:
        raise KeyError(f"no row {reference!r} among {sorted(groups)}")
    base = groups[reference]
    lines = []
    for label, group in groups.items():
        if label == reference:
            continue
        parts = []
        for metric in metrics:
            a = [r["metrics"][metric] for r in group if metric in r["metrics"]]
            b = [r["metrics"][metric] for r in base if metric in r["metrics"]]
            if not a or not b:
                continue
            (mean_a, sd_a), (mean_b, sd_b) = _mean_sd(a), _mean_sd(b)
            difference = mean_a - mean_b
            if len(a) < 2 or len(b) < 2:
                verdict = "one seed: no spread"
            else:
                bound = 2 * (sd_a**2 / len(a) + sd_b**2 / len(b)) ** 0.5
                within = abs(difference) <= bound
                verdict = f"{'within' if within else 'beyond'} the seed spread (2 SE {bound:.{digits}f})"
            parts.append(f"{metric} {difference:+.{digits}f}, {verdict}")
        lines.append(f"- {label} vs {reference}: " + "; ".join(parts))
    return "\n".join(lines)


def markdown_table(
    records: Sequence[dict[str, Any]], metrics: Sequence[str], baseline: str | None = None, digits: int = 4
) -> str:
    """One row per run, or per group of runs that differ only in their seed (mean +- sample sd, and the
    count), one column per metric; a baseline row first when asked (averaged alike); '-' where no run
    of a row logged the metric."""

    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        mean, sd = _mean_sd(values)
        if len(values) == 1:
            return f"{mean:.{digits}f}"
        return f"{mean:.{digits}f} ± {sd:.{digits}f} (n={len(values)})"

    groups = _grouped(records)
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

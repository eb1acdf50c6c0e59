"""The study report: runs that differ only in their seed become one row (mean +- sd), and every row is
judged against a reference row's seed spread."""

from __future__ import annotations

import json
from pathlib import Path

from lightning_modules.evaluation.report import collect_runs, markdown_table, spread_notes


def write_run(root: Path, name: str, seed: int, aed: float) -> Path:
    """A run directory holding what `write_metrics` writes at the end of a run."""
    run_dir = root / name / f"seed{seed}"
    run_dir.mkdir(parents=True)
    record = {
        "experiment_name": name,
        "task": "train",
        "overrides": [f"experiment={name}", f"seed={seed}"],
        "global_step": 400,
        "metrics": {"val/aed": aed, "val/aed_mean_baseline": 0.0233},
    }
    (run_dir / "metrics.json").write_text(json.dumps(record))
    return run_dir


def test_rows_average_over_seeds_and_differences_are_judged_against_the_spread(tmp_path: Path) -> None:
    runs = [write_run(tmp_path, "full", s, v) for s, v in ((1, 0.0190), (2, 0.0194), (3, 0.0192))]
    runs += [write_run(tmp_path, "close", s, v) for s, v in ((1, 0.0191), (2, 0.0195), (3, 0.0194))]
    runs += [write_run(tmp_path, "far", s, v) for s, v in ((1, 0.0220), (2, 0.0222), (3, 0.0221))]
    runs += [write_run(tmp_path, "single", 1, 0.0100)]
    records = collect_runs(runs)

    table = markdown_table(records, ["val/aed"], baseline="_mean_baseline").splitlines()
    assert table[2] == "| baseline (mean_baseline) | 0.0233 ± 0.0000 (n=3) |"
    assert table[3] == "| full | 0.0192 ± 0.0002 (n=3) |"
    assert table[6] == "| single | 0.0100 |"

    notes = dict(line[2:].split(": ", 1) for line in spread_notes(records, ["val/aed"], "full").splitlines())
    # close: +0.00013 against 2 sqrt(0.0002^2 / 3 + 0.00021^2 / 3) = 0.00033.
    assert notes["close vs full"].startswith("val/aed +0.0001, within the seed spread (2 SE 0.0003)")
    assert notes["far vs full"].startswith("val/aed +0.0029, beyond the seed spread")
    assert notes["single vs full"] == "val/aed -0.0092, one seed: no spread"

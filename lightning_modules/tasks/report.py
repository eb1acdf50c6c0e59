"""`python -m lightning_modules.tasks.report RUN_OR_SWEEP_DIR ... --metrics val/aed,val/lmd [--baseline
_mean_baseline] [--reference LABEL]`: the command line of `lightning_modules.evaluation.report`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lightning_modules.evaluation.report import collect_runs, markdown_table, spread_notes


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run directories or sweep directories")
    parser.add_argument("--metrics", required=True, help="comma-separated metric names, e.g. val/aed,val/lmd")
    parser.add_argument("--baseline", default=None, help="suffix of baseline metrics, e.g. _mean_baseline")
    parser.add_argument("--digits", type=int, default=4)
    parser.add_argument(
        "--reference",
        default=None,
        help="a row's label: is each other row's difference within the seed spread?",
    )
    args = parser.parse_args(argv)
    records = collect_runs(args.paths)
    metrics = args.metrics.split(",")
    print(markdown_table(records, metrics, args.baseline, args.digits))
    if args.reference:
        print("\n" + spread_notes(records, metrics, args.reference, args.digits))


if __name__ == "__main__":
    main()

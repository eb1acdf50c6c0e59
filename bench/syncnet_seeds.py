"""The demo lip-sync expert over seeds: `experiment=demo_syncnet` trained once per seed and objective on
the same synthetic corpus, and its held-out ROC AUC (in-sync against off-sync pairs >= 2 frames apart,
on the validation speakers, none seen in training) as a table.

    .venv/bin/python bench/syncnet_seeds.py [--seeds 1 2 3 4 5] [--objectives contrastive bce]
        [--log-dir DIR] [--data-dir DIR] [--threads N] [--bar 0.75] [-- extra overrides]

Each run is `python run.py experiment=demo_syncnet model.objective=O seed=S` into
<log-dir>/train/demo_syncnet/<O>_seed<S>; a run whose metrics.json exists is skipped, so a killed
study resumes where it stopped. `seed` seeds the initialisation and the window draws; the corpus keeps
its own seed (`data.synthetic.seed`), so every run trains and validates on the same clips.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study import run_unless_done  # noqa: E402

from lightning_modules.common.runs import METRICS_FILE  # noqa: E402

COLUMNS = ("val/auc", "val/loss", "val/acc", "val/separation", "val/sync_conf", "val/sync_offset")
CORPUS_SEED = 1234


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--objectives", nargs="+", default=["contrastive", "bce"])
    parser.add_argument("--log-dir", default=str(ROOT / "logs/syncnet_seeds"))
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs")
    parser.add_argument("--bar", type=float, default=0.75, help="the held-out ROC AUC a run must reach")
    parser.add_argument("overrides", nargs="*", help="more run.py overrides, for every run")
    args = parser.parse_args()
    log_dir = Path(args.log_dir)

    results: dict[str, dict[int, dict[str, float]]] = {}
    for objective in args.objectives:
        for seed in args.seeds:
            run_name = f"{objective}_seed{seed}"
            metrics = log_dir / "train" / "demo_syncnet" / run_name / METRICS_FILE
            run_unless_done(
                [
                    "experiment=demo_syncnet",
                    f"model.objective={objective}",
                    f"seed={seed}",
                    f"data.synthetic.seed={CORPUS_SEED}",
                    f"run_name={run_name}",
                    f"paths.log_dir={log_dir}",
                    f"paths.data_dir={args.data_dir}",
                    "logger=csv",
                    "callbacks.rich_progress_bar=null",
                    *args.overrides,
                ],
                metrics,
                args.threads,
            )
            results.setdefault(objective, {})[seed] = json.loads(metrics.read_text())["metrics"]

    print("\n| seed | " + " | ".join(f"{o}: AUC" for o in args.objectives) + " |")
    print("|---|" + "---|" * len(args.objectives))
    for seed in args.seeds:
        cells = [f"{results[o][seed]['val/auc']:.3f}" for o in args.objectives]
        print(f"| {seed} | " + " | ".join(cells) + " |")
    summary = []
    for objective in args.objectives:
        aucs = [results[objective][seed]["val/auc"] for seed in args.seeds]
        passed = sum(auc >= args.bar for auc in aucs)
        summary.append(f"{min(aucs):.3f}-{max(aucs):.3f}, {passed}/{len(aucs)} >= {args.bar}")
    print("| range, seeds at the bar | " + " | ".join(summary) + " |")

    print("\n| objective | " + " | ".join(f"mean {c}" for c in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for objective in args.objectives:
        runs = [results[objective][seed] for seed in args.seeds]
        means = [sum(run[c] for run in runs) / len(runs) for c in COLUMNS]
        print(f"| {objective} | " + " | ".join(f"{m:.3f}" for m in means) + " |")


if __name__ == "__main__":
    main()

"""Table 3 of the main paper (seed 002) on the embedded synthetic corpus, on a CPU: stage 1 (A2E) and its
ablations, beside the predict-the-mean-expression baseline, on the unseen validation speakers.

    .venv/bin/python bench/a2e_ablations.py [--seeds 1234 1235 1236] [--log-dir DIR] [--data-dir DIR]
        [-- overrides of every stage-1 row, e.g. trainer.check_val_every_n_epoch=200]

The chain a user without Wav2Lip's weights runs, each step a `python run.py` job:
1. `experiment=demo_syncnet`: the lip-sync expert (the Sync metric, and the teacher's critic);
2. `experiment=demo_teacher`: the semantic-image teacher (a Wav2Lip generator) against it;
3. `task=preprocess` with that teacher: the synthetic corpus again, with semantic images, in its own
   shard directory;
4. stage 1 per row, at experiment=demo's CPU sizes: the full model (`experiment=stage1`) and the four
   `ablation/a2e_*` configs, whose model settings are read from their files; plus the full model with
   the ground-truth frames as an oracle teacher (the upper bound of a perfect teacher);
5. the table (`lightning_modules.tasks.report`): AED, LMD, mouth LMD, Sync (LSE-C through the demo expert)
   and the same for the ground-truth expressions, mean +- sd over the seeds; then, for every ablation,
   whether its difference from the full model is within the seed spread (`report.spread_notes`).
A step whose output exists is skipped, so a killed study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study import config_overrides, run_unless_done  # noqa: E402

from lightning_modules.common.runs import METRICS_FILE, last_checkpoint_path  # noqa: E402
from lightning_modules.evaluation.report import collect_runs, markdown_table, spread_notes  # noqa: E402

ABLATIONS = (
    "ablation/a2e_base",
    "ablation/a2e_no_semantic",
    "ablation/a2e_no_xattn",
    "ablation/a2e_no_shape",
)
METRICS = ("val/aed", "val/lmd", "val/lmd_mouth", "val/sync", "val/sync_gt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1234, 1235, 1236])
    parser.add_argument("--log-dir", default=str(ROOT / "logs"))
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("overrides", nargs="*", help="more run.py overrides for every stage-1 row")
    args = parser.parse_args()
    log_dir, data_dir = Path(args.log_dir), Path(args.data_dir)
    common = [f"paths.log_dir={log_dir}", f"paths.data_dir={data_dir}", "logger=csv"]

    syncnet = last_checkpoint_path(log_dir, "demo_syncnet")
    run_unless_done(["experiment=demo_syncnet", *common], syncnet)
    teacher = last_checkpoint_path(log_dir, "demo_teacher")
    run_unless_done(["experiment=demo_teacher", *common], teacher)
    shards = data_dir / "synthetic/shards_teacher"
    run_unless_done(
        [
            "task=preprocess",
            f"data.shard_dir={shards}",
            f"data.preprocess.work_dir={data_dir / 'synthetic/work_teacher'}",
            f"data.preprocess.teacher_checkpoint={teacher}",
            *common,
        ],
        shards / "manifest.jsonl",
    )

    # experiment=demo's sizes and schedule for every row; each row's switches from its own config file.
    rows = {"stage1": ["model.net.use_semantic=true"]}
    for name in ABLATIONS:
        config = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/experiment" / f"{name}.yaml"))
        model = config.get("model", {})
        rows[name.split("/")[-1]] = ["model.net.use_semantic=true", *config_overrides(model, "model.")]
    rows["stage1_oracle_teacher"] = [
        "model.net.use_semantic=true",
        "model.semantic_key=frames",
        "data.load_frames=true",
        "data.image_size=96",
    ]
    run_dirs = []
    for seed in args.seeds:  # a whole table per seed first: a study cut short still compares every row
        for name, switches in rows.items():
            run_dir = log_dir / "train" / name / "a2e_ablations" / f"seed{seed}"
            run_unless_done(
                [
                    "experiment=demo",
                    f"experiment_name={name}",
                    "run_name=a2e_ablations",
                    f"hydra.run.dir={run_dir}",
                    f"seed={seed}",
                    f"data.shard_dir={shards}",
                    f"model.syncnet_path={syncnet}",
                    "callbacks.a2e_media=null",
                    *switches,
                    *common,
                    *args.overrides,
                ],
                run_dir / METRICS_FILE,
            )
            run_dirs.append(run_dir)
    records = collect_runs(run_dirs)
    print(markdown_table(records, METRICS, baseline="_mean_baseline"))
    print("\n" + spread_notes(records, METRICS, reference="stage1"))


if __name__ == "__main__":
    main()

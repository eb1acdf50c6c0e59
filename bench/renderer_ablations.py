"""Tables 4-6 of the main paper (seed 002) on the embedded synthetic corpus, on a CPU: stage 2 and its
ablations at experiment=demo_stage2's sizes, over several seeds, beside the two baselines measured in the
same runs (pasting I_3D, pasting the warped reference), on the unseen validation speakers.

    .venv/bin/python bench/renderer_ablations.py [--seeds 1 2 3] [--log-dir DIR] [--data-dir DIR]

Each row is `python run.py experiment=demo_stage2` with the switches of one `ablation/renderer_*`
config read from its file (its `model:` settings, lists and all), so a row means at demo size what its
config means at paper size. The full model is demo_stage2 itself (Table 4's "full", Table 5's learnable
sigma, Table 6's both scales). Seeds change the training, not the corpus (`data.synthetic.seed` is the
corpus's own). A row whose metrics.json exists is skipped, so a killed study resumes. Prints Table 4's
layout (PSNR, LPIPS when its backbone is in paths.weights_dir, SSIM, LMD), mean +- sd over the seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study import config_overrides, run_unless_done  # noqa: E402

from lightning_modules.common.runs import METRICS_FILE  # noqa: E402
from lightning_modules.evaluation.report import collect_runs, markdown_table, spread_notes  # noqa: E402

ABLATIONS = (
    "renderer_base",
    "renderer_no_tmn",
    "renderer_no_corr",
    "renderer_no_msaf",
    "renderer_no_staging",
    "renderer_sigma0",
    "renderer_sigma1",
    "renderer_msaf_high",
    "renderer_msaf_low",
)
METRICS = ("val/psnr", "val/lpips", "val/ssim", "val/lmd")
BASELINES = ("_render_baseline", "_warp_baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--log-dir", default=str(ROOT / "logs"))
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    args = parser.parse_args()
    log_dir, data_dir = Path(args.log_dir), Path(args.data_dir)
    common = [
        f"paths.log_dir={log_dir}",
        f"paths.data_dir={data_dir}",
        "logger=csv",
        "callbacks.renderer_media=null",
    ]
    rows = {"stage2": []}
    for name in ABLATIONS:
        model = OmegaConf.to_container(
            OmegaConf.load(ROOT / "conf/experiment/ablation" / f"{name}.yaml")
        ).get("model", {})
        rows[name] = config_overrides(model, "model.")
    run_dirs = []
    for seed in args.seeds:  # a whole table per seed first: a study cut short still compares every row
        for name, switches in rows.items():
            run_dir = log_dir / "train" / name / "renderer_ablations" / f"seed{seed}"
            command = [
                "experiment=demo_stage2",
                f"experiment_name={name}",
                "run_name=renderer_ablations",
                f"hydra.run.dir={run_dir}",
                f"seed={seed}",
                *switches,
                *common,
            ]
            run_unless_done(command, run_dir / METRICS_FILE)
            run_dirs.append(run_dir)
    records = collect_runs(run_dirs)
    # One table: the two baselines (measured in the full model's runs), then every row.
    first, second = (markdown_table(records, METRICS, baseline=s, digits=3).splitlines() for s in BASELINES)
    print("\n".join([*first[:3], second[2], *first[3:]]))
    print("\n" + spread_notes(records, METRICS, reference="stage2", digits=3))


if __name__ == "__main__":
    main()

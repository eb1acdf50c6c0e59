"""`make demo` (`python -m lightning_modules.tasks.demo [overrides]`): the whole pipeline on the embedded
synthetic corpus, each step the `run.py` job a user would run, with its own run directory and logs:

1. stage 1 (`experiment=demo`; its datamodule builds the corpus on first use),
2. stages 2, 3 and 4 (`experiment=demo_stage2`, `demo_stage3`, `demo_stage4`, each from the last),
3. the Wav2Lip peer (`experiment=demo_wav2lip`),
4. `task=eval`: Table 1 (the pipeline against Wav2Lip on the unseen test speakers) and Table 3, printed,
5. `task=dub`: a test clip dubbed with the other test clip's speech, with a source | dubbed PNG,

and at the end the path of every artifact. Training steps run with `ckpt_path=last`, so a demo that was
stopped continues where it was, and a finished step costs only its start-up. Overrides given on the
command line (e.g. `paths.data_dir=/big/disk seed=2`) go to every step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from lightning_modules.common.config import compose_config

ROOT = Path(__file__).resolve().parents[2]
TRAINING = (
    ("stage 1", "demo"),
    ("stage 2", "demo_stage2"),
    ("stage 3", "demo_stage3"),
    ("stage 4", "demo_stage4"),
    ("Wav2Lip peer", "demo_wav2lip"),
)


def run(args: list[str]) -> float:
    """`python run.py ARGS`; returns its wall time in seconds (stops the demo if it fails)."""
    started = time.perf_counter()
    print(f"\n=== python run.py {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, check=True)
    return time.perf_counter() - started


def resolved_paths(overrides: list[str]) -> dict[str, str]:
    """paths.log_dir and data.shard_dir as the steps will resolve them."""

    cfg = compose_config(["experiment=demo", *overrides], hydra_config=False)
    return {"log_dir": str(cfg.paths.log_dir), "shard_dir": str(cfg.data.shard_dir)}


def test_clip_pair(shard_dir: Path) -> tuple[str, str]:
    """Two accepted test clips' source videos (the manifest): the face video and the speech."""
    records = [json.loads(line) for line in (shard_dir / "manifest.jsonl").read_text().splitlines()]
    test = [r["source"] for r in records if r["status"] == "accepted" and r["split"] == "test"]
    if len(test) < 2:
        raise RuntimeError(f"{shard_dir}: the demo needs two test clips, the manifest has {len(test)}")
    return test[0], test[1]


def main(argv: list[str] | None = None) -> None:
    overrides = list(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    for name, experiment in TRAINING:
        seconds[name] = run([f"experiment={experiment}", "ckpt_path=last", *overrides])
    paths = resolved_paths(overrides)
    log_dir, shard_dir = Path(paths["log_dir"]), Path(paths["shard_dir"])
    seconds["evaluation"] = run(["task=eval", "logger=many", *overrides])
    video, speech = test_clip_pair(shard_dir)
    output = log_dir / "dub" / "default" / "default" / "demo_dubbed.mp4"
    seconds["dubbing"] = run(
        ["task=dub", f"video={video}", f"audio={speech}", f"output={output}", *overrides]
    )
    total = time.perf_counter() - started

    eval_dir = log_dir / "eval" / "default" / "default"
    print(
        "\n=== make demo: done in "
        + f"{total / 60:.1f} min ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + ")"
    )
    for name in ("table1.md", "table3.md"):
        print(f"\n{eval_dir / name}:\n{(eval_dir / name).read_text()}")
    print("artifacts:")
    print(f"  corpus (raw mp4, shards, manifest): {shard_dir.parent}")
    for name, experiment in TRAINING:
        run_dir = log_dir / "train" / experiment / experiment
        print(f"  {name}: {run_dir / 'checkpoints' / 'last.ckpt'}  (logs: {run_dir})")
        for wandb_run in sorted((run_dir / "wandb").glob("offline-run-*"))[-1:]:
            print(f"    W&B offline run: {wandb_run}  (`wandb sync {wandb_run}`)")
    for name in ("table1.md", "table1.csv", "table1_per_clip.csv", "table3.md", "table3.csv", "eval.json"):
        print(f"  evaluation: {eval_dir / name}")
    print(f"  dubbed video: {output}  ({Path(video).name} with the speech of {speech})")
    print(f"  side by side: {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()

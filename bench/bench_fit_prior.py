"""How the 3DMM fit's regularisation decides what stage 1 can learn, on the synthetic corpus.

    .venv/bin/python bench/bench_fit_prior.py [--shard-dir data/synthetic/shards]

Refits the stored (detected) landmarks of every clip with a few fit settings and reports, per setting:
- how well the fit follows the ground truth: jaw-open correlation, mean |error| of the 12 named
  expression components, mean |value| of the other 52 (the truth has 0 there);
- what an audio model could reach on the fitted targets: held-out AED (val + test clips) of a linear
  read-out of the *true audio drive* of the synthetic lips (`datamodules.synthetic.mouth_expression` of
  the clip's audio, speaker style unknown) fitted on the train clips, as a ratio to the AED of the mean
  train expression (the baseline stage 1 logs). A ratio near 1 means the fitted expressions are mostly
  noise that no audio model can predict.
Default corpus: the one `make demo` trains on, built here first (`run.py task=synthesize`, then
`task=preprocess`) if `data/synthetic/shards` has none; the ground truth is read from the raw `.npz`
files next to the source videos.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import face3d  # noqa: E402
from datamodules.media import audio as audio_lib  # noqa: E402
from datamodules.shards import MANIFEST_NAME, ShardReader  # noqa: E402
from datamodules.synthetic import MotionParams, mouth_expression  # noqa: E402
from face3d.procedural import EXPRESSION_NAMES  # noqa: E402

DEFAULT_SHARDS = ROOT / "data/synthetic/shards"
EXP = slice(80, 144)
MOUTH = [EXPRESSION_NAMES.index(n) for n in ("jaw_open", "lips_round", "lips_spread", "lips_press")]
NAMED = len(EXPRESSION_NAMES)


def settings() -> dict[str, dict]:
    configured = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/face_model/procedural.yaml").fitting)
    uniform = torch.ones(68)
    return {
        "weak prior, uniform landmarks (w_exp 1e-3, w_smooth 0.1)": {
            **configured,
            "w_exp": 1e-3,
            "w_smooth": 0.1,
            "landmark_weights": uniform,
        },
        "Deep3DFaceRecon's prior (w_exp 0.04, w_smooth 0.1)": {**configured, "w_exp": 0.04, "w_smooth": 0.1},
        "configured (conf/face_model/procedural.yaml)": configured,
    }


def load_clips(shard_dir: Path) -> list[dict]:
    clips = []
    for line in (shard_dir / MANIFEST_NAME).read_text().splitlines():
        record = json.loads(line)
        if record.get("status") != "accepted":
            continue
        clip = next(c for c in ShardReader(shard_dir / record["split"]) if c["clip_id"] == record["clip_id"])
        start, length = record["start_frame"], clip["num_frames"]
        truth = np.load(Path(record["source"]).with_suffix(".npz"))["coeffs"][start : start + length, EXP]
        drive = audio_lib.frame_features(audio_lib.to_float(clip["audio"]), length)
        clips.append(
            {
                "split": record["split"],
                "landmarks": clip["landmarks"],
                "crop": int(clip["image_size"]),
                "truth": truth,
                "drive": mouth_expression(drive, EXPRESSION_NAMES, MotionParams(), np.ones(3))[:, MOUTH],
            }
        )
    return clips


def heldout_ratio(clips: list[dict], fitted: list[np.ndarray]) -> tuple[float, float, float]:
    """(baseline AED, read-out AED, ratio) on the val + test clips."""
    train = [i for i, c in enumerate(clips) if c["split"] == "train"]
    held = [i for i, c in enumerate(clips) if c["split"] != "train"]

    def stack(indices: list[int], key: str | None) -> np.ndarray:
        return np.concatenate([fitted[i] if key is None else clips[i][key] for i in indices])

    x_train = np.c_[stack(train, "drive"), np.ones(sum(len(fitted[i]) for i in train))]
    weights = np.linalg.lstsq(x_train, stack(train, None), rcond=None)[0]
    target = stack(held, None)
    readout = np.c_[stack(held, "drive"), np.ones(len(target))] @ weights
    baseline = float(np.abs(stack(train, None).mean(0) - target).mean())
    error = float(np.abs(readout - target).mean())
    return baseline, error, error / baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-dir", default=str(DEFAULT_SHARDS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shard_dir = Path(args.shard_dir)
    if not (shard_dir / MANIFEST_NAME).exists() and shard_dir == DEFAULT_SHARDS:
        for task in ("synthesize", "preprocess"):
            subprocess.run([sys.executable, str(ROOT / "run.py"), f"task={task}"], cwd=ROOT, check=True)
    clips = load_clips(shard_dir)
    model = face3d.build_face_model()
    print(f"{len(clips)} clips ({sum(c['split'] == 'train' for c in clips)} train) from {shard_dir}\n")
    print(
        "| fit setting | jaw corr. | named |error| | other 52 |value| | held-out AED: mean baseline | "
        "audio read-out | ratio | s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, options in settings().items():
        start = time.perf_counter()
        fitted = []
        for clip in clips:
            camera = face3d.PerspectiveCamera().resized(clip["crop"])
            fit = face3d.fit_landmarks(model, camera, torch.from_numpy(clip["landmarks"]), **options)
            fitted.append(fit.coeffs[:, EXP].numpy())
        seconds = time.perf_counter() - start
        jaw = np.mean([np.corrcoef(f[:, 0], c["truth"][:, 0])[0, 1] for f, c in zip(fitted, clips)])
        named = np.mean([np.abs(f[:, :NAMED] - c["truth"][:, :NAMED]).mean() for f, c in zip(fitted, clips)])
        other = np.mean([np.abs(f[:, NAMED:]).mean() for f in fitted])
        baseline, readout, ratio = heldout_ratio(clips, fitted)
        print(
            f"| {name} | {jaw:.3f} | {named:.3f} | {other:.3f} | {baseline:.4f} | {readout:.4f} | "
            f"{ratio:.2f} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Dubbing speed and memory (`task=dub`, lightning_modules/dub.py) on this machine.

    .venv/bin/python bench/bench_dub.py [--data-dir DIR] [--seconds 10 60] [--device cpu|cuda]

- Frames/s of the whole dubbing job (decode, analysis, stage 1, I_3D, renderer, paste-back, encode) at
  demo size (the demo chain's checkpoints in logs/, trained by `make demo`) and at the paper's size
  (experiment=stage1 with semantic images, the full-width Wav2Lip teacher and experiment=stage4 at
  192 px on 256 px crops: random weights, which cost the same as trained ones), as a ratio to real time
  (25 fps) and to the Wav2Lip generator's own inference (full width, 96 px, batch 32) measured in the
  same run.
- The per-step breakdown of each job (seconds and share).
- Peak memory (the job's peak resident set, each job in its own process) against the video's length:
  `--seconds` (10 and 60 by default); it must not grow with the length (chunks of `dub.chunk_frames`).
The face video is a test clip of the synthetic corpus played back and forth to the length asked for,
with built-in speech of that length. Prints markdown tables (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STEPS = ("decode", "analysis", "a2e", "render", "paste", "encode")


def face_video(data_dir: Path, seconds: float, out: Path) -> Path:
    """A test clip of the corpus, forward and back to `seconds`, with `seconds` of speech."""
    import numpy as np

    from datamodules import audio as audio_lib
    from datamodules.preprocess.video import decode_frames, write_mp4

    manifest = data_dir / "synthetic" / "shards" / "manifest.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    source = next(r["source"] for r in records if r["status"] == "accepted" and r["split"] == "test")
    frames = decode_frames(source)
    count = int(round(seconds * 25))
    period = 2 * len(frames) - 2
    index = np.arange(count) % period
    index = np.where(index < len(frames), index, period - index)
    write_mp4(out, frames[index], audio_lib.synthesize_speech(seconds, seed=11), fps=25, crf=18)
    return out


def paper_size_checkpoints(out: Path) -> dict[str, Path]:
    """Random-weight checkpoints of the paper-size stage 1, teacher and stage 4, each carrying its
    run_config as a trained one does."""
    import hydra
    import torch
    from omegaconf import OmegaConf

    from lightning_modules.networks.wav2lip import Wav2LipGenerator
    from lightning_modules.training import RUN_CONFIG_KEYS
    from tests.helpers import compose_config

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, experiment in (("a2e", "stage1"), ("renderer", "stage4")):
        cfg = compose_config([f"experiment={experiment}", "data=voxceleb2"], out / name)
        if "init_checkpoint" in cfg.model:
            cfg.model.init_checkpoint = None
        module = hydra.utils.instantiate(cfg.model)
        frozen = tuple(getattr(module, "frozen_prefixes", ()))
        state = {k: v for k, v in module.state_dict().items() if not k.startswith(frozen)}
        run_config = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in RUN_CONFIG_KEYS}
        paths[name] = out / f"{name}.ckpt"
        torch.save({"state_dict": state, "run_config": run_config}, paths[name])
    paths["teacher"] = out / "wav2lip.pth"
    torch.save({"state_dict": Wav2LipGenerator(width=1.0).state_dict()}, paths["teacher"])
    return paths


def wav2lip_rate(device: str, frames: int = 96, batch: int = 32) -> float:
    """Frames/s of the full-width Wav2Lip generator alone (96 px faces, one mel window each)."""
    import torch

    from lightning_modules.networks.wav2lip import Wav2LipGenerator

    generator = Wav2LipGenerator(width=1.0).to(device).eval()
    faces, mel = torch.rand(batch, 6, 96, 96, device=device), torch.rand(batch, 80, 16, device=device)
    with torch.no_grad():
        generator(mel, faces)
        started = time.perf_counter()
        for _ in range(frames // batch):
            generator(mel, faces)
        if device == "cuda":
            torch.cuda.synchronize()
    return (frames // batch) * batch / (time.perf_counter() - started)


def dub_job(video: Path, overrides: list[str], log_dir: Path) -> dict:
    """One `task=dub` in its own process; its report and its own peak resident set (MiB)."""
    code = (
        "import atexit, json, resource, runpy, sys; sys.argv = ['run.py', *json.loads(sys.argv[1])]; "
        "atexit.register(lambda: print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
        "runpy.run_path('run.py', run_name='__main__')"
    )
    args = [f"video={video}", f"audio={video}", f"paths.log_dir={log_dir}", "dub.progress=false", *overrides]
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(["task=dub", *args])],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - started
    peak = next(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_KIB"))
    report = json.loads((log_dir / "dub" / "default" / "default" / "dub_report.json").read_text())["dubbed"][
        0
    ]
    report.update(wall_s=wall, peak_mib=peak / 1024)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(ROOT / "data"), help="paths.data_dir of `make demo`")
    parser.add_argument("--log-dir", default=str(ROOT / "logs"), help="paths.log_dir of `make demo`")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default="/tmp/synergydub_bench_dub")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data_dir, log_dir = Path(args.data_dir), Path(args.log_dir)
    demo = [
        f"dub.pipeline.a2e_checkpoint={log_dir}/train/demo/demo/checkpoints/last.ckpt",
        f"dub.pipeline.renderer_checkpoint={log_dir}/train/demo_stage4/demo_stage4/checkpoints/last.ckpt",
        f"dub.device={args.device}",
    ]
    paper = paper_size_checkpoints(work / "paper")
    paper_overrides = [
        f"dub.pipeline.a2e_checkpoint={paper['a2e']}",
        f"dub.pipeline.renderer_checkpoint={paper['renderer']}",
        f"dub.pipeline.teacher_checkpoint={paper['teacher']}",
        f"dub.device={args.device}",
    ]
    reference = wav2lip_rate(args.device)
    rows = []
    # Paper size on the shortest video only: its speed is per frame, and its memory is measured at demo size.
    jobs = [("demo", s, demo) for s in args.seconds] + [("paper", min(args.seconds), paper_overrides)]
    for size, seconds, overrides in jobs:
        video = face_video(data_dir, seconds, work / f"face_{seconds:g}s.mp4")
        report = dub_job(video, overrides, work / f"logs_{size}_{seconds:g}")
        report.update(size=size, length_s=seconds)
        rows.append(report)
        print(
            json.dumps({k: report[k] for k in ("size", "length_s", "wall_s", "peak_mib", "seconds")}),
            flush=True,
        )
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(
        f"\nWav2Lip generator alone (width 1, 96 px, batch 32): {reference:.1f} frames/s; "
        f"threads: {threads}\n"
    )
    print(
        "| size | video | frames | wall s | frames/s | x real time (25 fps) | / Wav2Lip generator "
        "| peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = r["frames"] / r["wall_s"]
        print(
            f"| {r['size']} | {r['length_s']:g} s | {r['frames']} | {r['wall_s']:.1f} | {rate:.2f} | "
            f"{rate / 25:.3f} | {rate / reference:.3f} | {r['peak_mib']:.0f} |"
        )
    print("\n| size | video | " + " | ".join(STEPS) + " |")
    print("|---|---|" + "---|" * len(STEPS))
    for r in rows:
        total = sum(r["seconds"][s] for s in STEPS) or 1.0
        cells = [f"{r['seconds'][s]:.1f} s ({100 * r['seconds'][s] / total:.0f}%)" for s in STEPS]
        print(f"| {r['size']} | {r['length_s']:g} s | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

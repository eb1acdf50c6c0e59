"""Synthetic corpus generation time and preprocessing throughput (frames/s, and per worker).

    .venv/bin/python bench/bench_preprocess.py [--workers 1 2] [--overrides data.synthetic.num_frames=25 ...]

Composes the real config (`data=synthetic`, data under a temporary `paths.data_dir`), then:
1. `task=synthesize`: generates the default synthetic corpus and times it;
2. `task=preprocess` once per worker count, each into fresh work/shard dirs: frames/s overall and per
   worker (the per-worker figure is what to multiply by cores or SLURM array tasks);
3. a per-stage split of one clip (decode, detect, landmark fit, appearance fit with its rasterisation,
   shading I_3D from it) in this process, to show where the time goes.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SYNERGYDUB_ROOT", str(ROOT))


def compose(data_dir: Path, overrides: list[str]):
    from lightning_modules.common.config import compose_config

    return compose_config(["data=synthetic", f"paths.data_dir={data_dir}", *overrides], hydra_config=False)


def stage_split(settings) -> dict[str, float]:
    """Seconds per frame of each stage for the first clip, in this process."""
    import torch

    import face3d
    from datamodules.media.face_fit import face_tube, landmarks_for_tube
    from datamodules.media.track import crop_frames, to_crop_pixels
    from datamodules.media.video import decode_frames
    from datamodules.preprocess import discover_clips
    from datamodules.preprocess.pipeline import build_tools

    tools = build_tools(settings)
    clip = discover_clips(settings.input_dir, settings.corpus)[0]
    options = settings.clip
    times = {}
    start = time.perf_counter()
    frames = decode_frames(clip.path)
    times["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    detections = [tools.detector(f) for f in frames]
    times["detect + landmarks"] = time.perf_counter() - start
    tube, box = face_tube(detections, frames.shape[1], frames.shape[2], options)
    landmarks = landmarks_for_tube(frames, tube, tools.detector)
    landmarks = torch.from_numpy(to_crop_pixels(landmarks, box, options.crop_size))
    start = time.perf_counter()
    fit = face3d.fit_landmarks(tools.model, tools.camera, landmarks, **options.fit)
    times["fit 3DMM"] = time.perf_counter() - start
    crops = crop_frames(frames[tube.start : tube.end], box, options.crop_size)
    images = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    renderer = face3d.FaceRenderer(tools.model, tools.camera)
    start = time.perf_counter()
    appearance = face3d.fit_appearance(
        tools.model, tools.camera, fit.coeffs, images, renderer=renderer, **options.appearance
    )
    times["appearance fit (rasterises once)"] = time.perf_counter() - start
    start = time.perf_counter()
    appearance.render(renderer)
    times["shade I_3D"] = time.perf_counter() - start
    return {k: v / len(landmarks) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    args = parser.parse_args()

    from datamodules.preprocess import run_preprocessing, settings_from_config
    from datamodules.synthetic import generate_corpus

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(Path(tmp), args.overrides)
        syn = cfg.data.synthetic
        start, cpu_start = time.perf_counter(), time.process_time()
        generated = generate_corpus(cfg.data)
        gen_seconds, gen_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        rows = [
            "| measure | value |",
            "|---|---|",
            f"| corpus | {syn.num_identities} identities x {syn.clips_per_identity} clips x "
            f"{syn.num_frames} frames, {syn.image_size} px |",
            f"| generation time | {gen_seconds:.1f} s ({generated['num_frames'] / gen_seconds:.1f} frames/s, "
            f"{syn.num_workers} workers; {gen_cpu:.1f} s CPU in this process) |",
        ]
        base = settings_from_config(cfg.data)
        for workers in args.workers:
            settings = replace(
                base,
                num_workers=workers,
                work_dir=str(Path(tmp) / f"work{workers}"),
                shard_dir=str(Path(tmp) / f"shards{workers}"),
            )
            summary = run_preprocessing(settings)
            fps = summary["frames_per_second"]
            rows.append(
                f"| preprocess, {workers} worker(s) | {fps:.2f} frames/s, {fps / workers:.2f} frames/s per "
                f"worker ({summary['frames_now']} frames in {summary['seconds']:.1f} s; accepted clips per "
                f"split {summary['accepted']}, rejected {summary['rejected']}) |"
            )
        for stage, seconds in stage_split(base).items():
            rows.append(f"| {stage} (one clip, per frame) | {seconds * 1000:.1f} ms |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\ncpus: {os.cpu_count()}, load average at the end: {load:.1f}\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

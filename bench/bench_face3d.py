"""Throughput of the 3D face layer on this machine: rendering, landmark projection, fitting.

    .venv/bin/python bench/bench_face3d.py [--batch 32] [--sizes 128 160 192] [--frames 100] [--threads N]

Measured in this run, each against a baseline from the same run:
- render: `FaceRenderer` frames/s at batch `--batch` for each size, with the CPU face binning
  (tile_size=32, the default) and PyTorch3D's naive CPU rasteriser (tile_size=0) as the baseline;
- landmark projection: `landmarks_2d` frames/s (what stage 1's shape loss pays per frame);
- fitting: `fit_landmarks` frames/s on a synthetic clip of `--frames` frames with the config's iteration
  counts (conf/face_model/procedural.yaml), and the fitting error against the ground truth;
- appearance: `fit_appearance` frames/s on renders of the same clip at 128 px with the config's options
  (bench/bench_appearance.py measures its errors).
Prints markdown tables. `--threads` sets torch's intra-op threads for this run (default: torch's);
`--parts render landmarks fitting` picks the tables.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import face3d

CONFIG = Path(__file__).resolve().parents[1] / "conf" / "face_model" / "procedural.yaml"


def best_time(fn, repeats: int) -> float:
    """Fastest of `repeats` timed calls after a warm-up (on a shared machine the minimum is the signal)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def synthetic_clip(frames: int, seed: int = 0) -> torch.Tensor:
    """Smoothly varying ground-truth coefficients of one identity (as in tests/test_face3d.py)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(frames, dtype=torch.float32)[:, None]
    amplitude = torch.full((64,), 0.3)
    amplitude[:12] = 0.8
    phase, speed = torch.rand(64, generator=gen) * 6.28, torch.rand(64, generator=gen) * 0.8
    return face3d.MorphableModel.join_coeffs(
        id=(torch.randn(1, 80, generator=gen) * 0.7).expand(frames, -1),
        exp=amplitude * torch.sin(speed * t + phase),
        tex=(torch.randn(1, 80, generator=gen) * 0.5).expand(frames, -1),
        angle=torch.tensor([[0.05, -0.2, 0.03]]) + 0.05 * torch.sin(0.2 * t),
        trans=torch.tensor([[0.05, -0.08, 0.2]]).expand(frames, -1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 192])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--parts", nargs="+", default=["render", "landmarks", "fitting"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = OmegaConf.load(CONFIG)
    model = face3d.build_face_model(source="procedural", num_vertices=cfg.num_vertices, seed=cfg.seed)
    camera = face3d.PerspectiveCamera(**cfg.camera)
    print(
        f"procedural model: {model.num_vertices} vertices, {model.num_faces} faces; "
        f"torch threads {torch.get_num_threads()}, batch {args.batch}\n"
    )

    coeffs = synthetic_clip(args.batch)
    if "render" in args.parts:
        render_table(model, camera, coeffs, args)
    if "landmarks" in args.parts:
        landmark_table(model, camera, coeffs)
    if "fitting" in args.parts:
        fitting_table(model, camera, dict(cfg.fitting), args)


def render_table(model, camera, coeffs, args) -> None:
    print("| render (CPU) | px | frames/s binned (tile 32) | frames/s naive | speed-up |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        cam = camera.resized(size)
        rates = {}
        for tile in (32, 0):
            renderer = face3d.FaceRenderer(model, cam, tile_size=tile)
            with torch.no_grad():
                rates[tile] = args.batch / best_time(lambda r=renderer: r(coeffs), args.repeats)
        print(
            f"| image, mask, depth | {size} | {rates[32]:.1f} | {rates[0]:.1f} "
            f"| {rates[32] / rates[0]:.1f}x |"
        )


def landmark_table(model, camera, coeffs) -> None:
    batch = coeffs.shape[0]
    with torch.no_grad():
        projection = batch / best_time(lambda: model.landmarks_2d(coeffs, camera), 10)
        full_mesh = batch / best_time(lambda: model(coeffs), 5)
    print("\n| landmarks | frames/s | baseline: whole mesh (shape, normals, SH colour) frames/s |")
    print("|---|---|---|")
    print(f"| landmarks_2d (68 vertices only) | {projection:.0f} | {full_mesh:.0f} |")


def fitting_table(model, camera, fitting, args) -> None:
    truth = synthetic_clip(args.frames, seed=1)
    landmarks = model.landmarks_2d(truth, camera)
    start = time.perf_counter()
    fit = face3d.fit_landmarks(model, camera, landmarks, **fitting)
    seconds = time.perf_counter() - start
    exp_error = (fit.coeffs[:, 80:144] - truth[:, 80:144]).abs()
    size = 128
    small = camera.resized(size)
    images = face3d.FaceRenderer(model, small)(truth).get("image").detach()
    appearance_options = OmegaConf.to_container(OmegaConf.load(CONFIG).appearance)
    start = time.perf_counter()
    face3d.fit_appearance(model, small, fit.coeffs, images, **appearance_options)
    appearance_seconds = time.perf_counter() - start
    print(
        "\n| fitting | frames | steps (rigid + full) | frames/s | reprojection px @224 | mean abs exp error |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| fit_landmarks | {args.frames} | {fitting['rigid_steps']} + {fitting['steps']} | "
        f"{args.frames / seconds:.1f} | {fit.mean_landmark_error:.3f} | {exp_error.mean():.3f} "
        f"(named 12: {exp_error[:, :12].mean():.3f}; truth mean |exp| {truth[:, 80:144].abs().mean():.3f}) |"
    )
    print(
        f"| fit_appearance | {args.frames} | linear solves | "
        f"{args.frames / appearance_seconds:.1f} at {size} px | | |"
    )


if __name__ == "__main__":
    main()

"""The appearance fit (face3d.fit_appearance): photometric error of I_3D before / after, and its cost.

    .venv/bin/python bench/bench_appearance.py [--identities 4] [--frames 50] [--photo-frames 10]

Runs clips through what preprocessing does (dlib detection per frame, the face tube and its square
crop at the synthetic corpus's crop size, `fit_landmarks` with conf/face_model/procedural.yaml's
`fitting`), then `fit_appearance` with its `appearance` node, once per texture mode:
(a) synthetic clips (datamodules.synthetic, small: `--identities` speakers x `--frames` frames) whose
    true texture and light are known: the floor is the error of the TRUE coefficients (rendered in the
    frame, cropped like the video; only mp4 compression and resampling remain);
(b) a real photo that is not the procedural model's portrait (matplotlib's grace_hopper.jpg), as a clip
    of `--photo-frames` frames of small pan and zoom.
Error: mean absolute RGB difference over the rendered face mask, in [0, 1]; "before" is the mean texture
under default light (tex = gamma = 0), what every I_3D showed without this fit. Seconds per clip are
single-threaded: the fit (one rasterisation per frame + least squares), and beside it the render of
I_3D from the fit's fragments against a fresh render (what preprocessing did before).
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SYNERGYDUB_ROOT", str(ROOT))

import face3d  # noqa: E402
from datamodules.media.detect import make_detector  # noqa: E402
from datamodules.media.face_fit import face_tube, landmarks_for_tube  # noqa: E402
from datamodules.media.track import crop_frames, to_crop_pixels  # noqa: E402
from datamodules.media.video import decode_frames  # noqa: E402
from datamodules.preprocess.pipeline import settings_from_config  # noqa: E402


def compose():
    from lightning_modules.common.config import compose_config

    return compose_config(["data=synthetic"], hydra_config=False)


def track_and_crop(frames: np.ndarray, detector, clip) -> tuple:
    """frames (T, H, W, 3) -> (crops (T', S, S, 3), crop landmarks (T', 68, 2), frame indices, box):
    preprocessing's face tube, its landmarks (misses bridged) and its square crop."""
    tube, box = face_tube([detector(frame) for frame in frames], frames.shape[1], frames.shape[2], clip)
    landmarks = landmarks_for_tube(frames, tube, detector)
    kept = list(range(tube.start, tube.end))
    crops = crop_frames(frames[kept], box, clip.crop_size)
    return crops, to_crop_pixels(landmarks, box, clip.crop_size), kept, box


def to_images(crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0


def appearance_rows(model, camera, crops, landmarks, fitting, appearance) -> dict[str, dict[str, float]]:
    """Per texture mode: error before / after and seconds (fit, render from fragments, fresh render)."""
    fit = face3d.fit_landmarks(model, camera, torch.from_numpy(landmarks), **fitting)
    images = to_images(crops)
    renderer = face3d.FaceRenderer(model, camera)
    rows = {}
    for mode in ("basis", "per_vertex"):
        start = time.perf_counter()
        result = face3d.fit_appearance(model, camera, fit.coeffs, images, **{**appearance, "texture": mode})
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        result.render(renderer)
        shade = time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            renderer(result.coeffs, albedo=result.albedo)
        fresh = time.perf_counter() - start
        rows[mode] = {
            "before": float(result.error_before.mean()),
            "after": float(result.error_after.mean()),
            "seconds": seconds,
            "shade": shade,
            "fresh": fresh,
            "frames": len(images),
        }
    return rows


def truth_floor(model, npz: Path, frames: np.ndarray, kept: list[int], box, crop_size: int) -> float:
    """Error of the true coefficients: rendered in the frame, cropped like the video."""
    truth = np.load(npz)
    size, focal, center, distance = truth["camera"]
    camera = face3d.PerspectiveCamera(int(size), float(focal), float(center), float(distance))
    with torch.no_grad():
        out = face3d.FaceRenderer(model, camera)(torch.from_numpy(truth["coeffs"][kept]))
    render = crop_frames(out["image"].permute(0, 2, 3, 1).numpy(), box, crop_size)
    mask = crop_frames(np.repeat(out["mask"].permute(0, 2, 3, 1).numpy(), 3, -1), box, crop_size)[..., :1]
    video = crop_frames(frames[kept], box, crop_size).astype(np.float32) / 255.0
    error = torch.from_numpy(np.abs(render - video).mean(-1, keepdims=True) * (mask > 0.5))
    return float((error.sum((1, 2, 3)) / torch.from_numpy(mask > 0.5).sum((1, 2, 3)).clamp(min=1)).mean())


def photo_clip(frames: int, size: int) -> np.ndarray:
    """(frames, size, size, 3): grace_hopper.jpg seen through a window that pans and zooms a little."""
    import cv2
    import matplotlib

    photo = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))[..., ::-1]
    h, w = photo.shape[:2]
    out = []
    for t in np.linspace(0, 1, frames):
        side = min(h, w) * (0.95 - 0.1 * t)
        cx, cy = w / 2 + 12 * np.sin(2 * np.pi * t), h * 0.45 + 8 * t
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        window = photo[max(y0, 0) : y0 + int(side), max(x0, 0) : x0 + int(side)]
        out.append(cv2.resize(np.ascontiguousarray(window), (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--identities", type=int, default=4)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--photo-frames", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from omegaconf import OmegaConf

    from datamodules.synthetic import generate_synthetic_corpus

    cfg = compose()
    settings = settings_from_config(cfg.data)
    clip = replace(settings.clip, min_frames=1)  # the photo clip is short
    fitting = OmegaConf.to_container(cfg.face_model.fitting)
    appearance = OmegaConf.to_container(cfg.face_model.appearance)
    model = face3d.build_face_model()
    camera = face3d.PerspectiveCamera(**cfg.face_model.camera).resized(clip.crop_size)
    detector = make_detector(settings.detector["backend"], settings.detector[settings.detector["backend"]])
    size = int(cfg.data.synthetic.image_size)

    results = []  # (source, floor, rows)
    with tempfile.TemporaryDirectory() as tmp:
        generate_synthetic_corpus(
            tmp, face_model={}, num_identities=args.identities, clips_per_identity=1,
            num_frames=args.frames, image_size=size, seed=args.seed,
        )  # fmt: skip
        for path in sorted(Path(tmp).glob("mp4/*/*/*.mp4")):
            frames = decode_frames(path)
            crops, landmarks, kept, box = track_and_crop(frames, detector, clip)
            floor = truth_floor(model, path.with_suffix(".npz"), frames, kept, box, clip.crop_size)
            rows = appearance_rows(model, camera, crops, landmarks, fitting, appearance)
            results.append((f"synthetic {path.parent.parent.name}", floor, rows))
            print(
                f"{path.parent.parent.name}: {len(kept)} frames, floor {floor:.4f}, {rows}", file=sys.stderr
            )
    crops, landmarks, _, _ = track_and_crop(photo_clip(args.photo_frames, size), detector, clip)
    results.append(("grace_hopper.jpg, pan + zoom", float("nan"), appearance_rows(
        model, camera, crops, landmarks, fitting, appearance)))  # fmt: skip

    print(f"\n{args.identities} synthetic clips x {args.frames} frames at {size} px and a")
    print(f"{args.photo_frames}-frame photo clip, crops at {clip.crop_size} px, {args.threads} thread(s)\n")
    print("| clip | frames | error: mean texture, default light | basis | per_vertex | true coeffs (floor) "
          "| s/clip: fit (basis / per_vertex) | I_3D from fragments / fresh render |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")

    def line(name, frames, floor, rows):
        b, p = rows["basis"], rows["per_vertex"]
        floor_text = "n/a" if np.isnan(floor) else f"{floor:.4f}"
        print(
            f"| {name} | {frames} | {b['before']:.4f} | {b['after']:.4f} | {p['after']:.4f} | {floor_text} | "
            f"{b['seconds']:.2f} / {p['seconds']:.2f} | {p['shade']:.2f} / {p['fresh']:.2f} |"
        )

    for name, floor, rows in results:
        line(name, rows["basis"]["frames"], floor, rows)
    synthetic = [r for r in results if r[0].startswith("synthetic")]
    if synthetic:
        mean = {
            mode: {key: float(np.mean([r[2][mode][key] for r in synthetic])) for key in synthetic[0][2][mode]}
            for mode in ("basis", "per_vertex")
        }
        line("synthetic, mean", int(mean["basis"]["frames"]), float(np.mean([r[1] for r in synthetic])), mean)


if __name__ == "__main__":
    main()

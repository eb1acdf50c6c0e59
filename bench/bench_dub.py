"""Dubbing speed and memory (`task=dub`, lightning_modules/tasks/dub.py) on this machine.

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
- The mouth in silence: the inner-lip gap (px at the crop size, of the landmarks projected from the
  expressions that drive I_3D) of the demo pipeline on each test clip driven by 1 s of speech, 1 s of
  digital silence and 1 s of speech, in the silent second and in the speech, with the silence gate
  (`generator.silence`) and without it, beside the fitted ground truth's gap in the clips' own quiet
  and loud frames.
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
    from datamodules.media import audio as audio_lib
    from datamodules.media.video import decode_frames, write_mp4
    from lightning_modules.inference.dubber import output_plan

    manifest = data_dir / "synthetic" / "shards" / "manifest.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    source = next(r["source"] for r in records if r["status"] == "accepted" and r["split"] == "test")
    frames = decode_frames(source)
    index = output_plan(len(frames), 25, seconds, "pingpong")[: int(round(seconds * 25))]
    write_mp4(out, frames[index], audio_lib.synthesize_speech(seconds, seed=11), fps=25, crf=18)
    return out


def paper_size_checkpoints(out: Path) -> dict[str, Path]:
    """Random-weight checkpoints of the paper-size stage 1, teacher and stage 4, each carrying its
    run_config as a trained one does."""
    import hydra
    import torch
    from omegaconf import OmegaConf

    from lightning_modules.common.config import compose_config
    from lightning_modules.common.runs import RUN_CONFIG_KEYS
    from lightning_modules.networks.wav2lip import Wav2LipGenerator

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


INNER_LIPS = ((61, 67), (62, 66), (63, 65))


def inner_lip_gap(dubber, track, expression):
    """(T,) mean distance in crop pixels of the inner lips' facing points, projected from `expression`."""
    import torch

    import face3d

    coeffs = face3d.with_expression(torch.from_numpy(track.coeffs), torch.from_numpy(expression))
    points = dubber.face_model.landmarks_2d(coeffs, dubber.camera.resized(track.crops.shape[1]))
    return torch.stack([(points[:, a] - points[:, b]).norm(dim=-1) for a, b in INNER_LIPS]).mean(0).numpy()


def silence_table(a2e: str, renderer: str, data_dir: Path) -> list[str]:
    """The mouth in silence (module docstring), as markdown rows."""
    import numpy as np
    import torch

    import face3d
    from datamodules.media import audio as audio_lib
    from lightning_modules.evaluation.dubbing import clip_track, test_clips
    from lightning_modules.inference.generators import SynergyDubber
    from lightning_modules.inference.tracks import Speech

    gate = {"threshold_db": -45.0, "min_s": 0.2, "ramp_s": 0.1}
    dubbers = {
        "with the gate": SynergyDubber(a2e, renderer, silence=gate),
        "stage 1 alone": SynergyDubber(a2e, renderer, silence=None),
    }
    rows = []
    for clip in test_clips(data_dir / "synthetic" / "shards" / "test"):
        track, own = clip_track(clip)
        n = len(track)
        parts = [
            audio_lib.synthesize_speech(1.0, 5),
            np.zeros(16000, np.float32),
            audio_lib.synthesize_speech(1.0, 6),
        ]
        speech = Speech.from_wave(np.concatenate(parts)[: n * 640])
        t = np.arange(n) / 25
        silent, spoken = (t > 1.15) & (t < 1.85), (t < 0.9) | (t > 2.1)
        loudness = audio_lib.frame_features(own.wave, n)[:, 0]

        fitted = face3d.expression_of(torch.from_numpy(track.coeffs)).numpy()
        truth = inner_lip_gap(dubbers["stage 1 alone"], track, fitted)
        cells = [f"{truth[loudness < 0.05].mean():.2f}", f"{truth[loudness > 0.3].mean():.2f}"]
        for dubber in dubbers.values():
            g = inner_lip_gap(dubber, track, dubber.expressions(track, speech))
            cells += [f"{g[silent].mean():.2f}", f"{g[spoken].mean():.2f}"]
        rows.append(f"| {clip['clip_id']} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(ROOT / "data"), help="paths.data_dir of `make demo`")
    parser.add_argument("--log-dir", default=str(ROOT / "logs"), help="paths.log_dir of `make demo`")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default="/tmp/synergydub_bench_dub")
    args = parser.parse_args()
    from lightning_modules.common.runs import last_checkpoint_path

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data_dir, log_dir = Path(args.data_dir), Path(args.log_dir)
    demo = [
        f"generator.a2e_checkpoint={last_checkpoint_path(log_dir, 'demo')}",
        f"generator.renderer_checkpoint={last_checkpoint_path(log_dir, 'demo_stage4')}",
        f"dub.device={args.device}",
    ]
    missing = [o.split("=", 1)[1] for o in demo[:2] if not Path(o.split("=", 1)[1]).is_file()]
    if missing:
        raise SystemExit(f"bench_dub needs the demo chain's checkpoints ({missing}): run `make demo` first")
    paper = paper_size_checkpoints(work / "paper")
    paper_overrides = [
        f"generator.a2e_checkpoint={paper['a2e']}",
        f"generator.renderer_checkpoint={paper['renderer']}",
        f"generator.teacher_checkpoint={paper['teacher']}",
        f"dub.device={args.device}",
    ]
    silence = silence_table(demo[0].split("=", 1)[1], demo[1].split("=", 1)[1], data_dir)
    reference = wav2lip_rate(args.device)
    rows = []
    # Paper size on a 4-s video only: its speed is per frame, and its memory is measured at demo size.
    jobs = [("demo", s, demo) for s in args.seconds] + [("paper", min(4.0, *args.seconds), paper_overrides)]
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
    print(
        "\n| test clip | truth: quiet frames | truth: loud frames | gate: silence | gate: speech "
        "| stage 1 alone: silence | stage 1 alone: speech |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(silence))


if __name__ == "__main__":
    main()

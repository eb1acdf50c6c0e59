"""`python run.py task=dub video=FACE.mp4 audio=SPEECH` (and the `synergydub-dub` console script): a face
video and a new speech track become a dubbed mp4.

1. The video is read in chunks of `dub.chunk_frames` output frames (bounded memory at any length); each
   chunk is analysed with the preprocessing front end, reused: dlib (or FAN) detection on a copy at most
   `dub.detect_max_side` px, the speaker's face tubes (`track.speaker_tubes`), the square crop
   (`track.crop_box`), landmarks at full resolution, the 3DMM and appearance fit (`clip.fit_face`), all
   with the settings of the renderer's own shards.
2. The speech (any file PyAV decodes, resampled to 16 kHz) gives MFCC and mel features once.
3-5. The generator (`lightning_modules.dubbing`) makes each track's new crops: stage 1 at 25 fps,
   interpolated to the source's frame times, I_3D with the fitted identity, pose, texture and light,
   then stages 2-4; or Wav2Lip's generator (`model=wav2lip`). `motion=diffusion [emotion=happy]` takes
   the expression from the motion DiT instead of stage 1: one sequence for the whole speech, generated
   on the first track, which every chunk slices, so the chunks join without a jump
   (lightning_modules/motion_source.py says why); the pose stays the video's.
6. Each crop is pasted back into its full frame through a feathered mask that is 0 at the crop's border
   (no box seam), so outside the mouth region every pixel is the source's own.
7. Frames go to H.264 as they come, at the source's frame rate (crf `dub.encoder.crf`, 17 by default:
   visually lossless), and the new audio is muxed.

What users of other dubbing tools run into is handled here: any length (chunks), any frame rate and size
(the output keeps them; the model sees 25 fps speech), frames without a face pass through unchanged and
are logged, audio longer than the video follows `dub.on_long_audio` (loop | pingpong | freeze | trim),
shorter audio is padded with silence (the mouth closes), and bad inputs stop with the file and the
reason before anything is written.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from omegaconf import DictConfig, OmegaConf

from datamodules.audio import SAMPLE_RATE, fit_length
from datamodules.datasets import MOUTH_HULL_POINTS
from datamodules.preprocess.clip import ClipOptions, Tools, fit_face
from datamodules.preprocess.detect import Face
from datamodules.preprocess.pipeline import build_tools, settings_from_config
from datamodules.preprocess.track import (
    crop_box,
    crop_frames,
    interpolate_boxes,
    speaker_tubes,
    to_crop_pixels,
)
from datamodules.preprocess.video import ClipRejected, FrameReader, Mp4Writer, load_speech, probe
from lightning_modules.dubbing import FaceTrack, Speech, SynergyDubber, Wav2LipDubber, build_dubber
from lightning_modules.motion_source import ConfigurationError

log = logging.getLogger(__name__)

LONG_AUDIO_POLICIES = ("loop", "pingpong", "freeze", "trim")
AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


class DubbingError(Exception):
    """An input that cannot be dubbed; the message names the file and the reason."""


# --- the output's frames -------------------------------------------------------------------------------


def output_plan(
    num_frames: int, fps: float, audio_s: float, policy: str, tolerance_s: float = 0.0
) -> np.ndarray:
    """The source frame shown at each output frame. Audio no longer than the video (or longer by at most
    `tolerance_s`, an encoder's padding): the video's frames (the audio is padded with silence or cut).
    Longer audio: `trim` cuts it to the video; `loop` repeats the video, `pingpong` plays it forward and
    back, `freeze` holds its last frame, until the audio ends."""
    if policy not in LONG_AUDIO_POLICIES:
        raise ValueError(f"on_long_audio must be one of {LONG_AUDIO_POLICIES}, got {policy!r}")
    wanted = int(np.ceil(audio_s * fps - 1e-6))
    if audio_s <= num_frames / fps + tolerance_s or policy == "trim":
        return np.arange(num_frames)
    steps = np.arange(wanted)
    if policy == "loop":
        return steps % num_frames
    if policy == "freeze":
        return np.minimum(steps, num_frames - 1)
    period = max(2 * num_frames - 2, 1)
    phase = steps % period
    return np.where(phase < num_frames, phase, period - phase)


def read_plan_frames(reader: FrameReader, indices: np.ndarray) -> np.ndarray:
    """The source frames `indices` (any order, repeats allowed), each decoded once: contiguous runs of
    the distinct indices are read in one pass."""
    distinct = np.unique(indices)
    runs = np.split(distinct, np.flatnonzero(np.diff(distinct) > 1) + 1)
    frames = {}
    for run in runs:
        for index, image in zip(run, reader.read(int(run[0]), int(run[-1]) + 1)):
            frames[int(index)] = image
    return np.stack([frames[int(i)] for i in indices])


# --- analysis ------------------------------------------------------------------------------------------


@dataclass
class AnalysedTrack:
    """A face track of a chunk: `start`..`end` (chunk frame indices), its square crop `box` (x0, y0, side)
    in frame pixels, and the analysed crops."""

    start: int
    end: int
    box: np.ndarray
    track: FaceTrack


def analysis_tools(analysis: DictConfig, device: str) -> tuple[Tools, ClipOptions]:
    """The preprocessing front end of a `data` config (a renderer run's: how its shards were made) on
    `device`, without the teacher: the detector, face model and camera, and the per-clip options."""
    preprocess = settings_from_config(analysis)
    preprocess.device = device
    preprocess.teacher_checkpoint = None
    return build_tools(preprocess), preprocess.clip


def detect_faces(frames: np.ndarray, detector: Any, max_side: int) -> list[list[Face]]:
    """Per-frame detections in full-frame pixels, found on a copy at most `max_side` px (the detector
    is the slow part; the landmarks are refined at full resolution later)."""
    height, width = frames.shape[1:3]
    scale = min(1.0, max_side / max(height, width))
    detections = []
    for frame in frames:
        small = (
            frame
            if scale == 1.0
            else cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        )
        detections.append(
            [
                Face(box=face.box / scale, score=face.score, landmarks=face.landmarks / scale)
                for face in detector(small)
            ]
        )
    return detections


def analyse_chunk(
    frames: np.ndarray, times: np.ndarray, tools: Tools, options: ClipOptions, settings: DictConfig
) -> list[AnalysedTrack]:
    """The speaker's face tracks of a chunk of frames (T, H, W, 3) shown at `times` (s), each cropped and
    fitted as preprocessing does."""
    height, width = frames.shape[1:3]
    detections = detect_faces(frames, tools.detector, int(settings.detect_max_side))
    tubes = speaker_tubes(
        detections,
        options.iou_with_initial,
        options.max_gap,
        int(settings.min_track_frames),
        options.second_face_score_ratio,
        options.second_face_size_ratio,
    )
    tracks = []
    for tube in tubes:
        box = crop_box(tube, height, width, options.increase)
        boxes = interpolate_boxes(tube)
        landmarks = np.stack(
            [
                tools.detector.landmarks_in_box(frames[t], boxes[k])
                for k, t in enumerate(range(tube.start, tube.end))
            ]
        )
        crops = crop_frames(frames[tube.start : tube.end], box, options.crop_size)
        landmarks = to_crop_pixels(landmarks, box, options.crop_size)
        appearance, _ = fit_face(crops, landmarks, options, tools)
        albedo = None if appearance.albedo is None else appearance.albedo.float().cpu().numpy()
        track = FaceTrack(
            crops=crops,
            landmarks=landmarks,
            coeffs=appearance.coeffs.detach().float().cpu().numpy(),
            albedo=albedo,
            times=times[tube.start : tube.end],
        )
        tracks.append(AnalysedTrack(tube.start, tube.end, box, track))
    return tracks


# --- paste-back ----------------------------------------------------------------------------------------


def paste_weights(mouth_mask: np.ndarray, landmark_sets: list[np.ndarray], feather: float) -> np.ndarray:
    """(S, S) float weights of the generated crop: the lower face (the hull of the jaw and the nose base
    of every landmark set: the source's and, where known, the generated mouth's), inside the generator's
    mouth mask, blurred inward over `feather` x S pixels, and exactly 0 within that distance of the
    crop's border, so that the crop's edge never shows."""
    size = mouth_mask.shape[0]
    radius = max(1, int(round(feather * size)))
    region = np.zeros((size, size), np.uint8)
    for points in landmark_sets:
        hull = cv2.convexHull(np.round(points[MOUTH_HULL_POINTS]).astype(np.int32))
        cv2.fillConvexPoly(region, hull, 1)
    region = cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2))
    region &= (mouth_mask > 0.5).astype(np.uint8)
    region = cv2.erode(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2))
    # A kernel truncated at `radius` on a region eroded by it: the fade stays inside the region.
    weights = cv2.GaussianBlur(region.astype(np.float32), (2 * radius + 1,) * 2, sigmaX=radius / 3.0)
    border = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    taper = np.clip((border - radius) / radius, 0.0, 1.0)
    return np.clip(weights * taper[:, None] * taper[None, :], 0.0, 1.0)


def paste_into_frame(frame: np.ndarray, crop: np.ndarray, weights: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The frame with the generated crop (S, S, 3) float in [0, 1] blended into its box through
    `weights` (S, S); pixels of weight 0 (everything outside the mouth region) stay the source's."""
    x0, y0, side = (int(v) for v in box)
    interpolation = cv2.INTER_LINEAR if side >= crop.shape[0] else cv2.INTER_AREA
    patch = cv2.resize(crop, (side, side), interpolation=interpolation)
    alpha = cv2.resize(weights, (side, side), interpolation=cv2.INTER_LINEAR)[..., None]
    out = frame.copy()
    region = out[y0 : y0 + side, x0 : x0 + side].astype(np.float32)
    blended = alpha * patch * 255.0 + (1.0 - alpha) * region
    changed = alpha[..., 0] > 0
    out[y0 : y0 + side, x0 : x0 + side][changed] = np.clip(np.round(blended[changed]), 0, 255).astype(
        np.uint8
    )
    return out


# --- dubbing one video ---------------------------------------------------------------------------------


@dataclass
class DubReport:
    """What a dubbing run did: frame counts, the passed-through frame ranges, the output's rate and
    duration, and seconds per step (analysis, a2e, render, paste, encode, decode)."""

    video: str
    audio: str
    output: str
    fps: float
    frames: int
    dubbed_frames: int
    passed_through: list[tuple[int, int]]
    duration_s: float
    audio_s: float
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _ranges(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted frame indices -> [(first, last)] runs."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


class Dubber:
    """Dubs videos with one generator; the analysis tools are built once (`settings`: the `dub` config)."""

    def __init__(self, generator: SynergyDubber | Wav2LipDubber, analysis: DictConfig, settings: DictConfig):
        self.generator = generator
        self.settings = settings
        self.tools, self.options = analysis_tools(analysis, str(settings.device))

    def dub(self, video: str | Path, audio: str | Path, output: str | Path) -> DubReport:
        settings = self.settings
        video, audio, output = Path(video), Path(audio), Path(output)
        try:
            info = probe(video, float(settings.vfr_tolerance))
        except ClipRejected as rejection:
            raise DubbingError(f"cannot dub {video}: {rejection.reason}: {rejection.detail}") from rejection
        try:
            wave = load_speech(audio)
        except ClipRejected as rejection:
            raise DubbingError(
                f"cannot use {audio} as the speech: {rejection.reason}: {rejection.detail}"
            ) from rejection
        fps = info.fps
        plan = output_plan(
            info.num_frames,
            fps,
            len(wave) / SAMPLE_RATE,
            str(settings.on_long_audio),
            float(settings.long_audio_tolerance_s),
        )
        duration = len(plan) / fps
        samples = int(round(duration * SAMPLE_RATE))
        speech = Speech.from_wave(fit_length(wave, samples))
        seconds = dict.fromkeys(("decode", "analysis", "a2e", "render", "paste", "encode"), 0.0)
        reader = FrameReader(video, info)
        writer = Mp4Writer(
            output,
            info.width - info.width % 2,
            info.height - info.height % 2,
            fps=fps,
            crf=int(settings.encoder.crf),
            preset=str(settings.encoder.preset),
        )
        dubbed, passed = 0, []
        chunk = int(settings.chunk_frames)
        shown = preview_indices(len(plan), int(settings.preview_frames))
        previews: list[tuple[np.ndarray, np.ndarray]] = []
        try:
            with finished_mp4(writer, speech.wave, seconds):
                for start in _progress(range(0, len(plan), chunk), len(plan), chunk, bool(settings.progress)):
                    stop = min(start + chunk, len(plan))
                    tick = time.perf_counter()
                    frames = read_plan_frames(reader, plan[start:stop])
                    seconds["decode"] += time.perf_counter() - tick
                    sources = {i: frames[i - start].copy() for i in shown if start <= i < stop}
                    out, covered = self._dub_chunk(frames, np.arange(start, stop) / fps, speech, seconds)
                    previews += [(source, out[i - start]) for i, source in sorted(sources.items())]
                    dubbed += len(covered)
                    passed.extend(start + k for k in range(len(frames)) if k not in covered)
                    tick = time.perf_counter()
                    for image in out:
                        writer.write(image[: writer.video.height, : writer.video.width])
                    seconds["encode"] += time.perf_counter() - tick
                if dubbed == 0:
                    raise DubbingError(
                        f"no face found in any of the {len(plan)} frames of {video}: nothing to dub"
                    )
        finally:
            reader.close()
        if previews:
            write_preview(output.with_suffix(".png"), previews)
        runs = _ranges(passed)
        if runs:
            log.warning(
                "%s: %d of %d frames show no face and pass through unchanged (frames %s)",
                video,
                len(passed),
                len(plan),
                ", ".join(f"{a}-{b}" for a, b in runs[:20]),
            )
        report = DubReport(
            video=str(video),
            audio=str(audio),
            output=str(output),
            fps=fps,
            frames=len(plan),
            dubbed_frames=dubbed,
            passed_through=runs,
            duration_s=duration,
            audio_s=speech.duration_s,
            seconds={k: round(v, 3) for k, v in seconds.items()},
        )
        log.info("dubbed %s with %s -> %s (%d frames at %.3f fps)", video, audio, output, len(plan), fps)
        return report

    def _dub_chunk(
        self, frames: np.ndarray, times: np.ndarray, speech: Speech, seconds: dict[str, float]
    ) -> tuple[np.ndarray, set[int]]:
        tick = time.perf_counter()
        tracks = analyse_chunk(frames, times, self.tools, self.options, self.settings)
        seconds["analysis"] += time.perf_counter() - tick
        out, covered = frames, set()
        for analysed in tracks:
            track = analysed.track
            tick = time.perf_counter()
            if isinstance(self.generator, SynergyDubber):
                expression = self.generator.expressions(track, speech)
                seconds["a2e"] += time.perf_counter() - tick
                tick = time.perf_counter()
                result = self.generator.render(track, expression)
            else:
                result = self.generator.dub(track, speech)
            seconds["render"] += time.perf_counter() - tick
            tick = time.perf_counter()
            size = result.images.shape[-1]
            scale = size / track.crops.shape[1]
            images = result.images.permute(0, 2, 3, 1).numpy()
            masks = result.mouth_mask[:, 0].numpy()
            for k in range(len(track)):
                landmark_sets = [track.landmarks[k] * scale]
                if result.landmarks is not None:
                    landmark_sets.append(result.landmarks[k].numpy())
                weights = paste_weights(masks[k], landmark_sets, float(self.settings.feather))
                index = analysed.start + k
                out[index] = paste_into_frame(out[index], images[k], weights, analysed.box)
                covered.add(index)
            seconds["paste"] += time.perf_counter() - tick
        return out, covered


def write_preview(path: Path, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """A PNG of source | dubbed frame pairs, one pair a row, each frame at most 360 px high."""
    rows = []
    for source, dubbed in pairs:
        scale = min(1.0, 360 / source.shape[0])
        row = np.concatenate([source, dubbed], axis=1)
        rows.append(
            cv2.resize(row, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else row
        )
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


def preview_indices(num_frames: int, count: int) -> set[int]:
    """The `count` frames of the side-by-side preview, spread evenly over the video (none for 0)."""
    return set(np.linspace(0, num_frames - 1, count).round().astype(int).tolist())


@contextmanager
def finished_mp4(writer: Mp4Writer, audio: np.ndarray, seconds: dict[str, float]) -> Iterator[Mp4Writer]:
    """Writing frames into `writer`: when the body ends, the audio is muxed and the file moved into place
    (the time counted in `seconds["encode"]`); on any error the half-written file is removed."""
    try:
        yield writer
        tick = time.perf_counter()
        writer.close(audio)
        seconds["encode"] += time.perf_counter() - tick
    except BaseException:
        writer.abort()
        raise


def _progress(chunks: range, total: int, chunk: int, enabled: bool) -> Iterator[int]:
    """The chunk starts, with a tqdm bar counting frames."""
    if not enabled:
        yield from chunks
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="frame", desc="dubbing") as bar:
        for start in chunks:
            yield start
            bar.update(min(chunk, total - start))


# --- the task ------------------------------------------------------------------------------------------


def generator_node(cfg: DictConfig) -> DictConfig:
    """`model=wav2lip` dubs with Wav2Lip's generator; otherwise the suite's pipeline (`dub.pipeline`)."""
    target = str(cfg.model.get("_target_", ""))
    if target.endswith("Wav2LipDubber") or target.endswith("SynergyDubber"):
        return cfg.model
    return cfg.dub.pipeline


def make_dubber(cfg: DictConfig) -> Dubber:
    """The dubber of a `task=dub` config: the generator (`generator_node`) with the root `motion` source
    (conf/motion/: stage 1, or `motion=diffusion` with the root `emotion`) and its analysis settings."""
    node = OmegaConf.to_container(generator_node(cfg), resolve=True)
    motion = cfg.get("motion")
    motion = None if motion is None else OmegaConf.to_container(motion, resolve=True)
    if str(node.get("_target_", "")).endswith("SynergyDubber"):
        node["motion"] = motion
    elif motion and (motion.get("source", "stage1") != "stage1" or motion.get("emotion") is not None):
        raise ConfigurationError(
            f"motion={motion.get('source')} / emotion={motion.get('emotion')} replace stage 1 of the "
            f"suite's pipeline; {node.get('_target_')} has no stage 1 (drop model=..., or use "
            "motion=stage1 emotion=null)"
        )
    generator = build_dubber(node, str(cfg.dub.device))
    analysis = generator.preprocess_config() if isinstance(generator, SynergyDubber) else None
    if analysis is None:
        analysis = _analysis_config(cfg)
    return Dubber(generator, analysis, cfg.dub)


def _analysis_config(cfg: DictConfig) -> DictConfig:
    """Analysis settings for a generator that has no run of its own (the official Wav2Lip file): those of
    the suite pipeline's renderer run when it exists, else the composed `data` config."""
    from lightning_modules.dubbing import run_config

    renderer = cfg.dub.pipeline.get("renderer_checkpoint")
    if renderer and Path(renderer).is_file():
        return run_config(renderer).data
    return cfg.data


def pairs_of(batch: str | Path) -> list[tuple[Path, Path]]:
    """(video, audio) pairs of a batch: a CSV with `video` and `audio` columns (paths relative to the CSV),
    or a folder where each video has a speech file of the same stem (an audio file, or `<stem>.audio.mp4`)."""
    batch = Path(batch)
    if batch.is_file():
        with open(batch, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or not {"video", "audio"} <= set(rows[0]):
            raise DubbingError(f"{batch}: a batch CSV needs the columns video,audio")
        return [((batch.parent / r["video"]).resolve(), (batch.parent / r["audio"]).resolve()) for r in rows]
    if not batch.is_dir():
        raise DubbingError(f"{batch}: no such batch folder or CSV")
    pairs = []
    for video in sorted(p for p in batch.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        if video.name.endswith(".audio" + video.suffix):
            continue
        speech = [p for p in batch.iterdir() if p.stem == video.stem and p.suffix.lower() in AUDIO_SUFFIXES]
        speech += [p for p in batch.iterdir() if p.name == f"{video.stem}.audio{video.suffix}"]
        if speech:
            pairs.append((video, speech[0]))
        else:
            log.warning("%s: no speech file of the same stem in %s, skipped", video.name, batch)
    if not pairs:
        raise DubbingError(f"{batch}: no (video, speech) pairs (a video and an audio file of the same stem)")
    return pairs


def run_dub(cfg: DictConfig) -> list[dict[str, Any]]:
    """`task=dub`: one pair (`video`, `audio`, `output`) or a batch (`dub.batch`: a folder or CSV); a
    batch goes on past a pair that fails, lists the failures at the end, and skips outputs that exist
    (a rerun resumes). Writes `dub_report.json` into the run directory."""
    import json

    dub = cfg.dub
    if dub.batch:
        out_dir = Path(dub.output_dir or Path(cfg.paths.output_dir) / "dubbed")
        jobs = [(v, a, out_dir / f"{v.stem}__{a.stem}.mp4") for v, a in pairs_of(dub.batch)]
    else:
        if not cfg.video or not cfg.audio:
            raise DubbingError("task=dub needs video=PATH and audio=PATH (or dub.batch=FOLDER_OR_CSV)")
        output = (
            cfg.output or Path(cfg.paths.output_dir) / f"{Path(cfg.video).stem}__{Path(cfg.audio).stem}.mp4"
        )
        jobs = [(Path(cfg.video), Path(cfg.audio), Path(output))]
    dubber = make_dubber(cfg)
    reports, failures = [], []
    for video, audio, output in jobs:
        if dub.batch and output.exists():
            log.info("%s exists, skipped", output)
            continue
        try:
            reports.append(dubber.dub(video, audio, output).as_dict())
        except DubbingError as error:
            if not dub.batch:
                raise
            log.error("%s", error)
            failures.append({"video": str(video), "audio": str(audio), "error": str(error)})
    path = Path(cfg.paths.output_dir) / "dub_report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dubbed": reports, "failed": failures}, indent=1))
    for report in reports:
        print(f"dubbed: {report['output']}")
    if failures:
        log.error("%d of %d pairs failed: %s", len(failures), len(jobs), [f["video"] for f in failures])
    return reports


def cli_overrides(argv: list[str] | None = None) -> list[str]:
    """The Hydra overrides of a `synergydub-dub` command line (options and overrides in any order)."""
    parser = argparse.ArgumentParser(description="Dub a face video with a new speech track.")
    parser.add_argument("video", nargs="?", help="face video (any frame rate and size)")
    parser.add_argument("audio", nargs="?", help="speech: wav/mp3/m4a/... or a video's audio track")
    parser.add_argument("-o", "--output", help="output mp4 (default: logs/dub/... run directory)")
    parser.add_argument("--on-long-audio", choices=LONG_AUDIO_POLICIES, default=None)
    parser.add_argument("--model", choices=("synergy", "wav2lip"), default="synergy")
    parser.add_argument("--motion", choices=("stage1", "diffusion"), default=None, help="expression source")
    parser.add_argument("--emotion", default=None, help="with --motion diffusion: happy, sad, ...")
    parser.add_argument("--batch", help="a folder or CSV of (video, audio) pairs")
    parser.add_argument("overrides", nargs="*", default=[], help="Hydra overrides, e.g. dub.device=cuda")
    # Intermixed: Hydra overrides may follow the options (`... -o out.mp4 dub.device=cuda`).
    args = parser.parse_intermixed_args(argv)
    overrides = ["task=dub", *args.overrides]
    for key, value in (("video", args.video), ("audio", args.audio), ("output", args.output)):
        if value:
            overrides.append(f"{key}={Path(value).resolve()}")
    if args.on_long_audio:
        overrides.append(f"dub.on_long_audio={args.on_long_audio}")
    if args.model == "wav2lip":
        overrides.append("model=wav2lip")
    if args.motion:
        overrides.append(f"motion={args.motion}")
    if args.emotion:
        overrides.append(f"emotion={args.emotion}")
    if args.batch:
        overrides.append(f"dub.batch={Path(args.batch).resolve()}")
    return overrides


def compose_cli(overrides: list[str], task: str) -> DictConfig:
    """The suite's config composed for a console script as `python run.py` would, its run directory
    `<paths.log_dir>/<task>/cli`."""
    root = Path(__file__).resolve().parents[1]
    os.environ.setdefault("SYNERGYDUB_ROOT", str(root))
    from hydra import compose, initialize_config_dir

    from lightning_modules.training import register_resolvers

    register_resolvers()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with initialize_config_dir(str(root / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=False)
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = str(Path(cfg.paths.log_dir) / task / "cli")
    return cfg


def main(argv: list[str] | None = None) -> None:
    """`synergydub-dub VIDEO AUDIO [-o OUT] [--on-long-audio loop] [--model wav2lip] [--motion diffusion]
    [--emotion happy] [hydra overrides]`: the console script, composing the suite's config as
    `python run.py task=dub` does."""
    cfg = compose_cli(cli_overrides(argv), "dub")
    try:
        run_dub(cfg)
    except (DubbingError, ConfigurationError) as error:
        raise SystemExit(f"error: {error}") from None

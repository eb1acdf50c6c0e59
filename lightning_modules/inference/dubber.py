"""The video dubber (`Dubber`, what `task=dub` in lightning_modules/tasks/dub.py runs): a face video and a
new speech track become a dubbed mp4.

1. The video is read in chunks of `dub.chunk_frames` output frames (bounded memory at any length); each
   chunk is analysed with the preprocessing front end, reused: dlib (or FAN) detection on a copy at most
   `dub.detect_max_side` px, the speaker's face tubes (`track.speaker_tubes`), the square crop
   (`track.crop_box`), landmarks at full resolution, the 3DMM and appearance fit (`clip.fit_face`), all
   with the settings of the renderer's own shards.
2. The speech (any file PyAV decodes, resampled to 16 kHz) gives MFCC and mel features once.
3-5. The generator (`lightning_modules.inference.generators`) makes each track's new crops: stage 1 at 25 fps,
   interpolated to the source's frame times, I_3D with the fitted identity, pose, texture and light,
   then stages 2-4; or Wav2Lip's generator (`generator=wav2lip`). `motion=diffusion [emotion=happy]` takes
   the expression from the motion DiT instead of stage 1: one sequence for the whole speech, generated
   on the first track, which every chunk slices, so the chunks join without a jump
   (lightning_modules/inference/motion_source.py says why); the pose stays the video's.
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

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from omegaconf import DictConfig

from datamodules.media.audio import SAMPLE_RATE, fit_length
from datamodules.media.video import ClipRejected, FrameReader, Mp4Writer, load_speech, probe
from lightning_modules.common.errors import DubbingError
from lightning_modules.inference.analysis import analyse_chunk, analysis_tools
from lightning_modules.inference.generators import SynergyDubber, Wav2LipDubber
from lightning_modules.inference.paste import paste_into_frame, paste_weights
from lightning_modules.inference.tracks import Speech

log = logging.getLogger(__name__)

LONG_AUDIO_POLICIES = ("loop", "pingpong", "freeze", "trim")


AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus")


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


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

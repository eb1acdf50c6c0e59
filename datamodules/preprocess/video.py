"""Video files: H.264 + AAC writing (PyAV), probing and validation (PyAV demux, no decoding), and
frame/audio decoding (decord).

Every way a file can be unusable is raised as `ClipRejected(reason, detail)`: the pipeline writes the
reason into the manifest and moves on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import decord
import numpy as np

from datamodules.audio import SAMPLE_RATE, to_int16


class ClipRejected(Exception):
    """A clip that cannot be used; `reason` is a short stable code, `detail` says why in words."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    audio: np.ndarray | None,
    fps: int = 25,
    sample_rate: int = SAMPLE_RATE,
    crf: int = 20,
    preset: str = "veryfast",
) -> None:
    """Writes (T, H, W, 3) uint8 RGB frames as H.264 (yuv420p) with the mono float audio muxed as AAC.

    Written to `path` + '.tmp' and renamed, so a killed writer never leaves a half file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    _, height, width, _ = frames.shape
    with av.open(str(tmp), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": str(crf), "preset": preset}
        stream_audio = None
        if audio is not None:
            stream_audio = container.add_stream("aac", rate=sample_rate)
            stream_audio.layout = "mono"
        for image in frames:
            container.mux(
                video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24"))
            )
        container.mux(video.encode(None))
        if stream_audio is not None:
            pcm = to_int16(np.asarray(audio, dtype=np.float32))[None]
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, 0
            container.mux(stream_audio.encode(frame))
            container.mux(stream_audio.encode(None))
    tmp.replace(path)


@dataclass
class VideoInfo:
    """What `probe` learns from the container without decoding a frame."""

    width: int
    height: int
    fps: float
    num_frames: int
    pix_fmt: str
    has_audio: bool
    audio_duration_s: float
    video_duration_s: float


_GRAY_FORMATS = ("gray", "gray10le", "gray12le", "gray16le", "ya8", "monob", "monow")
_CONTAINER_MAGIC = (b"ftyp", b"\x1a\x45\xdf\xa3", b"RIFF", b"moov", b"mdat", b"free", b"wide")


def _looks_like_container(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(16)
    return any(magic in head for magic in _CONTAINER_MAGIC)


def probe(path: str | Path, vfr_tolerance: float = 0.2) -> VideoInfo:
    """Opens and demuxes the file (no decoding); raises ClipRejected for a zero-length file, a file
    that is no video, a corrupt/truncated container, no video stream, or a variable frame rate
    (a frame interval more than `vfr_tolerance` relative off the median interval)."""
    path = Path(path)
    if not path.exists():
        raise ClipRejected("missing", f"{path} does not exist")
    if path.stat().st_size == 0:
        raise ClipRejected("empty_file", f"{path} has zero bytes")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as error:
        if _looks_like_container(path):
            raise ClipRejected("corrupt", f"{path}: container does not open ({error})") from error
        raise ClipRejected("not_a_video", f"{path}: not a video container ({error})") from error
    with container:
        if not container.streams.video:
            raise ClipRejected("no_video_stream", f"{path} has no video stream")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        width, height = video.codec_context.width, video.codec_context.height
        pix_fmt = video.codec_context.pix_fmt or ""
        video_pts, audio_end = [], 0.0
        try:
            for packet in container.demux(*([video] + ([audio] if audio is not None else []))):
                if packet.pts is None or packet.size == 0:
                    continue
                if packet.stream.type == "video":
                    video_pts.append(float(packet.pts * packet.time_base))
                else:
                    end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                    audio_end = max(audio_end, end)
        except (av.error.FFmpegError, OSError, ValueError) as error:
            raise ClipRejected("corrupt", f"{path}: demuxing failed ({error})") from error
    if len(video_pts) < 2 or width <= 0 or height <= 0:
        raise ClipRejected("corrupt", f"{path}: {len(video_pts)} video packets, size {width}x{height}")
    times = np.sort(np.array(video_pts))
    intervals = np.diff(times)
    median = float(np.median(intervals))
    if median <= 0:
        raise ClipRejected("corrupt", f"{path}: non-increasing video timestamps")
    worst = float(np.abs(intervals - median).max() / median)
    if worst > vfr_tolerance:
        raise ClipRejected(
            "variable_frame_rate",
            f"{path}: frame intervals from {intervals.min() * 1000:.1f} to {intervals.max() * 1000:.1f} ms",
        )
    return VideoInfo(
        width=width,
        height=height,
        fps=1.0 / median,
        num_frames=len(video_pts),
        pix_fmt=pix_fmt,
        has_audio=audio is not None,
        audio_duration_s=audio_end,
        video_duration_s=len(video_pts) * median,
    )


def validate(
    info: VideoInfo,
    path: str | Path,
    fps: float = 25.0,
    fps_tolerance: float = 0.01,
    max_side: int = 1920,
    min_frames: int = 2,
    audio_tolerance_s: float = 0.04,
) -> None:
    """Rejects what the pipeline cannot use: wrong constant frame rate, grayscale pixel format, frames
    larger than `max_side` (4K), too few frames, no audio, audio shorter than the video."""
    if abs(info.fps - fps) > fps_tolerance * fps:
        raise ClipRejected("frame_rate", f"{path}: {info.fps:.3f} fps, expected {fps}")
    if info.pix_fmt in _GRAY_FORMATS:
        raise ClipRejected("grayscale", f"{path}: pixel format {info.pix_fmt}")
    if max(info.width, info.height) > max_side:
        raise ClipRejected("too_large", f"{path}: {info.width}x{info.height} frames exceed {max_side} px")
    if info.num_frames < min_frames:
        raise ClipRejected("too_short", f"{path}: {info.num_frames} frames < {min_frames}")
    if not info.has_audio:
        raise ClipRejected("no_audio", f"{path} has no audio stream")
    if info.audio_duration_s < info.video_duration_s - audio_tolerance_s:
        raise ClipRejected(
            "audio_shorter_than_video",
            f"{path}: audio {info.audio_duration_s:.2f} s < video {info.video_duration_s:.2f} s",
        )


def decode_frames(path: str | Path, num_threads: int = 1) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames through decord; ClipRejected('corrupt') when decoding fails."""
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    except decord.DECORDError as error:
        raise ClipRejected("corrupt", f"{path}: frame decoding failed ({error})") from error
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ClipRejected("corrupt", f"{path}: decoded no frames")
    return frames


def decode_audio(path: str | Path, num_samples: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono int16 audio resampled to `sample_rate`, cut to `num_samples` (zero-padding at most the
    tolerance `validate` allowed); ClipRejected when the audio stream does not decode."""
    try:
        reader = decord.AudioReader(str(path), sample_rate=sample_rate, mono=True)
        wave = reader[:].asnumpy()[0]
    except decord.DECORDError as error:
        raise ClipRejected("corrupt", f"{path}: audio decoding failed ({error})") from error
    if len(wave) < num_samples:
        wave = np.pad(wave, (0, num_samples - len(wave)))
    return to_int16(wave[:num_samples])


def is_grayscale(frames: np.ndarray, tolerance: float = 2.0) -> bool:
    """True when the colour channels agree within `tolerance` grey levels on average: a grayscale
    clip stored in a colour pixel format."""
    sample = frames[:: max(1, len(frames) // 8)].astype(np.int16)
    spread = np.abs(sample[..., 0] - sample[..., 1]).mean() + np.abs(sample[..., 1] - sample[..., 2]).mean()
    return float(spread) / 2.0 < tolerance

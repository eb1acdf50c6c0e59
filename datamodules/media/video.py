"""Video files: H.264 + AAC writing, probing and validation (demux, no decoding), and decoding onto the
suite's clock, all through PyAV.

The suite's clock is 25 fps with 16 kHz audio (frame t covers samples [640 t, 640 (t + 1))). A source
at any constant frame rate is brought onto it from the streams' own timestamps: `common_span` finds the
time both streams cover (trimming a soundtrack that ends early or starts late), `decode_frames` picks
for each 25 fps output time the source frame nearest to it, and `decode_audio` cuts the 16 kHz audio at
the same start time, so sound and picture stay aligned to within a frame whatever the source rate.

Every way a file can be unusable is raised as `ClipRejected(reason, detail)`: the pipeline writes the
reason into the manifest and moves on.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from datamodules.media.audio import SAMPLE_RATE, to_int16

_DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError)


class ClipRejected(Exception):
    """A clip that cannot be used; `reason` is a short stable code, `detail` says why in words."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Mp4Writer:
    """A streaming H.264 (yuv420p) mp4 writer: frames are encoded as they come (`write`), so a long
    video never sits in memory; the mono float audio, if any, is muxed as AAC on `close`, its first
    sample playing at `audio_start_s`. `fps` is an int, a float such as 29.97 or a Fraction such as
    30000/1001; `crf` and `preset` are libx264's (crf 18 or less is visually lossless). The file is
    written to `path` + '.tmp' and renamed on a clean close, so a killed or failed writer never leaves a
    half file behind (`abort` removes it)."""

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: float | Fraction = 25,
        crf: int = 20,
        preset: str = "veryfast",
        sample_rate: int = SAMPLE_RATE,
        with_audio: bool = True,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs an even frame size, got {width}x{height}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.sample_rate = sample_rate
        self.frames_written = 0
        self.container = av.open(str(self.tmp), "w", format="mp4")
        self.video = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"
        self.video.options = {"crf": str(crf), "preset": preset}
        self.audio = None
        if with_audio:
            self.audio = self.container.add_stream("aac", rate=sample_rate)
            self.audio.layout = "mono"

    def write(self, image: np.ndarray) -> None:
        """One (H, W, 3) uint8 RGB frame."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        self.container.mux(self.video.encode(frame))
        self.frames_written += 1

    def close(self, audio: np.ndarray | None = None, audio_start_s: float = 0.0) -> None:
        self.container.mux(self.video.encode(None))
        if self.audio is not None and audio is not None:
            pcm = to_int16(np.asarray(audio, dtype=np.float32))[None]
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate, frame.pts = self.sample_rate, int(round(audio_start_s * self.sample_rate))
            self.container.mux(self.audio.encode(frame))
            self.container.mux(self.audio.encode(None))
        self.container.close()
        self.tmp.replace(self.path)

    def abort(self) -> None:
        self.container.close()
        self.tmp.unlink(missing_ok=True)


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    audio: np.ndarray | None,
    fps: float | Fraction = 25,
    sample_rate: int = SAMPLE_RATE,
    crf: int = 20,
    preset: str = "veryfast",
    audio_start_s: float = 0.0,
) -> None:
    """Writes (T, H, W, 3) uint8 RGB frames with the mono float audio (or None) through `Mp4Writer`."""
    _, height, width, _ = frames.shape
    writer = Mp4Writer(path, width, height, fps, crf, preset, sample_rate, with_audio=audio is not None)
    try:
        for image in frames:
            writer.write(image)
    except BaseException:
        writer.abort()
        raise
    writer.close(audio, audio_start_s)


@dataclass
class VideoInfo:
    """What `probe` learns from the container without decoding a frame. Times are seconds on the
    streams' shared presentation clock."""

    width: int
    height: int
    fps: float
    num_frames: int
    pix_fmt: str
    has_audio: bool
    video_start_s: float
    video_duration_s: float
    audio_start_s: float
    audio_duration_s: float

    @property
    def video_end_s(self) -> float:
        return self.video_start_s + self.video_duration_s

    @property
    def audio_end_s(self) -> float:
        return self.audio_start_s + self.audio_duration_s


_GRAY_FORMATS = ("gray", "gray10le", "gray12le", "gray16le", "ya8", "monob", "monow")
_CONTAINER_MAGIC = (b"ftyp", b"\x1a\x45\xdf\xa3", b"RIFF", b"moov", b"mdat", b"free", b"wide")


def _looks_like_container(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(16)
    return any(magic in head for magic in _CONTAINER_MAGIC)


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except _DECODE_ERRORS as error:
        if _looks_like_container(path):
            raise ClipRejected("corrupt", f"{path}: container does not open ({error})") from error
        raise ClipRejected("not_a_video", f"{path}: not a video container ({error})") from error


def _existing_file(path: str | Path, role: str) -> Path:
    """`path` as a Path; ClipRejected 'missing' or 'empty_file' (`role` names what the file is for)."""
    path = Path(path)
    if not path.exists():
        raise ClipRejected("missing", f"{path}{role} does not exist")
    if path.stat().st_size == 0:
        raise ClipRejected("empty_file", f"{path}{role} has zero bytes")
    return path


def probe(path: str | Path, vfr_tolerance: float = 0.2) -> VideoInfo:
    """Opens and demuxes the file (no decoding); raises ClipRejected for a zero-length file, a file
    that is no video, a corrupt/truncated container, no video stream, or a variable frame rate
    (a frame interval more than `vfr_tolerance` relative off the median interval)."""
    path = _existing_file(path, "")
    with _open(path) as container:
        if not container.streams.video:
            raise ClipRejected("no_video_stream", f"{path} has no video stream")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        width, height = video.codec_context.width, video.codec_context.height
        pix_fmt = video.codec_context.pix_fmt or ""
        video_pts, audio_spans = [], []
        try:
            for packet in container.demux(*([video] + ([audio] if audio is not None else []))):
                if packet.pts is None or packet.size == 0:
                    continue
                if packet.stream.type == "video":
                    video_pts.append(float(packet.pts * packet.time_base))
                else:
                    audio_spans.append(_packet_span(packet))
        except _DECODE_ERRORS as error:
            raise ClipRejected("corrupt", f"{path}: demuxing failed ({error})") from error
        audio_start, audio_duration = _audio_extent(audio, audio_spans)
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
        video_start_s=float(times[0]),
        video_duration_s=float(times[-1] - times[0]) + median,
        audio_start_s=audio_start,
        audio_duration_s=audio_duration,
    )


def _packet_span(packet: av.Packet) -> tuple[float, float]:
    """(start, end) of a packet in seconds."""
    return float(packet.pts * packet.time_base), float(
        (packet.pts + (packet.duration or 0)) * packet.time_base
    )


def _audio_extent(
    stream: av.audio.stream.AudioStream | None, spans: list[tuple[float, float]]
) -> tuple[float, float]:
    """(start, duration) in seconds of an audio stream from its packets' spans; (0, 0) without any."""
    if stream is None or not spans:
        return 0.0, 0.0
    start = min(begin for begin, _ in spans)
    end = max(finish for _, finish in spans)
    if stream.start_time is not None:
        # the stream's start time leaves out the encoder's priming samples (a packet before 0)
        start = float(stream.start_time * stream.time_base)
    return start, max(0.0, end - start)


def probe_audio(path: str | Path) -> tuple[float, float]:
    """(start, duration) in seconds of the first audio stream of a separate audio file (MEAD's m4a beside
    its video), on a clock that starts with the video's; demuxed, not decoded. ClipRejected: 'missing',
    'empty_file', 'corrupt', 'not_a_video' (no media container), 'no_audio'."""
    path = _existing_file(path, " (the clip's audio)")
    with _open(path) as container:
        if not container.streams.audio:
            raise ClipRejected("no_audio", f"{path} has no audio stream")
        stream = container.streams.audio[0]
        try:
            spans = [_packet_span(p) for p in container.demux(stream) if p.pts is not None and p.size > 0]
        except _DECODE_ERRORS as error:
            raise ClipRejected("corrupt", f"{path}: demuxing failed ({error})") from error
        if not spans:
            raise ClipRejected("no_audio", f"{path}: its audio stream holds no packets")
        return _audio_extent(stream, spans)


def validate(
    info: VideoInfo,
    path: str | Path,
    fps: float = 25.0,
    max_side: int = 1920,
    min_frames: int = 2,
) -> None:
    """Rejects what the pipeline cannot use: a grayscale pixel format, frames larger than `max_side`
    (4K), a video shorter than `min_frames` at `fps`, no audio. Any constant source frame rate is
    usable (`decode_frames` resamples it)."""
    if info.pix_fmt in _GRAY_FORMATS:
        raise ClipRejected("grayscale", f"{path}: pixel format {info.pix_fmt}")
    if max(info.width, info.height) > max_side:
        raise ClipRejected("too_large", f"{path}: {info.width}x{info.height} frames exceed {max_side} px")
    if _frames_in(info.video_duration_s, fps) < min_frames:
        raise ClipRejected(
            "too_short",
            f"{path}: {info.video_duration_s:.2f} s of video = {_frames_in(info.video_duration_s, fps)} "
            f"frames at {fps:g} fps < {min_frames}",
        )
    if not info.has_audio:
        raise ClipRejected("no_audio", f"{path} has no audio stream")


def _frames_in(duration_s: float, fps: float) -> int:
    """Whole output frames in a duration (a microsecond of slack for timestamp rounding)."""
    return int(np.floor(duration_s * fps + 1e-6))


@dataclass(frozen=True)
class Span:
    """The stretch of a clip used on the suite's clock: `num_frames` frames at `fps` from `start_s`
    (seconds on the streams' clock); output frame k shows time start_s + k / fps."""

    start_s: float
    num_frames: int
    fps: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.num_frames / self.fps

    def frame_times(self) -> np.ndarray:
        return self.start_s + np.arange(self.num_frames) / self.fps


def common_span(
    info: VideoInfo, path: str | Path, fps: float, min_frames: int, audio_tolerance_s: float
) -> Span:
    """The time both streams cover, in whole frames at `fps`. Audio that starts or ends within
    `audio_tolerance_s` of the video (AAC priming and padding) counts as covering it (the gap is
    zero-padded); a larger gap trims both streams to their overlap, and a clip with fewer than
    `min_frames` frames left is rejected ('too_short_after_trim')."""
    start = info.video_start_s
    if info.audio_start_s > start + audio_tolerance_s:
        start = info.audio_start_s
    end = info.video_end_s
    if info.audio_end_s < end - audio_tolerance_s:
        end = info.audio_end_s
    num_frames = max(0, _frames_in(end - start, fps))
    if num_frames < min_frames:
        raise ClipRejected(
            "too_short_after_trim",
            f"{path}: audio {info.audio_start_s:.2f}-{info.audio_end_s:.2f} s and video "
            f"{info.video_start_s:.2f}-{info.video_end_s:.2f} s share {max(0.0, end - start):.2f} s = "
            f"{num_frames} frames at {fps:g} fps < {min_frames}",
        )
    return Span(start_s=start, num_frames=num_frames, fps=fps)


def trim_record(info: VideoInfo, span: Span) -> dict[str, float]:
    """The manifest's account of the span: its start and end relative to the first video frame, and
    the two streams' own durations (a trimmed clip has end_s short of video_duration_s)."""
    return {
        "start_s": round(span.start_s - info.video_start_s, 3),
        "end_s": round(span.end_s - info.video_start_s, 3),
        "video_duration_s": round(info.video_duration_s, 3),
        "audio_duration_s": round(info.audio_duration_s, 3),
    }


def decode_frames(path: str | Path, times: np.ndarray | None = None, num_threads: int = 1) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames: for each of `times` (seconds on the streams' clock, increasing)
    the decoded frame whose timestamp is nearest, or every frame when `times` is None.
    ClipRejected('corrupt') when decoding fails."""
    path = Path(path)
    wanted = None if times is None else np.asarray(times, dtype=np.float64)
    out: list[np.ndarray] = []
    previous = None  # (time, frame) of the last decoded frame, converted to RGB only when picked
    converted: list = [None, None]  # the last (frame, RGB image): a frame picked twice converts once

    def rgb(frame: av.VideoFrame) -> np.ndarray:
        if converted[0] is not frame:
            converted[:] = [frame, frame.to_ndarray(format="rgb24")]
        return converted[1]

    with _open(path) as container:
        if not container.streams.video:
            raise ClipRejected("no_video_stream", f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = num_threads
        try:
            for frame in container.decode(stream):
                if wanted is None:
                    out.append(frame.to_ndarray(format="rgb24"))
                    continue
                if frame.pts is None:
                    raise ClipRejected("corrupt", f"{path}: a video frame without a timestamp")
                time = float(frame.pts * frame.time_base)
                while len(out) < len(wanted) and wanted[len(out)] <= time:
                    # the wanted time lies between the previous frame and this one: the nearer wins
                    target = wanted[len(out)]
                    nearer = previous is not None and target - previous[0] <= time - target
                    out.append(rgb(previous[1] if nearer else frame))
                if len(out) == len(wanted):
                    break
                previous = (time, frame)
            if wanted is not None and previous is not None:
                while len(out) < len(wanted):  # times past the last frame show the last frame
                    out.append(rgb(previous[1]))
        except _DECODE_ERRORS as error:
            raise ClipRejected("corrupt", f"{path}: frame decoding failed ({error})") from error
    if not out or (wanted is not None and len(out) != len(wanted)):
        raise ClipRejected("corrupt", f"{path}: decoded no frames")
    return np.stack(out)


def decode_audio(
    path: str | Path, num_samples: int, sample_rate: int = SAMPLE_RATE, start_s: float | None = None
) -> np.ndarray:
    """`num_samples` of mono int16 audio resampled to `sample_rate`, from `start_s` on the streams'
    clock (None: the first video frame's time), placed by the audio's own timestamps; where the audio
    does not reach (at most the tolerance `common_span` allowed) it is zero-padded.
    ClipRejected when the audio stream does not decode."""
    path = Path(path)
    chunks, first = [], None
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    with _open(path) as container:
        if not container.streams.audio:
            raise ClipRejected("no_audio", f"{path} has no audio stream")
        if start_s is None:
            video = container.streams.video[0] if container.streams.video else None
            start_s = float(video.start_time * video.time_base) if video and video.start_time else 0.0
        try:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    if first is None and out.pts is not None:
                        first = float(out.pts * out.time_base)
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except _DECODE_ERRORS as error:
            raise ClipRejected("corrupt", f"{path}: audio decoding failed ({error})") from error
    if not chunks:
        raise ClipRejected("corrupt", f"{path}: decoded no audio")
    wave = np.concatenate(chunks).astype(np.int16)
    offset = int(round((start_s - (first or 0.0)) * sample_rate))
    if offset < 0:
        wave, offset = np.concatenate([np.zeros(-offset, np.int16), wave]), 0
    wave = wave[offset : offset + num_samples]
    return np.pad(wave, (0, num_samples - len(wave)))


def is_grayscale(frames: np.ndarray, tolerance: float = 2.0) -> bool:
    """True when the colour channels agree within `tolerance` grey levels on average: a grayscale
    clip stored in a colour pixel format."""
    sample = frames[:: max(1, len(frames) // 8)].astype(np.int16)
    spread = np.abs(sample[..., 0] - sample[..., 1]).mean() + np.abs(sample[..., 1] - sample[..., 2]).mean()
    return float(spread) / 2.0 < tolerance


class FrameReader:
    """Source frames by index (0 = the first decoded frame), decoded on demand with bounded memory:
    reading forward continues the open decoder; reading back seeks to the keyframe before and decodes
    forward from there. For a constant-frame-rate video (`probe` checks), index i shows time
    video_start_s + i / fps."""

    def __init__(self, path: str | Path, info: VideoInfo, num_threads: int = 0) -> None:
        self.path = Path(path)
        self.info = info
        self.num_threads = num_threads
        self._container = None
        self._frames = None
        self._next = 0  # index of the frame the open decoder yields next

    def _open_at(self, index: int) -> None:
        self.close()
        self._container = _open(self.path)
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        if self.num_threads:
            stream.codec_context.thread_count = self.num_threads
        self._next = 0
        if index > 0:
            target = self.info.video_start_s + index / self.info.fps
            self._container.seek(int(target / stream.time_base), stream=stream, backward=True)
        self._frames = self._container.decode(stream)

    def _index_of(self, frame: av.VideoFrame) -> int:
        time = float(frame.pts * frame.time_base) - self.info.video_start_s
        return int(round(time * self.info.fps))

    def read(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, H, W, 3) uint8 RGB frames start..stop-1 (clamped to the video's frames)."""
        stop = min(stop, self.info.num_frames)
        if start >= stop:
            raise ValueError(f"{self.path}: no frames in [{start}, {stop}) of {self.info.num_frames}")
        if self._frames is None or start < self._next:
            self._open_at(start)
        out: list[np.ndarray] = []
        try:
            for frame in self._frames:
                index = self._index_of(frame) if frame.pts is not None else self._next
                self._next = index + 1
                if index < start:
                    continue
                out.append(frame.to_ndarray(format="rgb24"))
                if index + 1 >= stop:
                    break
        except _DECODE_ERRORS as error:
            raise ClipRejected("corrupt", f"{self.path}: frame decoding failed ({error})") from error
        while out and len(out) < stop - start:  # a stream that ends early shows its last frame
            out.append(out[-1])
        if not out:
            raise ClipRejected("corrupt", f"{self.path}: frames {start}-{stop} did not decode")
        return np.stack(out)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames = None, None


def load_speech(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The whole first audio stream of any file PyAV opens (wav at any rate, mp3, m4a, flac, the audio
    track of a video), as mono float32 in [-1, 1] at `sample_rate`. ClipRejected: 'missing',
    'empty_file', 'not_a_video' (not a media file), 'no_audio', 'corrupt'."""
    path = Path(path)
    if not path.exists():
        raise ClipRejected("missing", f"{path} does not exist")
    if path.stat().st_size == 0:
        raise ClipRejected("empty_file", f"{path} has zero bytes")
    try:
        container = av.open(str(path))
    except _DECODE_ERRORS as error:
        raise ClipRejected("not_a_media_file", f"{path}: no audio or video container ({error})") from error
    chunks = []
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    with container:
        if not container.streams.audio:
            raise ClipRejected("no_audio", f"{path} has no audio stream")
        try:
            for frame in container.decode(container.streams.audio[0]):
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except _DECODE_ERRORS as error:
            raise ClipRejected("corrupt", f"{path}: audio decoding failed ({error})") from error
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise ClipRejected("no_audio", f"{path}: its audio stream holds no samples")
    return np.concatenate(chunks).astype(np.float32) / 32768.0

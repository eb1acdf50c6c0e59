"""The shard format: one litdata sample per clip, written atomically, read back clip by clip.

A clip is stored compactly (frames as concatenated JPEGs, masks as PNGs, features as small float
arrays) so that a loader reads one sample and decodes only the frames it needs: every image stack is a
single `bytes` blob plus an int64 offsets array of length T + 1, image t being
`blob[offsets[t]:offsets[t + 1]]`.

Schema of one sample (`CLIP_SCHEMA`; `make_clip_sample` builds it, `validate_clip_sample` checks it):

| key | type | note |
|---|---|---|
| `clip_id`, `identity`, `source` | str | clip id, speaker id, source video path (may be "") |
| `num_frames`, `image_size` | int | T, crop side in pixels |
| `emotion`, `emotion_level` | int | index into `emotions.EMOTIONS`, level 1-3; UNKNOWN (-1) and 0 |
| `frames`, `frame_offsets` | bytes, int64 (T+1) | RGB crops as JPEG |
| `render3d`, `render3d_offsets` | bytes, int64 (T+1) | I_3D renders as JPEG |
| `face_mask`, `face_mask_offsets` | bytes, int64 (T+1) | rendered face masks as 8-bit PNG |
| `semantic`, `semantic_offsets` | bytes, int64 (T+1) or (1,) | teacher frames (JPEG); b"", [0] if none |
| `coeffs` | float32 (T, 257) | 3DMM coefficients (Deep3DFaceRecon order) |
| `landmarks` | float32 (T, 68, 2) | 68 landmarks in crop pixels |
| `audio` | int16 (640 T,) | 16 kHz mono, frame t covers samples [640 t, 640 (t + 1)) |
| `mfcc` | float32 (N, 13) | python_speech_features defaults, 100 frames/s |
| `mel` | float32 (80, M) | Wav2Lip mel, 80 steps/s |
| `albedo` | float32 (N, 3) or (0, 3) | per-vertex albedo in [0, 1] of the clip (texture: per_vertex) |

litdata infers the serialisation format from the first sample, so every sample has every key with the
same types; a clip without teacher frames carries an empty `semantic` blob rather than no key.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datamodules.emotions import EMOTIONS, UNKNOWN
from datamodules.media.audio import SAMPLES_PER_FRAME
from face3d.morphable_model import COEFF_DIMS, NUM_COEFFS

NUM_LANDMARKS = 68
NUM_MFCC = 13
NUM_MELS = 80


def _coeff_slices() -> dict[str, slice]:
    """Where each part of the 257 coefficients lives, from face3d's one statement of the layout."""
    slices, start = {}, 0
    for name, size in COEFF_DIMS.items():
        slices[name] = slice(start, start + size)
        start += size
    return slices


COEFF_SLICES = _coeff_slices()
SPLITS = ("train", "val", "test")
TEXT_KEYS = ("clip_id", "identity", "source")
INT_KEYS = ("num_frames", "image_size", "emotion", "emotion_level")
MANIFEST_NAME = "manifest.jsonl"
INDEX_NAME = "index.json"
# Beside litdata's index: [clip_id, num_frames] of every clip in storage order, so that evaluation can
# list every frame of a split without reading its clips.
CLIPS_NAME = "clips.json"

# key -> short description; the keys (and their order) every sample carries.
CLIP_SCHEMA: dict[str, str] = {
    "clip_id": "str: unique clip id",
    "identity": "str: speaker id (splits are by identity)",
    "source": "str: source video path, or ''",
    "num_frames": "int: T",
    "image_size": "int: crop side in pixels",
    "emotion": "int: index into datamodules.emotions.EMOTIONS, or UNKNOWN (-1)",
    "emotion_level": "int: intensity level (MEAD's 1-3), 0 when the emotion is unknown",
    "frames": "bytes: T concatenated RGB JPEGs",
    "frame_offsets": "int64 (T+1,)",
    "render3d": "bytes: T concatenated I_3D JPEGs",
    "render3d_offsets": "int64 (T+1,)",
    "face_mask": "bytes: T concatenated 8-bit PNG masks",
    "face_mask_offsets": "int64 (T+1,)",
    "semantic": "bytes: T concatenated teacher JPEGs, or b''",
    "semantic_offsets": "int64 (T+1,), or [0] without teacher frames",
    "coeffs": "float32 (T, 257)",
    "landmarks": "float32 (T, 68, 2), crop pixels",
    "audio": "int16 (640 T,)",
    "mfcc": "float32 (N, 13), 100 frames/s",
    "mel": "float32 (80, M), 80 steps/s",
    "albedo": "float32 (N, 3) per-vertex albedo, or (0, 3)",
}
# image stack -> the key of its offsets
IMAGE_STACKS = {
    "frames": "frame_offsets",
    "render3d": "render3d_offsets",
    "face_mask": "face_mask_offsets",
    "semantic": "semantic_offsets",
}


# --- image stacks ------------------------------------------------------------------------------------


def encode_images(
    images: np.ndarray | Sequence[np.ndarray], fmt: str = "jpeg", quality: int = 95
) -> tuple[bytes, np.ndarray]:
    """A stack of uint8 images, (T, H, W, 3) RGB or (T, H, W) gray, -> (concatenated bytes, int64
    offsets (T + 1)). `fmt` is "jpeg" (frames, renders) or "png" (masks: lossless)."""
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"image format must be 'jpeg' or 'png', got {fmt!r}")
    ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)]) if fmt == "jpeg" else (".png", [])
    blobs = []
    for image in images:
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        elif image.ndim != 2:
            raise ValueError(f"an image must be (H, W, 3) or (H, W), got {image.shape}")
        ok, buffer = cv2.imencode(ext, image, params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {image.shape} image as {fmt}")
        blobs.append(buffer.tobytes())
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return b"".join(blobs), offsets


def decode_image(blob: bytes | memoryview, offsets: np.ndarray, index: int, gray: bool = False) -> np.ndarray:
    """Decode image `index` of a stack only: (H, W, 3) RGB uint8, or (H, W) uint8 when `gray`."""
    count = len(offsets) - 1
    if not 0 <= index < count:
        raise IndexError(f"image {index} of a stack of {count}")
    data = np.frombuffer(
        blob, dtype=np.uint8, count=int(offsets[index + 1] - offsets[index]), offset=int(offsets[index])
    )
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"image {index} of the stack is not a decodable JPEG/PNG")
    return image if gray else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_images(
    blob: bytes | memoryview, offsets: np.ndarray, indices: Sequence[int], gray: bool = False
) -> np.ndarray:
    """Decode the images at `indices` (repeats allowed): (n, H, W, 3) or (n, H, W) uint8."""
    return np.stack([decode_image(blob, offsets, int(i), gray=gray) for i in indices])


def num_images(offsets: np.ndarray) -> int:
    """How many images an offsets array describes (0 for the empty stack [0])."""
    return len(offsets) - 1


# --- samples -----------------------------------------------------------------------------------------


def make_clip_sample(
    clip_id: str,
    identity: str,
    frames: np.ndarray,
    render3d: np.ndarray,
    face_mask: np.ndarray,
    coeffs: np.ndarray,
    landmarks: np.ndarray,
    audio: np.ndarray,
    mfcc: np.ndarray,
    mel: np.ndarray,
    semantic: np.ndarray | None = None,
    albedo: np.ndarray | None = None,
    source: str = "",
    emotion: int = UNKNOWN,
    emotion_level: int = 0,
    jpeg_quality: int = 95,
) -> dict[str, Any]:
    """Encode one preprocessed clip into a shard sample.

    frames, render3d: uint8 (T, S, S, 3) RGB; face_mask: uint8 or bool (T, S, S); semantic: uint8
    (T, S', S', 3) or None; albedo float32 (N, 3), the clip's per-vertex albedo (what renders its I_3D
    anew with new expressions), or None when its texture coefficients hold it; audio int16 (640 T,) (a
    float waveform in [-1, 1] is converted); emotion and emotion_level the clip's labels (UNKNOWN and 0
    for a corpus without them)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1] != frames.shape[2] or frames.shape[3] != 3:
        raise ValueError(f"clip {clip_id}: frames must be (T, S, S, 3), got {frames.shape}")
    mask = np.asarray(face_mask)
    if mask.dtype == bool:
        mask = mask.astype(np.uint8) * 255
    audio = np.asarray(audio)
    if audio.dtype != np.int16:
        audio = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype(np.int16)
    frame_blob, frame_offsets = encode_images(frames, "jpeg", jpeg_quality)
    render_blob, render_offsets = encode_images(render3d, "jpeg", jpeg_quality)
    mask_blob, mask_offsets = encode_images(mask, "png")
    if semantic is None:
        semantic_blob, semantic_offsets = b"", np.zeros(1, dtype=np.int64)
    else:
        semantic_blob, semantic_offsets = encode_images(semantic, "jpeg", jpeg_quality)
    sample = {
        "clip_id": str(clip_id),
        "identity": str(identity),
        "source": str(source),
        "num_frames": int(frames.shape[0]),
        "image_size": int(frames.shape[1]),
        "emotion": int(emotion),
        "emotion_level": int(emotion_level),
        "frames": frame_blob,
        "frame_offsets": frame_offsets,
        "render3d": render_blob,
        "render3d_offsets": render_offsets,
        "face_mask": mask_blob,
        "face_mask_offsets": mask_offsets,
        "semantic": semantic_blob,
        "semantic_offsets": semantic_offsets,
        "coeffs": np.ascontiguousarray(coeffs, dtype=np.float32),
        "landmarks": np.ascontiguousarray(landmarks, dtype=np.float32),
        "audio": np.ascontiguousarray(audio),
        "mfcc": np.ascontiguousarray(mfcc, dtype=np.float32),
        "mel": np.ascontiguousarray(mel, dtype=np.float32),
        "albedo": np.zeros((0, 3), np.float32)
        if albedo is None
        else np.ascontiguousarray(albedo, dtype=np.float32),
    }
    validate_clip_sample(sample)
    return sample


def validate_clip_sample(sample: dict[str, Any]) -> None:
    """Raise ValueError naming the clip and the field when a sample does not follow `CLIP_SCHEMA`."""
    clip = sample.get("clip_id", "<no clip_id>")
    keys = list(sample)
    if keys != list(CLIP_SCHEMA):
        missing = sorted(set(CLIP_SCHEMA) - set(keys))
        extra = sorted(set(keys) - set(CLIP_SCHEMA))
        raise ValueError(
            f"clip {clip}: keys differ from CLIP_SCHEMA (missing {missing}, extra {extra}, or order)"
        )
    t = sample["num_frames"]
    if not isinstance(t, int) or t < 1:
        raise ValueError(f"clip {clip}: num_frames must be a positive int, got {t!r}")

    def check(key: str, dtype: type, shape: tuple[int | None, ...]) -> None:
        value = sample[key]
        if not isinstance(value, np.ndarray) or value.dtype != dtype:
            raise ValueError(
                f"clip {clip}: {key} must be a {np.dtype(dtype)} array, got {type(value).__name__} "
                f"{getattr(value, 'dtype', '')}"
            )
        if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
            raise ValueError(f"clip {clip}: {key} has shape {value.shape}, expected {shape} (None: any)")

    for key in TEXT_KEYS:
        if not isinstance(sample[key], str):
            raise ValueError(f"clip {clip}: {key} must be a str")
    emotion, level = sample["emotion"], sample["emotion_level"]
    if not (isinstance(emotion, int) and isinstance(level, int) and UNKNOWN <= emotion < len(EMOTIONS)):
        raise ValueError(f"clip {clip}: emotion {emotion!r} must be an int index into EMOTIONS or UNKNOWN")
    if (emotion == UNKNOWN) != (level == 0) or level < 0:
        raise ValueError(
            f"clip {clip}: emotion_level {level!r} must be 0 exactly when the emotion is unknown"
        )
    for key, offsets_key in IMAGE_STACKS.items():
        if not isinstance(sample[key], bytes):
            raise ValueError(f"clip {clip}: {key} must be bytes")
        empty_allowed = key == "semantic"
        check(offsets_key, np.int64, (None,))
        offsets = sample[offsets_key]
        if not (len(offsets) == t + 1 or (empty_allowed and len(offsets) == 1)):
            raise ValueError(
                f"clip {clip}: {offsets_key} has {len(offsets)} entries, expected T + 1 = {t + 1}"
            )
        if offsets[0] != 0 or offsets[-1] != len(sample[key]) or np.any(np.diff(offsets) < 0):
            raise ValueError(
                f"clip {clip}: {offsets_key} does not describe the {len(sample[key])} bytes of {key}"
            )
    check("coeffs", np.float32, (t, NUM_COEFFS))
    check("landmarks", np.float32, (t, NUM_LANDMARKS, 2))
    check("audio", np.int16, (t * SAMPLES_PER_FRAME,))
    check("mfcc", np.float32, (None, NUM_MFCC))
    check("mel", np.float32, (NUM_MELS, None))
    check("albedo", np.float32, (None, 3))


# --- writing -----------------------------------------------------------------------------------------


def _temporary_dir_for(output_dir: Path) -> Path:
    return (
        output_dir.parent
        / f".{output_dir.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )


def _remove_stale_temporaries(output_dir: Path) -> None:
    """Remove the temporary dirs a killed writer of `output_dir` on this host left behind."""
    prefix = f".{output_dir.name}.tmp-{socket.gethostname()}-"
    for path in output_dir.parent.glob(f"{prefix}*"):
        pid = path.name[len(prefix) :].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_shards(
    samples: Iterable[dict[str, Any]],
    output_dir: str | os.PathLike,
    chunk_bytes: int | str = "64MB",
    overwrite: bool = False,
) -> int:
    """Write clip samples (see `CLIP_SCHEMA`) as one litdata dataset in `output_dir`; returns the count.

    The dataset is written into a temporary sibling directory and renamed into place only once
    complete, so `output_dir` is either absent, the previous complete dataset, or the new complete one:
    a writer killed at any moment never leaves a half-written shard dir (its temporary dir is removed
    by the next writer of the same `output_dir`). Clip ids must be unique."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass overwrite=True to replace it")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(output_dir)
    tmp = _temporary_dir_for(output_dir)
    try:
        count = _write_dataset(samples, tmp, chunk_bytes, name=str(output_dir))
        if output_dir.exists():  # replace: between the two renames the path is briefly absent
            old = _temporary_dir_for(output_dir)
            os.rename(output_dir, old)
            os.rename(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return count


def _write_dataset(
    samples: Iterable[dict[str, Any]], directory: Path, chunk_bytes: int | str, name: str
) -> int:
    """litdata's BinaryWriter in this process: chunks, then the merged `index.json` last."""
    from litdata.streaming.writer import BinaryWriter

    with warnings.catch_warnings():
        # litdata warns whenever a chunk ends up over chunk_bytes, which whole-clip samples often do.
        warnings.filterwarnings("ignore", message="An item was larger than the target chunk size")
        writer = BinaryWriter(str(directory), chunk_bytes=chunk_bytes)
        # The writer names its chunks and index after the distributed / dataloader-worker rank it detects;
        # here one process writes the whole dataset, whatever environment (a DDP rank, a SLURM task) it is
        # in, so it is rank 0 and merges its own index (litdata's private `_rank`, `_merge_no_wait`).
        writer._rank = 0
        clips: list[tuple[str, int]] = []
        seen: set[str] = set()
        for index, sample in enumerate(samples):
            validate_clip_sample(sample)
            if sample["clip_id"] in seen:
                raise ValueError(f"clip {sample['clip_id']} is given twice to write_shards({name})")
            seen.add(sample["clip_id"])
            clips.append((sample["clip_id"], sample["num_frames"]))
            writer.add_item(index, _to_stored(sample))
        if not clips:
            raise ValueError(f"write_shards({name}): no samples to write")
        writer.done()
        writer._merge_no_wait()
    if not (directory / INDEX_NAME).exists():
        raise RuntimeError(f"litdata wrote no {INDEX_NAME} in {directory}")
    (directory / CLIPS_NAME).write_text(json.dumps(clips))
    return len(clips)


def clip_frame_counts(shard_dir: str | os.PathLike) -> list[int]:
    """The frame count of every clip of a shard dir, in storage order (read from `CLIPS_NAME`, or from
    the clips themselves for shards written without it)."""
    path = Path(shard_dir) / CLIPS_NAME
    if path.is_file():
        return [int(count) for _, count in json.loads(path.read_text())]
    return [clip["num_frames"] for clip in ShardReader(shard_dir)]


def is_complete_shard_dir(path: str | os.PathLike) -> bool:
    """True when `path` holds a finished dataset (the index is the last thing renamed into place)."""
    return (Path(path) / INDEX_NAME).is_file()


# --- reading -----------------------------------------------------------------------------------------


def _to_stored(sample: dict[str, Any]) -> dict[str, Any]:
    """The text fields go to litdata as UTF-8 bytes: litdata stores a str that names an existing file as
    that file's contents (a `source` path to an mp4 became a `video:mp4` field needing torchcodec)."""
    return {key: value.encode() if key in TEXT_KEYS else value for key, value in sample.items()}


def as_clip(raw: dict[str, Any]) -> dict[str, Any]:
    """A sample as litdata hands it back (text and images as bytes or memoryviews, ints as numpy
    scalars) -> the `CLIP_SCHEMA` types."""
    clip = dict(raw)
    for key in TEXT_KEYS:
        clip[key] = bytes(clip[key]).decode()
    for key in IMAGE_STACKS:
        clip[key] = bytes(clip[key])
    for key in INT_KEYS:
        clip[key] = int(clip[key])
    return clip


class ShardReader:
    """Random access to the clips of one shard dir (a split): `len(reader)`, `reader[i]` -> sample dict
    with the `CLIP_SCHEMA` keys, iteration in storage order, `reader.clip_ids()`."""

    def __init__(self, shard_dir: str | os.PathLike) -> None:
        from litdata import StreamingDataset

        self.shard_dir = Path(shard_dir)
        if not is_complete_shard_dir(self.shard_dir):
            raise FileNotFoundError(f"{self.shard_dir} is not a shard dir (no {INDEX_NAME})")
        self._dataset = StreamingDataset(str(self.shard_dir))

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"clip {index} of {len(self)} in {self.shard_dir}")
        return as_clip(self._dataset[index])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            yield self[index]

    def clip_ids(self) -> list[str]:
        return [clip["clip_id"] for clip in self]


# --- a stand-in clip ----------------------------------------------------------------------------------


def random_clip_sample(
    rng: np.random.Generator,
    clip_id: str,
    identity: str = "id00000",
    num_frames: int = 8,
    image_size: int = 32,
    semantic_size: int | None = None,
    emotion: int = UNKNOWN,
    emotion_level: int = 0,
) -> dict[str, Any]:
    """A shard sample of random but well-formed content (smooth images, so JPEG keeps them close), with the
    given labels, for tests and the loader benchmark when no preprocessed corpus is at hand."""
    t, s = num_frames, image_size
    grid = np.linspace(0.0, 1.0, s, dtype=np.float32)

    def images(count: int, size: int) -> np.ndarray:
        g = np.linspace(0.0, 1.0, size, dtype=np.float32)
        a, b, c = rng.uniform(0, 1, (3, count, 1, 1, 3)).astype(np.float32)
        out = a + b * g[None, :, None, None] + c * g[None, None, :, None]
        return (np.clip(out / 3.0, 0.0, 1.0) * 255).astype(np.uint8)

    mask = (grid[None, :, None] - 0.5) ** 2 + (grid[None, None, :] - 0.5) ** 2 < rng.uniform(
        0.05, 0.2, (t, 1, 1)
    )
    return make_clip_sample(
        clip_id=clip_id,
        identity=identity,
        frames=images(t, s),
        render3d=images(t, s),
        face_mask=mask,
        coeffs=rng.normal(0.0, 1.0, (t, NUM_COEFFS)).astype(np.float32),
        landmarks=rng.uniform(0.2 * s, 0.8 * s, (t, NUM_LANDMARKS, 2)).astype(np.float32),
        audio=rng.integers(-8000, 8000, t * SAMPLES_PER_FRAME).astype(np.int16),
        mfcc=rng.normal(0.0, 1.0, (4 * t, NUM_MFCC)).astype(np.float32),
        mel=rng.uniform(-4.0, 4.0, (NUM_MELS, 1 + t * SAMPLES_PER_FRAME // 200)).astype(np.float32),
        semantic=None if semantic_size is None else images(t, semantic_size),
        emotion=emotion,
        emotion_level=emotion_level,
    )

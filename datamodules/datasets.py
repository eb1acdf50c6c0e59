"""The per-stage views of the clip shards, as litdata `StreamingDataset`s.

Training streams the clips through litdata (`examples_per_clip` draws per clip and epoch). Everything
random about an example (the window start, the target frame, the references, the jitter) comes from a
generator seeded by (seed, epoch, sample index), so an example does not depend on the worker, the rank
or the order it is read in: runs are reproducible, and a resumed loader produces the very examples the
interrupted one would have.

Evaluation reads the clips by index instead (`EvaluationExamples`): an explicit list of
(clip, window start or frame) covering every frame of every clip, cut into one contiguous block per
rank, so that validation and test score every clip once under any number of ranks.

- `WindowDataset` (`view: window`): stage 1 (A2E), SyncNet and the Wav2Lip teacher; T consecutive
  frames with their audio features.
- `FrameDataset` (`view: frame`): stages 2-4; a target frame, its I_3D, the mouth-masked crop, the
  face mask and K references of the same clip.

Audio alignment (frame t covers audio samples [640 t, 640 (t + 1)) at 16 kHz):
- MFCC (python_speech_features defaults: 25 ms window, 10 ms step, 100 frames/s): MFCC frame i is
  centred on sample 160 i + 200, so video frame t (centre 640 t + 320) is centred on MFCC frame
  round(4 t + 0.75) = 4 t + 1; the window is the `mfcc_window` steps [4 t + 1 - W/2, 4 t + 1 + W/2).
- mel (Wav2Lip, 80 steps/s): `mel_window` steps starting at int(80 t / 25), as Wav2Lip's
  `crop_audio_window` does (Prajwal et al. 2020).
Windows that run past either end of a clip repeat the edge step (frames and features) or read
silence (the waveform).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from litdata import StreamingDataset
from litdata.streaming.sampler import ChunkedIndex

from datamodules.media.audio import SAMPLES_PER_FRAME, mel_windows
from datamodules.media.masks import mouth_mask, mouth_masked_crop
from datamodules.shards import COEFF_SLICES, IMAGE_STACKS, as_clip, decode_image, num_images

log = logging.getLogger(__name__)

# litdata logs its cache budget at INFO each time a dataset starts an epoch (hundreds of lines per run);
# local shards use no cache, so only its warnings are kept.
logging.getLogger("litdata.utilities.format").setLevel(logging.WARNING)


MFCC_RATE = 100  # python_speech_features default winstep 10 ms


MFCC_WINDOW_SAMPLES = 400  # python_speech_features default winlen 25 ms at 16 kHz


MFCC_STEP_SAMPLES = 160


REFERENCE_POLICIES = ("random", "farthest_pose", "nearest_expression")


def choose_references(
    coeffs: np.ndarray, target: int, count: int, policy: str, min_gap: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of `count` reference frames for frame `target` of a clip with per-frame `coeffs` (T, 257).

    Candidates are the frames at least `min_gap` (and at least 1) frames from the target; if the clip is
    too short for that, any other frame; for a one-frame clip, the target itself. Policies:
    random (uniform without replacement when there are enough candidates), farthest_pose (largest
    head-rotation distance: the references show what the target's pose hides), nearest_expression
    (smallest expression distance). Repeats only when there are fewer candidates than `count`."""
    if policy not in REFERENCE_POLICIES:
        raise ValueError(f"reference_policy must be one of {REFERENCE_POLICIES}, got {policy!r}")
    frames = np.arange(len(coeffs))
    candidates = frames[np.abs(frames - target) >= max(min_gap, 1)]
    if len(candidates) == 0:
        candidates = frames[frames != target]
    if len(candidates) == 0:
        candidates = np.array([target])
    if policy == "random":
        return rng.choice(candidates, size=count, replace=len(candidates) < count)
    part = COEFF_SLICES["angle"] if policy == "farthest_pose" else COEFF_SLICES["exp"]
    distance = np.linalg.norm(coeffs[candidates, part] - coeffs[target, part], axis=1)
    order = np.argsort(-distance if policy == "farthest_pose" else distance, kind="stable")
    return candidates[order[np.arange(count) % len(order)]]


@dataclass(frozen=True)
class PhotometricJitter:
    """Brightness / contrast / saturation jitter of float RGB images in [0, 1], drawn once per example
    and applied alike to every RGB frame of it (never to I_3D renders or masks). 0 disables each."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    @property
    def enabled(self) -> bool:
        return any(v > 0 for v in (self.brightness, self.contrast, self.saturation))

    def draw(self, rng: np.random.Generator) -> tuple[float, float, float]:
        return (
            rng.uniform(-self.brightness, self.brightness),
            rng.uniform(1 - self.contrast, 1 + self.contrast),
            rng.uniform(1 - self.saturation, 1 + self.saturation),
        )

    @staticmethod
    def apply(images: np.ndarray, params: tuple[float, float, float]) -> np.ndarray:
        """images (..., H, W, 3) float32 in [0, 1]."""
        brightness, contrast, saturation = params
        out = images + brightness
        mean = out.mean(axis=(-3, -2, -1), keepdims=True)
        out = (out - mean) * contrast + mean
        gray = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        out = gray[..., None] + (out - gray[..., None]) * saturation
        return np.clip(out, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class ViewOptions:
    """What a view returns; the numbers come from conf/data/*.yaml."""

    image_size: int = 128
    # None: the whole clip (prediction)
    window_frames: int | None = 5
    mfcc_window: int = 28
    mel_window: int = 16
    load_frames: bool = False
    num_references: int = 2
    reference_policy: str = "random"
    reference_min_gap: int = 5
    mask_mode: str = "lower_half"
    mask_dilation: float = 0.03
    jitter: PhotometricJitter = field(default_factory=PhotometricJitter)


def _resize_stack(images: np.ndarray, size: int) -> np.ndarray:
    """(n, S, S[, C]) -> (n, size, size[, C]); area filter when shrinking, bilinear when growing."""
    if images.shape[1] == size:
        return images
    interpolation = cv2.INTER_AREA if images.shape[1] > size else cv2.INTER_LINEAR
    resized = [cv2.resize(image, (size, size), interpolation=interpolation) for image in images]
    return np.stack([r.reshape(size, size, *images.shape[3:]) for r in resized])


def _to_float_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, S, S, C) -> float32 (n, size, size, C) in [0, 1]."""
    return _resize_stack(images, size).astype(np.float32) / 255.0


def _chw(images: np.ndarray) -> torch.Tensor:
    """(..., H, W, C) float -> (..., C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, -3)))


def _decode_stack(clip: dict[str, Any], key: str, indices: np.ndarray, gray: bool = False) -> np.ndarray:
    offsets = clip[IMAGE_STACKS[key]]
    images = np.stack([decode_image(clip[key], offsets, int(i), gray=gray) for i in indices])
    return images[..., None] if gray else images


class ClipDataset(StreamingDataset):
    """A StreamingDataset over one split's shard dir that turns each stored clip into an example.

    Streamed (training): `vary_per_epoch` draws new windows / targets each epoch; `examples_per_clip`
    (litdata's upsampling) draws that many per clip and epoch, each with its own sample index. Read by
    index (evaluation): `example_at(clip_index, position)` is the example at a given window start or
    frame, the last clip read being kept, since consecutive evaluation examples share their clip."""

    def __init__(
        self,
        shard_dir: str,
        options: ViewOptions,
        seed: int = 0,
        shuffle: bool = False,
        vary_per_epoch: bool = True,
        drop_last: bool | None = None,
        examples_per_clip: int = 1,
    ) -> None:
        # batch_decode=1: litdata would otherwise deserialise a window of whole clips ahead of the one
        # asked for, and with a shuffled order most of that work is thrown away (seen in a profile).
        super().__init__(
            str(shard_dir),
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            batch_decode=1,
            subsample=float(examples_per_clip),
        )
        self.options = options
        self.example_seed = seed
        self.vary_per_epoch = vary_per_epoch
        self._last_clip: tuple[int, dict[str, Any]] | None = None

    def __getitem__(self, index: ChunkedIndex | int) -> dict[str, Any]:
        position = index.index if isinstance(index, ChunkedIndex) else int(index)
        clip = as_clip(super().__getitem__(index))
        epoch = int(self.current_epoch) if self.vary_per_epoch else 0
        rng = np.random.default_rng([self.example_seed, epoch, position])
        return self.make_example(clip, rng, None)

    def clip_at(self, clip_index: int) -> dict[str, Any]:
        if self._last_clip is None or self._last_clip[0] != clip_index:
            self._last_clip = (clip_index, as_clip(super().__getitem__(clip_index)))
        return self._last_clip[1]

    def example_at(self, clip_index: int, position: int) -> dict[str, Any]:
        """The example of clip `clip_index` at window start / frame `position` (its other draws, such
        as references, seeded by both)."""
        rng = np.random.default_rng([self.example_seed, clip_index, position])
        return self.make_example(self.clip_at(clip_index), rng, position)

    def make_example(
        self, clip: dict[str, Any], rng: np.random.Generator, position: int | None
    ) -> dict[str, Any]:
        """The example of a clip; `position` (window start or frame) is drawn from `rng` when None."""
        raise NotImplementedError

    def positions(self, num_frames: int) -> list[int]:
        """The positions that cover every frame of a clip of `num_frames` frames once (evaluation)."""
        raise NotImplementedError

    def _scale(self, clip: dict[str, Any]) -> float:
        return self.options.image_size / clip["image_size"]


def mfcc_windows(mfcc: np.ndarray, frames: np.ndarray, width: int) -> np.ndarray:
    """(len(frames), 1, 13, width) MFCC windows centred on the video frames, edge-padded; mfcc (N, 13)."""
    centre = np.round(
        (SAMPLES_PER_FRAME * (frames + 0.5) - MFCC_WINDOW_SAMPLES / 2) / MFCC_STEP_SAMPLES
    ).astype(int)
    steps = centre[:, None] - width // 2 + np.arange(width)[None, :]
    windows = mfcc[np.clip(steps, 0, len(mfcc) - 1)]  # (n, width, 13)
    return np.ascontiguousarray(windows.transpose(0, 2, 1)[:, None])


def labels(clip: dict[str, Any]) -> dict[str, int]:
    """The clip's emotion labels for an example (python ints: a batch holds them as long tensors)."""
    return {"emotion": clip["emotion"], "emotion_level": clip["emotion_level"]}


def window_starts(num_frames: int, length: int | None) -> list[int]:
    """Starts of consecutive windows of `length` frames covering a clip, the last one ending at its end
    (None: one window, the whole clip): how evaluation tiles a clip."""
    length = length or num_frames
    starts = list(range(0, max(num_frames - length, 0) + 1, length))
    if starts[-1] + length < num_frames:
        starts.append(num_frames - length)
    return starts


class WindowDataset(ClipDataset):
    """`view: window`: T consecutive frames of a clip (the window start is drawn per training example;
    `window_frames: None` takes the whole clip).

    Clips shorter than T repeat their last frame (a preprocessed corpus rejects such clips anyway).
    Evaluation tiles each clip with consecutive windows, the last one ending at the clip's end."""

    def positions(self, num_frames: int) -> list[int]:
        return window_starts(num_frames, self.options.window_frames)

    def make_example(
        self, clip: dict[str, Any], rng: np.random.Generator, position: int | None
    ) -> dict[str, Any]:
        opts = self.options
        n = clip["num_frames"]
        length = opts.window_frames or n
        start = int(rng.integers(0, max(n - length, 0) + 1)) if position is None else int(position)
        frames = np.arange(start, start + length)
        indices = np.minimum(frames, n - 1)
        audio = np.zeros(length * SAMPLES_PER_FRAME, dtype=np.float32)
        available = clip["audio"][start * SAMPLES_PER_FRAME : (start + length) * SAMPLES_PER_FRAME]
        audio[: len(available)] = available.astype(np.float32) / 32768.0
        example: dict[str, Any] = {
            "mfcc": torch.from_numpy(mfcc_windows(clip["mfcc"], frames, opts.mfcc_window)),
            "mel": torch.from_numpy(mel_windows(clip["mel"], frames, opts.mel_window)),
            "coeffs": torch.from_numpy(clip["coeffs"][indices]),
            "landmarks": torch.from_numpy(clip["landmarks"][indices] * np.float32(self._scale(clip))),
            "audio": torch.from_numpy(audio),
            # (N, 3) per-vertex albedo of the clip, or (0, 3): what renders its face anew.
            "albedo": torch.from_numpy(clip["albedo"]),
            "clip_id": clip["clip_id"],
            "start": start,
            **labels(clip),
        }
        params = opts.jitter.draw(rng) if opts.jitter.enabled else None
        if num_images(clip["semantic_offsets"]) > 0:
            # At the configured image size, whatever size the teacher wrote (stage 1's image encoder and
            # its Table 7 cost assume Wav2Lip's 96 px).
            semantic = _to_float_images(_decode_stack(clip, "semantic", indices), opts.image_size)
            example["semantic"] = _chw(PhotometricJitter.apply(semantic, params) if params else semantic)
        if opts.load_frames:
            images = _to_float_images(_decode_stack(clip, "frames", indices), opts.image_size)
            example["frames"] = _chw(PhotometricJitter.apply(images, params) if params else images)
        return example


class FrameDataset(ClipDataset):
    """`view: frame`: a target frame with its I_3D, mouth-masked crop (and the mask), face mask, and K
    references of the same clip with their I_3D and coefficients (Stage B of the main paper, seed 002;
    stage 3 projects its keypoints from the coefficients)."""

    def positions(self, num_frames: int) -> list[int]:
        return list(range(num_frames))

    def make_example(
        self, clip: dict[str, Any], rng: np.random.Generator, position: int | None
    ) -> dict[str, Any]:
        opts = self.options
        target = int(rng.integers(0, clip["num_frames"])) if position is None else int(position)
        references = choose_references(
            clip["coeffs"], target, opts.num_references, opts.reference_policy, opts.reference_min_gap, rng
        )
        rgb_indices = np.r_[target, references]
        rgb = _to_float_images(_decode_stack(clip, "frames", rgb_indices), clip["image_size"])
        if opts.jitter.enabled:
            rgb = PhotometricJitter.apply(rgb, opts.jitter.draw(rng))
        landmarks = clip["landmarks"][target]
        masked = mouth_masked_crop(rgb[0], landmarks, opts.mask_mode, opts.mask_dilation)
        mask = mouth_mask(*rgb.shape[1:3], landmarks, opts.mask_mode, opts.mask_dilation)
        size = opts.image_size
        rgb = _resize_stack(rgb, size)  # masked at the stored resolution, then resized alike
        masked = _resize_stack(masked[None], size)[0]
        mask = _resize_stack(mask[None, ..., None].astype(np.float32), size)[0]
        renders = _to_float_images(_decode_stack(clip, "render3d", rgb_indices), size)
        face_mask = _to_float_images(_decode_stack(clip, "face_mask", [target], gray=True), size)
        scale = np.float32(self._scale(clip))
        return {
            "target": _chw(rgb[0]),
            "render3d": _chw(renders[0]),
            "masked": _chw(masked),
            "mouth_mask": _chw((mask > 0.5).astype(np.float32)),
            "face_mask": _chw(face_mask[0]),
            "references": _chw(rgb[1:]),
            "references_render3d": _chw(renders[1:]),
            "coeffs": torch.from_numpy(clip["coeffs"][target]),
            "landmarks": torch.from_numpy(landmarks * scale),
            "references_coeffs": torch.from_numpy(clip["coeffs"][references]),
            "clip_id": clip["clip_id"],
            "frame_index": target,
            **labels(clip),
        }


VIEWS: dict[str, type[ClipDataset]] = {"window": WindowDataset, "frame": FrameDataset}


class EvaluationExamples(torch.utils.data.Dataset):
    """Map-style evaluation examples: the items (clip index, position) of one rank, read by index from
    a `ClipDataset`. `evaluation_items` lists them and cuts them into per-rank blocks."""

    def __init__(self, examples: ClipDataset, items: list[tuple[int, int]]) -> None:
        self.examples = examples
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip_index, position = self.items[index]
        return self.examples.example_at(clip_index, position)


def evaluation_items(
    examples: ClipDataset, frame_counts: list[int], rank: int = 0, world_size: int = 1
) -> list[tuple[int, int]]:
    """Rank `rank`'s contiguous block of every (clip, position) that covers every frame of every clip.

    Blocks differ in size by at most one example: no rank repeats an example to even them out (as a
    distributed sampler would) and none is dropped (as litdata's streaming would)."""
    items = [
        (clip, position) for clip, count in enumerate(frame_counts) for position in examples.positions(count)
    ]
    if len(items) < world_size:
        raise ValueError(f"{len(items)} evaluation examples cannot give each of {world_size} ranks one")
    bounds = np.linspace(0, len(items), world_size + 1).round().astype(int)
    return items[bounds[rank] : bounds[rank + 1]]

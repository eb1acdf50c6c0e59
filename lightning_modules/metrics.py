"""Evaluation metrics shared by the stages (METHOD.md 1.5).

Plain functions of tensors (AED, LMD of projected landmarks, the SyncNet offset search, the LSE protocol
of joonson/syncnet_python), and torchmetrics `Metric`s where a metric accumulates over a split and must
reduce across DDP ranks (LMD of generated images, LPIPS, CSIM, AED, LSE-D / LSE-C, temporal stability);
PSNR and SSIM are torchmetrics' own, FID is torchmetrics' on torch-fidelity's Inception (`fid_metric`).
Every accumulating metric keeps sums and counts reduced by summing, so a split's value is exact under DDP.
LightningModules, callbacks and bench scripts compute a metric the same way.

Pretrained files are never downloaded: each backend reads its file from `paths.weights_dir` and, when it
is missing, either is switched off with a warning naming the file (LPIPS, FID) or raises an error naming
it (SyncNet v2, ArcFace, face_alignment's FAN)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from lightning_modules.networks.syncnet import SYNC_FRAMES, SyncNet, face_window
from lightning_modules.networks.syncnet_v2 import FACE_SIZE, MFCC_WINDOW, SyncNetV2

log = logging.getLogger(__name__)

LSE_VSHIFT = 15  # syncnet_python's default --vshift: audio offsets -15..15 frames (0.6 s each way)
ARCFACE_FILE = "arcface.pt"
# torch-fidelity's Inception file (its URL_INCEPTION_V3), then pytorch-fid's name for the same weights.
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")

# iBUG 68-point order: the mouth is points 48-67 (outer lip 48-59, inner lip 60-67).
MOUTH_LANDMARKS = tuple(range(48, 68))


def average_expression_distance(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AED: the mean absolute difference of 3DMM expression coefficients, over every coefficient of
    every frame (the paper's Table 3 values, about 0.08-0.1, are per-coefficient means)."""
    if predicted.shape != target.shape:
        raise ValueError(f"AED needs equal shapes, got {tuple(predicted.shape)} and {tuple(target.shape)}")
    return (predicted - target).abs().mean()


def landmark_distance(
    predicted: torch.Tensor, target: torch.Tensor, indices: Sequence[int] | None = None
) -> torch.Tensor:
    """LMD: the mean Euclidean distance in pixels between corresponding 2D landmarks (..., 68, 2),
    over the points in `indices` (all when None; `MOUTH_LANDMARKS` for the mouth-only variant of
    Chen et al. 2018)."""
    if predicted.shape != target.shape or predicted.shape[-1] != 2:
        raise ValueError(
            f"LMD needs equal (..., N, 2) shapes, got {tuple(predicted.shape)} and {tuple(target.shape)}"
        )
    if indices is not None:
        predicted, target = predicted[..., list(indices), :], target[..., list(indices), :]
    return (predicted - target).norm(dim=-1).mean()


def sync_probability(syncnet: SyncNet, frames: Tensor, mel: Tensor) -> Tensor:
    """(N,) in-sync probability (cosine similarity of the unit embeddings) of 5-frame windows
    `frames` (N, 5, 3, H, W) RGB in [0, 1] with the mel windows `mel` (N, 80, 16) starting at their
    first frame."""
    audio, face = syncnet(mel, face_window(frames))
    return (audio * face).sum(dim=1)


@torch.no_grad()
def sync_measures(syncnet: SyncNet, frames: Tensor, mel: Tensor, max_offset: int = 15) -> dict[str, Tensor]:
    """The sync of each clip of a batch, from the distances of its face and audio embeddings at
    audio offsets -max_offset..max_offset frames (Chung & Zisserman 2016; `syncnet_python`'s
    LSE-C and LSE-D, used as "Sync" in Wav2Lip and in the main paper).

    frames (B, T, 3, H, W) RGB in [0, 1]; mel (B, T, 80, 16), the mel window starting at each frame
    (the `view: window` batch). Face windows start at s = 0..T-5; at offset o a face window at s is
    compared with the audio window at s + o where that lies in the clip, and the Euclidean distances
    of the unit embeddings are averaged over the clip. `max_offset` is cut to T - 5 (at least one pair
    per offset). Returns per clip (B,) tensors:
    - `confidence`: median over offsets minus the minimum of the mean distance (LSE-C; higher = a
      sharper, better-synced minimum),
    - `distance`: that minimum (LSE-D; lower is better),
    - `offset`: the offset of the minimum, in frames (0 for in-sync audio)."""
    batch, length = frames.shape[:2]
    if mel.shape[:2] != (batch, length):
        raise ValueError(f"frames {tuple(frames.shape)} and mel {tuple(mel.shape)} need the same (B, T)")
    max_offset = min(max_offset, length - SYNC_FRAMES)
    if max_offset < 1:
        raise ValueError(f"sync_measures needs windows of at least {SYNC_FRAMES + 1} frames, got {length}")
    windows = length - SYNC_FRAMES + 1
    starts = torch.arange(windows, device=frames.device)
    steps = starts[:, None] + torch.arange(SYNC_FRAMES, device=frames.device)  # (N, 5)
    faces = frames[:, steps].flatten(0, 1)  # (B N, 5, 3, H, W)
    audio, face = syncnet(mel.flatten(0, 1), face_window(faces))
    audio = audio.view(batch, length, -1)
    face = face.view(batch, windows, -1)
    distances = torch.cdist(face, audio)  # (B, N, T): face window s against audio window j
    offsets = torch.arange(-max_offset, max_offset + 1, device=frames.device)
    audio_index = starts[None, :] + offsets[:, None]  # (O, N)
    valid = (audio_index >= 0) & (audio_index < length)
    picked = distances[
        :, starts[None, :].expand_as(audio_index), audio_index.clamp(0, length - 1)
    ]  # (B, O, N)
    mean = (picked * valid).sum(-1) / valid.sum(-1)  # (B, O)
    minimum, best = mean.min(dim=1)
    return {
        "confidence": mean.median(dim=1).values - minimum,
        "distance": minimum,
        "offset": offsets[best],
    }


# --- image metrics of the renderer (stages 2-4) --------------------------------------------------------


class ImageLandmarkDistance(torchmetrics.Metric):
    """LMD between generated and target face crops: 68 landmarks located on both images inside the box of
    the target's known landmarks, then the mean Euclidean distance in pixels over `indices` (all 68, or
    the mouth). Accumulates sums, so it is exact over a whole split and under DDP (states reduced by
    summing).

    `backend`: "dlib" (default): dlib's shape predictor, shipped by the face_recognition_models package,
    so offline; "face_alignment": the 2D-FAN of Bulat & Tzimiropoulos 2017 (the `face_alignment` package,
    what the main paper's preprocessing uses) with its file `2DFAN4-11f355bf06.pth.tar` read from
    `weights_dir`; a missing file raises FileNotFoundError naming it (the metric is never computed
    through another network than the one asked for)."""

    full_state_update = False
    higher_is_better = False

    def __init__(
        self,
        indices: Sequence[int] | None = None,
        margin: float = 0.1,
        backend: str = "dlib",
        weights_dir: str | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__()
        if backend not in ("dlib", "face_alignment"):
            raise ValueError(f"unknown landmark backend {backend!r} (dlib | face_alignment)")
        self.indices = list(indices) if indices is not None else list(range(68))
        self.margin = margin
        self.backend = backend
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self._predictor = None
        self._fan = _face_alignment_fan(weights_dir, device) if backend == "face_alignment" else None

    def _landmarks(self, image: Tensor, box: tuple[int, int, int, int]) -> np.ndarray:
        pixels = np.ascontiguousarray(_to_uint8(image))
        if self._fan is not None:
            found = self._fan.get_landmarks_from_image(pixels, detected_faces=[np.asarray(box, np.float32)])
            return np.asarray(found[0][:, :2], dtype=np.float64)
        import dlib

        if self._predictor is None:
            self._predictor = _dlib_model("shape_predictor_68_face_landmarks.dat")
        shape = self._predictor(pixels, dlib.rectangle(*box))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def update(self, predicted: Tensor, target: Tensor, target_landmarks: Tensor) -> None:
        """predicted, target (B, 3, H, W) in [0, 1]; target_landmarks (B, 68, 2) pixels (the box)."""
        for image, truth, points in zip(predicted, target, target_landmarks.detach().float().cpu().numpy()):
            low, high = points.min(axis=0), points.max(axis=0)
            pad = self.margin * (high - low)
            box = tuple(int(round(v)) for v in (*(low - pad), *(high + pad)))
            a = self._landmarks(image, box)[self.indices]
            b = self._landmarks(truth, box)[self.indices]
            self.total += float(np.linalg.norm(a - b, axis=1).mean())
            self.count += 1

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


def _to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) RGB in [0, 1] -> (H, W, 3) uint8 (rounded, as an 8-bit frame would hold it)."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


_DLIB_MODELS: dict[str, object] = {}


def _dlib_model(name: str) -> object:
    """A dlib model file of the face_recognition_models package, loaded once per process."""
    if name not in _DLIB_MODELS:
        import dlib

        from datamodules.preprocess.detect import dlib_model_path

        loader = dlib.face_recognition_model_v1 if "recognition" in name else dlib.shape_predictor
        _DLIB_MODELS[name] = loader(str(dlib_model_path(name)))
    return _DLIB_MODELS[name]


def _face_alignment_fan(weights_dir: str | None, device: str) -> object:
    """face_alignment's 2D-FAN read offline from `weights_dir` (boxes come from the caller, so the
    package's "folder" detector, which loads nothing, stands in for S3FD)."""
    from face_alignment import FaceAlignment, LandmarksType

    from datamodules.preprocess.detect import FAN_FILE
    from lightning_modules.pretrained import offline_torch_hub

    path = Path(weights_dir or "<paths.weights_dir>") / FAN_FILE
    if weights_dir is None or not path.is_file():
        raise FileNotFoundError(
            f"LMD backend face_alignment: {path} is missing (download {FAN_FILE} from "
            "https://www.adrianbulat.com/downloads/python-fan/ into paths.weights_dir; nothing is fetched at "
            "run time), or use backend=dlib"
        )
    with offline_torch_hub(weights_dir):
        return FaceAlignment(
            LandmarksType.TWO_D, device=device, flip_input=False, face_detector="folder", compile=False
        )


def lpips_metric(weights_dir: str | None) -> torchmetrics.Metric | None:
    """torchmetrics' LPIPS (AlexNet, Zhang et al. 2018) with its backbone read from `weights_dir`
    (`alexnet-owt-7be5be79.pth`, see lightning_modules/pretrained.py) and its linear layers from the
    package; None, with a warning naming the file, when the backbone is missing."""
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    from lightning_modules.pretrained import missing_weights_message, offline_torch_hub, weights_path

    if weights_dir is None or not weights_path("alexnet", weights_dir).is_file():
        log.warning(missing_weights_message("alexnet", weights_dir or "<paths.weights_dir>", "LPIPS"))
        return None
    with offline_torch_hub(weights_dir):
        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)


def fid_weights_path(weights_dir: str | os.PathLike | None) -> Path | None:
    """The Inception file in `weights_dir` under torch-fidelity's name, or pytorch-fid's name for the
    same file (both names carry the sha256 prefix 6726825d and the state dicts have the same keys), or
    None."""
    if weights_dir is None:
        return None
    for name in INCEPTION_FILES:
        if (Path(weights_dir) / name).is_file():
            return Path(weights_dir) / name
    return None


def fid_metric(
    weights_dir: str | os.PathLike | None, feature: int = 2048, **kwargs: object
) -> torchmetrics.Metric | None:
    """torchmetrics' FrechetInceptionDistance (Heusel et al. 2017) on torch-fidelity's port of the
    TensorFlow Inception graph (2015-12-05), its weights read from `weights_dir`
    (`weights-inception-2015-12-05-6726825d.pth`, torch-fidelity's file, or pytorch-fid's
    `pt_inception-2015-12-05-6726825d.pth`); None, with a warning naming the file, when it is missing.

    Inputs are uint8 (N, 3, H, W) images, torchmetrics' default (`normalize=True` in `kwargs` takes floats
    in [0, 1] instead; uint8 images with it would overflow). torch-fidelity opens
    the file with `weights_only=False`, so it is first read here with `weights_only=True`: a file that
    holds anything but tensors is refused before it is unpickled."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    path = fid_weights_path(weights_dir)
    if path is None:
        wanted = Path(weights_dir or "<paths.weights_dir>") / INCEPTION_FILES[0]
        log.warning(
            "FID is off: %s is missing (download %s into paths.weights_dir; nothing is fetched at run time)",
            wanted,
            INCEPTION_URL,
        )
        return None
    try:
        checked = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is not a plain Inception state dict (weights_only load: {error})"
        ) from error
    if not isinstance(checked, dict) or not all(isinstance(v, Tensor) for v in checked.values()):
        raise ValueError(f"{path} holds no Inception state dict (expected a mapping of tensors)")
    del checked
    try:
        return FrechetInceptionDistance(feature=feature, feature_extractor_weights_path=str(path), **kwargs)
    except RuntimeError as error:
        raise ValueError(f"{path} does not match torch-fidelity's Inception: {error}") from error


# --- accumulating versions of the per-batch measures -----------------------------------------------------


class AverageExpressionDistance(torchmetrics.Metric):
    """AED (`average_expression_distance`) pooled over a split: the sum of absolute coefficient
    differences over the count of coefficients, so batches of any size weigh by their frames."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted: Tensor, target: Tensor) -> None:
        """predicted, target: expression coefficients of equal shape (..., K)."""
        if predicted.shape != target.shape:
            raise ValueError(
                f"AED needs equal shapes, got {tuple(predicted.shape)} and {tuple(target.shape)}"
            )
        self.total += (predicted.detach().double() - target.detach().double()).abs().sum()
        self.count += predicted.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class TemporalStability(torchmetrics.Metric):
    """Flicker of the mouth region: the mean absolute frame-to-frame change of the pixels inside a mouth
    mask, of the generated frames and of the source frames of the same clip, and their ratio
    (generated / source: about 1 when the generated mouth moves as much as the real one, well above 1
    when frames repaired independently flicker; METHOD.md 1.5's known limitation).

    The change between frames t-1 and t is weighed by the union (max) of their masks, so a moving mask
    covers the mouth in both. Sums over pixels, channels and clips are the states (DDP: summed)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("generated_change", "source_change", "weight"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, generated: Tensor, source: Tensor, mask: Tensor) -> None:
        """generated, source (T, C, H, W) of one clip (T >= 2); mask (T, 1, H, W) or (1, H, W) in [0, 1]."""
        if generated.shape != source.shape or generated.dim() != 4 or generated.shape[0] < 2:
            raise ValueError(
                f"generated and source must be equal (T >= 2, C, H, W), got {tuple(generated.shape)} and "
                f"{tuple(source.shape)}"
            )
        mask = mask.detach().double()
        if mask.dim() == 3:
            mask = mask.unsqueeze(0)
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != generated.shape[-2:]:
            raise ValueError(f"mask must be (T, 1, H, W) or (1, H, W), got {tuple(mask.shape)}")
        weight = torch.maximum(mask[1:], mask[:-1]) if mask.shape[0] > 1 else mask  # (T-1 | 1, 1, H, W)
        weight = weight.expand(generated.shape[0] - 1, generated.shape[1], *generated.shape[-2:])
        for state, frames in (("generated_change", generated), ("source_change", source)):
            frames = frames.detach().double()
            change = (frames[1:] - frames[:-1]).abs()
            setattr(self, state, getattr(self, state) + (change * weight).sum())
        self.weight += weight.sum()

    def compute(self) -> dict[str, Tensor]:
        weight = self.weight.clamp(min=1e-12)
        generated, source = self.generated_change / weight, self.source_change / weight
        return {
            "generated": generated.float(),
            "source": source.float(),
            "ratio": (generated / source.clamp(min=1e-12)).float(),
        }


# --- LSE-D / LSE-C: the SyncNet protocol of joonson/syncnet_python ----------------------------------------


def lse_from_embeddings(video: Tensor, audio: Tensor, vshift: int = LSE_VSHIFT) -> dict[str, Tensor]:
    """syncnet_python's offset search (`calc_pdist` and `SyncNetInstance.evaluate`), vectorised.

    video, audio (N, D): the embeddings of the N windows of a clip, window i of both starting at frame i.
    The audio embeddings are zero-padded by `vshift` windows at both ends; video window i is compared
    with padded audio windows i .. i + 2 vshift (audio offsets -vshift .. vshift) by `pairwise_distance`
    (Euclidean, eps 1e-6 as torch's default), and the distances are averaged over the windows per offset
    (the padding's zero vectors included, as in the reference). Returns:
    - `mean_distances` (2 vshift + 1,),
    - `distance`: their minimum (LSE-D, lower is better),
    - `confidence`: their median (torch.median: the middle one of 2 vshift + 1) minus the minimum
      (LSE-C, higher is better),
    - `offset`: vshift - argmin, syncnet_python's "AV offset" in frames (0 in sync; +k when the audio
      embedding of window i matches the video of window i + k, i.e. the sound comes k frames early)."""
    if video.dim() != 2 or video.shape != audio.shape or video.shape[0] < 1:
        raise ValueError(
            f"video and audio must be equal (N >= 1, D), got {tuple(video.shape)}, {tuple(audio.shape)}"
        )
    span = 2 * vshift + 1
    padded = F.pad(audio, (0, 0, vshift, vshift))  # (N + 2 vshift, D)
    windows = padded.unfold(0, span, 1).transpose(1, 2)  # (N, span, D): padded rows i .. i + 2 vshift
    distances = F.pairwise_distance(video[:, None, :].expand_as(windows), windows)  # (N, span)
    mean = distances.mean(dim=0)
    minimum, index = torch.min(mean, 0)
    return {
        "distance": minimum,
        "confidence": torch.median(mean) - minimum,
        "offset": vshift - index,
        "mean_distances": mean,
    }


def lse_window_count(num_frames: int, num_samples: int, sample_rate: int = 16000) -> int:
    """syncnet_python's number of windows: min(frames, floor(samples / 640)) - 5 (`lastframe` of
    `evaluate`; one fewer than the 5-frame windows that fit, which keeps the last 20-column MFCC window
    inside the audio). At 25 fps, 640 samples are one frame at 16 kHz."""
    samples_per_frame = sample_rate // 25
    return min(num_frames, num_samples // samples_per_frame) - SYNC_FRAMES


def syncnet_mfcc(wave: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """(13, M) MFCC as syncnet_python computes it: python_speech_features' defaults on the 16-bit PCM
    sample values (it reads the wav with scipy and passes the int16 array; the scale shifts coefficient
    0, the log energy), coefficients along the rows. A float waveform in [-1, 1] is first quantised to
    int16 as ffmpeg's pcm_s16le would."""
    import python_speech_features

    from datamodules.audio import to_int16

    pcm = wave if wave.dtype == np.int16 else to_int16(np.asarray(wave, dtype=np.float32))
    return python_speech_features.mfcc(pcm.astype(np.float64), sample_rate).T


def syncnet_python_crop(
    frames: np.ndarray, boxes: np.ndarray, crop_scale: float = 0.4, size: int = FACE_SIZE
) -> np.ndarray:
    """The face track crop of syncnet_python's `run_pipeline.py` (`crop_video`): (T, H, W, 3) uint8
    frames and the track's (T, 4) boxes x0, y0, x1, y1 -> (T, size, size, 3) uint8.

    Per frame, the half size s = max(w, h) / 2 and centre (x, y) of the box; each of s, x, y smoothed by
    scipy's 13-tap `medfilt` over the track (zero-padded at the ends, as scipy does; with fewer than 7
    frames the zeros win the median, so shorter tracks are refused); the frame padded on every side by
    int(s (1 + 2 cs)) pixels of value 110; rows y - s .. y + s (1 + 2 cs) and columns x - s (1 + cs) ..
    x + s (1 + cs) (ends truncated by int(), as there) resized to size x size by cv2's bilinear `resize`.
    The box centre thus lands at 0.357 of the height: the crop keeps the mouth and chin. The reference
    crops JPEG frames and re-encodes the result with XVID; those codec losses are not reproduced."""
    import cv2
    import scipy.signal

    frames = np.asarray(frames)
    boxes = np.asarray(boxes, dtype=np.float64)
    if frames.ndim != 4 or frames.shape[-1] != 3 or boxes.shape != (len(frames), 4):
        raise ValueError(f"frames must be (T, H, W, 3) and boxes (T, 4), got {frames.shape}, {boxes.shape}")
    if len(frames) < 7:
        raise ValueError(
            f"syncnet_python_crop needs at least 7 frames (its 13-tap median filter), got {len(frames)}"
        )
    half = scipy.signal.medfilt(np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2, 13)
    centre_y = scipy.signal.medfilt((boxes[:, 1] + boxes[:, 3]) / 2, 13)
    centre_x = scipy.signal.medfilt((boxes[:, 0] + boxes[:, 2]) / 2, 13)
    cs = crop_scale
    crops = []
    for frame, bs, y, x in zip(frames, half, centre_y, centre_x):
        pad = int(bs * (1 + 2 * cs))
        padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="constant", constant_values=110)
        my, mx = y + pad, x + pad
        face = padded[
            int(my - bs) : int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)) : int(mx + bs * (1 + cs))
        ]
        crops.append(cv2.resize(face, (size, size)))
    return np.stack(crops)


def _frames_uint8(frames: np.ndarray | Tensor) -> Tensor:
    """(T, H, W, 3) RGB uint8 frames (array or tensor) as a uint8 tensor."""
    frames = frames if isinstance(frames, Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB, got {tuple(frames.shape)} {frames.dtype}")
    return frames


def _window_starts(count: int) -> Tensor:
    return torch.arange(count)[:, None] + torch.arange(SYNC_FRAMES)[None, :]  # (N, 5) frame indices


@torch.no_grad()
def _syncnet_v2_embeddings(
    frames: Tensor, wave: np.ndarray, network: SyncNetV2, count: int, batch_size: int
) -> tuple[Tensor, Tensor]:
    if frames.shape[1:3] != (FACE_SIZE, FACE_SIZE):
        raise ValueError(
            f"SyncNet v2 needs 224 x 224 face crops (syncnet_python_crop), got {tuple(frames.shape[1:3])}"
        )
    device = next(network.parameters()).device
    # syncnet_python feeds cv2 frames: BGR, raw 0..255, stacked as (1, 3, T, H, W).
    video = frames[..., [2, 1, 0]].permute(3, 0, 1, 2).float()
    mfcc = torch.from_numpy(syncnet_mfcc(wave)).float()  # (13, M)
    video_out, audio_out = [], []
    for begin in range(0, count, batch_size):
        steps = range(begin, min(count, begin + batch_size))
        faces = torch.stack([video[:, v : v + SYNC_FRAMES] for v in steps]).to(device)
        columns = torch.stack([mfcc[None, :, 4 * v : 4 * v + MFCC_WINDOW] for v in steps]).to(device)
        video_out.append(network.forward_lip(faces).cpu())
        audio_out.append(network.forward_aud(columns).cpu())
    return torch.cat(video_out), torch.cat(audio_out)


@torch.no_grad()
def _suite_syncnet_embeddings(
    frames: Tensor, wave: np.ndarray, network: SyncNet, count: int, batch_size: int
) -> tuple[Tensor, Tensor]:
    from datamodules.audio import mel_windows, melspectrogram

    device = next(network.parameters()).device
    faces = frames.permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W) RGB in [0, 1]
    mel = torch.from_numpy(mel_windows(melspectrogram(wave), np.arange(count)))  # (N, 80, 16)
    steps = _window_starts(count)
    video_out, audio_out = [], []
    for begin in range(0, count, batch_size):
        end = min(count, begin + batch_size)
        audio, face = network(mel[begin:end].to(device), face_window(faces[steps[begin:end]].to(device)))
        video_out.append(face.cpu())
        audio_out.append(audio.cpu())
    return torch.cat(video_out), torch.cat(audio_out)


def lse_measures(
    frames: np.ndarray | Tensor,
    wave: np.ndarray,
    network: SyncNetV2 | SyncNet,
    vshift: int = LSE_VSHIFT,
    batch_size: int = 20,
) -> dict[str, Tensor]:
    """LSE-D / LSE-C (and the offset) of one 25 fps clip by syncnet_python's protocol: the windows of
    `lse_window_count`, window i being frames i .. i + 4 and the audio from 0.04 i s, then
    `lse_from_embeddings`.

    frames (T, H, W, 3) uint8 RGB face crops; wave (S,) 16 kHz mono, float in [-1, 1] or int16.
    - `SyncNetV2` (the reference network): frames must be 224 x 224 crops by `syncnet_python_crop`; the
      audio windows are 20 MFCC columns from column 4 i (`syncnet_mfcc`).
    - the suite's `SyncNet` (Wav2Lip's expert): frames are its own face crops (any square size; the lower
      half of the 96 x 96 resize is used) and the audio windows the 80 x 16 mel windows of each frame
      (`datamodules.audio.mel_windows`); the embeddings are unit vectors, so its distances are on another
      scale than SyncNet v2's and its numbers are not comparable with the papers'.

    Clips should be much longer than the 2 vshift + 1 offsets (syncnet_python keeps face tracks of over
    100 frames): at offsets past a short clip's windows every comparison is with the zero padding, and
    under about 16 windows those offsets make up the median, i.e. LSE-C."""
    frames = _frames_uint8(frames)
    wave = np.asarray(wave)
    count = lse_window_count(len(frames), len(wave))
    if count < 1:
        raise ValueError(
            f"LSE needs at least {SYNC_FRAMES + 1} frames of video and audio, got {len(frames)} frames and "
            f"{len(wave)} samples"
        )
    was_training = network.training
    network.eval()
    try:
        if isinstance(network, SyncNetV2):
            video, audio = _syncnet_v2_embeddings(frames, wave, network, count, batch_size)
        elif isinstance(network, SyncNet):
            video, audio = _suite_syncnet_embeddings(frames, wave, network, count, batch_size)
        else:
            raise TypeError(
                f"lse_measures needs a SyncNetV2 or the suite's SyncNet, got {type(network).__name__}"
            )
    finally:
        network.train(was_training)
    return lse_from_embeddings(video, audio, vshift)


def lse_network_name(network: SyncNetV2 | SyncNet, source: str | None = None) -> str:
    """What produced an LSE number, for logs and tables: only SyncNet v2 with the official weights gives
    values comparable with the papers'."""
    source = source or getattr(network, "source", None)
    if isinstance(network, SyncNetV2):
        return f"syncnet_v2 (official: {source})" if source else "syncnet_v2 (random init: not comparable)"
    return f"suite SyncNet ({source or 'unnamed weights'}): not comparable with syncnet_v2"


class LipSyncMetric(torchmetrics.Metric):
    """LSE-D and LSE-C (`lse_measures`) averaged over clips, one `update(frames, wave)` per clip.

    The network is held outside the module tree (it is neither moved by `.to()` nor saved in the
    metric's state dict; inputs go to its device). `network_name` records which network produced the
    numbers (`lse_network_name`). States are sums and a clip count, reduced by summing under DDP."""

    full_state_update = False
    higher_is_better = None

    def __init__(
        self,
        network: SyncNetV2 | SyncNet,
        source: str | None = None,
        vshift: int = LSE_VSHIFT,
        batch_size: int = 20,
    ) -> None:
        super().__init__()
        if not isinstance(network, SyncNetV2 | SyncNet):
            raise TypeError(
                f"LipSyncMetric needs a SyncNetV2 or the suite's SyncNet, got {type(network).__name__}"
            )
        object.__setattr__(self, "_network", network)  # not a submodule
        self.network_name = lse_network_name(network, source)
        self.vshift = vshift
        self.batch_size = batch_size
        for name in ("distance_sum", "confidence_sum", "absolute_offset_sum"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clips", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, frames: np.ndarray | Tensor, wave: np.ndarray) -> None:
        """One clip: frames (T, H, W, 3) uint8 RGB face crops, wave (S,) 16 kHz (see `lse_measures`)."""
        measures = lse_measures(frames, wave, self._network, self.vshift, self.batch_size)
        self.distance_sum += measures["distance"].item()
        self.confidence_sum += measures["confidence"].item()
        self.absolute_offset_sum += abs(int(measures["offset"]))
        self.clips += 1

    def compute(self) -> dict[str, Tensor]:
        clips = self.clips.clamp(min=1)
        return {
            "lse_d": (self.distance_sum / clips).float(),
            "lse_c": (self.confidence_sum / clips).float(),
            "abs_offset": (self.absolute_offset_sum / clips).float(),
        }


# --- CSIM: identity similarity ---------------------------------------------------------------------------

# ArcFace's 112 x 112 alignment template (Deng et al. 2019, insightface): eyes, nose tip, mouth corners.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def arcface_chip(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(112, 112, 3) uint8 crop for ArcFace: the similarity transform that takes five points of the 68
    landmarks (the eye centres, nose tip 30, mouth corners 48 and 54) closest to ArcFace's template."""
    import cv2

    points = np.stack(
        [landmarks[36:42].mean(0), landmarks[42:48].mean(0), landmarks[30], landmarks[48], landmarks[54]]
    ).astype(np.float32)
    matrix, _ = cv2.estimateAffinePartial2D(points, ARCFACE_TEMPLATE, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("no similarity transform fits these landmarks")
    return cv2.warpAffine(image, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class CSIM(torchmetrics.Metric):
    """CSIM: the cosine similarity of identity embeddings of generated and source (or ground-truth)
    images, averaged over pairs (as in Zakharov et al. 2019 and the dubbing papers' tables).

    Faces are located by dlib's 68-point shape predictor inside a given box, or inside the largest box
    of dlib's frontal detector when no box is given (a pair where no face is found is counted in
    `missing` and left out). Backends:
    - "dlib" (offline, default): dlib's 128-d face recognition ResNet
      (`dlib_face_recognition_resnet_model_v1.dat` of face_recognition_models; King 2017), aligned by
      dlib's own face chip from the 68 landmarks;
    - "arcface": a TorchScript ArcFace `arcface.pt` under `weights_dir` (any network mapping (N, 3, 112,
      112) RGB in [-1, 1] to (N, D)), on the 112 x 112 crop aligned to ArcFace's template (`arcface_chip`);
      a missing file raises FileNotFoundError naming it;
    - "auto": arcface when that file exists, else dlib with a warning naming the file.
    The two backends give different numbers (dlib's embeddings are all fairly close in angle); report
    which one (`backend`). Sum states, reduced by summing under DDP."""

    full_state_update = False
    higher_is_better = True

    def __init__(
        self, backend: str = "dlib", weights_dir: str | os.PathLike | None = None, upsample: int = 1
    ) -> None:
        super().__init__()
        if backend not in ("dlib", "arcface", "auto"):
            raise ValueError(f"unknown CSIM backend {backend!r} (dlib | arcface | auto)")
        path = Path(weights_dir or "<paths.weights_dir>") / ARCFACE_FILE
        available = weights_dir is not None and path.is_file()
        if backend == "auto":
            if not available:
                log.warning(
                    "CSIM uses dlib's face recognition ResNet: %s (ArcFace, TorchScript) is missing", path
                )
            backend = "arcface" if available else "dlib"
        if backend == "arcface" and not available:
            raise FileNotFoundError(
                f"CSIM backend arcface: {path} is missing (a TorchScript ArcFace taking (N, 3, 112, 112) RGB "
                "in [-1, 1]; put it in paths.weights_dir, or use backend=dlib)"
            )
        self.backend = backend
        self.upsample = upsample
        self._arcface = torch.jit.load(str(path), map_location="cpu").eval() if backend == "arcface" else None
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("missing", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _shape(self, pixels: np.ndarray, box: Sequence[float] | None) -> object | None:
        import dlib

        if box is None:
            found = _frontal_detector()(pixels, self.upsample)
            if len(found) == 0:
                return None
            rectangle = max(found, key=lambda r: r.area())
        else:
            rectangle = dlib.rectangle(*(int(round(float(v))) for v in box))
        return _dlib_model("shape_predictor_68_face_landmarks.dat")(pixels, rectangle)

    @torch.no_grad()
    def embedding(self, image: Tensor, box: Sequence[float] | None = None) -> Tensor | None:
        """The identity embedding of one (3, H, W) RGB image in [0, 1] (None when no face is found)."""
        pixels = np.ascontiguousarray(_to_uint8(image))
        shape = self._shape(pixels, box)
        if shape is None:
            return None
        if self._arcface is None:
            recogniser = _dlib_model("dlib_face_recognition_resnet_model_v1.dat")
            return torch.tensor(
                np.asarray(recogniser.compute_face_descriptor(pixels, shape)), dtype=torch.float64
            )
        landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
        chip = torch.from_numpy(arcface_chip(pixels, landmarks)).permute(2, 0, 1).float() / 255.0
        return self._arcface((chip[None] - 0.5) / 0.5).flatten().double()

    def update(self, generated: Tensor, source: Tensor, boxes: Tensor | None = None) -> None:
        """generated, source (B, 3, H, W) RGB in [0, 1]; boxes (B, 4) x0, y0, x1, y1 pixels of the face
        in both (or None: detect it in each image)."""
        if generated.shape != source.shape or generated.dim() != 4:
            raise ValueError(
                f"CSIM needs equal (B, 3, H, W) shapes, got {tuple(generated.shape)}, {tuple(source.shape)}"
            )
        for index in range(generated.shape[0]):
            box = None if boxes is None else boxes[index].tolist()
            a, b = self.embedding(generated[index], box), self.embedding(source[index], box)
            if a is None or b is None:
                self.missing += 1
                continue
            self.total += F.cosine_similarity(a, b, dim=0).item()
            self.count += 1

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


_DETECTOR: list[object] = []


def _frontal_detector() -> object:
    if not _DETECTOR:
        import dlib

        _DETECTOR.append(dlib.get_frontal_face_detector())
    return _DETECTOR[0]

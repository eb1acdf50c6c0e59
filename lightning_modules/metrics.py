"""Evaluation metrics shared by the stages (METHOD.md 1.5).

Plain functions of tensors (AED, LMD of projected landmarks, the SyncNet offset search), and
torchmetrics `Metric`s where a metric accumulates over a split and must reduce across DDP ranks
(LMD of generated images, LPIPS); PSNR and SSIM are torchmetrics' own. LightningModules, callbacks and
bench scripts compute a metric the same way."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torchmetrics
from torch import Tensor

from lightning_modules.networks.syncnet import SYNC_FRAMES, SyncNet, face_window

log = logging.getLogger(__name__)

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
    """LMD between generated and target face crops: dlib's 68-point shape predictor (shipped by the
    face_recognition_models package, so offline) run on both images inside the box of the target's known
    landmarks, then the mean Euclidean distance in pixels over `indices` (all 68, or the mouth).
    Accumulates sums, so it is exact over a whole split and under DDP (states reduced by summing)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, indices: Sequence[int] | None = None, margin: float = 0.1) -> None:
        super().__init__()
        self.indices = list(indices) if indices is not None else list(range(68))
        self.margin = margin
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self._predictor = None

    def _landmarks(self, image: Tensor, box: tuple[int, int, int, int]) -> np.ndarray:
        import dlib

        if self._predictor is None:
            from datamodules.preprocess.detect import dlib_model_path

            self._predictor = dlib.shape_predictor(
                str(dlib_model_path("shape_predictor_68_face_landmarks.dat"))
            )
        pixels = (
            (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        )
        shape = self._predictor(np.ascontiguousarray(pixels), dlib.rectangle(*box))
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

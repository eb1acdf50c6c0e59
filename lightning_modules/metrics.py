"""Evaluation metrics shared by the stages (METHOD.md 1.5).

Each is a plain function of tensors, so LightningModules, callbacks and bench scripts compute a metric
the same way."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_modules.networks.syncnet import SYNC_FRAMES, SyncNet, face_window

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

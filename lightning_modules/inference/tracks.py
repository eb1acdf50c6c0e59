"""What the generators take and give: a face track (consecutive crops with their 3DMM fit), a speech track
(wave and features), and a dubbed track (the new crops, their mouth masks and landmarks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.media import audio as audio_lib
from datamodules.media.images import to_float_images


@dataclass
class Speech:
    """The driving audio: 16 kHz mono float and its features for the whole track, computed once."""

    wave: np.ndarray
    mfcc: np.ndarray  # (N, 13), 100 frames/s
    mel: np.ndarray  # (80, M), 80 steps/s

    @classmethod
    def from_wave(cls, wave: np.ndarray) -> Speech:
        wave = audio_lib.to_float(wave)
        return cls(wave=wave, mfcc=audio_lib.mfcc(wave), mel=audio_lib.melspectrogram(wave))

    @property
    def duration_s(self) -> float:
        return len(self.wave) / audio_lib.SAMPLE_RATE


@dataclass
class FaceTrack:
    """Consecutive frames showing the speaker's face, analysed as preprocessing analyses a clip.

    crops (T, S, S, 3) uint8 at the analysis crop size; landmarks (T, 68, 2) in crop pixels; coeffs
    (T, 257) of the fit; albedo (N, 3) per-vertex or None; times (T,) seconds on the speech's clock
    (where each frame's audio is read)."""

    crops: np.ndarray
    landmarks: np.ndarray
    coeffs: np.ndarray
    albedo: np.ndarray | None
    times: np.ndarray

    def __len__(self) -> int:
        return len(self.crops)


@dataclass
class DubbedTrack:
    """The generators' result at their image size S': images (T, 3, S', S') in [0, 1], the crop with the
    new mouth; mouth_mask (T, 1, S', S'), where it may differ from the source crop; landmarks (T, 68, 2)
    in pixels of S' where the generated mouth lies (None when the generator does not know); coeffs
    (T, 257), the 3DMM coefficients I_3D was rendered with (None for generators without a 3D face)."""

    images: Tensor
    mouth_mask: Tensor
    landmarks: Tensor | None
    coeffs: Tensor | None = None


def resize_images(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def float_images(crops: np.ndarray, size: int, device: torch.device | str) -> Tensor:
    """uint8 (T, S, S, 3) -> float (T, 3, size, size) in [0, 1]."""
    return resize_images(to_float_images(crops, device), size).clamp(0, 1)

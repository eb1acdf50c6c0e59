"""Wav2Lip's lip-sync expert, SyncNet_color (Prajwal et al., ACM MM 2020, after Chung & Zisserman's
SyncNet, 2016), reimplemented from the layer list of Rudrabha/Wav2Lip `models/syncnet.py`.

A face encoder over five consecutive lower-half faces stacked as 15 channels (48 x 96) and an audio
encoder over the 80 x 16 mel window that starts at the first of those frames each give a 512-d
embedding (ReLU, then L2-normalised, so their cosine similarity lies in [0, 1] and serves directly as
an in-sync probability). The module names are the official ones, so `lipsync_expert.pth` loads by key
(`load_syncnet`). `width` scales every channel count for small test networks (use multiples of 1/32);
`width=1` is the official expert.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.networks.wav2lip import AUDIO_ENCODER as GENERATOR_AUDIO_ENCODER
from lightning_modules.networks.wav2lip import (
    BGR_ORDER,
    IMAGE_SIZE,
    ConvSpec,
    as_mel_batch,
    conv_stack,
    load_weights,
    read_state_dict,
)

SYNC_FRAMES = 5  # video frames per SyncNet window (0.2 s, the span of one 80 x 16 mel window)

# (in, out, kernel, stride, padding, residual) at width 1, as in Rudrabha/Wav2Lip models/syncnet.py.
FACE_ENCODER: list[ConvSpec] = [
    (3 * SYNC_FRAMES, 32, 7, 1, 3, False),  # 48 x 96
    (32, 64, 5, (1, 2), 1, False),  # 46 x 47
    (64, 64, 3, 1, 1, True),
    (64, 64, 3, 1, 1, True),
    (64, 128, 3, 2, 1, False),  # 23 x 24
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 256, 3, 2, 1, False),  # 12 x 12
    (256, 256, 3, 1, 1, True),
    (256, 256, 3, 1, 1, True),
    (256, 512, 3, 2, 1, False),  # 6 x 6
    (512, 512, 3, 1, 1, True),
    (512, 512, 3, 1, 1, True),
    (512, 512, 3, 2, 1, False),  # 3 x 3
    (512, 512, 3, 1, 0, False),  # 1 x 1
    (512, 512, 1, 1, 0, False),
]

# Wav2Lip's audio encoder with one more residual unit at 256 channels (syncnet_python / Wav2Lip's expert).
AUDIO_ENCODER: list[ConvSpec] = [
    *GENERATOR_AUDIO_ENCODER[:11],
    (256, 256, 3, 1, 1, True),
    *GENERATOR_AUDIO_ENCODER[11:],
]


class SyncNet(nn.Module):
    """SyncNet_color: `forward(mel, faces) -> (audio_embedding, face_embedding)`, both (N, D) unit
    vectors (D = 512 at width 1)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.width = width
        self.face_encoder = conv_stack(FACE_ENCODER, width, fixed_input=3 * SYNC_FRAMES)
        self.audio_encoder = conv_stack(AUDIO_ENCODER, width, fixed_input=1)

    def forward(self, mel: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
        """mel (N, 80, 16) or (N, 1, 80, 16); faces (N, 15, 48, 96) from `face_window`."""
        if faces.dim() != 4 or faces.shape[1:] != (3 * SYNC_FRAMES, IMAGE_SIZE // 2, IMAGE_SIZE):
            raise ValueError(f"faces must be (N, 15, 48, 96) (see face_window), got {tuple(faces.shape)}")
        audio = self.audio_encoder(as_mel_batch(mel)).flatten(1)
        face = self.face_encoder(faces).flatten(1)
        return F.normalize(audio, dim=1), F.normalize(face, dim=1)


def face_window(frames: Tensor) -> Tensor:
    """(N, 5, 3, H, W) RGB faces in [0, 1] -> (N, 15, 48, 96) SyncNet input: each face resized to
    96 x 96, its lower half kept, reversed to BGR (the official weights were trained on OpenCV frames)
    and the five stacked frame after frame along the channels, as Wav2Lip's training script does."""
    if frames.dim() != 5 or frames.shape[1:3] != (SYNC_FRAMES, 3):
        raise ValueError(f"frames must be (N, {SYNC_FRAMES}, 3, H, W), got {tuple(frames.shape)}")
    n = frames.shape[0]
    faces = frames.flatten(0, 1)
    if faces.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        faces = F.interpolate(faces, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)
    lower = faces[:, BGR_ORDER, IMAGE_SIZE // 2 :, :]
    return lower.reshape(n, 3 * SYNC_FRAMES, IMAGE_SIZE // 2, IMAGE_SIZE)


SYNCNET_HINT = (
    "Put Wav2Lip's official expert (lipsync_expert.pth from Rudrabha/Wav2Lip) there, or train one with "
    "`python run.py experiment=syncnet`, and point the configured path at it."
)


def load_syncnet(path: str | Path) -> SyncNet:
    """A frozen SyncNet (eval mode, no gradients) from an official `lipsync_expert.pth` (weights under
    `state_dict`), a bare state dict with the official keys, or a checkpoint of `experiment=syncnet` /
    `experiment=teacher` (keys under `syncnet.`). The width is read from the first conv."""
    state_dict = read_state_dict(path, "SyncNet", SYNCNET_HINT, owner_prefix="syncnet.")
    first = state_dict.get("face_encoder.0.conv_block.0.weight")
    if first is None:
        raise ValueError(f"{path} has no 'face_encoder.0.conv_block.0.weight': not a SyncNet")
    syncnet = SyncNet(width=first.shape[0] / FACE_ENCODER[0][1])
    load_weights(syncnet, state_dict, path, "SyncNet")
    return syncnet.eval().requires_grad_(False)

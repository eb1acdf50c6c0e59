"""Lip-sync metrics: the suite's SyncNet offset search during training, and LSE-D / LSE-C in the protocol
of joonson/syncnet_python (its crop, MFCC windows, +-15 frame offsets) with the official SyncNet v2 or the
suite's own expert, which the tables then name (`lse_network_name`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from datamodules.media.audio import mel_windows, melspectrogram, to_int16
from datamodules.media.images import to_float_images
from lightning_modules.networks.syncnet import SYNC_FRAMES, SyncNet, face_window
from lightning_modules.networks.syncnet_v2 import FACE_SIZE, MFCC_WINDOW, SyncNetV2

LSE_VSHIFT = 15  # syncnet_python's default --vshift: audio offsets -15..15 frames (0.6 s each way)


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

    device = next(network.parameters()).device
    faces = to_float_images(frames)  # (T, 3, H, W) RGB in [0, 1]
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

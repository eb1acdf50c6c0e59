"""Playmate's motion generator (Playmate, seed 003): a diffusion transformer over 3DMM motion.

A motion sequence is (B, T, 70) per-frame values, 64 expression + 6 pose (angle 3, trans 3), normalised
by the training module (`lightning_modules/motion/dit.py`). `MotionDiT` predicts the diffusion model's
output (noise or velocity) from the noised sequence, conditioned on
- the timestep and the clip's identity (its 80 `id` coefficients), through adaLN-Zero modulation of
  every block (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers": the norms' shift,
  scale and the residual gates regressed from the condition, gates and output layer zero-initialised);
- per-frame audio features, added to the frame tokens and cross-attended by every block;
- a motion prefix: frames already generated (the overlap with the previous window of a long sequence),
  given clean with a mask channel, so that a window continues the previous one without a jump (the
  "motion frames" of long-form talking-head generators; trained on a random prefix of each window).

Audio and identity each have a learned null embedding that replaces them where a sample drops the
condition (classifier-free guidance, Ho & Salimans 2022). A `MotionCondition` carries the conditions of
one denoising call (and the emotion label and level that only the emotion stage reads). `audio_residual`
is where the emotion controller (`networks/emotion_control.py`) adds its output to the audio
conditioning of a frozen DiT.

Audio features come from `audio_encoder`: `mfcc` / `mel` (the batch's per-frame MFCC or mel windows
through a small 1D conv encoder, offline) or `wav2vec2` (Baevski et al. 2020, as Playmate:
transformers' `Wav2Vec2Model` from `<weights_dir>/wav2vec2-base-960h`, frozen, its 50 Hz states
interpolated to the 25 fps frames).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_timestep_embedding
from torch import nn
from torch.nn import functional as F

AUDIO_ENCODERS = ("mfcc", "mel", "wav2vec2")
# The `view: window` batch key each audio encoder reads.
AUDIO_INPUTS = {"mfcc": "mfcc", "mel": "mel", "wav2vec2": "audio"}
# Coefficients per window step: MFCCs (python_speech_features' 13), mel bins (Wav2Lip's 80).
WINDOW_CHANNELS = {"mfcc": 13, "mel": 80}
WAV2VEC2_CONFIG = "config.json"
WAV2VEC2_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


# --- audio features ------------------------------------------------------------------------------------


class WindowAudioEncoder(nn.Module):
    """Per-frame conv encoder over the batch's audio windows: MFCC (B, T, 1, 13, W) or mel (B, T, 80, 16)
    -> (B, T, feature_dim). The coefficients (mel bins) are the channels of 1D convolutions along the
    window's time axis (kernel 3; stride 2 after the first layer), then a mean over time and a two-layer
    head. One-dimensional because a 2D VGG stack over thousands of small windows a batch costs ten times
    as much on a CPU for what a per-frame condition needs."""

    def __init__(
        self,
        in_channels: int = 13,
        channels: Sequence[int] = (64, 128, 128),
        hidden_dim: int = 256,
        feature_dim: int = 256,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"audio_norm must be batch or none, got {norm!r}")
        layers: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(int(c) for c in channels):
            layers.append(nn.Conv1d(previous, width, 3, stride=1 if index == 0 else 2, padding=1))
            layers.append(nn.BatchNorm1d(width) if norm == "batch" else nn.Identity())
            layers.append(nn.SiLU())
            previous = width
        self.in_channels = in_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(previous, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, feature_dim)
        )

    def forward(self, windows: torch.Tensor, num_frames: int) -> torch.Tensor:
        if windows.dim() == 5:  # MFCC (B, T, 1, 13, W): one channel
            windows = windows.squeeze(2)
        if windows.dim() != 4 or windows.shape[1] != num_frames or windows.shape[2] != self.in_channels:
            raise ValueError(
                f"audio windows must be (B, {num_frames}, [1,] {self.in_channels}, W), "
                f"got {tuple(windows.shape)}"
            )
        batch = windows.shape[0]
        features = self.features(windows.flatten(0, 1).float()).mean(dim=-1)
        return self.head(features).unflatten(0, (batch, num_frames))


def wav2vec2_missing_message(folder: Path) -> str | None:
    """What is missing from a wav2vec2 folder (None: complete)."""
    if not (folder / WAV2VEC2_CONFIG).is_file() or not any((folder / n).is_file() for n in WAV2VEC2_WEIGHTS):
        return (
            f"wav2vec2 weights not found in {folder}: the folder needs {WAV2VEC2_CONFIG} and "
            f"{' or '.join(WAV2VEC2_WEIGHTS)} (the files of the facebook/wav2vec2-base-960h repository, "
            f"e.g. `huggingface-cli download facebook/wav2vec2-base-960h --local-dir {folder}` on a machine "
            "that can download); nothing is downloaded at run time. Or train with the offline audio "
            "encoder: model.net.audio_encoder=mfcc"
        )
    return None


class Wav2Vec2AudioEncoder(nn.Module):
    """Waveform (B, 640 T) at 16 kHz -> (B, T, feature_dim): a pretrained `Wav2Vec2Model` (frozen by
    default, kept in eval mode so that no SpecAugment masking or dropout applies), its last hidden states
    (50 per second) linearly interpolated to the T video frames, then a trained linear projection.
    The waveform is normalised to zero mean and unit variance per clip, as wav2vec2's feature extractor
    does for this checkpoint."""

    def __init__(
        self, folder: str | Path, feature_dim: int = 256, freeze: bool = True, local_files_only: bool = True
    ) -> None:
        super().__init__()
        folder = Path(folder)
        missing = wav2vec2_missing_message(folder)
        if missing:
            raise FileNotFoundError(missing)
        from transformers import Wav2Vec2Model

        self.wav2vec2 = Wav2Vec2Model.from_pretrained(str(folder), local_files_only=local_files_only)
        self.freeze = freeze
        if freeze:
            self.wav2vec2.requires_grad_(False).eval()
        self.projection = nn.Linear(self.wav2vec2.config.hidden_size, feature_dim)

    def train(self, mode: bool = True) -> Wav2Vec2AudioEncoder:
        super().train(mode)
        if self.freeze:
            self.wav2vec2.eval()
        return self

    def forward(self, waveform: torch.Tensor, num_frames: int) -> torch.Tensor:
        waveform = waveform.float()
        waveform = (waveform - waveform.mean(-1, keepdim=True)) / (waveform.std(-1, keepdim=True) + 1e-7)
        with torch.set_grad_enabled(not self.freeze and torch.is_grad_enabled()):
            hidden = self.wav2vec2(waveform).last_hidden_state  # (B, N, H), N ~ 2 T
        hidden = F.interpolate(hidden.transpose(1, 2), size=num_frames, mode="linear", align_corners=False)
        return self.projection(hidden.transpose(1, 2))


def build_audio_encoder(
    kind: str,
    feature_dim: int,
    channels: Sequence[int] = (64, 128, 128),
    hidden_dim: int = 256,
    norm: str = "batch",
    weights_dir: str | None = None,
    wav2vec2_name: str = "wav2vec2-base-960h",
    freeze_wav2vec2: bool = True,
) -> nn.Module:
    """The audio encoder `kind` names (`AUDIO_ENCODERS`)."""
    if kind in WINDOW_CHANNELS:
        return WindowAudioEncoder(WINDOW_CHANNELS[kind], channels, hidden_dim, feature_dim, norm)
    if kind == "wav2vec2":
        if not weights_dir:
            raise ValueError("audio_encoder=wav2vec2 needs weights_dir (paths.weights_dir)")
        return Wav2Vec2AudioEncoder(Path(weights_dir) / wav2vec2_name, feature_dim, freeze_wav2vec2)
    raise ValueError(f"unknown audio_encoder {kind!r}; expected one of {AUDIO_ENCODERS}")


# --- the transformer -----------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def positional_encoding(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """(length, dim) sinusoidal frame positions (no learned table: any window length works)."""
    positions = torch.arange(length, device=device, dtype=torch.float32)
    return get_timestep_embedding(positions, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class Attention(nn.Module):
    """Multi-head attention through `F.scaled_dot_product_attention` (self-attention when `context` is
    None)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model_dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731
        q = split(self.query(x))
        k, v = (split(t) for t in self.key_value(context).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).flatten(2))


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention and MLP (DiT), with a cross-attention to the audio tokens between them."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, dropout: float, cross_attention: bool = True
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attention = Attention(dim, heads, dropout)
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross_attention = Attention(dim, heads, dropout)
        else:
            self.norm_cross = self.cross_attention = None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)

    def forward(self, h: torch.Tensor, condition: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """h (B, T, d) tokens, condition (B, d) timestep + identity, audio (B, T, d) tokens."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(condition)[:, None].chunk(6, -1)
        h = h + gate_a * self.attention(modulate(self.norm1(h), shift_a, scale_a))
        if self.cross_attention is not None:
            h = h + self.cross_attention(self.norm_cross(h), audio)
        return h + gate_m * self.mlp(modulate(self.norm2(h), shift_m, scale_m))


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: no element-wise `==` on tensor fields
class MotionCondition:
    """What one denoising call is conditioned on; None is the null (dropped) condition.

    audio (B, T, F): audio features (`MotionDiT.encode_audio`'s output); identity (B, 80): the clip's `id`
    coefficients; drop_audio / drop_identity (B,) bool: samples whose audio / identity is replaced by the
    null embedding; prefix (B, T, D): clean frames where prefix_mask (B, T) bool is true; emotion (B,):
    EMOTIONS labels, -1 the null emotion, and level (B,) its intensity (0 with the null emotion): read by
    the emotion stage only."""

    audio: torch.Tensor | None = None
    identity: torch.Tensor | None = None
    drop_audio: torch.Tensor | None = None
    drop_identity: torch.Tensor | None = None
    prefix: torch.Tensor | None = None
    prefix_mask: torch.Tensor | None = None
    emotion: torch.Tensor | None = None
    level: torch.Tensor | None = None

    def replace(self, **changes: torch.Tensor | None) -> MotionCondition:
        """A copy with the given fields changed."""
        return dataclasses.replace(self, **changes)

    def repeated(self, copies: int) -> MotionCondition:
        """Every tensor field concatenated `copies` times along the batch (a batch of `copies` terms)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return MotionCondition(**{k: v if v is None else torch.cat([v] * copies) for k, v in values.items()})


class MotionDiT(nn.Module):
    """Noised motion (B, T, motion_dim) + timestep + conditions -> the diffusion model's output (B, T,
    motion_dim) (noise or velocity, as the training module chose). See the module docstring.

    `forward(motion, timesteps, condition)` takes audio *features* in its `MotionCondition`
    (`encode_audio`'s output, computed once per sequence, not per denoising step). `audio_input` names
    the batch key the encoder reads (`mfcc`, `mel` or `audio`)."""

    def __init__(
        self,
        motion_dim: int = 70,
        identity_dim: int = 80,
        model_dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        audio_cross_attention: bool = True,
        audio_encoder: str = "mfcc",
        audio_feature_dim: int = 256,
        audio_channels: Sequence[int] = (64, 128, 128),
        audio_hidden_dim: int = 256,
        audio_norm: str = "batch",
        weights_dir: str | None = None,
        wav2vec2_name: str = "wav2vec2-base-960h",
        freeze_wav2vec2: bool = True,
        timestep_channels: int = 256,
    ) -> None:
        super().__init__()
        if audio_encoder not in AUDIO_ENCODERS:
            raise ValueError(f"unknown audio_encoder {audio_encoder!r}; expected one of {AUDIO_ENCODERS}")
        self.motion_dim = motion_dim
        self.model_dim = model_dim
        self.audio_input = AUDIO_INPUTS[audio_encoder]
        self.audio_encoder = build_audio_encoder(
            audio_encoder,
            audio_feature_dim,
            audio_channels,
            audio_hidden_dim,
            audio_norm,
            weights_dir,
            wav2vec2_name,
            freeze_wav2vec2,
        )
        # Tokens: the noised motion, the clean prefix (zeros elsewhere) and its mask.
        self.input = nn.Linear(2 * motion_dim + 1, model_dim)
        self.audio_projection = nn.Sequential(
            nn.Linear(audio_feature_dim, model_dim), nn.SiLU(), nn.Linear(model_dim, model_dim)
        )
        self.timestep_features = Timesteps(timestep_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedding = TimestepEmbedding(timestep_channels, model_dim)
        self.identity_embedding = nn.Sequential(
            nn.Linear(identity_dim, model_dim), nn.SiLU(), nn.Linear(model_dim, model_dim)
        )
        self.null_audio = nn.Parameter(torch.randn(model_dim) * 0.02)
        self.null_identity = nn.Parameter(torch.randn(model_dim) * 0.02)
        self.blocks = nn.ModuleList(
            DiTBlock(model_dim, heads, mlp_ratio, dropout, audio_cross_attention) for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(model_dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_dim, 2 * model_dim))
        self.output = nn.Linear(model_dim, motion_dim)
        for layer in (self.final_modulation[-1], self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def encode_audio(self, inputs: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The batch's `audio_input` entry -> per-frame audio features (B, T, audio_feature_dim)."""
        return self.audio_encoder(inputs, num_frames)

    def audio_tokens(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio features (B, T, F) -> the audio conditioning tokens (B, T, d) (what the emotion controller
        reads and adds its residual to)."""
        return self.audio_projection(audio)

    def forward(
        self,
        motion: torch.Tensor,
        timesteps: torch.Tensor,
        condition: MotionCondition,
        audio_residual: torch.Tensor | None = None,
        condition_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """motion (B, T, D) noised; timesteps (B,) or scalar; condition: audio, identity, their drop
        masks and the prefix (its emotion is not read here); audio_residual (B, T, d): added to the audio
        tokens of the samples that keep their audio; condition_residual (B, d): added to the adaLN
        condition (timestep + identity)."""
        batch, length, _ = motion.shape
        device = motion.device
        timesteps = torch.as_tensor(timesteps, device=device).reshape(-1).expand(batch)
        audio, identity = condition.audio, condition.identity
        drop_audio, drop_identity = condition.drop_audio, condition.drop_identity
        prefix, prefix_mask = condition.prefix, condition.prefix_mask
        if prefix is None or prefix_mask is None:
            prefix_mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
            prefix = torch.zeros_like(motion)
        mask = prefix_mask[..., None].to(motion.dtype)
        positions = positional_encoding(length, self.model_dim, device).to(motion.dtype)
        tokens = self.input(torch.cat([motion, prefix * mask, mask], dim=-1)) + positions

        null_audio = self.null_audio.expand(batch, length, -1)
        if audio is None:
            audio_tokens = null_audio
        else:
            audio_tokens = self.audio_tokens(audio)
            if audio_residual is not None:
                audio_tokens = audio_tokens + audio_residual
            if drop_audio is not None:
                audio_tokens = torch.where(drop_audio[:, None, None], null_audio, audio_tokens)
        h = tokens + audio_tokens

        adaln = self.timestep_embedding(self.timestep_features(timesteps).to(tokens.dtype))
        null_identity = self.null_identity.expand(batch, -1)
        if identity is None:
            identity_embedding = null_identity
        else:
            identity_embedding = self.identity_embedding(identity.to(tokens.dtype))
            if drop_identity is not None:
                identity_embedding = torch.where(drop_identity[:, None], null_identity, identity_embedding)
        adaln = adaln + identity_embedding
        if condition_residual is not None:
            adaln = adaln + condition_residual

        # Cross-attention keys carry the frame positions too, so that attention can align in time.
        audio_context = audio_tokens + positions
        for block in self.blocks:
            h = block(h, adaln, audio_context)
        shift, scale = self.final_modulation(adaln)[:, None].chunk(2, dim=-1)
        return self.output(modulate(self.final_norm(h), shift, scale))

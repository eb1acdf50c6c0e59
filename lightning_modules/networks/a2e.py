"""Stage A of the method (main paper, stage A): audio (MFCC windows) + teacher "semantic images" -> 64
3DMM expression coefficients per frame.

The design follows Yi et al. 2020 ("Audio-driven talking face video generation with learning-based
personalized head pose"), whose audio-to-expression network reuses Chen et al. 2019's ATnet: a
VGG-M style CNN per MFCC window, a recurrent network over time, a linear head. The paper adds a
VGG-M style CNN over Wav2Lip's generated frames and a local cross-modal attention in which each
frame's audio feature attends to the visual features of the 2k+1 frames around it.

Choices made here where the paper is silent or terse:
- The fused feature is `z_t = q_t + alpha_t V_t`: the paper writes `z_t = alpha_t V_t`, through
  which audio reaches the Bi-LSTM only as attention weights over 2k+1 frames; the residual query
  (as in Transformer attention blocks) lets the audio content through as well, and makes the
  ablations nest: without cross-modal attention the weights are uniform over the same window
  (`fusion="average"`), without semantic images `z_t = q_t` (`use_semantic=False`).
- Sizes: the paper gives only the totals of Table 7 (12.50 M parameters, 14.30 G multiply-accumulates);
  the defaults land there (12.51 M, 14.80 GMACs for a 20-frame window of 28-step MFCC windows and
  96 px semantic images; `count_complexity`).
- Sequence ends: positions of the window outside [0, T) are masked out (score -inf before the
  softmax, weight 0 in the average), so a frame near an end attends over the valid frames only and
  the weights still sum to one. Nothing is padded with made-up frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_modules.networks.blocks import ConvSpec, conv_stack

FUSIONS = ("attention", "average")


class MfccEncoder(nn.Module):
    """VGG-M style CNN over one MFCC window (1, n_mfcc, W) -> F_a (feature_dim,).

    Five 3x3 conv layers with the pooling of ATnet's audio encoder (a pool along time only after the
    second layer, then 2x2 after the fifth), an adaptive average pool to `pooled_size` (so any window
    width W works) and a two-layer fully connected head (VGG-M's fc6/fc7)."""

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256, 256, 512),
        hidden_dim: int = 512,
        feature_dim: int = 512,
        pooled_size: tuple[int, int] = (2, 2),
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"MfccEncoder needs 5 channel counts (VGG-M has 5 conv layers), got {channels}")
        c1, c2, c3, c4, c5 = (int(c) for c in channels)
        self.features = conv_stack(
            1,
            [
                ConvSpec(c1),
                ConvSpec(c2, pool_kernel=3, pool_stride=(1, 2)),
                ConvSpec(c3),
                ConvSpec(c4),
                ConvSpec(c5, pool_kernel=3, pool_stride=2),
            ],
        )
        self.pool = nn.AdaptiveAvgPool2d(tuple(pooled_size))
        flat = c5 * pooled_size[0] * pooled_size[1]
        self.head = nn.Sequential(
            nn.Linear(flat, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, feature_dim)
        )

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        """mfcc (N, 1, n_mfcc, W) -> (N, feature_dim)."""
        return self.head(self.pool(self.features(mfcc)).flatten(1))


class SemanticImageEncoder(nn.Module):
    """VGG-M (Chatfield et al. 2014) over one semantic image (3, S, S) in [0, 1] -> F_v (feature_dim,).

    conv1 7x7/2 + pool, conv2 5x5/2 + pool, conv3-5 3x3, pool; then an adaptive average pool to
    `pooled_size` and a fully connected layer (VGG-M's fc6)."""

    def __init__(
        self,
        channels: Sequence[int] = (96, 256, 512, 512, 512),
        feature_dim: int = 512,
        pooled_size: tuple[int, int] = (2, 2),
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(
                f"SemanticImageEncoder needs 5 channel counts (VGG-M has 5 conv layers), got {channels}"
            )
        c1, c2, c3, c4, c5 = (int(c) for c in channels)
        self.features = conv_stack(
            3,
            [
                ConvSpec(c1, kernel=7, stride=2, pool_kernel=3, pool_stride=2),
                ConvSpec(c2, kernel=5, stride=2, pool_kernel=3, pool_stride=2),
                ConvSpec(c3),
                ConvSpec(c4),
                ConvSpec(c5, pool_kernel=3, pool_stride=2),
            ],
        )
        self.pool = nn.AdaptiveAvgPool2d(tuple(pooled_size))
        self.head = nn.Sequential(
            nn.Linear(c5 * pooled_size[0] * pooled_size[1], feature_dim), nn.ReLU(inplace=True)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (N, 3, S, S) in [0, 1] -> (N, feature_dim)."""
        return self.head(self.pool(self.features(image * 2.0 - 1.0)).flatten(1))


def window_validity(length: int, radius: int, device: torch.device | None = None) -> torch.Tensor:
    """(length, 2 radius + 1) bool: entry [t, j] says whether frame tau = t - radius + j exists."""
    tau = torch.arange(length, device=device)[:, None] + torch.arange(-radius, radius + 1, device=device)
    return (tau >= 0) & (tau < length)


def gather_windows(features: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, T, D) -> (B, T, 2 radius + 1, D): row t holds frames t - radius .. t + radius; frames
    outside the sequence are zeros (to be masked with `window_validity`)."""
    padded = nn.functional.pad(features, (0, 0, radius, radius))
    return padded.unfold(1, 2 * radius + 1, 1).transpose(2, 3)


class LocalCrossModalAttention(nn.Module):
    """Each frame's audio feature attends over the visual features of frames t-k .. t+k (main paper, stage A).

    q_t = W_Q F_a^t, K_t / V_t = W_K / W_V F_v^tau for tau in N(t), alpha_t = softmax(q_t K_t^T / sqrt(d))
    over the valid window positions, z_t = q_t + alpha_t V_t. With `fusion="average"` alpha_t is
    uniform over the valid window positions (the "without cross-modal attention" ablation)."""

    def __init__(
        self, audio_dim: int, visual_dim: int, model_dim: int, radius: int, fusion: str = "attention"
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")
        if radius < 0:
            raise ValueError(f"window radius k must be >= 0, got {radius}")
        self.radius = radius
        self.fusion = fusion
        self.query = nn.Linear(audio_dim, model_dim)
        self.key = nn.Linear(visual_dim, model_dim) if fusion == "attention" else None
        self.value = nn.Linear(visual_dim, model_dim)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, T, d_a), visual (B, T, d_v) -> fused z (B, T, d) and weights alpha (B, T, 2k+1)
        (zero at window positions outside the sequence)."""
        query = self.query(audio)
        values = gather_windows(self.value(visual), self.radius)
        valid = window_validity(audio.shape[1], self.radius, audio.device)
        if self.key is not None:
            keys = gather_windows(self.key(visual), self.radius)
            scores = torch.einsum("btd,btjd->btj", query, keys) / math.sqrt(query.shape[-1])
            weights = scores.masked_fill(~valid, float("-inf")).softmax(dim=-1)
        else:
            weights = (valid / valid.sum(dim=-1, keepdim=True)).to(query.dtype).expand(audio.shape[0], -1, -1)
        fused = query + torch.einsum("btj,btjd->btd", weights, values)
        return fused, weights


class AudioToExpressionNet(nn.Module):
    """(MFCC windows, semantic images) -> 64 expression coefficients per frame.

    Encoders per frame, local cross-modal attention, a Bi-LSTM over the T frames, a linear head
    (beta*_t = W_o h_t + b_o). `use_semantic=False` is the audio-only model (no image encoder, no
    attention: z_t = W_Q F_a^t); `fusion="average"` replaces attention by the window average.
    `head_init_std`: the head's initial weight std (bias 0); None keeps PyTorch's default init."""

    def __init__(
        self,
        window_radius: int = 2,
        use_semantic: bool = True,
        fusion: str = "attention",
        mfcc_channels: Sequence[int] = (64, 128, 256, 256, 512),
        mfcc_hidden_dim: int = 512,
        image_channels: Sequence[int] = (96, 256, 512, 512, 512),
        audio_dim: int = 512,
        visual_dim: int = 512,
        model_dim: int = 256,
        lstm_hidden: int = 256,
        lstm_layers: int = 1,
        dropout: float = 0.1,
        expression_dim: int = 64,
        head_init_std: float | None = 1e-3,
    ) -> None:
        super().__init__()
        self.use_semantic = use_semantic
        self.audio_encoder = MfccEncoder(mfcc_channels, mfcc_hidden_dim, audio_dim)
        if use_semantic:
            self.visual_encoder = SemanticImageEncoder(image_channels, visual_dim)
            self.fusion = LocalCrossModalAttention(audio_dim, visual_dim, model_dim, window_radius, fusion)
        else:
            self.visual_encoder = None
            self.audio_projection = nn.Linear(audio_dim, model_dim)
        self.lstm = nn.LSTM(
            model_dim,
            lstm_hidden,
            num_layers=lstm_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if lstm_layers > 1 else 0.0,
        )
        self.head = nn.Linear(2 * lstm_hidden, expression_dim)
        if head_init_std is not None:
            # Start at the neutral face (beta* ~ 0, about the mean of fitted expressions) instead of
            # +-0.1 random offsets on every coefficient, which adaptive optimisers take hundreds of
            # steps to pull back (docs/benchmarks.md, "Stage 1 on the synthetic corpus").
            nn.init.normal_(self.head.weight, std=head_init_std)
            nn.init.zeros_(self.head.bias)

    def forward(self, mfcc: torch.Tensor, semantic: torch.Tensor | None = None) -> torch.Tensor:
        """mfcc (B, T, 1, n_mfcc, W), semantic (B, T, 3, S, S) in [0, 1] -> expressions (B, T, 64)."""
        return self.forward_with_attention(mfcc, semantic)[0]

    def forward_with_attention(
        self, mfcc: torch.Tensor, semantic: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As `forward`, also returning the attention weights (B, T, 2k+1) (None without semantic images)."""
        if mfcc.dim() != 5:
            raise ValueError(f"mfcc must be (B, T, 1, n_mfcc, W), got shape {tuple(mfcc.shape)}")
        batch, length = mfcc.shape[:2]
        audio = self.audio_encoder(mfcc.flatten(0, 1)).unflatten(0, (batch, length))
        weights = None
        if self.visual_encoder is None:
            fused = self.audio_projection(audio)
        else:
            if semantic is None:
                raise ValueError(
                    "this A2E network uses semantic images but the batch has none: preprocess the shards "
                    "with a teacher, or train the audio-only ablation (experiment=ablation/a2e_no_semantic)"
                )
            if semantic.shape[:2] != mfcc.shape[:2]:
                raise ValueError(
                    f"semantic images {tuple(semantic.shape)} and mfcc {tuple(mfcc.shape)} differ in (B, T)"
                )
            visual = self.visual_encoder(semantic.flatten(0, 1)).unflatten(0, (batch, length))
            fused, weights = self.fusion(audio, visual)
        hidden, _ = self.lstm(fused)
        return self.head(hidden), weights


def count_complexity(
    net: AudioToExpressionNet, length: int, mfcc_width: int, image_size: int, n_mfcc: int = 13
) -> dict[str, float]:
    """Parameters and multiply-accumulates of one forward pass over a sequence of `length` frames.

    MACs are counted with `torch.utils.flop_counter.FlopCounterMode` (which counts 2 FLOPs per MAC,
    hence the halving) plus the LSTM, whose fused kernel the counter does not see: per frame, layer and
    direction 4 h (input + h) MACs. Returns {"params": count, "macs": count, "length": length}."""
    params = sum(p.numel() for p in net.parameters())
    mfcc = torch.zeros(1, length, 1, n_mfcc, mfcc_width)
    semantic = torch.zeros(1, length, 3, image_size, image_size) if net.use_semantic else None
    was_training = net.training
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(mfcc, semantic)
    net.train(was_training)
    lstm_macs = 0
    hidden = net.lstm.hidden_size
    for layer in range(net.lstm.num_layers):
        inputs = net.lstm.input_size if layer == 0 else 2 * hidden
        lstm_macs += 2 * length * 4 * hidden * (inputs + hidden)
    return {
        "params": float(params),
        "macs": counter.get_total_flops() / 2 + lstm_macs,
        "length": float(length),
    }

"""Playmate's emotion control module (Playmate, its emotion stage): steers a frozen motion DiT.

Playmate trains it on top of the frozen, pretrained DiT: a first block takes the audio and the emotion
condition, a second fuses its output into the DiT. Here:
- the emotion condition is a learned embedding of one of `num_emotions` labels (the order of
  `datamodules.emotions.EMOTIONS`: neutral, angry, disgusted, contempt, fear, happy, sad, surprised)
  plus one of its intensity `level` (1..num_levels; 0: unknown). A label < 0 (unknown) or dropped
  (classifier-free guidance) is the learned null emotion, level 0;
- block 1: the DiT's audio tokens (B, T, d), projected, plus the emotion embedding on every frame,
  through `depth` pre-norm transformer encoder layers over time (torch's `nn.TransformerEncoderLayer`);
- block 2 (fusion), into the DiT twice, each a LayerNorm and an MLP whose last layer is zero-initialised:
  per frame, a residual (B, T, d) the DiT adds to its audio tokens (`audio_residual`); per clip, from the
  time average, a residual (B, d) added to its adaLN condition (`condition_residual`: the path through
  which a DiT takes a class label, for an emotion's lasting offset). At initialisation both are exactly
  zero, so training starts from the pretrained DiT's behaviour (as ControlNet's zero convolutions, Zhang
  et al. 2023).
"""

from __future__ import annotations

import torch
from torch import nn


class EmotionController(nn.Module):
    """(audio tokens (B, T, model_dim), emotion (B,), level (B,)) -> residuals (B, T, model_dim) of the
    audio tokens and (B, model_dim) of the adaLN condition."""

    def __init__(
        self,
        model_dim: int = 256,
        hidden_dim: int = 256,
        num_emotions: int = 8,
        num_levels: int = 3,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_emotions = num_emotions
        self.num_levels = num_levels
        # Row num_emotions: the null emotion. Level row 0: unknown.
        self.emotion_embedding = nn.Embedding(num_emotions + 1, hidden_dim)
        self.level_embedding = nn.Embedding(num_levels + 1, hidden_dim)
        self.audio_input = nn.Linear(model_dim, hidden_dim)
        layer = nn.TransformerEncoderLayer(
            hidden_dim,
            heads,
            int(hidden_dim * mlp_ratio),
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.block = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.fusion = nn.Sequential(
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, model_dim),
        )
        # The clip-level part: block 1's output averaged over time, onto the DiT's adaLN condition.
        self.global_fusion = nn.Sequential(
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, model_dim),
        )
        for head in (self.fusion, self.global_fusion):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def embed(self, emotion: torch.Tensor | None, level: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B, hidden): the emotion + level embedding; unknown (< 0, or None) is the null emotion."""
        device = self.emotion_embedding.weight.device
        if emotion is None:
            emotion = torch.full((batch,), -1, dtype=torch.long, device=device)
        emotion = emotion.to(device=device, dtype=torch.long)
        if (emotion >= self.num_emotions).any():
            raise ValueError(f"emotion labels must be < {self.num_emotions} (or < 0: unknown), got {emotion}")
        known = emotion >= 0
        level = torch.zeros_like(emotion) if level is None else level.to(device=device, dtype=torch.long)
        level = torch.where(known, level.clamp(0, self.num_levels), torch.zeros_like(level))
        index = torch.where(known, emotion, torch.full_like(emotion, self.num_emotions))
        return self.emotion_embedding(index) + self.level_embedding(level)

    def forward(
        self, audio_tokens: torch.Tensor, emotion: torch.Tensor | None, level: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (residual of the audio tokens (B, T, d), residual of the adaLN condition (B, d))."""
        embedding = self.embed(emotion, level, audio_tokens.shape[0])
        h = self.block(self.audio_input(audio_tokens) + embedding[:, None])
        return self.fusion(h), self.global_fusion(h.mean(dim=1))

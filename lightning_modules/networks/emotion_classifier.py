"""The emotion judge of generated motion (Playmate's evaluation: a classifier trained on
ground-truth motion names the emotion of generated sequences; its pooled features give a Fréchet
distance between generated and real motion, as FID does with Inception's).

It reads the normalised expression only, not the pose: a corpus's speakers each hold their head their
own way, and a judge that read the pose would learn who speaks rather than how they feel. Temporal
convolutions (ResNet-style blocks with GroupNorm, so batch size does not matter) see the expression's
lasting offset and its dynamics (blinks, brows); mean and max pooling over time make any length fit.
"""

from __future__ import annotations

import torch
from torch import nn


class _TemporalBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv1d(channels, channels, kernel_size, padding=padding),
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv1d(channels, channels, kernel_size, padding=padding),
            nn.GroupNorm(8, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x + self.body(x))


class MotionEmotionClassifier(nn.Module):
    """(B, T, input_dim) normalised expression -> (B, num_emotions) logits; `features` the pooled
    (B, 2 * channels) embedding the logits are read from."""

    def __init__(
        self,
        input_dim: int = 64,
        channels: int = 128,
        depth: int = 3,
        kernel_size: int = 5,
        num_emotions: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.input = nn.Conv1d(input_dim, channels, 1)
        self.blocks = nn.Sequential(*[_TemporalBlock(channels, kernel_size, dropout) for _ in range(depth)])
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * channels, num_emotions))

    def features(self, expression: torch.Tensor) -> torch.Tensor:
        hidden = self.blocks(self.input(expression.transpose(1, 2)))
        return torch.cat([hidden.mean(-1), hidden.amax(-1)], dim=-1)

    def forward(self, expression: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(expression))

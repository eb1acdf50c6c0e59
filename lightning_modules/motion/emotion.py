"""Playmate's emotion control: the DiT frozen (loaded from the motion_diffusion run), only the emotion
controller trained; classifier-free guidance with separate audio and emotion weights at inference."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from lightning_modules.common.checkpoints import load_networks
from lightning_modules.diffusion import SampleRandom
from lightning_modules.motion.dit import MotionDiffusionModule
from lightning_modules.networks.motion_dit import MotionCondition

log = logging.getLogger(__name__)


class EmotionControlModule(MotionDiffusionModule):
    """The emotion stage: an `EmotionController` over a frozen, pretrained `MotionDiT` (module docstring)."""

    has_emotion = True
    loss_names = (*MotionDiffusionModule.loss_names, "loss_null_emotion")

    def __init__(
        self,
        controller: nn.Module,
        init_checkpoint: str | None = None,
        emotion_dropout: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.controller = controller
        self.init_checkpoint = init_checkpoint
        self.emotion_dropout = emotion_dropout
        self.net.requires_grad_(False).eval()
        self._warned_unlabelled = False

    def setup(self, stage: str) -> None:
        """The pretrained DiT and its statistics first (a resumed emotion run then restores its own copy)."""
        if self.init_checkpoint and stage == "fit":  # evaluation restores its own checkpoint whole
            load_networks(
                self,
                self.init_checkpoint,
                "motion DiT",
                prefixes=("net.", "normalizer."),
                hint="train it first (experiment=motion_diffusion or demo_motion_diffusion: its last.ckpt)",
            )
        elif stage == "fit":
            log.warning(
                "EmotionControlModule without model.init_checkpoint: the frozen DiT is randomly initialised "
                "(fine for a plumbing run, useless otherwise)"
            )
        super().setup(stage)

    def train(self, mode: bool = True) -> EmotionControlModule:
        super().train(mode)
        self.net.eval()  # frozen: no dropout, no batch-norm statistics updates
        return self

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Lightning restores each submodule's mode by itself after validation (not through `train()`):
        the frozen DiT is put back in eval mode before every step."""
        self.net.eval()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.controller.parameters())

    def emotion_inputs(
        self, batch: dict[str, Any], generator: torch.Generator | None, training: bool
    ) -> dict[str, torch.Tensor | None]:
        size = batch["coeffs"].shape[0]
        device = batch["coeffs"].device
        emotion = batch.get("emotion")
        if emotion is None:
            if not self._warned_unlabelled:
                log.warning(
                    "the batches carry no `emotion` labels: the controller sees the null emotion only"
                )
                self._warned_unlabelled = True
            emotion = torch.full((size,), -1, dtype=torch.long, device=device)
        emotion = torch.as_tensor(emotion, device=device).long()
        level = batch.get("emotion_level")
        level = torch.zeros_like(emotion) if level is None else torch.as_tensor(level, device=device).long()
        if training and self.emotion_dropout > 0:
            dropped = self._rand((size,), generator, device) < self.emotion_dropout
            emotion = torch.where(dropped, torch.full_like(emotion, -1), emotion)
        return {"emotion": emotion, "level": level}

    def model_output(
        self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: MotionCondition
    ) -> torch.Tensor:
        """The frozen DiT with the controller's residuals (from `condition.emotion` / `level`) on its audio
        tokens and adaLN condition (none without audio: the unconditional model is the DiT's own)."""
        residual = adaln_residual = None
        drop_audio = condition.drop_audio
        if condition.audio is not None:
            with torch.no_grad():
                tokens = self.net.audio_tokens(condition.audio)
            residual, adaln_residual = self.controller(tokens, condition.emotion, condition.level)
            if drop_audio is not None:  # the unconditional samples get the DiT's own output
                adaln_residual = torch.where(
                    drop_audio[:, None], torch.zeros_like(adaln_residual), adaln_residual
                )
        return self.net(x_t, timesteps, condition, audio_residual=residual, condition_residual=adaln_residual)

    def extra_losses(self, batch: dict[str, Any], seeds: list[int], split: str) -> None:
        """The same loss (same noise and timesteps: the same per-sample seeds) with the null emotion."""
        unlabelled = {**batch, "emotion": torch.full_like(batch["coeffs"][:, 0, 0], -1).long()}
        sums, frames = self.diffusion_errors(unlabelled, SampleRandom(seeds), training=False)
        self.update_losses(split, {"loss": sums["loss"]}, frames, suffix="_null_emotion")

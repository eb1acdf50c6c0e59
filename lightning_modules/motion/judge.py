"""The emotion judge of motion (`experiment=emotion_classifier` / `demo_emotion_classifier`): a
`MotionEmotionClassifier` (networks/emotion_classifier.py) trained on the ground-truth motion of the
training speakers (their fitted expressions, normalised by the training set's statistics as the motion
DiT's are) and validated on unseen speakers. `task=eval_motion` (lightning_modules/evaluation/motion.py)
then names the emotion of generated sequences with it and measures Fréchet distances in its features.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import nn

import face3d
from lightning_modules.common.checkpoints import LearnedStateOnly, load_trained_module
from lightning_modules.common.optim import optimizer_config
from lightning_modules.motion.normalizer import MotionNormalizer, fit_to_training_set

log = logging.getLogger(__name__)


class EmotionClassifierModule(LearnedStateOnly, L.LightningModule):
    """Cross-entropy on the labelled windows (clips labelled unknown, -1, are left out); `val/acc` and
    `test/acc` are the share of unseen speakers' windows named right, `*/acc_macro` its mean over the
    emotions."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        num_emotions: int = 8,
        label_smoothing: float = 0.0,
        normalization: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.normalizer = MotionNormalizer(**dict(normalization or {}))
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{name}": torchmetrics.classification.MulticlassAccuracy(
                    num_emotions, average=average, ignore_index=-1
                )
                for split in ("val", "test")
                for name, average in (("acc", "micro"), ("acc_macro", "macro"))
            }
            | {f"{split}_loss": torchmetrics.MeanMetric() for split in ("val", "test")}
        )

    def setup(self, stage: str) -> None:
        if stage == "fit" and not self.normalizer.fitted:
            fit_to_training_set(self.normalizer, self.trainer)

    # --- judging -------------------------------------------------------------------------------------

    def expression_input(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, T, 257) coefficients -> the classifier's input, the normalised expression (B, T, 64)."""
        expression = face3d.expression_of(coeffs.float())
        return (expression - self.normalizer.expression_mean) / self.normalizer.expression_std

    def logits(self, coeffs: torch.Tensor) -> torch.Tensor:
        return self.net(self.expression_input(coeffs))

    def features(self, coeffs: torch.Tensor) -> torch.Tensor:
        """The pooled embedding of (B, T, 257) coefficients (the Fréchet distance's features)."""
        return self.net.features(self.expression_input(coeffs))

    # --- training ------------------------------------------------------------------------------------

    def _labelled(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        emotion = torch.as_tensor(batch["emotion"], device=batch["coeffs"].device).long()
        return self.logits(batch["coeffs"]), emotion

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits, emotion = self._labelled(batch)
        known = emotion >= 0
        if not known.any():
            raise ValueError(
                "a training batch holds no emotion labels: train the classifier on a labelled corpus "
                "(data=mead or data=synthetic_emotion)"
            )
        loss = nn.functional.cross_entropy(
            logits[known], emotion[known], label_smoothing=self.label_smoothing
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=int(known.sum()))
        return loss

    def _evaluate(self, batch: dict[str, Any], split: str) -> None:
        logits, emotion = self._labelled(batch)
        known = emotion >= 0
        # Summed over labelled samples and ranks, and logged on every rank (a batch without labels adds
        # nothing): exact under DDP, and no rank waits for a value another never logs.
        losses = nn.functional.cross_entropy(logits[known], emotion[known], reduction="none")
        self.metrics[f"{split}_loss"].update(losses)
        self.log(f"{split}/loss", self.metrics[f"{split}_loss"])
        for name in ("acc", "acc_macro"):
            metric = self.metrics[f"{split}_{name}"]
            metric.update(logits, emotion)
            self.log(f"{split}/{name}", metric, prog_bar=name == "acc")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizer_config(self.optimizer_factory(params=self.net.parameters()), self.scheduler_factory)


def load_emotion_classifier(checkpoint: str | Path, device: str = "cpu") -> EmotionClassifierModule:
    """A trained judge from its checkpoint (experiment=emotion_classifier / demo_emotion_classifier)."""
    return load_trained_module(checkpoint, device, expected=EmotionClassifierModule)[0]

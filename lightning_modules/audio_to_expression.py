"""Stage 1 (main paper, stage A): audio (+ teacher semantic images) -> 3DMM expressions.

L = L_exp + lambda_shape L_shape: L1 on the 64 expression coefficients, plus L1 on the 2D landmarks
that the face layer projects from the predicted expression with the ground-truth identity and pose,
against the same projection of the ground-truth expression (Ranger, lr 2e-4, batch 16 in the paper).

Validation logs, besides the losses:
- `val/aed`: mean L1 of the expressions; `val/lmd` (`val/lmd_mouth`): mean distance in pixels of the
  camera image between the two projections above, over all 68 (the 20 mouth) landmarks;
- `val/aed_mean_baseline`, `val/lmd_mean_baseline`: the same for a constant prediction, the mean
  expression of the training windows seen so far in this run (kept in buffers, so a resumed run
  continues the same mean) -- the floor any audio-driven model must beat;
- `val/sync` (and `val/sync_gt`, the same for the ground-truth expressions), when a trained SyncNet is
  configured: faces rendered with the predicted expression are scored against the audio with the
  offset-search confidence of `lightning_modules.metrics.sync_measures` (LSE-C).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

import face3d
from face3d import expression_of, with_expression
from lightning_modules.common.checkpoints import LearnedStateOnly
from lightning_modules.common.optim import optimizer_config
from lightning_modules.losses import expression_l1, landmark_l1
from lightning_modules.metrics.expression import (
    MOUTH_LANDMARKS,
    average_expression_distance,
    landmark_distance,
)
from lightning_modules.metrics.means import BatchMeans
from lightning_modules.metrics.sync import sync_measures
from lightning_modules.networks.syncnet import load_syncnet


class AudioToExpressionModule(LearnedStateOnly, L.LightningModule):
    """Trains an `AudioToExpressionNet` (or any net with `forward(mfcc, semantic) -> (B, T, 64)`) on
    `view: window` batches. The face model (with its camera) and the optional SyncNet are frozen
    helpers: they are left out of checkpoints and restored from the configuration on load."""

    # Submodules that are configuration, not learned state.
    frozen_prefixes = ("face_model.", "syncnet.")

    def __init__(
        self,
        net: nn.Module,
        face_model: face3d.MorphableModel,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        lambda_shape: float = 0.5,
        syncnet_path: str | None = None,
        sync_image_size: int = 96,
        sync_max_offset: int = 15,
        semantic_key: str = "semantic",
    ) -> None:
        super().__init__()
        # Evaluation means, exact under DDP (lightning_modules/metrics/means.py).
        self.evaluation_means = BatchMeans(
            (
                "loss",
                "loss_exp",
                "loss_shape",
                "aed",
                "lmd",
                "lmd_mouth",
                "aed_mean_baseline",
                "lmd_mean_baseline",
                "sync",
                "sync_gt",
            )
        )
        self.save_hyperparameters(logger=False, ignore=["net", "face_model", "optimizer", "scheduler"])
        self.net = net
        self.face_model = face_model.requires_grad_(False)
        # The face model's camera (conf/face_model: `camera`) frames every projection and render.
        self.camera: face3d.PerspectiveCamera = face_model.camera
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.lambda_shape = lambda_shape
        self.semantic_key = semantic_key
        self.register_buffer("train_expression_sum", torch.zeros(face3d.COEFF_DIMS["exp"]))
        self.register_buffer("train_expression_count", torch.zeros((), dtype=torch.long))
        # load_syncnet names the file and how to get one when it is missing.
        self.syncnet = load_syncnet(syncnet_path) if syncnet_path else None
        self.sync_camera = self.camera.resized(sync_image_size) if self.syncnet is not None else None
        self.sync_max_offset = sync_max_offset
        self._mean_expression: torch.Tensor | None = None

    # --- forward and losses ------------------------------------------------------------------------

    def forward(self, mfcc: torch.Tensor, semantic: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(mfcc, semantic)

    def project_landmarks(self, coeffs: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """(B, T, 257) coefficients with `expression` (B, T, 64) -> (B, T, 68, 2) camera-image landmarks."""
        full = with_expression(coeffs.float(), expression.float())
        # In float32 also under bf16/fp16 autocast: half precision is ~0.5 px coarse at 224 px.
        with torch.autocast(device_type=full.device.type, enabled=False):
            landmarks = self.face_model.landmarks_2d(full.flatten(0, 1), self.camera)
        return landmarks.unflatten(0, full.shape[:2])

    def _semantic_images(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """The images the network's visual branch reads: `batch[semantic_key]` (None for audio-only nets)."""
        if not getattr(self.net, "use_semantic", True):
            return None
        if self.semantic_key not in batch:
            raise ValueError(
                f"the batch has no {self.semantic_key!r} images for the A2E visual branch "
                f"(keys: {sorted(batch)}). "
                "Preprocess the shards with a teacher, train the audio-only model "
                "(experiment=ablation/a2e_no_semantic), or use the ground-truth frames as an oracle teacher "
                "(model.semantic_key=frames data.load_frames=true)"
            )
        return batch[self.semantic_key]

    def _step(self, batch: dict[str, Any], need_landmarks: bool) -> dict[str, torch.Tensor]:
        coeffs = batch["coeffs"]
        target = expression_of(coeffs)
        prediction = self.net(batch["mfcc"], self._semantic_images(batch))
        out = {"prediction": prediction, "target": target, "loss_exp": expression_l1(prediction, target)}
        loss = out["loss_exp"]
        if need_landmarks or self.lambda_shape > 0:
            out["landmarks_pred"] = self.project_landmarks(coeffs, prediction)
            with torch.no_grad():
                out["landmarks_true"] = self.project_landmarks(coeffs, target)
            out["loss_shape"] = landmark_l1(out["landmarks_pred"], out["landmarks_true"])
            loss = loss + self.lambda_shape * out["loss_shape"]
        out["loss"] = loss
        return out

    # --- training ------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self._step(batch, need_landmarks=False)
        batch_size = out["target"].shape[0]
        with torch.no_grad():
            self.train_expression_sum += out["target"].flatten(0, 1).sum(dim=0)
            self.train_expression_count += out["target"].shape[0] * out["target"].shape[1]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=batch_size)
        self.log("train/loss_exp", out["loss_exp"], batch_size=batch_size)
        if "loss_shape" in out:
            self.log("train/loss_shape", out["loss_shape"], batch_size=batch_size)
        return out["loss"]

    # --- validation ----------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        """The mean training expression over every rank (None before any training step)."""
        total = self.trainer.strategy.reduce(self.train_expression_sum.clone(), reduce_op="sum")
        count = self.trainer.strategy.reduce(self.train_expression_count.clone().float(), reduce_op="sum")
        self._mean_expression = total / count if count > 0 else None

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self.evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self.evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Whole clips (`task=predict`): the predicted expressions (B, T, 64), the clip's coefficients with
        them (`coeffs`, what a renderer takes) and without (`coeffs_true`), and the audio."""
        expression = self.net(batch["mfcc"], self._semantic_images(batch))
        return {
            "clip_id": batch["clip_id"],
            "start": batch["start"],
            "expression": expression,
            "coeffs": with_expression(batch["coeffs"], expression),
            "coeffs_true": batch["coeffs"],
            "audio": batch["audio"],
            "albedo": batch["albedo"],
        }

    def evaluate(self, batch: dict[str, Any], split: str) -> dict[str, torch.Tensor]:
        """Losses and metrics of one batch, logged under `split/` (val or test)."""
        out = self._step(batch, need_landmarks=True)
        batch_size = out["target"].shape[0]
        pred, true = out["landmarks_pred"], out["landmarks_true"]
        metrics = {
            "loss": out["loss"],
            "loss_exp": out["loss_exp"],
            "loss_shape": out["loss_shape"],
            "aed": average_expression_distance(out["prediction"], out["target"]),
            "lmd": landmark_distance(pred, true),
            "lmd_mouth": landmark_distance(pred, true, MOUTH_LANDMARKS),
        }
        if self._mean_expression is not None:
            mean = self._mean_expression.to(out["target"]).expand_as(out["target"])
            metrics["aed_mean_baseline"] = average_expression_distance(mean, out["target"])
            metrics["lmd_mean_baseline"] = landmark_distance(
                self.project_landmarks(batch["coeffs"], mean), true
            )
        if self.syncnet is not None:
            albedo = batch.get("albedo")
            metrics["sync"] = self.sync_score(batch["coeffs"], out["prediction"], batch["mel"], albedo)
            metrics["sync_gt"] = self.sync_score(batch["coeffs"], out["target"], batch["mel"], albedo)
        self.evaluation_means.log(self, split, {"aed": metrics.pop("aed")}, batch_size, prog_bar=True)
        self.evaluation_means.log(self, split, metrics, batch_size)
        return {"prediction": out["prediction"].detach()}

    @torch.no_grad()
    def sync_score(
        self,
        coeffs: torch.Tensor,
        expression: torch.Tensor,
        mel: torch.Tensor,
        albedo: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean SyncNet confidence (`lightning_modules.metrics.sync_measures`, LSE-C) of faces rendered
        with `expression` (B, T, 64) against the mel windows (B, T, 80, 16). The renders keep the
        ground-truth identity, texture (the clip's per-vertex `albedo` when it has one), pose and lighting,
        on a black background, framed by the configured camera."""
        renderer = face3d.FaceRenderer(self.face_model, self.sync_camera)
        albedo = face3d.clip_albedo(albedo, expression.shape[1])
        frames = renderer(with_expression(coeffs, expression).flatten(0, 1), albedo=albedo)["image"]
        frames = frames.unflatten(0, expression.shape[:2])
        return sync_measures(self.syncnet, frames, mel, self.sync_max_offset)["confidence"].mean()

    # --- optimisation --------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.net.parameters())
        return optimizer_config(optimizer, self.scheduler_factory, self.hparams.scheduler_interval)

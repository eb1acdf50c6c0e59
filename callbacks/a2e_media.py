"""W&B validation panel for stage 1: ground-truth vs predicted expressions, rendered, with the audio.

Every `every_n_epochs` validation epochs, the first window of the first validation batch is rendered
twice with the face layer (`face3d.FaceRenderer`, ground-truth identity, texture, pose and lighting):
once with the ground-truth expressions (left), once with the predicted ones (right). The two are put
side by side, muxed with the window's audio into an H.264/AAC mp4 and logged as a `wandb.Video`.
Without a WandbLogger the callback does nothing and writes nothing. Cheap by design: one window, a
few frames, small renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

import face3d
from datamodules.media.images import to_uint8_images
from datamodules.media.video import write_mp4


class A2EMediaPanel(L.Callback):
    """Logs `key` (a side-by-side GT | predicted render video with audio) to W&B every
    `every_n_epochs` validation epochs. Needs a module with `face_model`, `camera` and
    `with_expression` semantics of `lightning_modules.audio_to_expression.AudioToExpressionModule`, and a
    validation step that returns {"prediction": (B, T, 64)}."""

    def __init__(
        self, every_n_epochs: int = 5, num_frames: int = 25, image_size: int = 128, key: str = "val/a2e_video"
    ) -> None:
        if image_size % 2:
            raise ValueError(f"image_size must be even (H.264), got {image_size}")
        self.every_n_epochs = every_n_epochs
        self.num_frames = num_frames
        self.image_size = image_size
        self.key = key
        self._window: dict[str, torch.Tensor] | None = None
        self._validations = 0  # validation epochs seen, sanity checks excluded

    @staticmethod
    def _wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def _due(self, trainer: L.Trainer) -> bool:
        return (
            not trainer.sanity_checking
            and self._wandb_logger(trainer) is not None
            and self._validations % self.every_n_epochs == 0
        )

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or not self._due(trainer):
            return
        frames = min(self.num_frames, batch["coeffs"].shape[1])
        self._window = {
            "coeffs": batch["coeffs"][0, :frames].detach(),
            "prediction": outputs["prediction"][0, :frames].detach(),
            "audio": batch["audio"][0, : frames * 640].detach().cpu(),
            "albedo": face3d.clip_albedo(batch["albedo"][:1] if "albedo" in batch else None, frames),
        }

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validations += 1
        logger = self._wandb_logger(trainer)
        if self._window is None or logger is None or not trainer.is_global_zero:
            self._window = None
            return
        window, self._window = self._window, None
        renderer = face3d.FaceRenderer(pl_module.face_model, pl_module.camera.resized(self.image_size))
        with torch.no_grad():
            truth = renderer(window["coeffs"], albedo=window["albedo"])["image"]
            predicted = renderer(
                face3d.with_expression(window["coeffs"], window["prediction"]), albedo=window["albedo"]
            )["image"]
        side_by_side = torch.cat([truth, predicted], dim=-1).clamp(0, 1)  # (T, 3, H, 2W)
        frames = to_uint8_images(side_by_side)
        path = Path(trainer.default_root_dir) / "media" / f"a2e_epoch{trainer.current_epoch:04d}.mp4"
        write_mp4(path, frames, window["audio"].numpy())
        logger.log_video(
            self.key, videos=[str(path)], step=trainer.global_step, caption=["ground truth | predicted"]
        )

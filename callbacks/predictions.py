"""`task=predict`: the predictions of every clip written under the run directory.

Lightning's `BasePredictionWriter` (write_interval "batch"): each predicted clip becomes
`<dirpath>/<clip id>.npz` (its id with `/` as `__`), holding every tensor of the module's
`predict_step` output for that clip (stage 1: `expression` (T, 64), `coeffs` (T, 257) the clip's own
coefficients with the predicted expression, `coeffs_true`, `audio`, `albedo`, `start`). With
`render_video`, also `<clip id>.mp4`: the face rendered with the ground-truth | the predicted
expression side by side (`face3d.FaceRenderer`, the module's face model and camera), with the audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

import face3d
from datamodules.media.audio import VIDEO_FPS
from datamodules.media.files import atomic_write
from datamodules.media.video import write_mp4


class PredictionWriter(BasePredictionWriter):
    """Writes each predicted clip as an `.npz` (and optionally an `.mp4`) under `dirpath`."""

    def __init__(self, dirpath: str, render_video: bool = False, image_size: int = 128) -> None:
        super().__init__(write_interval="batch")
        if image_size % 2:
            raise ValueError(f"image_size must be even (H.264), got {image_size}")
        self.dirpath = Path(dirpath)
        self.render_video = render_video
        self.image_size = image_size

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        for index, clip_id in enumerate(prediction["clip_id"]):
            arrays = {
                key: value[index].detach().cpu().numpy()
                for key, value in prediction.items()
                if isinstance(value, torch.Tensor)
            }
            path = self.dirpath / clip_id.replace("/", "__")
            with atomic_write(path.with_suffix(".npz"), "wb") as handle:
                np.savez(handle, **arrays)
            if self.render_video:
                self._render(pl_module, arrays, path.with_suffix(".mp4"))

    @torch.no_grad()
    def _render(self, pl_module: L.LightningModule, arrays: dict[str, np.ndarray], path: Path) -> None:
        if "coeffs" not in arrays or "coeffs_true" not in arrays:
            raise KeyError(
                "render_video needs `coeffs` and `coeffs_true` in the module's predict_step output"
            )
        renderer = face3d.FaceRenderer(pl_module.face_model, pl_module.camera.resized(self.image_size))
        device = pl_module.device
        frames = len(arrays["coeffs"])
        albedo = arrays.get("albedo")
        albedo = face3d.clip_albedo(
            None if albedo is None else torch.from_numpy(albedo[None]).to(device), frames
        )
        truth = renderer(torch.from_numpy(arrays["coeffs_true"]).to(device), albedo=albedo)["image"]
        predicted = renderer(torch.from_numpy(arrays["coeffs"]).to(device), albedo=albedo)["image"]
        side_by_side = torch.cat([truth, predicted], dim=-1).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        write_mp4(path, (side_by_side * 255).round().astype(np.uint8), arrays.get("audio"), fps=VIDEO_FPS)

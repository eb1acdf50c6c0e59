"""W&B validation panel of the renderer stages: one image grid of the first validation batch.

Rows are samples; columns whatever the stage made, in pipeline order: the first reference, I_3D,
I_warp, I_e* (TMN), I_i* (RBFIN), the stage-3 correction, the stage-4 result, the target, the fusion
confidence map (stage 4's three weights as RGB) and the first reference's flow (torchvision's colour
wheel). Logged every `every_n_epochs` validation epochs; without a WandbLogger nothing is done.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torchvision.utils import make_grid

from lightning_modules.networks.flow import flow_image

# (column name, where it comes from): `batch:` keys of the batch, the others keys of the stage's output.
COLUMNS = (
    ("reference", "batch:references"),
    ("I_3D", "batch:render3d"),
    ("I_warp", "warped"),
    ("I_e*", "texture_output"),
    ("I_i*", "inpainted"),
    ("corrected", "corrected"),
    ("fused", "pasted"),
    ("target", "batch:target"),
    ("confidence", "confidence"),
    ("flow", "flows"),
)


def panel_columns(
    batch: dict[str, Any], out: dict[str, torch.Tensor], count: int
) -> tuple[list[str], list[torch.Tensor]]:
    """The available columns as (names, (count, 3, H, W) images in [0, 1])."""
    names, images = [], []
    for name, source in COLUMNS:
        key = source.removeprefix("batch:")
        value = (batch if source.startswith("batch:") else out).get(key)
        if not isinstance(value, torch.Tensor):
            continue
        value = value[:count].detach().float().cpu()
        if name in ("reference", "flow"):
            value = value[:, 0]  # the first reference, its flow
        if name == "flow":
            value = flow_image(value)
        if value.shape[1] == 1:
            value = value.expand(-1, 3, -1, -1)
        names.append(name)
        images.append(value.clamp(0, 1))
    return names, images


class RendererMediaPanel(L.Callback):
    def __init__(self, every_n_epochs: int = 1, num_samples: int = 4, key: str = "val/renderer") -> None:
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.key = key
        self._validations = 0

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if (
            batch_idx != 0
            or trainer.sanity_checking
            or logger is None
            or not trainer.is_global_zero
            or self._validations % self.every_n_epochs
        ):
            return
        names, images = panel_columns(batch, outputs, self.num_samples)
        count = images[0].shape[0]
        grid = make_grid(torch.stack(images, dim=1).flatten(0, 1), nrow=len(images), padding=2)
        logger.log_image(
            self.key,
            images=[grid],
            step=trainer.global_step,
            caption=[" | ".join(names) + f" ({count} samples)"],
        )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validations += 1

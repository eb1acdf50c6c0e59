"""`experiment=teacher`: train the semantic-image teacher, a Wav2Lip generator, and run it.

Training follows Wav2Lip's `wav2lip_train.py` (Prajwal et al. 2020), the variant without the visual
quality discriminator: the generator re-draws the lower half of five consecutive target faces from
[the masked target, a reference face of the same clip] and one mel window per frame; the loss is
(1 - w) L1(generated, target) + w sync, where sync is the frozen expert's BCE of the generated
window against "in sync". w starts at 0 and becomes `sync_weight` once the validation sync loss has
dropped below `sync_loss_threshold` (Wav2Lip: 0.01 without the GAN, 0.03 with it in
`hq_wav2lip_train.py`; threshold 0.75). Adam, lr 1e-4 in Wav2Lip.

Frame timing (a `view: window` batch holds T frames and the mel window starting at each frame): the
generated frames are i = lead .. lead + 4 with lead = `mel_lead` (1); frame i is conditioned on the mel
window starting at frame i - lead, as Wav2Lip's `get_segmented_mels` does (its windows start one frame
before the frame they drive), and the expert sees the window at frame `lead`, the start of the five.
The reference of each target is the frame `gap` later in the same window, with one gap per clip drawn
from [`reference_min_gap`, T - lead - 5] (Wav2Lip draws a random "wrong window" of the same video, so
that the generator cannot copy the target's mouth from its reference).

Validation and `task=test` use the farthest reference of the window, so their losses are deterministic.

Preprocessing stores the semantic images with the network alone
(`lightning_modules.networks.wav2lip.generate_semantic_frames`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from lightning_modules.common.optim import optimizer_config
from lightning_modules.losses import sync_loss
from lightning_modules.metrics.means import BatchMeans
from lightning_modules.networks.syncnet import SYNC_FRAMES, SyncNet, face_window, load_syncnet
from lightning_modules.networks.wav2lip import IMAGE_SIZE, Wav2LipGenerator, generator_input, resize_faces

__all__ = ["Wav2LipTeacherModule"]


class Wav2LipTeacherModule(L.LightningModule):
    """Trains a `Wav2LipGenerator` against a frozen SyncNet on `view: window` batches with
    `load_frames: true`. The expert is loaded from `syncnet_checkpoint` (an `experiment=syncnet`
    checkpoint or the official `lipsync_expert.pth`) when training starts; with none, by L1 alone."""

    def __init__(
        self,
        generator: Wav2LipGenerator,
        optimizer: partial[torch.optim.Optimizer],
        syncnet_checkpoint: str | None,
        scheduler: partial[torch.optim.lr_scheduler.LRScheduler] | None = None,
        sync_weight: float = 0.01,
        sync_loss_threshold: float = 0.75,
        mel_lead: int = 1,
        reference_min_gap: int = 5,
    ) -> None:
        super().__init__()
        # Evaluation means, exact under DDP (lightning_modules/metrics/means.py).
        self.evaluation_means = BatchMeans(
            (
                "loss",
                "l1",
                "sync",
            )
        )
        self.save_hyperparameters(logger=False, ignore=["generator", "optimizer", "scheduler"])
        if not 0.0 <= sync_weight < 1.0:
            raise ValueError(f"sync_weight must lie in [0, 1), got {sync_weight}")
        self.generator = generator
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.syncnet_checkpoint = syncnet_checkpoint
        self.sync_weight = sync_weight
        self.sync_loss_threshold = sync_loss_threshold
        self.mel_lead = mel_lead
        self.reference_min_gap = reference_min_gap
        self.syncnet: SyncNet | None = None
        # The validation sync loss of the epoch (synced over ranks), which drives the switch below.
        self.val_sync = MeanMetric()
        # Whether the sync term is on: a buffer, so that a resumed run keeps Wav2Lip's switch.
        self.register_buffer("sync_active", torch.tensor(False))

    def setup(self, stage: str) -> None:
        """Load the frozen expert (not in __init__, so that configs instantiate without the file); without
        one (`syncnet_checkpoint: null`) the generator learns by L1 alone."""
        if self.syncnet is None and self.syncnet_checkpoint:
            self.syncnet = load_syncnet(self.syncnet_checkpoint)

    def train(self, mode: bool = True) -> Wav2LipTeacherModule:
        """Keep the frozen expert in eval mode (its batch-norm statistics are part of it)."""
        super().train(mode)
        if self.syncnet is not None:
            self.syncnet.eval()
        return self

    def _generate(self, batch: dict[str, Any], gaps: Tensor) -> tuple[Tensor, Tensor]:
        """The generated and the target faces, (B, 5, 3, 96, 96) each, for the reference gaps (B,)."""
        frames, mel = batch["frames"], batch["mel"]
        batch_size = frames.shape[0]
        lead = self.mel_lead
        rows = torch.arange(batch_size, device=frames.device)[:, None]
        steps = torch.arange(SYNC_FRAMES, device=frames.device)[None, :]
        targets = frames[:, lead : lead + SYNC_FRAMES]
        references = frames[rows, lead + steps + gaps[:, None]]
        faces = generator_input(targets.flatten(0, 1), references.flatten(0, 1))
        generated = self.generator(mel[:, :SYNC_FRAMES].flatten(0, 1), faces)
        shape = (batch_size, SYNC_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE)
        return generated.view(shape), resize_faces(targets.flatten(0, 1)).view(shape)

    def _max_gap(self, batch: dict[str, Any]) -> int:
        if "frames" not in batch:
            raise KeyError(
                "teacher training needs frames: set data.load_frames=true (conf/experiment/teacher.yaml)"
            )
        length = batch["frames"].shape[1]
        max_gap = length - self.mel_lead - SYNC_FRAMES
        if max_gap < self.reference_min_gap:
            raise ValueError(
                f"windows of {length} frames leave no reference >= {self.reference_min_gap} frames from the "
                f"targets; set data.window_frames >= {self.mel_lead + SYNC_FRAMES + self.reference_min_gap}"
            )
        return max_gap

    def _losses(self, batch: dict[str, Any], gaps: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        generated, targets = self._generate(batch, gaps)
        l1 = F.l1_loss(generated, targets)
        if not self.syncnet_checkpoint:
            return {"loss": l1, "l1": l1}, generated
        weight = self.sync_weight if bool(self.sync_active) else 0.0
        # Without weight the expert only reports (no graph through it), as Wav2Lip skips it then.
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0):
            probability = self._expert_probability(generated, batch["mel"][:, self.mel_lead])
        sync = sync_loss(probability, torch.ones_like(probability))
        return {"loss": (1.0 - weight) * l1 + weight * sync, "l1": l1, "sync": sync}, generated

    def _expert_probability(self, generated: Tensor, mel: Tensor) -> Tensor:
        if self.syncnet is None:
            raise RuntimeError("the SyncNet expert is loaded in setup(); call it first")
        audio, face = self.syncnet(mel, face_window(generated))
        return (audio * face).sum(dim=1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        max_gap = self._max_gap(batch)
        batch_size = batch["frames"].shape[0]
        gaps = torch.randint(self.reference_min_gap, max_gap + 1, (batch_size,), device=self.device)
        losses, _ = self._losses(batch, gaps)
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch_size)
        self.log("train/sync_weight", float(self.sync_weight if bool(self.sync_active) else 0.0))
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        losses, batch_size = self.evaluate(batch, "val")
        if "sync" in losses:
            self.val_sync.update(losses["sync"], weight=batch_size)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "test")

    def evaluate(self, batch: dict[str, Any], split: str) -> tuple[dict[str, Tensor], int]:
        """The losses of one batch with the farthest reference (deterministic), logged under `split/`."""
        max_gap = self._max_gap(batch)
        batch_size = batch["frames"].shape[0]
        gaps = torch.full((batch_size,), max_gap, device=self.device)
        losses, _ = self._losses(batch, gaps)
        for name, value in losses.items():
            self.evaluation_means.log(self, split, {name: value}, batch_size, prog_bar=name == "loss")
        return losses, batch_size

    def on_validation_epoch_end(self) -> None:
        """Wav2Lip's switch: once the generated faces fool the expert well enough, turn the sync term on."""
        if not self.syncnet_checkpoint:
            return
        sync = float(self.val_sync.compute())
        self.val_sync.reset()
        if not self.trainer.sanity_checking and sync < self.sync_loss_threshold:
            self.sync_active.fill_(True)

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizer_config(self.optimizer(params=self.generator.parameters()), self.scheduler)

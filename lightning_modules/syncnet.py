"""`experiment=syncnet`: train Wav2Lip's lip-sync expert on the shards, and score lip sync with it.

Two training objectives (`objective`), both on the cosine similarity of the audio and face embeddings:
- `bce`, Wav2Lip's `color_syncnet_train.py` (Prajwal et al. 2020): the similarity is read as the
  probability that the pair is in sync, with binary cross-entropy against 1 for in-sync pairs and 0 for
  off-sync ones (`lightning_modules.losses.sync_loss`); Adam, lr 1e-4 in Wav2Lip. For each clip a
  5-frame window starts at a random s in [0, T - 5]; the positive is the mel window at s, the negative
  one at a random j with |j - s| >= `min_offset` frames (Wav2Lip draws its negatives anywhere in the
  video; a window of T frames bounds the offset by T - 1). Every clip gives one positive and one
  negative, so the classes are balanced.
- `contrastive`: InfoNCE (van den Oord et al. 2018; `lightning_modules.losses.contrastive_sync_loss`)
  on the cosine similarity over a temperature, as CLIP (Radford et al. 2021), and the multi-way
  matching of "Perfect match" (Chung et al. 2019): `faces_per_clip` face windows of each clip (distinct
  starts) against the mel windows at every frame of that clip, the in-sync one the positive, those at
  >= `min_offset` frames the negatives (with `other_clips`, every mel window of the other clips too).
  Each face is compared with about T - 2 `min_offset` candidates at once instead of one, and the
  softmax keeps weighing the hardest of them. On the small synthetic corpus it is what leaves the 0.69
  plateau on every seed (docs/benchmarks.md, "The lip-sync expert over seeds").

Validation is the same for both objectives, so their runs compare: every face window of the batch
against every mel window, reported as the class-balanced BCE loss and accuracy (at 0.5), ROC AUC and
the mean in-sync minus off-sync similarity ("separation"), plus the confidence and the absolute offset
(frames) that `sync_measures` finds on the in-sync clips; `task=test` logs the same under `test/`.

`lightning_modules.metrics.sync_measures` is the Sync metric every stage logs with this expert.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import BinaryAUROC

from lightning_modules.common.optim import optimizer_config
from lightning_modules.losses import contrastive_sync_loss, sync_loss
from lightning_modules.metrics.means import BatchMeans
from lightning_modules.metrics.sync import sync_measures
from lightning_modules.networks.syncnet import SYNC_FRAMES, SyncNet, face_window

__all__ = ["OBJECTIVES", "SyncNetModule"]

OBJECTIVES = ("bce", "contrastive")


def _window_stack(frames: Tensor, starts: Tensor) -> Tensor:
    """(B, T, 3, H, W) frames and (B, ...) window starts -> (B, ..., 5, 3, H, W)."""
    steps = starts[..., None] + torch.arange(SYNC_FRAMES, device=frames.device)
    rows = torch.arange(frames.shape[0], device=frames.device).view(-1, *[1] * (steps.dim() - 1))
    return frames[rows, steps]


class SyncNetModule(L.LightningModule):
    """Trains a `SyncNet` on `view: window` batches with `load_frames: true` (T >= `min_offset` + 5)."""

    def __init__(
        self,
        net: SyncNet,
        optimizer: partial[torch.optim.Optimizer],
        scheduler: partial[torch.optim.lr_scheduler.LRScheduler] | None = None,
        min_offset: int = 2,
        max_eval_offset: int = 15,
        objective: str = "bce",
        temperature: float = 0.2,
        learn_temperature: bool = False,
        max_logit_scale: float = 100.0,
        other_clips: bool = False,
        faces_per_clip: int = 2,
    ) -> None:
        super().__init__()
        # Evaluation means, exact under DDP (lightning_modules/metrics/means.py).
        self.evaluation_means = BatchMeans(
            (
                "loss",
                "acc",
                "separation",
                "sync_conf",
                "sync_offset",
            )
        )
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        if min_offset < 1:
            raise ValueError(f"min_offset must be at least 1 frame, got {min_offset}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if faces_per_clip < 1:
            raise ValueError(f"faces_per_clip must be at least 1, got {faces_per_clip}")
        if temperature <= 0 or max_logit_scale < 1 / temperature:
            raise ValueError(
                f"need temperature > 0 and max_logit_scale >= 1 / temperature, got {temperature}, "
                f"{max_logit_scale}"
            )
        self.syncnet = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.min_offset = min_offset
        self.max_eval_offset = max_eval_offset
        self.objective = objective
        self.max_logit_scale = max_logit_scale
        self.other_clips = other_clips
        self.faces_per_clip = faces_per_clip
        if objective == "contrastive":
            # log(1 / temperature), learnt as in CLIP (or fixed); outside `syncnet.`, so load_syncnet
            # and the official key names never see it.
            log_scale = torch.tensor(1.0 / temperature).log()
            if learn_temperature:
                self.log_logit_scale = torch.nn.Parameter(log_scale)
            else:
                self.register_buffer("log_logit_scale", log_scale)
        self.val_auc = BinaryAUROC()
        self.test_auc = BinaryAUROC()

    def logit_scale(self) -> Tensor:
        """1 / temperature of the contrastive objective, clamped at `max_logit_scale` as in CLIP."""
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def _check(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        if "frames" not in batch:
            raise KeyError(
                "SyncNet training needs frames: set data.load_frames=true (conf/experiment/syncnet.yaml)"
            )
        frames, mel = batch["frames"], batch["mel"]
        length = frames.shape[1]
        if length < SYNC_FRAMES + self.min_offset:
            raise ValueError(
                f"windows of {length} frames leave no off-sync audio at >= {self.min_offset} frames; "
                f"set data.window_frames >= {SYNC_FRAMES + self.min_offset}"
            )
        return frames, mel

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        frames, mel = self._check(batch)
        batch_size, length = frames.shape[:2]
        if batch_size < 2:
            raise ValueError(
                "SyncNet training needs at least 2 clips per batch (its batch norms act on 1x1 features); "
                "set data.batch_size >= 2"
            )
        device = frames.device
        if self.objective == "contrastive":
            return self._contrastive_step(frames, mel)
        starts = torch.randint(0, length - SYNC_FRAMES + 1, (batch_size,), device=device)
        faces = face_window(_window_stack(frames, starts))
        # An off-sync mel start j with |j - s| >= min_offset, drawn uniformly among the admissible ones.
        candidates = torch.arange(length, device=device)
        admissible = (candidates[None, :] - starts[:, None]).abs() >= self.min_offset  # (B, T)
        negatives = torch.multinomial(admissible.float(), 1).squeeze(1)
        rows = torch.arange(batch_size, device=device)
        audio, face = self.syncnet(torch.cat([mel[rows, starts], mel[rows, negatives]]), faces)
        probability = (audio * face.repeat(2, 1)).sum(dim=1)
        label = torch.cat([torch.ones(batch_size, device=device), torch.zeros(batch_size, device=device)])
        loss = sync_loss(probability, label)
        accuracy = ((probability > 0.5) == label.bool()).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/acc", accuracy, batch_size=batch_size)
        return loss

    def _contrastive_step(self, frames: Tensor, mel: Tensor) -> Tensor:
        """InfoNCE of `faces_per_clip` face windows of each clip (distinct starts) against the mel
        windows of the batch (module docstring); logs the loss, how often the in-sync window scores
        highest of its clip's admissible ones (`train/top1`) and the logit scale."""
        batch_size, length = mel.shape[:2]
        windows = length - SYNC_FRAMES + 1
        if self.faces_per_clip > windows:
            raise ValueError(
                f"faces_per_clip={self.faces_per_clip} distinct face windows need data.window_frames >= "
                f"{self.faces_per_clip + SYNC_FRAMES - 1}"
            )
        starts = torch.rand(batch_size, windows, device=mel.device).argsort(dim=1)[:, : self.faces_per_clip]
        faces = face_window(_window_stack(frames, starts).flatten(0, 1))
        audio, face = self.syncnet(mel.flatten(0, 1), faces)
        audio = audio.view(batch_size, length, -1)
        face = face.view(batch_size, self.faces_per_clip, -1)
        loss = contrastive_sync_loss(
            face, audio, starts, self.min_offset, self.logit_scale(), self.other_clips
        )
        with torch.no_grad():
            own = face @ audio.transpose(1, 2)  # (B, K, T)
            offset = (torch.arange(length, device=mel.device) - starts[..., None]).abs()
            own = own.masked_fill((offset > 0) & (offset < self.min_offset), float("-inf"))
            top1 = (own.argmax(dim=2) == starts).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/top1", top1, batch_size=batch_size)
        self.log("train/logit_scale", self.logit_scale().detach(), batch_size=batch_size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "val", self.val_auc)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "test", self.test_auc)

    def evaluate(self, batch: dict[str, Any], split: str, auc: BinaryAUROC) -> None:
        """The deterministic pair scores of one batch, logged under `split/` (see the module docstring)."""
        frames, mel = self._check(batch)
        batch_size, length = frames.shape[:2]
        # Every face window s = 0..T-5 against every mel window j: in sync where j = s, off sync
        # where |j - s| >= min_offset (the pairs in between are neither).
        windows = length - SYNC_FRAMES + 1
        starts = torch.arange(windows, device=frames.device)
        steps = starts[:, None] + torch.arange(SYNC_FRAMES, device=frames.device)
        audio, face = self.syncnet(mel.flatten(0, 1), face_window(frames[:, steps].flatten(0, 1)))
        probability = face.view(batch_size, windows, -1) @ audio.view(batch_size, length, -1).transpose(1, 2)
        offset = (torch.arange(length, device=frames.device)[None, :] - starts[:, None]).abs()  # (N, T)
        positive = probability[:, offset == 0]
        negative = probability[:, offset >= self.min_offset]
        loss = 0.5 * (
            sync_loss(positive, torch.ones_like(positive)) + sync_loss(negative, torch.zeros_like(negative))
        )
        accuracy = 0.5 * ((positive > 0.5).float().mean() + (negative <= 0.5).float().mean())
        scores = torch.cat([positive.flatten(), negative.flatten()])
        labels = torch.cat([torch.ones(positive.numel()), torch.zeros(negative.numel())]).to(scores.device)
        auc.update(scores, labels.long())
        # Per-clip means of equally long windows, weighted by the batch's size (`auc` is a torchmetrics
        # state and reduces itself).
        means = self.evaluation_means
        means.log(self, split, {"loss": loss}, batch_size, prog_bar=True)
        means.log(self, split, {"acc": accuracy, "separation": positive.mean() - negative.mean()}, batch_size)
        self.log(f"{split}/auc", auc, prog_bar=True)
        measures = sync_measures(self.syncnet, frames, mel, self.max_eval_offset)
        values = {
            "sync_conf": measures["confidence"].mean(),
            "sync_offset": measures["offset"].abs().float().mean(),
        }
        means.log(self, split, values, batch_size)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer(params=[p for p in self.parameters() if p.requires_grad])
        return optimizer_config(optimizer, self.scheduler)

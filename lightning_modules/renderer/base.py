"""What the renderer stages share (main paper stage B; SynergyWarpNet): manual optimisation of a
generator against a WGAN-GP critic, the losses, the previous stage's checkpoint, and an evaluation that
scores every
validation frame against two baselines measured in the same run.

Subclasses (`stage2.py`, `stage3.py`, `stage4.py`) say what they generate (`generate`), which networks
they train (`trained_networks`), and their generator loss (`generator_loss`). Everything else is here:

- Optimisation (Lightning's manual optimisation, as its GAN examples): per batch one critic step
  (when the adversarial weight is not 0) on the stage's generated images, then one generator step with
  the critic frozen. `trainer.max_steps` counts optimizer steps: two a batch while the critic trains.
  The stage's own count of generator steps is a buffer (`generator_steps`), so a schedule that reads it
  resumes where it was.
- Pretrained measures (VGG-19 for the perceptual and style losses, RAFT for the correspondence loss,
  AlexNet for LPIPS) come from `weights_dir` (lightning_modules/common/pretrained.py); a missing file switches
  its term off with a warning naming the file. They never enter checkpoints.
- Evaluation: every output is pasted into the mouth-masked crop through the mouth mask (outside it the
  target's own pixels), then PSNR (per image, averaged), SSIM and the landmark distance (dlib on both
  images) are logged for the stage's output (`val/psnr`, ...) and for two baselines that need no
  learning from this stage: pasting I_3D into the crop (`val/*_render_baseline`) and pasting the warped
  reference (`val/*_warp_baseline`: the stage-2 flow's I_warp). LPIPS joins when its backbone exists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from lightning_modules.common.checkpoints import LearnedStateOnly, load_networks
from lightning_modules.common.pretrained import missing_weights_message, torchvision_weights
from lightning_modules.losses import (
    CorrespondenceLoss,
    PerceptualLoss,
    critic_loss,
    generator_wgan_loss,
    ssim_loss,
)
from lightning_modules.metrics.expression import ImageLandmarkDistance
from lightning_modules.metrics.image import lpips_metric
from lightning_modules.metrics.means import BatchMeans

log = logging.getLogger(__name__)

BASELINES = ("render_baseline", "warp_baseline")


def paste(image: Tensor, batch: dict[str, Any]) -> Tensor:
    """`image` inside the mouth mask, the mouth-masked crop (the target's own pixels) outside."""
    mask = batch["mouth_mask"]
    return mask * image + (1 - mask) * batch["masked"]


class RendererModule(LearnedStateOnly, L.LightningModule):
    """Base of the renderer stages; see the module docstring."""

    # Submodules that are fixed measures, left out of checkpoints.
    frozen_prefixes = ("perceptual.", "correspondence.", "lpips.")

    def __init__(
        self,
        critic: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        critic_optimizer: Callable[..., torch.optim.Optimizer],
        losses: dict[str, float],
        weights_dir: str | None = None,
        init_checkpoint: str | None = None,
        gradient_clip: float | None = None,
        correspondence_network: str = "raft_small",
        channels_last: bool = False,
        allow_missing_weights: bool = False,
    ) -> None:
        super().__init__()
        # Evaluation means, exact under DDP (lightning_modules/metrics/means.py).
        self.evaluation_means = BatchMeans(("l1",))
        self.automatic_optimization = False
        self.critic = critic
        self.optimizer_factory = optimizer
        self.critic_optimizer_factory = critic_optimizer
        self.losses = dict(losses)
        self.weights_dir = weights_dir
        self.init_checkpoint = init_checkpoint
        self.gradient_clip = gradient_clip
        self.channels_last = channels_last
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))
        # What a missing weights file switched off (a loss term, a metric), with the file's message: the run
        # stops at `setup` unless `allow_missing_weights`, and then lists them (metrics.json, hparams).
        self.allow_missing_weights = allow_missing_weights
        self.missing_weights: list[str] = []
        self.switched_off: list[str] = []
        self.perceptual = self._pretrained(
            "vgg19", ("perceptual", "style"), PerceptualLoss, "the perceptual and style losses"
        )
        self.correspondence = self._pretrained(
            correspondence_network,
            ("correspondence",),
            lambda w: CorrespondenceLoss(w, correspondence_network),
            "the correspondence loss",
        )
        self.lpips = lpips_metric(weights_dir)
        if self.lpips is None:
            self.missing_weights.append(
                missing_weights_message("alexnet", weights_dir or "<paths.weights_dir>", "LPIPS")
            )
            self.switched_off.append("lpips")
        names = ("output", *BASELINES)
        self.val_metrics = nn.ModuleDict({name: self._image_metrics() for name in names})
        self.test_metrics = nn.ModuleDict({name: self._image_metrics() for name in names})

    # --- set-up ----------------------------------------------------------------------------------------

    def _pretrained(self, name: str, terms: tuple[str, ...], build: Callable, what: str) -> nn.Module | None:
        if not any(self.losses.get(term, 0.0) > 0 for term in terms):
            return None
        weights = torchvision_weights(name, self.weights_dir)
        if weights is None:
            message = missing_weights_message(name, self.weights_dir or "<paths.weights_dir>", what)
            log.warning(message)
            self.missing_weights.append(message)
            self.switched_off += [term for term in terms if self.losses.get(term, 0.0) > 0]
            for term in terms:
                self.losses[term] = 0.0
            return None
        return build(weights)

    @staticmethod
    def _image_metrics() -> MetricCollection:
        return MetricCollection(
            {
                "psnr": PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)),
                "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
                "lmd": ImageLandmarkDistance(),
            }
        )

    def setup(self, stage: str) -> None:
        """A recipe whose losses or metrics need weights that are missing stops here, before any step,
        naming every file (`allow_missing_weights=true` goes on without them). Then the previous stage's
        networks (before Lightning restores this stage's own checkpoint, when it resumes one, which then
        wins); channels-last weights when asked."""
        if self.missing_weights and not self.allow_missing_weights:
            files = "\n".join(f"  - {message}" for message in self.missing_weights)
            raise FileNotFoundError(
                f"this recipe needs pretrained weights that are not in paths.weights_dir:\n{files}\n"
                "Put the files there, or run with allow_missing_weights=true to go on without "
                f"{', '.join(self.switched_off)} (the run's metrics.json then lists them)."
            )
        if self.init_checkpoint and stage == "fit":  # evaluation restores its own checkpoint whole
            load_networks(self, self.init_checkpoint, type(self).__name__)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With `channels_last`, the batch's images too (NHWC in memory: faster convolutions on CPUs with
        oneDNN and on tensor cores)."""
        if not self.channels_last:
            return batch
        return {
            key: value.contiguous(memory_format=torch.channels_last)
            if isinstance(value, Tensor) and value.dim() == 4
            else value
            for key, value in batch.items()
        }

    # --- what subclasses provide ---------------------------------------------------------------------

    def trained_networks(self) -> list[nn.Module]:
        raise NotImplementedError

    def generate(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Every image the stage makes; `output` is the stage's result, `warped` stage 2's I_warp."""
        raise NotImplementedError

    def generator_loss(
        self, batch: dict[str, Any], out: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def critic_images(self, out: dict[str, Tensor]) -> list[Tensor]:
        """The generated images the critic judges (default: the output)."""
        return [out["output"]]

    # --- losses shared by the stages -------------------------------------------------------------------

    def image_terms(self, image: Tensor, target: Tensor, style: bool = False) -> dict[str, Tensor]:
        """SSIM, perceptual (and style), adversarial terms of one generated image, unweighted; the terms
        whose weight is 0 (or whose network is missing) are left out."""

        terms: dict[str, Tensor] = {}
        if self.losses.get("ssim", 0.0) > 0:
            terms["ssim"] = ssim_loss(image, target)
        if self.perceptual is not None:
            terms.update(self.perceptual(image, target, style=style and self.losses.get("style", 0.0) > 0))
        if self.losses.get("wgan", 0.0) > 0:
            terms["wgan"] = generator_wgan_loss(self.critic, image)
        return terms

    def weighted(self, terms: dict[str, Tensor], **aliases: str) -> Tensor:
        """sum_term weight * term, the weights from `losses` (a term's weight under another name where
        `aliases` says so, e.g. rec="l1")."""
        return sum(self.losses.get(aliases.get(name, name), 0.0) * value for name, value in terms.items())

    # --- training --------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        generator_optimizer, critic_optimizer = self.optimizers()
        out = self.generate(batch)
        batch_size = batch["target"].shape[0]
        if self.losses.get("wgan", 0.0) > 0:
            self.toggle_optimizer(critic_optimizer)
            loss_d = critic_loss(
                self.critic,
                batch["target"],
                [image.detach() for image in self.critic_images(out)],
                self.losses["lambda_gp"],
            )
            critic_optimizer.zero_grad()
            self.manual_backward(loss_d)
            critic_optimizer.step()
            self.untoggle_optimizer(critic_optimizer)
            self.log("train/critic_loss", loss_d, batch_size=batch_size)
        self.toggle_optimizer(generator_optimizer)
        loss, terms = self.generator_loss(batch, out)
        generator_optimizer.zero_grad()
        self.manual_backward(loss)
        if self.gradient_clip:
            self.clip_gradients(
                generator_optimizer, gradient_clip_val=self.gradient_clip, gradient_clip_algorithm="norm"
            )
        generator_optimizer.step()
        self.untoggle_optimizer(generator_optimizer)
        self.generator_steps += 1
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{name}": value for name, value in terms.items()}, batch_size=batch_size)
        return loss

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        params = [p for network in self.trained_networks() for p in network.parameters()]
        return [
            self.optimizer_factory(params=params),
            self.critic_optimizer_factory(params=self.critic.parameters()),
        ]

    # --- evaluation ------------------------------------------------------------------------------------

    def final_image(self, batch: dict[str, Any], out: dict[str, Tensor]) -> Tensor:
        """The stage's output as a viewer sees it: pasted into the mouth-masked crop (stage 4's output is
        pasted already, through its feathered mask). What dubbing and animation show."""
        return out["pasted"] if "pasted" in out else paste(out["output"], batch)

    def candidates(self, batch: dict[str, Any], out: dict[str, Tensor]) -> dict[str, Tensor]:
        """The images scored in validation and test: the stage's output and the baselines, each pasted into
        the crop."""
        return {
            "output": self.final_image(batch, out),
            "render_baseline": paste(batch["render3d"], batch),
            "warp_baseline": paste(out["warped"], batch),
        }

    def evaluate(self, batch: dict[str, Any], split: str) -> dict[str, Tensor]:
        """Scores one batch (every frame of the split comes once; datamodules/base.py) and returns the
        images for the media panel. `{split}/l1` (the pasted output against the target) is what
        checkpoints and sweeps minimise: the adversarial terms make a loss incomparable across epochs."""
        out = self.generate(batch)
        metrics = self.val_metrics if split == "val" else self.test_metrics
        batch_size = batch["target"].shape[0]
        for name, image in self.candidates(batch, out).items():
            image = image.clamp(0, 1)
            collection = metrics[name]
            for key, metric in collection.items():
                if key == "lmd":
                    metric.update(image, batch["target"], batch["landmarks"])
                else:
                    metric.update(image, batch["target"])
            suffix = "" if name == "output" else f"_{name}"
            self.log_dict(
                {f"{split}/{key}{suffix}": metric for key, metric in collection.items()},
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
            )
            if name == "output":
                # A mean over equally sized images, weighted by the batch's size, exact under DDP (it is the
                # checkpoint monitor and the sweeps' optimized_metric).
                l1 = (image - batch["target"]).abs().mean()
                self.evaluation_means.log(self, split, {"l1": l1}, batch_size)
                if self.lpips is not None:
                    self.lpips.update(image, batch["target"])
                    self.log(
                        f"{split}/lpips", self.lpips, on_step=False, on_epoch=True, batch_size=batch_size
                    )
        return {key: value.detach() for key, value in out.items() if isinstance(value, Tensor)}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self.evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self.evaluate(batch, "test")

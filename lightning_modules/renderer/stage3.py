"""Stage 3 (SynergyWarpNet, SynergyWarpNet step 2): reference-augmented correction of stage 2's output.

Starts from a stage-2 checkpoint (`init_checkpoint`), whose networks stay frozen unless
`train_previous`; trains `correction_net` (lightning_modules/networks/correction.py), which corrects
I_i* with texture looked up in the K references by keypoint-guided cross-attention:
I_c* = A_c C_c + (1 - A_c) I_i*. The keypoints are the 68 landmarks of the 3DMM projected from the
coefficients (the target's, with whatever expression drives it, and each reference's), never the ones
detected on the target frame: when dubbing, the target's mouth is the one being made.
Its loss is stage 2's L^i on I_c*: L1 over the image + l_SSIM L_SSIM +
l_p L_p + l_style L_style + l_wgan L_wgan (SynergyWarpNet's reconstruction and adversarial terms).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import face3d
from lightning_modules.networks.correction import ReferenceCorrectionNet
from lightning_modules.renderer.base import RendererModule
from lightning_modules.renderer.stage2 import RendererStage2


class RendererStage3(RendererStage2):
    """`experiment=stage3`: stage 2's networks (from its checkpoint) plus `correction_net`; `face_model`
    (frozen, not checkpointed) projects the keypoints."""

    frozen_prefixes = (*RendererModule.frozen_prefixes, "face_model.")

    def __init__(
        self,
        correction_net: ReferenceCorrectionNet,
        face_model: face3d.MorphableModel,
        train_previous: bool = False,
        **stage2: Any,
    ) -> None:
        super().__init__(**stage2)
        self.correction_net = correction_net
        self.face_model = face_model.requires_grad_(False)
        self.train_previous = train_previous

    def keypoints(self, coeffs: Tensor, image_size: int) -> Tensor:
        """(..., 257) coefficients -> (..., 68, 2) projected landmarks in pixels of an `image_size` crop
        (the face model's camera frames the crop, as in the fit)."""
        camera = self.face_model.camera.resized(image_size)
        with torch.autocast(device_type=coeffs.device.type, enabled=False):
            points = self.face_model.landmarks_2d(coeffs.flatten(0, -2).float(), camera)
        return points.view(*coeffs.shape[:-1], *points.shape[1:])

    def previous_networks(self) -> list[nn.Module]:
        return RendererStage2.trained_networks(self)

    def trained_networks(self) -> list[nn.Module]:
        return [*(self.previous_networks() if self.train_previous else []), self.correction_net]

    def on_fit_start(self) -> None:
        if not self.train_previous:
            for network in self.previous_networks():
                network.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> RendererStage3:
        """Frozen previous networks stay in eval mode (their normalisation statistics are theirs)."""
        super().train(mode)
        if not self.train_previous:
            for network in self.previous_networks():
                network.eval()
        return self

    @property
    def epsilon(self) -> float:
        """Stage 2 trained to its end: its inpainting output is what stage 3 corrects."""
        return max(phase["epsilon"] for phase in self.phases) or 1.0

    def generate(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        with torch.set_grad_enabled(self.train_previous and torch.is_grad_enabled()):
            out = super().generate(batch)
        size = batch["target"].shape[-1]
        corrected = self.correction_net(
            out["inpainted"],
            self.keypoints(batch["coeffs"], size),
            batch["references"],
            self.keypoints(batch["references_coeffs"], size),
        )
        out.update(
            corrected=corrected["image"], correction_alpha=corrected["alpha"], output=corrected["image"]
        )
        return out

    def critic_images(self, out: dict[str, Tensor]) -> list[Tensor]:
        return [out["corrected"]]

    def generator_loss(
        self, batch: dict[str, Any], out: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        terms = {"l1": (out["corrected"] - batch["target"]).abs().mean()}
        terms.update(self.image_terms(out["corrected"], batch["target"], style=True))
        return self.weighted(terms), terms

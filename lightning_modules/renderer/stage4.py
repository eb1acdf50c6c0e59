"""Stage 4 (SynergyWarpNet, SynergyWarpNet step 3): confidence-guided fusion, then paste-back.

Starts from a stage-3 checkpoint; trains `fusion_net` (lightning_modules/networks/fusion.py), which blends
I_e* (TMN), I_i* (RBFIN) and I_c* (stage 3) per pixel by a learned confidence map, and pastes the blend
into the mouth-masked crop through the feathered mouth mask: outside the mouth the crop's own pixels.
Its loss is L1 + l_SSIM L_SSIM + l_p L_p + l_wgan L_wgan on the pasted result.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_modules.networks.fusion import ConfidenceFusionNet, paste_back
from lightning_modules.renderer.stage3 import RendererStage3


class RendererStage4(RendererStage3):
    """`experiment=stage4`: stages 2 and 3's networks (from the stage-3 checkpoint) plus `fusion_net`."""

    def __init__(self, fusion_net: ConfidenceFusionNet, feather_radius: int = 3, **stage3: Any) -> None:
        super().__init__(**stage3)
        self.fusion_net = fusion_net
        self.feather_radius = feather_radius

    def previous_networks(self) -> list[nn.Module]:
        return [*super().previous_networks(), self.correction_net]

    def trained_networks(self) -> list[nn.Module]:
        return [*(self.previous_networks() if self.train_previous else []), self.fusion_net]

    def generate(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        with torch.set_grad_enabled(self.train_previous and torch.is_grad_enabled()):
            out = super().generate(batch)
        candidates = torch.stack([out["texture_output"], out["inpainted"], out["corrected"]], dim=1)
        fused = self.fusion_net(candidates, batch["render3d"], batch["mouth_mask"])
        pasted = paste_back(fused["image"], batch["masked"], batch["mouth_mask"], self.feather_radius)
        out.update(fused=fused["image"], confidence=fused["confidence"], pasted=pasted, output=pasted)
        return out

    def critic_images(self, out: dict[str, Tensor]) -> list[Tensor]:
        return [out["pasted"]]

    def generator_loss(
        self, batch: dict[str, Any], out: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        terms = {"l1": (out["pasted"] - batch["target"]).abs().mean()}
        terms.update(self.image_terms(out["pasted"], batch["target"]))
        return self.weighted(terms), terms

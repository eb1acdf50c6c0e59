"""Stage 2 (main paper, stage B): the 3D-guided renderer, SFM + TMN + RBFIN, with the paper's staged training.

L = eps L^i + (1 - eps) L^e, where
- L^e = L_rec^e (L1 over the face region of I_e*) + l_SSIM L_SSIM + l_p L_p + l_wgan L_wgan (of I_e*)
  + l_corr L_corr (of I_warp against the target, through RAFT's features);
- L^i = L_rec^i (L1 over the whole I_i*) + l_SSIM L_SSIM + l_p L_p + l_style L_style + l_wgan L_wgan.
The schedule (`phases`, by generator step, a buffer of the module, so a resumed run continues its
phase): first eps = 0, SFM + TMN only (RBFIN is not run); then the three jointly with eps = 0.1, then
0.2, "once the flow is stable" (the paper gives no step counts: conf/model/stage2.yaml does).
The stage's output is I_i* from the joint phases on, I_e* before (what the stage has trained so far).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_modules.losses import masked_l1
from lightning_modules.networks.flow_net import FlowNet, warp_references
from lightning_modules.networks.inpainting_net import InpaintingNet
from lightning_modules.networks.texture_net import TextureNet
from lightning_modules.renderer.base import RendererModule


def phase_epsilon(phases: Sequence[dict[str, float]], step: int) -> float:
    """eps of the last phase whose `start` (generator steps) has been reached."""
    ordered = sorted(phases, key=lambda phase: phase["start"])
    if not ordered or ordered[0]["start"] != 0:
        raise ValueError(f"the first phase must start at step 0, got {list(phases)}")
    return float([phase for phase in ordered if phase["start"] <= step][-1]["epsilon"])


class RendererStage2(RendererModule):
    """`experiment=stage2`: trains `flow_net` (SFM), `texture_net` (TMN; None to ablate it) and
    `inpainting_net` (RBFIN; a partial that gets TMN's texture channels) against the critic."""

    def __init__(
        self,
        flow_net: FlowNet,
        texture_net: TextureNet | None,
        inpainting_net: Callable[..., InpaintingNet],
        phases: Sequence[dict[str, float]],
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.flow_net = flow_net
        # None: Table 4's "without TMN" (I_e* is I_warp itself, and RBFIN has no texture features to fuse).
        self.texture_net = texture_net
        channels = texture_net.texture_channels() if texture_net is not None else {}
        self.inpainting_net = inpainting_net(texture_channels=channels)
        self.phases = [dict(phase) for phase in phases]
        phase_epsilon(self.phases, 0)  # validates

    @property
    def epsilon(self) -> float:
        return phase_epsilon(self.phases, int(self.generator_steps))

    def trained_networks(self) -> list[nn.Module]:
        return [net for net in (self.flow_net, self.texture_net, self.inpainting_net) if net is not None]

    def modulate(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """SFM and TMN alone: the references warped onto I_3D and I_e* (`image`), which need neither the
        target nor the mouth-masked crop (task=animate makes its stand-in for the crop from I_e*)."""
        warp = warp_references(self.flow_net, batch["render3d"], batch["references"])
        if self.texture_net is not None:
            texture = self.texture_net(warp["warped"], batch["render3d"])
        else:
            texture = {
                "image": warp["warped"],
                "alpha": torch.zeros_like(warp["warped"][:, :1]),
                "texture": {},
            }
        return warp, texture

    def generate(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The stage's images; a batch's optional `modulated` entry is `modulate(batch)` already computed
        (task=animate needs it before it can make the mouth-masked crop)."""
        warp, texture = batch.get("modulated") or self.modulate(batch)
        out = {
            "warped": warp["warped"],
            "flows": warp["flows"],
            "reference_weights": warp["weights"],
            "texture_output": texture["image"],
            "texture_alpha": texture["alpha"],
            "texture_features": texture["texture"],
        }
        if self.epsilon > 0 or not self.training:
            inpainted = self.inpainting_net(
                warp["warped"], batch["render3d"], batch["masked"], texture["texture"], batch["mouth_mask"]
            )
            out.update(inpainted=inpainted["image"], inpainting_alpha=inpainted["alpha"])
        out["output"] = out["inpainted"] if self.epsilon > 0 else out["texture_output"]
        return out

    def critic_images(self, out: dict[str, Tensor]) -> list[Tensor]:
        return [out["texture_output"]] + ([out["inpainted"]] if self.epsilon > 0 else [])

    def generator_loss(
        self, batch: dict[str, Any], out: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        target, epsilon = batch["target"], self.epsilon
        terms_e = {"rec": masked_l1(out["texture_output"], target, batch["face_mask"])}
        terms_e.update(self.image_terms(out["texture_output"], target))
        if self.correspondence is not None:
            terms_e["correspondence"] = self.correspondence(out["warped"], target)
        loss = (1 - epsilon) * self.weighted(terms_e, rec="l1")
        logged = {f"{name}_e": value for name, value in terms_e.items()}
        if epsilon > 0:
            terms_i = {"rec": (out["inpainted"] - target).abs().mean()}
            terms_i.update(self.image_terms(out["inpainted"], target, style=True))
            loss = loss + epsilon * self.weighted(terms_i, rec="l1")
            logged.update({f"{name}_i": value for name, value in terms_i.items()})
        logged["epsilon"] = torch.tensor(epsilon)
        return loss, logged

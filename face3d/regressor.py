"""Optional coefficient regressor compatible with Deep3DFaceRecon's `net_recon` checkpoints.

Architecture as Deng et al. 2019 (Deep3DFaceRecon_pytorch, models/networks.py, ReconNetWrapper): a
torchvision ResNet-50 without its classifier (global-average-pooled 2048 features), then seven 1x1
convolutions giving id 80 | exp 64 | tex 80 | angle 3 | gamma 27 | (tx, ty) 2 | tz 1 = 257 values. The
state-dict keys match the original (`backbone.conv1.weight`, ..., `final_layers.6.bias`), so the user's
`epoch_20.pth` (whose `net_recon` entry holds them) loads as is. Input: RGB (B, 3, 224, 224) in [0, 1],
aligned as Deep3DFaceRecon aligns its crops.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50

from face3d.morphable_model import COEFF_DIMS

# Output heads in order; the translation is split into (tx, ty) and tz as in the original.
HEAD_DIMS = (
    COEFF_DIMS["id"],
    COEFF_DIMS["exp"],
    COEFF_DIMS["tex"],
    COEFF_DIMS["angle"],
    COEFF_DIMS["gamma"],
    2,
    1,
)


class CoeffRegressor(nn.Module):
    """ResNet-50 -> 257 coefficients; heads start at zero (the mean face, default light, no pose)."""

    def __init__(self) -> None:
        super().__init__()
        backbone = resnet50(weights=None)
        backbone.fc = nn.Identity()  # the original ResNet has no `fc` when use_last_fc=False
        self.backbone = backbone
        self.final_layers = nn.ModuleList(nn.Conv2d(2048, d, kernel_size=1, bias=True) for d in HEAD_DIMS)
        for layer in self.final_layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) RGB in [0, 1] -> coeffs (B, 257)."""
        features = self.backbone(images)[:, :, None, None]  # (B, 2048, 1, 1)
        return torch.cat([layer(features) for layer in self.final_layers], dim=1).flatten(1)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> CoeffRegressor:
        """Load a Deep3DFaceRecon checkpoint (a dict with `net_recon`, or the bare state dict)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: Deep3DFaceRecon checkpoint not found. Download the pretrained model "
                "(checkpoints/<name>/epoch_20.pth, linked from github.com/sicxu/Deep3DFaceRecon_pytorch) "
                "and set its path in the config, or fit coefficients with face3d.fit_landmarks instead."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "net_recon" in state:
            state = state["net_recon"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict (or a dict with 'net_recon'), got {type(state)}")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        model = cls()
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path}: not a Deep3DFaceRecon ResNet-50 net_recon state dict "
                f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]})"
            )
        return model

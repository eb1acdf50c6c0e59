"""Image metrics: LPIPS and FID (their pretrained networks read from `paths.weights_dir`, never downloaded)
and the temporal stability of a generated mouth region (the main paper's stated limitation: flicker)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torchmetrics
from torch import Tensor

from lightning_modules.common.pretrained import missing_weights_message, offline_torch_hub, weights_path

log = logging.getLogger(__name__)

# torch-fidelity's Inception file (its URL_INCEPTION_V3), then pytorch-fid's name for the same weights.
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"


INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")


def lpips_metric(weights_dir: str | None) -> torchmetrics.Metric | None:
    """torchmetrics' LPIPS (AlexNet, Zhang et al. 2018) with its backbone read from `weights_dir`
    (`alexnet-owt-7be5be79.pth`, see lightning_modules/common/pretrained.py) and its linear layers from the
    package; None, with a warning naming the file, when the backbone is missing."""
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    if weights_dir is None or not weights_path("alexnet", weights_dir).is_file():
        log.warning(missing_weights_message("alexnet", weights_dir or "<paths.weights_dir>", "LPIPS"))
        return None
    with offline_torch_hub(weights_dir):
        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)


def fid_weights_path(weights_dir: str | os.PathLike | None) -> Path | None:
    """The Inception file in `weights_dir` under torch-fidelity's name, or pytorch-fid's name for the
    same file (both names carry the sha256 prefix 6726825d and the state dicts have the same keys), or
    None."""
    if weights_dir is None:
        return None
    for name in INCEPTION_FILES:
        if (Path(weights_dir) / name).is_file():
            return Path(weights_dir) / name
    return None


def fid_metric(
    weights_dir: str | os.PathLike | None, feature: int = 2048, **kwargs: object
) -> torchmetrics.Metric | None:
    """torchmetrics' FrechetInceptionDistance (Heusel et al. 2017) on torch-fidelity's port of the
    TensorFlow Inception graph (2015-12-05), its weights read from `weights_dir`
    (`weights-inception-2015-12-05-6726825d.pth`, torch-fidelity's file, or pytorch-fid's
    `pt_inception-2015-12-05-6726825d.pth`); None, with a warning naming the file, when it is missing.

    Inputs are uint8 (N, 3, H, W) images, torchmetrics' default (`normalize=True` in `kwargs` takes floats
    in [0, 1] instead; uint8 images with it would overflow). torch-fidelity opens
    the file with `weights_only=False`, so it is first read here with `weights_only=True`: a file that
    holds anything but tensors is refused before it is unpickled."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    path = fid_weights_path(weights_dir)
    if path is None:
        wanted = Path(weights_dir or "<paths.weights_dir>") / INCEPTION_FILES[0]
        log.warning(
            "FID is off: %s is missing (download %s into paths.weights_dir; nothing is fetched at run time)",
            wanted,
            INCEPTION_URL,
        )
        return None
    try:
        checked = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is not a plain Inception state dict (weights_only load: {error})"
        ) from error
    if not isinstance(checked, dict) or not all(isinstance(v, Tensor) for v in checked.values()):
        raise ValueError(f"{path} holds no Inception state dict (expected a mapping of tensors)")
    del checked
    try:
        return FrechetInceptionDistance(feature=feature, feature_extractor_weights_path=str(path), **kwargs)
    except RuntimeError as error:
        raise ValueError(f"{path} does not match torch-fidelity's Inception: {error}") from error


class TemporalStability(torchmetrics.Metric):
    """Flicker of the mouth region: the mean absolute frame-to-frame change of the pixels inside a mouth
    mask, of the generated frames and of the source frames of the same clip, and their ratio
    (generated / source: about 1 when the generated mouth moves as much as the real one, well above 1
    when frames repaired independently flicker; main paper, metrics's known limitation).

    The change between frames t-1 and t is weighed by the union (max) of their masks, so a moving mask
    covers the mouth in both. Sums over pixels, channels and clips are the states (DDP: summed)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("generated_change", "source_change", "weight"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, generated: Tensor, source: Tensor, mask: Tensor) -> None:
        """generated, source (T, C, H, W) of one clip (T >= 2); mask (T, 1, H, W) or (1, H, W) in [0, 1]."""
        if generated.shape != source.shape or generated.dim() != 4 or generated.shape[0] < 2:
            raise ValueError(
                f"generated and source must be equal (T >= 2, C, H, W), got {tuple(generated.shape)} and "
                f"{tuple(source.shape)}"
            )
        mask = mask.detach().double()
        if mask.dim() == 3:
            mask = mask.unsqueeze(0)
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != generated.shape[-2:]:
            raise ValueError(f"mask must be (T, 1, H, W) or (1, H, W), got {tuple(mask.shape)}")
        weight = torch.maximum(mask[1:], mask[:-1]) if mask.shape[0] > 1 else mask  # (T-1 | 1, 1, H, W)
        weight = weight.expand(generated.shape[0] - 1, generated.shape[1], *generated.shape[-2:])
        for state, frames in (("generated_change", generated), ("source_change", source)):
            frames = frames.detach().double()
            change = (frames[1:] - frames[:-1]).abs()
            setattr(self, state, getattr(self, state) + (change * weight).sum())
        self.weight += weight.sum()

    def compute(self) -> dict[str, Tensor]:
        weight = self.weight.clamp(min=1e-12)
        generated, source = self.generated_change / weight, self.source_change / weight
        return {
            "generated": generated.float(),
            "source": source.float(),
            "ratio": (generated / source.clamp(min=1e-12)).float(),
        }

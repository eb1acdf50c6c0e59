"""Expression and landmark metrics: AED (average expression distance), LMD of projected landmarks and of
landmarks detected on generated images (dlib offline, or face_alignment's FAN from `paths.weights_dir`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchmetrics
from torch import Tensor

from datamodules.media.detect import FAN_FILE
from datamodules.media.images import to_uint8_images
from lightning_modules.common.pretrained import offline_torch_hub

# iBUG 68-point order: the mouth is points 48-67 (outer lip 48-59, inner lip 60-67).
MOUTH_LANDMARKS = tuple(range(48, 68))


def average_expression_distance(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AED: the mean absolute difference of 3DMM expression coefficients, over every coefficient of
    every frame (the paper's Table 3 values, about 0.08-0.1, are per-coefficient means)."""
    if predicted.shape != target.shape:
        raise ValueError(f"AED needs equal shapes, got {tuple(predicted.shape)} and {tuple(target.shape)}")
    return (predicted - target).abs().mean()


def landmark_distance(
    predicted: torch.Tensor, target: torch.Tensor, indices: Sequence[int] | None = None
) -> torch.Tensor:
    """LMD: the mean Euclidean distance in pixels between corresponding 2D landmarks (..., 68, 2),
    over the points in `indices` (all when None; `MOUTH_LANDMARKS` for the mouth-only variant of
    Chen et al. 2018)."""
    if predicted.shape != target.shape or predicted.shape[-1] != 2:
        raise ValueError(
            f"LMD needs equal (..., N, 2) shapes, got {tuple(predicted.shape)} and {tuple(target.shape)}"
        )
    if indices is not None:
        predicted, target = predicted[..., list(indices), :], target[..., list(indices), :]
    return (predicted - target).norm(dim=-1).mean()


class ImageLandmarkDistance(torchmetrics.Metric):
    """LMD between generated and target face crops: 68 landmarks located on both images inside the box of
    the target's known landmarks, then the mean Euclidean distance in pixels over `indices` (all 68, or
    the mouth). Accumulates sums, so it is exact over a whole split and under DDP (states reduced by
    summing).

    `backend`: "dlib" (default): dlib's shape predictor, shipped by the face_recognition_models package,
    so offline; "face_alignment": the 2D-FAN of Bulat & Tzimiropoulos 2017 (the `face_alignment` package,
    what the main paper's preprocessing uses) with its file `2DFAN4-11f355bf06.pth.tar` read from
    `weights_dir`; a missing file raises FileNotFoundError naming it (the metric is never computed
    through another network than the one asked for)."""

    full_state_update = False
    higher_is_better = False

    def __init__(
        self,
        indices: Sequence[int] | None = None,
        margin: float = 0.1,
        backend: str = "dlib",
        weights_dir: str | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__()
        if backend not in ("dlib", "face_alignment"):
            raise ValueError(f"unknown landmark backend {backend!r} (dlib | face_alignment)")
        self.indices = list(indices) if indices is not None else list(range(68))
        self.margin = margin
        self.backend = backend
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self._predictor = None
        self._fan = _face_alignment_fan(weights_dir, device) if backend == "face_alignment" else None

    def _landmarks(self, image: Tensor, box: tuple[int, int, int, int]) -> np.ndarray:
        pixels = to_uint8_images(image)
        if self._fan is not None:
            found = self._fan.get_landmarks_from_image(pixels, detected_faces=[np.asarray(box, np.float32)])
            return np.asarray(found[0][:, :2], dtype=np.float64)
        import dlib

        if self._predictor is None:
            self._predictor = _dlib_model("shape_predictor_68_face_landmarks.dat")
        shape = self._predictor(pixels, dlib.rectangle(*box))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def update(self, predicted: Tensor, target: Tensor, target_landmarks: Tensor) -> None:
        """predicted, target (B, 3, H, W) in [0, 1]; target_landmarks (B, 68, 2) pixels (the box)."""
        for image, truth, points in zip(predicted, target, target_landmarks.detach().float().cpu().numpy()):
            low, high = points.min(axis=0), points.max(axis=0)
            pad = self.margin * (high - low)
            box = tuple(int(round(v)) for v in (*(low - pad), *(high + pad)))
            a = self._landmarks(image, box)[self.indices]
            b = self._landmarks(truth, box)[self.indices]
            self.total += float(np.linalg.norm(a - b, axis=1).mean())
            self.count += 1

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


_DLIB_MODELS: dict[str, object] = {}


def _dlib_model(name: str) -> object:
    """A dlib model file of the face_recognition_models package, loaded once per process."""
    if name not in _DLIB_MODELS:
        import dlib

        from datamodules.media.detect import dlib_model_path

        loader = dlib.face_recognition_model_v1 if "recognition" in name else dlib.shape_predictor
        _DLIB_MODELS[name] = loader(str(dlib_model_path(name)))
    return _DLIB_MODELS[name]


def _face_alignment_fan(weights_dir: str | None, device: str) -> object:
    """face_alignment's 2D-FAN read offline from `weights_dir` (boxes come from the caller, so the
    package's "folder" detector, which loads nothing, stands in for S3FD)."""
    from face_alignment import FaceAlignment, LandmarksType

    path = Path(weights_dir or "<paths.weights_dir>") / FAN_FILE
    if weights_dir is None or not path.is_file():
        raise FileNotFoundError(
            f"LMD backend face_alignment: {path} is missing (download {FAN_FILE} from "
            "https://www.adrianbulat.com/downloads/python-fan/ into paths.weights_dir; nothing is fetched at "
            "run time), or use backend=dlib"
        )
    with offline_torch_hub(weights_dir):
        return FaceAlignment(
            LandmarksType.TWO_D, device=device, flip_input=False, face_detector="folder", compile=False
        )


class AverageExpressionDistance(torchmetrics.Metric):
    """AED (`average_expression_distance`) pooled over a split: the sum of absolute coefficient
    differences over the count of coefficients, so batches of any size weigh by their frames."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted: Tensor, target: Tensor) -> None:
        """predicted, target: expression coefficients of equal shape (..., K)."""
        if predicted.shape != target.shape:
            raise ValueError(
                f"AED needs equal shapes, got {tuple(predicted.shape)} and {tuple(target.shape)}"
            )
        self.total += (predicted.detach().double() - target.detach().double()).abs().sum()
        self.count += predicted.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()

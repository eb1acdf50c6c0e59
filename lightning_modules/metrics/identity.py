"""Identity metrics: CSIM, the cosine similarity of identity embeddings between generated and true faces
(dlib's face-recognition network offline, or ArcFace from `paths.weights_dir`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from datamodules.media.images import to_float_images, to_uint8_images
from lightning_modules.metrics.expression import _dlib_model

log = logging.getLogger(__name__)

ARCFACE_FILE = "arcface.pt"


# ArcFace's 112 x 112 alignment template (Deng et al. 2019, insightface): eyes, nose tip, mouth corners.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def arcface_chip(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(112, 112, 3) uint8 crop for ArcFace: the similarity transform that takes five points of the 68
    landmarks (the eye centres, nose tip 30, mouth corners 48 and 54) closest to ArcFace's template."""
    import cv2

    points = np.stack(
        [landmarks[36:42].mean(0), landmarks[42:48].mean(0), landmarks[30], landmarks[48], landmarks[54]]
    ).astype(np.float32)
    matrix, _ = cv2.estimateAffinePartial2D(points, ARCFACE_TEMPLATE, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("no similarity transform fits these landmarks")
    return cv2.warpAffine(image, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class CSIM(torchmetrics.Metric):
    """CSIM: the cosine similarity of identity embeddings of generated and source (or ground-truth)
    images, averaged over pairs (as in Zakharov et al. 2019 and the dubbing papers' tables).

    Faces are located by dlib's 68-point shape predictor inside a given box, or inside the largest box
    of dlib's frontal detector when no box is given (a pair where no face is found is counted in
    `missing` and left out). Backends:
    - "dlib" (offline, default): dlib's 128-d face recognition ResNet
      (`dlib_face_recognition_resnet_model_v1.dat` of face_recognition_models; King 2017), aligned by
      dlib's own face chip from the 68 landmarks;
    - "arcface": a TorchScript ArcFace `arcface.pt` under `weights_dir` (any network mapping (N, 3, 112,
      112) RGB in [-1, 1] to (N, D)), on the 112 x 112 crop aligned to ArcFace's template (`arcface_chip`);
      a missing file raises FileNotFoundError naming it;
    - "auto": arcface when that file exists, else dlib with a warning naming the file.
    The two backends give different numbers (dlib's embeddings are all fairly close in angle); report
    which one (`backend`). Sum states, reduced by summing under DDP."""

    full_state_update = False
    higher_is_better = True

    def __init__(
        self, backend: str = "dlib", weights_dir: str | os.PathLike | None = None, upsample: int = 1
    ) -> None:
        super().__init__()
        if backend not in ("dlib", "arcface", "auto"):
            raise ValueError(f"unknown CSIM backend {backend!r} (dlib | arcface | auto)")
        path = Path(weights_dir or "<paths.weights_dir>") / ARCFACE_FILE
        available = weights_dir is not None and path.is_file()
        if backend == "auto":
            if not available:
                log.warning(
                    "CSIM uses dlib's face recognition ResNet: %s (ArcFace, TorchScript) is missing", path
                )
            backend = "arcface" if available else "dlib"
        if backend == "arcface" and not available:
            raise FileNotFoundError(
                f"CSIM backend arcface: {path} is missing (a TorchScript ArcFace taking (N, 3, 112, 112) RGB "
                "in [-1, 1]; put it in paths.weights_dir, or use backend=dlib)"
            )
        self.backend = backend
        self.upsample = upsample
        self._arcface = torch.jit.load(str(path), map_location="cpu").eval() if backend == "arcface" else None
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("missing", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _shape(self, pixels: np.ndarray, box: Sequence[float] | None) -> object | None:
        import dlib

        if box is None:
            found = _frontal_detector()(pixels, self.upsample)
            if len(found) == 0:
                return None
            rectangle = max(found, key=lambda r: r.area())
        else:
            rectangle = dlib.rectangle(*(int(round(float(v))) for v in box))
        return _dlib_model("shape_predictor_68_face_landmarks.dat")(pixels, rectangle)

    @torch.no_grad()
    def embedding(self, image: Tensor, box: Sequence[float] | None = None) -> Tensor | None:
        """The identity embedding of one (3, H, W) RGB image in [0, 1] (None when no face is found)."""
        pixels = to_uint8_images(image)
        shape = self._shape(pixels, box)
        if shape is None:
            return None
        if self._arcface is None:
            recogniser = _dlib_model("dlib_face_recognition_resnet_model_v1.dat")
            return torch.tensor(
                np.asarray(recogniser.compute_face_descriptor(pixels, shape)), dtype=torch.float64
            )
        landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
        chip = to_float_images(arcface_chip(pixels, landmarks))
        return self._arcface((chip[None] - 0.5) / 0.5).flatten().double()

    def update(self, generated: Tensor, source: Tensor, boxes: Tensor | None = None) -> None:
        """generated, source (B, 3, H, W) RGB in [0, 1]; boxes (B, 4) x0, y0, x1, y1 pixels of the face
        in both (or None: detect it in each image)."""
        if generated.shape != source.shape or generated.dim() != 4:
            raise ValueError(
                f"CSIM needs equal (B, 3, H, W) shapes, got {tuple(generated.shape)}, {tuple(source.shape)}"
            )
        for index in range(generated.shape[0]):
            box = None if boxes is None else boxes[index].tolist()
            a, b = self.embedding(generated[index], box), self.embedding(source[index], box)
            if a is None or b is None:
                self.missing += 1
                continue
            self.total += F.cosine_similarity(a, b, dim=0).item()
            self.count += 1

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


_DETECTOR: list[object] = []


def _frontal_detector() -> object:
    if not _DETECTOR:
        import dlib

        _DETECTOR.append(dlib.get_frontal_face_detector())
    return _DETECTOR[0]

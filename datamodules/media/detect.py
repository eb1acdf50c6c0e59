"""Face detection + 68 iBUG landmarks, per frame.

Two backends with one interface, `detector(image) -> list[Face]` (all faces in the frame):
- `dlib` (default): HOG frontal face detector + the 68-point shape predictor shipped by the
  `face_recognition_models` package; works offline.
- `face_alignment`: S3FD + 2D-FAN (Bulat & Tzimiropoulos 2017), what the main paper uses. Its weights
  are read from the torch hub cache layout (`<hub_dir>/checkpoints/s3fd-619a316812.pth` and
  `2DFAN4-11f355bf06.pth.tar`); missing files raise an error naming them, nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

S3FD_FILE = "s3fd-619a316812.pth"
FAN_FILE = "2DFAN4-11f355bf06.pth.tar"


@dataclass
class Face:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in pixels
    score: float
    landmarks: np.ndarray  # (68, 2) float32, pixels


def dlib_model_path(name: str) -> Path:
    """A model file of the `face_recognition_models` package, found without importing it (its
    `__init__` imports the deprecated `pkg_resources`)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the face_recognition_models package is not installed (pip install it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the face_recognition_models package")
    return path


class DlibDetector:
    """dlib HOG detector (`upsample` pyramid levels, detections scoring under `min_score` dropped)
    and the 68-landmark shape predictor."""

    def __init__(self, upsample: int = 0, min_score: float = 0.0):
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
        self.upsample = upsample
        self.min_score = min_score
        self._rectangle = dlib.rectangle

    def __call__(self, image: np.ndarray) -> list[Face]:
        image = np.ascontiguousarray(image)
        rects, scores, _ = self.detector.run(image, self.upsample, self.min_score)
        faces = []
        for rect, score in zip(rects, scores):
            faces.append(
                Face(
                    box=np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float32),
                    score=float(score),
                    landmarks=self.landmarks(image, rect),
                )
            )
        return faces

    def landmarks(self, image: np.ndarray, rect) -> np.ndarray:
        shape = self.predictor(image, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    def landmarks_in_box(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 landmarks inside a given box (used for frames where the detector missed the face)."""
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        return self.landmarks(np.ascontiguousarray(image), self._rectangle(x0, y0, x1, y1))


class FaceAlignmentDetector:
    """S3FD + 2D-FAN through the `face_alignment` package, weights from `hub_dir`/checkpoints."""

    def __init__(self, hub_dir: str | None = None, device: str = "cpu", min_score: float = 0.5):
        import torch
        from face_alignment import FaceAlignment, LandmarksType

        hub = Path(hub_dir) if hub_dir else Path(torch.hub.get_dir())
        missing = [
            hub / "checkpoints" / name
            for name in (S3FD_FILE, FAN_FILE)
            if not (hub / "checkpoints" / name).exists()
        ]
        if missing:
            raise FileNotFoundError(
                "face_alignment backend: missing weight file(s) "
                + ", ".join(str(p) for p in missing)
                + " (download s3fd-619a316812.pth and 2DFAN4-11f355bf06.pth.tar from "
                "adrianbulat.com/downloads/python-fan/ into that checkpoints folder, set "
                "preprocess.detector.face_alignment.hub_dir, or use preprocess.detector.backend=dlib)"
            )
        previous = torch.hub.get_dir()
        torch.hub.set_dir(str(hub))
        try:
            self.model = FaceAlignment(
                LandmarksType.TWO_D,
                device=device,
                flip_input=False,
                face_detector="sfd",
                face_detector_kwargs={"path_to_detector": str(hub / "checkpoints" / S3FD_FILE)},
                compile=False,
            )
        finally:
            torch.hub.set_dir(previous)
        self.min_score = min_score

    def __call__(self, image: np.ndarray) -> list[Face]:
        boxes = self.model.face_detector.detect_from_image(image[..., ::-1].copy())
        boxes = [b for b in boxes if b[4] >= self.min_score]
        if not boxes:
            return []
        landmarks = self.model.get_landmarks_from_image(image, detected_faces=[b[:4] for b in boxes])
        return [
            Face(
                box=np.asarray(b[:4], np.float32),
                score=float(b[4]),
                landmarks=np.asarray(lm[:, :2], np.float32),
            )
            for b, lm in zip(boxes, landmarks)
        ]

    def landmarks_in_box(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        return np.asarray(
            self.model.get_landmarks_from_image(image, detected_faces=[box])[0][:, :2], np.float32
        )


def make_detector(backend: str = "dlib", options: dict | None = None) -> DlibDetector | FaceAlignmentDetector:
    """`backend`: 'dlib' or 'face_alignment'; `options` are that backend's constructor arguments."""
    options = dict(options or {})
    if backend == "dlib":
        return DlibDetector(**options)
    if backend == "face_alignment":
        return FaceAlignmentDetector(**options)
    raise ValueError(f"unknown detector backend {backend!r} (dlib | face_alignment)")

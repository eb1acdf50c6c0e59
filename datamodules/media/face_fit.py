"""A face tube's landmarks and its 3DMM fit (Deng et al. 2019's coefficients, fitted to landmarks, then
texture and light to the pixels): the per-clip options and heavy tools that preprocessing builds once per
worker and dubbing reuses with the settings of the renderer's shards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from datamodules.media import audio as audio_lib
from datamodules.media.images import to_float_images
from datamodules.media.track import crop_box, interpolate_boxes, select_tube


@dataclass
class ClipOptions:
    """Every number of the per-clip pipeline: the `preprocess.clip` config node (conf/data/corpus.yaml
    documents each key), with no defaults of its own."""

    crop_size: int
    fps: float
    max_side: int
    vfr_tolerance: float
    audio_tolerance_s: float
    grayscale_tolerance: float
    min_frames: int
    max_frames: int
    iou_with_initial: float
    max_gap: int
    several_faces_fraction: float
    second_face_score_ratio: float
    second_face_size_ratio: float
    increase: float
    min_face_size: int
    fit: dict[str, Any]
    appearance: dict[str, Any]
    render_batch: int
    jpeg_quality: int

    def __post_init__(self) -> None:
        if self.fps * audio_lib.SAMPLES_PER_FRAME != audio_lib.SAMPLE_RATE:
            raise ValueError(
                f"preprocess.clip.fps is {self.fps}: it must be the suite's clock, "
                f"{audio_lib.SAMPLE_RATE / audio_lib.SAMPLES_PER_FRAME:g} fps (sources at any rate are "
                "resampled to it)"
            )


@dataclass
class Tools:
    """The heavy objects a worker builds once: detector, face model, camera at crop size, teacher."""

    detector: Any
    model: Any
    camera: Any
    teacher: Any = None


def face_tube(detections: list, height: int, width: int, options: ClipOptions) -> tuple[Any, tuple]:
    """The clip's face tube (FOMM protocol: one face joined over time) and its square crop box."""
    tube = select_tube(
        detections,
        options.min_frames,
        options.iou_with_initial,
        options.max_gap,
        options.several_faces_fraction,
        options.second_face_score_ratio,
        options.second_face_size_ratio,
    )
    return tube, crop_box(tube, height, width, options.increase)


def landmarks_for_tube(frames: np.ndarray, tube, detector) -> np.ndarray:
    """(length, 68, 2) frame-pixel landmarks over the tube: the detector's where it found the face,
    the landmark predictor inside the interpolated box where it missed."""
    boxes = interpolate_boxes(tube)
    out = []
    for k, t in enumerate(range(tube.start, tube.end)):
        face = tube.faces.get(t)
        out.append(face.landmarks if face is not None else detector.landmarks_in_box(frames[t], boxes[k]))
    return np.stack(out).astype(np.float32)


def fit_face(
    crops: np.ndarray,
    landmarks: np.ndarray,
    options: ClipOptions,
    tools: Tools,
    identity: torch.Tensor | None = None,
) -> tuple[Any, dict]:
    """The 3DMM of one stretch of face crops (T, S, S, 3) uint8 with their landmarks (T, 68, 2) in crop
    pixels: the landmark fit (with `identity` (80,) held fixed when given), then texture and light from
    the crops' own pixels, so that I_3D shows this person (face3d/appearance.py). Returns
    (AppearanceFit, its I_3D render dict(image, mask, ...)), shaded from the fit's own rasterisation.
    Preprocessing and dubbing analyse faces through this."""
    import face3d

    device = tools.model.mean_shape.device
    fit = face3d.fit_landmarks(
        tools.model,
        tools.camera,
        torch.from_numpy(np.ascontiguousarray(landmarks)).to(device),
        **options.fit,
        identity=identity,
    )
    renderer = face3d.FaceRenderer(tools.model, tools.camera)
    images = to_float_images(crops, device)
    appearance = face3d.fit_appearance(
        tools.model, tools.camera, fit.coeffs.detach(), images, renderer=renderer, **options.appearance
    )
    return appearance, appearance.render(renderer)

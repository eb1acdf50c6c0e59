"""The 3D face layer: morphable model, SH shading, PyTorch3D rendering, landmark projection, fitting
(shape and pose to landmarks, then texture and light to the images)."""

from face3d.appearance import AppearanceFit, fit_appearance
from face3d.camera import PerspectiveCamera
from face3d.fitting import FitResult, fit_landmarks
from face3d.morphable_model import (
    COEFF_DIMS,
    NUM_COEFFS,
    MorphableModel,
    build_face_model,
    clip_albedo,
    expression_of,
    face_model_from_config,
    with_expression,
)
from face3d.renderer import FaceRenderer

__all__ = [
    "COEFF_DIMS",
    "AppearanceFit",
    "NUM_COEFFS",
    "FaceRenderer",
    "FitResult",
    "MorphableModel",
    "PerspectiveCamera",
    "build_face_model",
    "clip_albedo",
    "expression_of",
    "face_model_from_config",
    "fit_appearance",
    "fit_landmarks",
    "with_expression",
]

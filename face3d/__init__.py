"""The 3D face layer: morphable model, SH shading, PyTorch3D rendering, landmark projection, fitting."""

from face3d.camera import PerspectiveCamera
from face3d.fitting import FitResult, fit_landmarks
from face3d.morphable_model import (
    COEFF_DIMS,
    NUM_COEFFS,
    MorphableModel,
    build_face_model,
    expression_of,
    face_model_from_config,
    with_expression,
)
from face3d.renderer import FaceRenderer

__all__ = [
    "COEFF_DIMS",
    "NUM_COEFFS",
    "FaceRenderer",
    "FitResult",
    "MorphableModel",
    "PerspectiveCamera",
    "build_face_model",
    "expression_of",
    "face_model_from_config",
    "fit_landmarks",
    "with_expression",
]

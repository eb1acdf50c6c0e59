"""The morphable face model: coefficients -> shape, texture, normals, SH colour, pose, landmarks.

Follows Deep3DFaceRecon's `ParametricFaceModel` (Deng et al. 2019, github.com/sicxu/Deep3DFaceRecon_pytorch,
models/bfm.py): the same 257-coefficient layout, linear shape and texture, Lambertian shading with
3-band (9 coefficient) spherical harmonics and the same constants and default lighting, rotation
R = Rz Ry Rx from three angles, and a camera on the z axis at distance 10. Both model sources (the
licensed BFM file and the procedural model) reach this class as `BFM_model_front.mat`-style arrays.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from face3d.camera import PerspectiveCamera

# The coefficient layout, in order: the one place it is written down.
COEFF_DIMS: dict[str, int] = {"id": 80, "exp": 64, "tex": 80, "angle": 3, "gamma": 27, "trans": 3}
NUM_COEFFS = sum(COEFF_DIMS.values())  # 257

# Spherical harmonics: a_b (Lambertian kernel) and c_b (normalisation) for bands 0, 1, 2.
SH_A = (math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0))
SH_C = (
    1 / math.sqrt(4 * math.pi),
    math.sqrt(3.0) / math.sqrt(4 * math.pi),
    3 * math.sqrt(5.0) / math.sqrt(12 * math.pi),
)
# Default lighting added to gamma (per colour channel): ambient only.
DEFAULT_LIGHT = (0.8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _matmul3(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched 3x3 product without BLAS: tiny GEMMs in BLAS pay a thread start-up on every call."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)


def vertex_face_buffer(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """(N, P) indices of the faces around each vertex, padded with `len(faces)` (a zero normal)."""
    counts = np.bincount(faces.reshape(-1), minlength=num_vertices)
    buffer = np.full((num_vertices, max(int(counts.max()), 1)), len(faces), dtype=np.int64)
    fill = np.zeros(num_vertices, dtype=np.int64)
    for f, tri in enumerate(faces):
        for v in tri:
            buffer[v, fill[v]] = f
            fill[v] += 1
    return buffer


class MorphableModel(nn.Module):
    """A linear 3DMM with BFM's layout; all arrays are buffers, so `.to(device)` moves the model.

    Args:
        mean_shape: (N, 3) mean vertex positions, recentred on their centroid.
        id_base, exp_base: (3N, 80) and (3N, 64) bases, rows interleaved x, y, z per vertex.
        mean_tex: (N, 3) mean albedo in 0..255; tex_base: (3N, 80) in the same units.
        faces: (F, 3) 0-based vertex indices, counter-clockwise seen from outside.
        point_buf: (N, P) 0-based adjacent-face indices padded with F.
        keypoints: (68,) 0-based vertex indices of the iBUG-68 landmarks.
        name: where the model came from (for logs and errors).
    """

    def __init__(
        self,
        mean_shape: np.ndarray,
        id_base: np.ndarray,
        exp_base: np.ndarray,
        mean_tex: np.ndarray,
        tex_base: np.ndarray,
        faces: np.ndarray,
        point_buf: np.ndarray,
        keypoints: np.ndarray,
        name: str = "morphable model",
        mouth_cavity: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        n = mean_shape.shape[0]
        expected = {
            "id_base": (id_base, (3 * n, COEFF_DIMS["id"])),
            "exp_base": (exp_base, (3 * n, COEFF_DIMS["exp"])),
            "tex_base": (tex_base, (3 * n, COEFF_DIMS["tex"])),
            "mean_tex": (mean_tex, (n, 3)),
            "keypoints": (keypoints, (68,)),
        }
        for key, (array, shape) in expected.items():
            if tuple(array.shape) != shape:
                raise ValueError(f"{name}: {key} has shape {tuple(array.shape)}, expected {shape}")
        if faces.min() < 0 or faces.max() >= n or keypoints.max() >= n:
            raise ValueError(f"{name}: face or keypoint indices outside 0..{n - 1}")
        self.name = name
        # Set from the config by build_face_model; defaults for a model built by hand.
        self.camera = PerspectiveCamera()
        self.fitting: dict[str, Any] = {}
        self.appearance: dict[str, Any] = {}
        f32 = torch.float32
        self.register_buffer("mean_shape", torch.as_tensor(mean_shape, dtype=f32))
        self.register_buffer("id_base", torch.as_tensor(id_base, dtype=f32))
        self.register_buffer("exp_base", torch.as_tensor(exp_base, dtype=f32))
        self.register_buffer("mean_tex", torch.as_tensor(mean_tex, dtype=f32))
        self.register_buffer("tex_base", torch.as_tensor(tex_base, dtype=f32))
        self.register_buffer("faces", torch.as_tensor(faces, dtype=torch.int64))
        self.register_buffer("point_buf", torch.as_tensor(point_buf, dtype=torch.int64))
        self.register_buffer("keypoints", torch.as_tensor(keypoints, dtype=torch.int64))
        # Vertices of the mouth's inside (teeth, cavity), seen only when the lips part; all False for a
        # model without one (BFM).
        cavity = np.zeros(n, dtype=bool) if mouth_cavity is None else np.asarray(mouth_cavity, dtype=bool)
        if cavity.shape != (n,):
            raise ValueError(f"{name}: mouth_cavity has shape {cavity.shape}, expected ({n},)")
        self.register_buffer("mouth_cavity", torch.as_tensor(cavity))
        self.register_buffer("default_light", torch.tensor(DEFAULT_LIGHT, dtype=f32))
        # The landmark vertices' rows, gathered once: fitting and stage 1's shape loss use only these.
        rows = (3 * self.keypoints[:, None] + torch.arange(3)).reshape(-1)
        self.register_buffer("keypoint_mean", self.mean_shape[self.keypoints].clone(), persistent=False)
        self.register_buffer("keypoint_id_base", self.id_base[rows].clone(), persistent=False)
        self.register_buffer("keypoint_exp_base", self.exp_base[rows].clone(), persistent=False)

    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    @staticmethod
    def split_coeffs(coeffs: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., 257) -> dict(id, exp, tex, angle, gamma, trans), in Deep3DFaceRecon's order."""
        if coeffs.shape[-1] != NUM_COEFFS:
            raise ValueError(
                f"expected {NUM_COEFFS} coefficients in the last dimension, got {coeffs.shape[-1]}"
            )
        return dict(zip(COEFF_DIMS, torch.split(coeffs, list(COEFF_DIMS.values()), dim=-1)))

    @staticmethod
    def join_coeffs(**parts: torch.Tensor) -> torch.Tensor:
        """Inverse of `split_coeffs`; a missing group is zero (the mean face, default light, no pose)."""
        ref = next(iter(parts.values()))
        lead = ref.shape[:-1]
        return torch.cat(
            [parts.get(k, ref.new_zeros(*lead, d)) for k, d in COEFF_DIMS.items()],
            dim=-1,
        )

    # --- geometry -------------------------------------------------------------------------------------
    def compute_shape(self, id_coeff: torch.Tensor, exp_coeff: torch.Tensor) -> torch.Tensor:
        """S = S_mean + B_id alpha + B_exp beta -> (B, N, 3)."""
        offsets = id_coeff @ self.id_base.T + exp_coeff @ self.exp_base.T  # (B, 3N), xyz per vertex
        return self.mean_shape + offsets.view(id_coeff.shape[0], -1, 3)

    @staticmethod
    def compute_rotation(angles: torch.Tensor) -> torch.Tensor:
        """(B, 3) angles in radians (about x, y, z) -> (B, 3, 3) R = Rz Ry Rx, acting as p' = R p."""
        x, y, z = angles.unbind(-1)
        one, zero = torch.ones_like(x), torch.zeros_like(x)
        rot_x = torch.stack([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], -1)
        rot_y = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], -1)
        rot_z = torch.stack([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], -1)
        shape = angles.shape[:-1] + (3, 3)
        return _matmul3(_matmul3(rot_z.view(shape), rot_y.view(shape)), rot_x.view(shape))

    @staticmethod
    def transform(shape: torch.Tensor, rotation: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        """Rigid pose: (B, N, 3) -> R p + t."""
        return (shape.unsqueeze(-2) * rotation.unsqueeze(-3)).sum(-1) + trans.unsqueeze(-2)

    def compute_normals(self, shape: torch.Tensor) -> torch.Tensor:
        """Vertex normals (B, N, 3): the normalised sum of the adjacent face normals (via point_buf)."""
        v0, v1, v2 = (shape[:, self.faces[:, i]] for i in range(3))
        face_normals = F.normalize(torch.cross(v0 - v1, v1 - v2, dim=-1), dim=-1)
        face_normals = torch.cat([face_normals, face_normals.new_zeros(shape.shape[0], 1, 3)], dim=1)
        return F.normalize(face_normals[:, self.point_buf].sum(dim=2), dim=-1)

    # --- appearance ----------------------------------------------------------------------------------
    def compute_texture(self, tex_coeff: torch.Tensor) -> torch.Tensor:
        """Albedo T = T_mean + B_tex delta, as (B, N, 3) in [0, 1] (255 = 1, not clamped)."""
        tex = self.mean_tex + (tex_coeff @ self.tex_base.T).view(tex_coeff.shape[0], -1, 3)
        return tex / 255.0

    def compute_color(
        self, texture: torch.Tensor, normals: torch.Tensor, gamma: torch.Tensor
    ) -> torch.Tensor:
        """Lambertian SH shading: colour = albedo * sum_b gamma_b Y_b(n), gamma (B, 27) as 3 x 9 + default.

        `normals` are the rotated (world-frame) normals. The 9 basis functions and their signs follow
        Deep3DFaceRecon so that fitted gammas carry over.
        """
        gamma = gamma.view(-1, 3, 9) + self.default_light
        irradiance = torch.einsum("bnk,bck->bnc", self.sh_basis(normals), gamma)
        return irradiance * texture

    @staticmethod
    def sh_basis(normals: torch.Tensor) -> torch.Tensor:
        """(..., 3) unit normals -> (..., 9) SH irradiance basis a_b c_b Y_b(n).

        colour = albedo * basis . gamma: the one place the basis is written (`compute_color` and the
        appearance fit share it).
        """
        a, c = SH_A, SH_C
        nx, ny, nz = normals.unbind(-1)
        return torch.stack(
            [
                a[0] * c[0] * torch.ones_like(nx),
                -a[1] * c[1] * ny,
                a[1] * c[1] * nz,
                -a[1] * c[1] * nx,
                a[2] * c[2] * nx * ny,
                -a[2] * c[2] * ny * nz,
                0.5 * a[2] * c[2] / math.sqrt(3.0) * (3 * nz**2 - 1),
                -a[2] * c[2] * nx * nz,
                0.5 * a[2] * c[2] * (nx**2 - ny**2),
            ],
            dim=-1,
        )

    # --- everything a frame needs --------------------------------------------------------------------
    def posed_geometry(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 257) -> world vertices (B, N, 3) and rotated unit normals (B, N, 3), what shading needs."""
        c = self.split_coeffs(coeffs)
        shape = self.compute_shape(c["id"], c["exp"])
        rotation = self.compute_rotation(c["angle"])
        vertices = self.transform(shape, rotation, c["trans"])
        normals = self.transform(self.compute_normals(shape), rotation, torch.zeros_like(c["trans"]))
        return vertices, normals

    def forward(self, coeffs: torch.Tensor, albedo: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(B, 257) -> dict(vertices (B, N, 3) world frame, color (B, N, 3), albedo (B, N, 3)).

        `albedo` (N, 3) or (B, N, 3) in [0, 1] replaces `compute_texture(tex)` (a per-vertex albedo from
        `face3d.fit_appearance`); the SH light still comes from `gamma`.
        """
        c = self.split_coeffs(coeffs)
        vertices, normals = self.posed_geometry(coeffs)
        if albedo is None:
            albedo = self.compute_texture(c["tex"])
        else:
            if albedo.shape[-2:] != (self.num_vertices, 3) or albedo.dim() not in (2, 3):
                raise ValueError(
                    f"albedo must be (N={self.num_vertices}, 3) or (B, N, 3), got {tuple(albedo.shape)}"
                )
            albedo = albedo.to(vertices).expand(coeffs.shape[0], -1, -1)
        return {
            "vertices": vertices,
            "color": self.compute_color(albedo, normals, c["gamma"]),
            "albedo": albedo,
        }

    def landmarks_3d(self, coeffs: torch.Tensor) -> torch.Tensor:
        """World positions (B, 68, 3) of the landmark vertices; computes only those 68 vertices."""
        c = self.split_coeffs(coeffs)
        offsets = c["id"] @ self.keypoint_id_base.T + c["exp"] @ self.keypoint_exp_base.T
        shape = self.keypoint_mean + offsets.view(coeffs.shape[0], -1, 3)
        return self.transform(shape, self.compute_rotation(c["angle"]), c["trans"])

    def landmarks_2d(self, coeffs: torch.Tensor, camera: PerspectiveCamera) -> torch.Tensor:
        """Differentiable 68-point projection (B, 68, 2) in pixels of `camera` (x right, y down)."""
        return camera.project(self.landmarks_3d(coeffs))


def with_expression(coeffs: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
    """coeffs (..., 257) with the expression part replaced by `expression` (..., 64); differentiable
    with respect to `expression`."""
    parts = MorphableModel.split_coeffs(coeffs)
    parts["exp"] = expression
    return MorphableModel.join_coeffs(**parts)


def expression_of(coeffs: torch.Tensor) -> torch.Tensor:
    """The 64 expression values of coeffs (..., 257)."""
    return MorphableModel.split_coeffs(coeffs)["exp"]


def clip_albedo(albedo: torch.Tensor | None, frames: int = 1) -> torch.Tensor | None:
    """A batch's per-clip albedo (B, N, 3), repeated for `frames` frames of each clip -> (B frames, N, 3)
    for `MorphableModel.forward` / `FaceRenderer`; None when the clips carry none ((B, 0, 3): their
    texture coefficients hold the albedo)."""
    if albedo is None or albedo.numel() == 0:
        return None
    return albedo.repeat_interleave(frames, dim=0)


def face_model_from_config(node: Mapping[str, Any]) -> MorphableModel:
    """The face model of a `face_model` config node (conf/face_model/*.yaml, with or without its
    `_target_`): what every layer calls instead of instantiating the node itself."""
    options = {key: value for key, value in dict(node).items() if key != "_target_"}
    return build_face_model(**options)


def build_face_model(
    source: str = "procedural",
    bfm_path: str | os.PathLike | None = None,
    num_vertices: int = 1000,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    camera: Mapping[str, Any] | None = None,
    fitting: Mapping[str, Any] | None = None,
    appearance: Mapping[str, Any] | None = None,
) -> MorphableModel:
    """The face model: `procedural` (ships with the suite) or `bfm` (Deep3DFaceRecon's BFM_model_front.mat).

    `num_vertices`, `seed` and `cache_dir` configure the procedural model; `bfm_path` the BFM file.
    `camera` (PerspectiveCamera arguments), `fitting` (fit_landmarks keyword arguments) and `appearance`
    (fit_appearance keyword arguments) are the config group's other keys; they are kept on the model as
    `model.camera`, `model.fitting` and `model.appearance` so that
    `hydra.utils.instantiate(cfg.face_model)` gives everything a caller needs.
    """
    if source == "procedural":
        from face3d.procedural import load_procedural_arrays

        arrays = load_procedural_arrays(num_vertices=num_vertices, seed=seed, cache_dir=cache_dir)
        name = f"procedural face model (num_vertices={num_vertices}, seed={seed})"
    elif source == "bfm":
        from face3d.bfm import load_bfm_arrays

        if bfm_path is None:
            raise ValueError("face model source 'bfm' needs bfm_path (the path of BFM_model_front.mat)")
        arrays = load_bfm_arrays(bfm_path)
        name = str(bfm_path)
    else:
        raise ValueError(f"unknown face model source {source!r}: expected 'procedural' or 'bfm'")
    model = _from_arrays(arrays, name)
    model.camera = PerspectiveCamera(**dict(camera or {}))
    model.fitting = dict(fitting or {})
    model.appearance = dict(appearance or {})
    return model


def _from_arrays(arrays: dict[str, np.ndarray], name: str) -> MorphableModel:
    """BFM_model_front-style arrays (0-based faces and keypoints) -> MorphableModel."""
    mean_shape = arrays["meanshape"].reshape(-1, 3).astype(np.float64)
    mean_shape = mean_shape - mean_shape.mean(0, keepdims=True)  # recentre, as Deep3DFaceRecon does
    faces = arrays["tri"].astype(np.int64)
    point_buf = arrays.get("point_buf")
    if point_buf is None:
        point_buf = vertex_face_buffer(faces, mean_shape.shape[0])
    return MorphableModel(
        mean_shape=mean_shape,
        id_base=arrays["idBase"],
        exp_base=arrays["exBase"],
        mean_tex=arrays["meantex"].reshape(-1, 3),
        tex_base=arrays["texBase"],
        faces=faces,
        point_buf=point_buf.astype(np.int64),
        keypoints=arrays["keypoints"].reshape(-1).astype(np.int64),
        name=name,
        mouth_cavity=arrays.get("mouth_cavity"),
    )

"""Per-clip 3DMM coefficient fitting to 68 landmarks (shape and pose; appearance: face3d.appearance).

Identity is shared by every frame of a clip; expression and pose are per frame. Texture and lighting
are left at zero here and fitted afterwards from the images by `face3d.fit_appearance`.
The energy follows the landmark + prior terms of Deng et al. 2019 (Deep3DFaceRecon), plus a temporal
smoothness term over consecutive frames (a clip is one shot of one person):

    E = mean_t,k w_k |proj(lm_k; coeffs_t) - obs_tk|^2          (px^2 at 224 px, so numbers are size-free;
                                                                 w_k normalised to mean 1)
        + w_id |alpha|^2 + w_exp mean_t |beta_t|^2
        + w_smooth mean_t (|beta_t - beta_{t-1}|^2 + |pose_t - pose_{t-1}|^2)

Optimised with Adam over all frames at once: a rigid stage (pose only) from a closed-form initial
translation, then all landmark terms.

The default weights are Deep3DFaceRecon's, restated for a landmark-only fit: its `landmark_loss` weighs
the nose bridge (28-30) and the inner lips (60-67) 20x (`DEEP3D_LANDMARK_WEIGHTS`), and its priors
(w_reg 3e-4 x w_exp 0.8 against w_lm 1.6e-3 on a landmark term of mean weight 4.07) come to w_exp ~0.04
on this energy. Without its photometric term 68 landmarks pin down only about a dozen of the 64
expression directions, so the prior here is stronger (w_exp 1): measured on the synthetic corpus, the
unconstrained directions otherwise fill the fitted expressions with noise that no audio model can
predict (`bench/bench_fit_prior.py`, figures in docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from face3d.camera import PerspectiveCamera
from face3d.morphable_model import COEFF_DIMS, MorphableModel

REFERENCE_SIZE = 224  # landmark errors are measured in pixels at this resolution

# Deep3DFaceRecon's landmark_loss weights (0-based iBUG-68 index -> weight; 1 elsewhere).
DEEP3D_LANDMARK_WEIGHTS: dict[int, float] = {k: 20.0 for k in (28, 29, 30, *range(60, 68))}


@dataclass
class FitResult:
    """coeffs (T, 257); landmarks (T, 68, 2) reprojected in the input's pixels; per-frame mean error in px."""

    coeffs: torch.Tensor
    landmarks: torch.Tensor
    landmark_error: torch.Tensor

    @property
    def mean_landmark_error(self) -> float:
        return float(self.landmark_error.mean())


def landmark_weight_vector(weights: torch.Tensor | Mapping[int, float]) -> torch.Tensor:
    """(68,) float weights from a tensor or from {0-based index: weight} (1 for the others)."""
    if isinstance(weights, torch.Tensor):
        if weights.shape != (68,):
            raise ValueError(f"landmark weights must have shape (68,), got {tuple(weights.shape)}")
        return weights.detach().float().cpu()
    vector = torch.ones(68)
    for index, weight in weights.items():
        if not 0 <= int(index) < 68:
            raise ValueError(f"landmark weight index {index} is outside the 68 iBUG landmarks")
        vector[int(index)] = float(weight)
    return vector


def initial_pose(model: MorphableModel, camera: PerspectiveCamera, landmarks: torch.Tensor) -> torch.Tensor:
    """Translations (T, 3) placing the mean face's landmarks at the observed centroid and scale."""
    zeros = landmarks.new_zeros(1, sum(COEFF_DIMS.values()))
    mean_lm = model.landmarks_3d(zeros)[0]  # (68, 3) world
    spread_model = (mean_lm[:, :2] - mean_lm[:, :2].mean(0)).norm(dim=-1).mean()
    centre = landmarks.mean(1)  # (T, 2)
    spread_obs = (landmarks - centre[:, None]).norm(dim=-1).mean(1)  # (T,)
    depth = camera.focal * spread_model / spread_obs  # camera depth of the landmark centroid
    tz = camera.distance - depth - mean_lm[:, 2].mean()
    tx = (centre[:, 0] - camera.center) * depth / camera.focal - mean_lm[:, 0].mean()
    ty = (camera.center - centre[:, 1]) * depth / camera.focal - mean_lm[:, 1].mean()
    return torch.stack([tx, ty, tz], dim=-1)


def fit_landmarks(
    model: MorphableModel,
    camera: PerspectiveCamera,
    landmarks: torch.Tensor,
    rigid_steps: int = 50,
    steps: int = 300,
    lr: float = 0.03,
    w_id: float = 1e-3,
    w_exp: float = 1.0,
    w_smooth: float = 1.0,
    landmark_weights: torch.Tensor | Mapping[int, float] | None = None,
    identity: torch.Tensor | None = None,
) -> FitResult:
    """Fit one clip: landmarks (T, 68, 2) in `camera` pixels -> FitResult with coeffs (T, 257).

    `identity`: (80,) coefficients to hold fixed (a speaker's, shared over their clips), or None to fit
    the clip's own. A clip's own identity, shared over its frames under a weak prior, takes up whatever
    lasts through the clip, a held emotion included; a speaker's keeps it in the expression.

    `landmark_weights`: a (68,) tensor, or {index: weight} with 1 for the others (the config form);
    None: `DEEP3D_LANDMARK_WEIGHTS`.
    Iteration counts and weights are config values (conf/face_model/*.yaml, key `fitting`).
    """
    if landmarks.dim() != 3 or landmarks.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be (T, 68, 2), got {tuple(landmarks.shape)}")
    device, frames = landmarks.device, landmarks.shape[0]
    obs = landmarks.detach().float()
    px_scale = REFERENCE_SIZE / camera.image_size
    weights = landmark_weight_vector(
        DEEP3D_LANDMARK_WEIGHTS if landmark_weights is None else landmark_weights
    )
    weights = weights.to(device) / weights.mean()

    with torch.no_grad():
        trans0 = initial_pose(model, camera, obs)
    params = {
        "id": (
            torch.zeros(1, COEFF_DIMS["id"], device=device, requires_grad=True)
            if identity is None
            else identity.detach().float().reshape(1, COEFF_DIMS["id"]).to(device)
        ),
        "exp": torch.zeros(frames, COEFF_DIMS["exp"], device=device, requires_grad=True),
        "angle": torch.zeros(frames, 3, device=device, requires_grad=True),
        "trans": trans0.clone().requires_grad_(True),
    }

    def coeffs() -> torch.Tensor:
        return model.join_coeffs(
            id=params["id"].expand(frames, -1),
            exp=params["exp"],
            angle=params["angle"],
            trans=params["trans"],
        )

    def landmark_energy(c: torch.Tensor, with_shape_terms: bool) -> torch.Tensor:
        err = ((model.landmarks_2d(c, camera) - obs) * px_scale).pow(2).sum(-1)  # (T, 68) px^2 at 224
        energy = (err * weights).mean()
        if frames > 1:
            pose = torch.cat([params["angle"], params["trans"]], dim=-1)
            energy = energy + w_smooth * (pose[1:] - pose[:-1]).pow(2).sum(-1).mean()
        if with_shape_terms:
            energy = energy + w_id * params["id"].pow(2).sum() + w_exp * params["exp"].pow(2).sum(-1).mean()
            if frames > 1:
                energy = energy + w_smooth * (params["exp"][1:] - params["exp"][:-1]).pow(2).sum(-1).mean()
        return energy

    def run(names: list[str], count: int, rate: float, energy_fn) -> None:
        if count <= 0:
            return
        optimiser = torch.optim.Adam([params[n] for n in names], lr=rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=count, eta_min=rate * 0.05)
        for _ in range(count):
            optimiser.zero_grad(set_to_none=True)
            energy_fn().backward()
            optimiser.step()
            schedule.step()

    run(["angle", "trans"], rigid_steps, lr, lambda: landmark_energy(coeffs(), with_shape_terms=False))
    shape_params = ["exp", "angle", "trans"] if identity is not None else ["id", "exp", "angle", "trans"]
    run(shape_params, steps, lr, lambda: landmark_energy(coeffs(), with_shape_terms=True))

    with torch.no_grad():
        final = coeffs().detach()
        projected = model.landmarks_2d(final, camera)
        error = (projected - obs).norm(dim=-1).mean(-1)
    return FitResult(coeffs=final, landmarks=projected, landmark_error=error)

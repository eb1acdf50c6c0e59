"""Tests of the 3D face layer (face3d): model, camera, renderer, BFM loader, fitting, appearance, dlib."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.io import savemat

import face3d
from face3d.morphable_model import NUM_COEFFS, vertex_face_buffer
from face3d.procedural import EXPRESSION_NAMES, dlib_landmark_predictor_path

CONF = Path(__file__).resolve().parents[1] / "conf" / "face_model"


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread for this module: the fits and renders here are tiny, and on a shared 2-core
    machine two BLAS/OpenMP threads per test process mostly wait on each other. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("face_cache")


@pytest.fixture(scope="module")
def model(cache_dir) -> face3d.MorphableModel:
    return face3d.build_face_model("procedural", cache_dir=cache_dir)


def coeffs_with(batch: int = 1, **groups: torch.Tensor) -> torch.Tensor:
    return face3d.MorphableModel.join_coeffs(**{k: v.expand(batch, -1) for k, v in groups.items()})


def test_coefficient_layout_is_deep3dfacerecon():
    assert list(face3d.COEFF_DIMS.items()) == [
        ("id", 80),
        ("exp", 64),
        ("tex", 80),
        ("angle", 3),
        ("gamma", 27),
        ("trans", 3),
    ]
    coeffs = torch.arange(2 * NUM_COEFFS, dtype=torch.float32).view(2, NUM_COEFFS)
    parts = face3d.MorphableModel.split_coeffs(coeffs)
    assert parts["exp"][0, 0] == 80 and parts["angle"][0, 0] == 224 and parts["trans"][0, 0] == 254
    assert torch.equal(face3d.MorphableModel.join_coeffs(**parts), coeffs)
    with pytest.raises(ValueError, match="257"):
        face3d.MorphableModel.split_coeffs(torch.zeros(1, 256))


def test_procedural_model_is_deterministic_and_cached(model, tmp_path):
    again = face3d.build_face_model("procedural", cache_dir=tmp_path)  # generated afresh here
    assert list(tmp_path.glob("procedural_face_*.npz")), "the generated model was not cached"
    cached = face3d.build_face_model("procedural", cache_dir=tmp_path)
    for name, buffer in model.state_dict().items():
        assert torch.equal(buffer, again.state_dict()[name]), name
        assert torch.equal(buffer, cached.state_dict()[name]), name
    assert 1000 < model.num_vertices < 2500 and 2000 < model.num_faces < 4500
    assert torch.equal(model.keypoints, torch.arange(68))


def test_camera_resize_keeps_field_of_view():
    camera = face3d.PerspectiveCamera()
    small = camera.resized(192)
    assert small.image_size == 192
    assert math.isclose(small.focal, 1015.0 * 192 / 224) and math.isclose(small.center, 96.0)
    points = torch.tensor([[0.3, -0.2, 0.4], [0.0, 0.0, 0.0]])
    assert torch.allclose(small.project(points), camera.project(points) * 192 / 224, atol=1e-4)
    assert torch.allclose(camera.project(points)[1], torch.tensor([112.0, 112.0]))
    # y up in the world is y down in the image.
    assert camera.project(torch.tensor([[0.0, 0.5, 0.0]]))[0, 1] < 112


def test_expression_basis_moves_the_right_parts(model):
    camera = face3d.PerspectiveCamera()

    def lms(component: str, value: float = 1.0) -> torch.Tensor:
        exp = torch.zeros(1, 64)
        exp[0, EXPRESSION_NAMES.index(component)] = value
        return model.landmarks_2d(coeffs_with(exp=exp), camera)[0]

    rest = lms("jaw_open", 0.0)
    opening = lambda lm: (lm[66, 1] - lm[62, 1]).item()  # noqa: E731  inner lip gap, px
    width = lambda lm: (lm[54, 0] - lm[48, 0]).item()  # noqa: E731
    eye = lambda lm: (lm[41, 1] - lm[37, 1]).item()  # noqa: E731
    assert abs(opening(rest)) < 0.5, "the rest pose has closed lips"
    assert opening(lms("jaw_open")) > 6.0
    assert width(lms("lips_round")) < width(rest) - 4.0
    assert width(lms("lips_spread")) > width(rest) + 4.0
    assert (lms("lips_press")[57, 1] - lms("lips_press")[51, 1]) < (rest[57, 1] - rest[51, 1]) - 2.0
    smile = lms("smile")
    assert smile[48, 1] < rest[48, 1] - 2.0 and smile[54, 1] < rest[54, 1] - 2.0
    assert eye(rest) > 3.0 and abs(eye(lms("blink"))) < 0.5


def _marker_model(points: torch.Tensor, camera: face3d.PerspectiveCamera, radius_px: float = 1.5):
    """A tiny triangle facing the camera around each 3D point (its incircle always holds a pixel centre)."""
    depth = camera.distance - points[:, 2:3]
    radius = radius_px * depth / camera.focal
    angles = torch.tensor([90.0, 210.0, 330.0]).deg2rad()
    offsets = torch.stack([angles.cos(), angles.sin(), torch.zeros(3)], -1)  # counter-clockwise
    vertices = (points[:, None] + radius[:, None] * offsets).reshape(-1, 3)
    faces = torch.arange(3 * len(points)).view(-1, 3).numpy()
    n = len(vertices)
    return face3d.MorphableModel(
        mean_shape=vertices.numpy(),
        id_base=np.zeros((3 * n, 80)),
        exp_base=np.zeros((3 * n, 64)),
        mean_tex=np.full((n, 3), 255.0),
        tex_base=np.zeros((3 * n, 80)),
        faces=faces,
        point_buf=vertex_face_buffer(faces, n),
        keypoints=np.arange(0, n, 3),
    )


def test_render_and_landmark_projection_agree(model):
    """A marker rendered at each landmark vertex lands within 1 px of its projected 2D landmark."""
    camera = face3d.PerspectiveCamera()
    exp = torch.zeros(2, 64)
    exp[1, 0] = 1.0
    coeffs = face3d.MorphableModel.join_coeffs(
        exp=exp,
        angle=torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.25, 0.05]]),
        trans=torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.05, 0.3]]),
    )
    with torch.no_grad():
        landmarks = model.landmarks_2d(coeffs, camera)
        points = model.landmarks_3d(coeffs)
        face_depth = face3d.FaceRenderer(model, camera)(coeffs)["depth"][:, 0]
    size = camera.image_size
    centres = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="xy"), -1) + 0.5
    for frame in range(2):
        markers = face3d.FaceRenderer(_marker_model(points[frame], camera), camera)
        with torch.no_grad():
            vertices = markers.model(torch.zeros(1, NUM_COEFFS))["vertices"]  # pose 0: world = model frame
            pix_to_face = markers.rasterize(vertices)[0][0, ..., 0]
        distances = []
        for k in range(68):
            covered = centres[pix_to_face == k]
            assert len(covered) > 0, f"marker {k} covers no pixel"
            distances.append((covered.float().mean(0) - landmarks[frame, k]).norm())
        distances = torch.stack(distances)
        print(
            f"render/projection frame {frame}: max {distances.max():.3f} px, mean {distances.mean():.3f} px"
        )
        assert distances.max() <= 1.0
    # The rendered face depth at a landmark's pixel is that landmark's camera depth (most are visible).
    ix = landmarks.long().clamp(0, size - 1)
    rendered = face_depth[torch.arange(2)[:, None], ix[..., 1], ix[..., 0]]
    landmark_depth = camera.to_camera(points)[..., 2]
    assert (rendered - landmark_depth).abs().median() < 0.02


def test_tiled_rasterisation_matches_the_naive_one(model):
    camera = face3d.PerspectiveCamera().resized(96)
    coeffs = face3d.MorphableModel.join_coeffs(
        exp=torch.randn(3, 64, generator=torch.Generator().manual_seed(0)) * 0.5,
        angle=torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0], [-0.2, -0.3, 0.1]]),
    )
    with torch.no_grad():
        tiled = face3d.FaceRenderer(model, camera, tile_size=32)(coeffs)
        naive = face3d.FaceRenderer(model, camera, tile_size=0)(coeffs)
    assert torch.equal(tiled["mask"], naive["mask"])
    assert torch.allclose(tiled["image"], naive["image"], atol=1e-4)
    assert torch.allclose(tiled["depth"], naive["depth"], atol=1e-4)
    assert tiled["image"].shape == (3, 3, 96, 96) and 0.15 < tiled["mask"].mean() < 0.7


def test_gradients_reach_every_coefficient_group(model):
    camera = face3d.PerspectiveCamera().resized(64)
    renderer = face3d.FaceRenderer(model, camera)
    coeffs = torch.zeros(2, NUM_COEFFS)
    coeffs[:, 254:] = torch.tensor([0.02, -0.01, 0.1])
    coeffs.requires_grad_(True)
    out = renderer(coeffs)
    target = torch.rand_like(out["image"], generator=torch.Generator().manual_seed(1))
    loss = (out["image"] - target).abs().mean() + model.landmarks_2d(coeffs, camera).mean() * 1e-3
    loss = loss + out["depth"].mean() * 1e-3
    loss.backward()
    for name, grad in face3d.MorphableModel.split_coeffs(coeffs.grad).items():
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, f"no gradient reaches {name}"
    # The image alone (no landmark term) also drives shape and pose through the rasteriser.
    coeffs.grad = None
    out = renderer(coeffs)
    (out["image"] - target).abs().mean().backward()
    for name in ("id", "exp", "angle", "trans"):
        assert face3d.MorphableModel.split_coeffs(coeffs.grad)[name].abs().sum() > 0, name


def _write_tiny_bfm(path: Path, num_vertices: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """A BFM_model_front.mat-format file: small random bases, MATLAB 1-based indices, BFM's shapes."""
    rng = np.random.default_rng(seed)
    side = 10
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2).astype(np.float64)
    tri = []
    for j in range(side - 1):
        for i in range(side - 1):
            a = j * side + i
            tri += [[a, a + 1, a + side + 1], [a, a + side + 1, a + side]]
    tri = np.array(tri)
    n = num_vertices
    mean = np.c_[grid / side - 0.5, rng.normal(0, 0.05, n)]
    arrays = {
        "meanshape": mean.reshape(1, 3 * n).astype(np.float32),
        "idBase": rng.normal(0, 0.01, (3 * n, 80)).astype(np.float32),
        "exBase": rng.normal(0, 0.01, (3 * n, 64)).astype(np.float32),
        "meantex": rng.uniform(50, 200, (1, 3 * n)).astype(np.float32),
        "texBase": rng.normal(0, 5, (3 * n, 80)).astype(np.float32),
        "tri": (tri + 1).astype(np.float64),
        "point_buf": (vertex_face_buffer(tri, n) + 1).astype(np.float64),
        "keypoints": (rng.choice(n, 68, replace=False) + 1).astype(np.float64).reshape(1, 68),
    }
    savemat(str(path), arrays)
    return arrays


def test_bfm_loader_reads_deep3dfacerecon_format(tmp_path):
    path = tmp_path / "BFM_model_front.mat"
    arrays = _write_tiny_bfm(path)
    model = face3d.build_face_model("bfm", bfm_path=path)
    n = 100
    assert model.mean_shape.shape == (n, 3) and model.id_base.shape == (3 * n, 80)
    assert model.exp_base.shape == (3 * n, 64) and model.tex_base.shape == (3 * n, 80)
    assert model.faces.shape == (162, 3) and int(model.faces.min()) == 0
    assert torch.equal(model.keypoints, torch.as_tensor(arrays["keypoints"].reshape(-1) - 1).long())
    gen = torch.Generator().manual_seed(2)
    alpha, beta, delta = (
        torch.randn(1, 80, generator=gen),
        torch.randn(1, 64, generator=gen),
        torch.randn(1, 80, generator=gen),
    )
    coeffs = coeffs_with(id=alpha, exp=beta, tex=delta)
    out = model(coeffs)
    mean = arrays["meanshape"].reshape(n, 3)
    expected = (
        mean
        - mean.mean(0)
        + (arrays["idBase"] @ alpha[0].numpy() + arrays["exBase"] @ beta[0].numpy()).reshape(n, 3)
    )
    assert np.allclose(out["vertices"][0].numpy(), expected, atol=1e-4)
    expected_tex = (arrays["meantex"].reshape(-1) + arrays["texBase"] @ delta[0].numpy()).reshape(n, 3) / 255
    assert np.allclose(out["albedo"][0].numpy(), expected_tex, atol=1e-4)
    assert model.landmarks_2d(coeffs, face3d.PerspectiveCamera()).shape == (1, 68, 2)
    image = face3d.FaceRenderer(model, face3d.PerspectiveCamera().resized(32))(coeffs)["image"]
    assert image.shape == (1, 3, 32, 32)


def test_missing_bfm_file_says_what_and_how(tmp_path):
    missing = tmp_path / "BFM" / "BFM_model_front.mat"
    with pytest.raises(FileNotFoundError, match="BFM_model_front.mat") as error:
        face3d.build_face_model("bfm", bfm_path=missing)
    assert "Basel Face Model" in str(error.value)
    bad = tmp_path / "bad.mat"
    savemat(str(bad), {"meanshape": np.zeros((1, 9))})
    with pytest.raises(ValueError, match="missing fields"):
        face3d.build_face_model("bfm", bfm_path=bad)


def test_config_instantiates_model_camera_and_fitting(model, cache_dir):
    from hydra.utils import instantiate

    cfg = OmegaConf.load(CONF / "procedural.yaml")
    cfg.cache_dir = str(cache_dir)
    model = instantiate(cfg)
    assert isinstance(model, face3d.MorphableModel)
    assert face3d.PerspectiveCamera(**cfg.camera) == model.camera == face3d.PerspectiveCamera()
    assert model.fitting["steps"] == cfg.fitting.steps
    assert model.appearance == OmegaConf.to_container(cfg.appearance)
    assert not {"photometric_steps", "w_photo", "w_tex", "w_gamma"} & set(cfg.fitting)  # one appearance fit
    bfm = OmegaConf.load(CONF / "bfm.yaml")
    assert bfm.source == "bfm" and OmegaConf.to_container(bfm)["bfm_path"].endswith("BFM_model_front.mat")
    assert bfm.appearance.texture == "basis"  # BFM's texture basis is a PCA of real faces


def fitting_config() -> dict:
    """conf/face_model/procedural.yaml's `fitting`, as the preprocessing passes it to fit_landmarks."""
    return OmegaConf.to_container(OmegaConf.load(CONF / "procedural.yaml").fitting)


def test_fitting_recovers_known_coefficients(model):
    """Noise-free landmarks of known coefficients -> fit -> reprojection and expression errors (printed).
    A weak prior: this checks the optimiser and the projection, not the regularisation."""
    camera = face3d.PerspectiveCamera()
    gen = torch.Generator().manual_seed(0)
    frames = 8
    t = torch.arange(frames, dtype=torch.float32)[:, None]
    amplitude = torch.full((64,), 0.3)
    amplitude[: len(EXPRESSION_NAMES)] = 0.8
    phase, speed = torch.rand(64, generator=gen) * 6.28, torch.rand(64, generator=gen) * 0.8
    truth = face3d.MorphableModel.join_coeffs(
        id=(torch.randn(1, 80, generator=gen) * 0.7).expand(frames, -1),
        exp=amplitude * torch.sin(speed * t + phase),
        angle=torch.tensor([[0.05, -0.2, 0.03]]) + 0.03 * torch.sin(0.4 * t),
        trans=torch.tensor([[0.05, -0.08, 0.2]]).expand(frames, -1),
    )
    landmarks = model.landmarks_2d(truth, camera)
    fit = face3d.fit_landmarks(model, camera, landmarks, rigid_steps=40, steps=250, w_exp=1e-3, w_smooth=0.1)
    exp_error = (fit.coeffs[:, 80:144] - truth[:, 80:144]).abs()
    lead = len(EXPRESSION_NAMES)
    print(
        f"fit: reprojection {fit.mean_landmark_error:.3f} px at 224; |exp error| all {exp_error.mean():.3f} "
        f"(truth mean |exp| {truth[:, 80:144].abs().mean():.3f}), named {exp_error[:, :lead].mean():.3f}"
    )
    assert fit.coeffs.shape == (frames, NUM_COEFFS) and fit.landmarks.shape == (frames, 68, 2)
    assert fit.mean_landmark_error < 0.5
    assert exp_error[:, :lead].mean() < 0.2
    # The 52 small random components are only partly identifiable from 68 landmarks: better than zero.
    assert exp_error.mean() < truth[:, 80:144].abs().mean()
    assert (fit.coeffs[:, 224:227] - truth[:, 224:227]).abs().max() < 0.05


def test_default_prior_keeps_detector_noise_out_of_the_expressions(model):
    """Speech-like motion (the mouth components only) seen through landmarks with detector-like noise
    (2 px at 224, about dlib's error on the synthetic renders): the configured fit (Deep3DFaceRecon's
    landmark weights, w_exp 1, w_smooth 1) recovers the expressions better than a weakly regularised
    fit, whose unconstrained directions fill with noise, and follows the jaw at least as closely."""
    camera = face3d.PerspectiveCamera()
    gen = torch.Generator().manual_seed(1)
    frames = 40
    t = torch.arange(frames, dtype=torch.float32)
    exp = torch.zeros(frames, 64)
    for name, scale, speed in (("jaw_open", 1.0, 0.9), ("lips_round", 0.4, 0.5), ("lips_press", 0.3, 0.3)):
        exp[:, EXPRESSION_NAMES.index(name)] = scale * (
            1 + torch.sin(speed * t + torch.rand(1, generator=gen) * 6)
        )
    truth = face3d.MorphableModel.join_coeffs(
        id=(torch.randn(1, 80, generator=gen) * 0.7).expand(frames, -1),
        exp=exp,
        angle=torch.tensor([[0.05, -0.2, 0.03]]) + 0.05 * torch.sin(0.2 * t)[:, None],
        trans=torch.tensor([[0.05, -0.08, 0.2]]).expand(frames, -1),
    )
    noisy = model.landmarks_2d(truth, camera) + 2.0 * torch.randn(frames, 68, 2, generator=gen)
    configured = face3d.fit_landmarks(model, camera, noisy, **fitting_config())
    weak = face3d.fit_landmarks(
        model,
        camera,
        noisy,
        rigid_steps=50,
        steps=300,
        w_exp=1e-3,
        w_smooth=0.1,
        landmark_weights=torch.ones(68),
    )
    jaw = EXPRESSION_NAMES.index("jaw_open")

    def errors(fit):
        fitted = fit.coeffs[:, 80:144]
        return (fitted - exp).abs().mean().item(), torch.corrcoef(torch.stack([fitted[:, jaw], exp[:, jaw]]))[
            0, 1
        ].item()

    (err_configured, jaw_configured), (err_weak, jaw_weak) = errors(configured), errors(weak)
    print(
        f"noisy landmarks: |exp error| {err_configured:.3f} configured vs {err_weak:.3f} weak prior; "
        f"jaw correlation {jaw_configured:.3f} vs {jaw_weak:.3f}"
    )
    assert err_configured < 0.5 * err_weak
    assert jaw_configured > 0.9 and jaw_configured >= jaw_weak - 0.02


def appearance_config() -> dict:
    """conf/face_model/procedural.yaml's `appearance` (fit_appearance keyword arguments)."""
    return OmegaConf.to_container(OmegaConf.load(CONF / "procedural.yaml").appearance)


def test_albedo_override_renders_like_the_coefficients(model):
    camera = face3d.PerspectiveCamera().resized(48)
    gen = torch.Generator().manual_seed(4)
    coeffs = face3d.MorphableModel.join_coeffs(
        tex=torch.randn(2, 80, generator=gen),
        gamma=torch.randn(2, 27, generator=gen) * 0.1,
        angle=torch.tensor([[0.0, 0.2, 0.0], [0.1, -0.3, 0.05]]),
    )
    renderer = face3d.FaceRenderer(model, camera)
    with torch.no_grad():
        expected = renderer(coeffs)
        albedo = model.compute_texture(coeffs[:, 144:224])  # (B, N, 3)
        per_frame = renderer(coeffs, albedo=albedo)
        shared = renderer(coeffs[:1], albedo=albedo[0])  # (N, 3)
        shifted = renderer(coeffs, albedo=albedo * 0.5)
    for key in ("image", "mask", "depth"):
        assert torch.allclose(per_frame[key], expected[key], atol=1e-5), key
        assert torch.allclose(shared[key], expected[key][:1], atol=1e-5), key
    assert (shifted["image"] - expected["image"]).abs().max() > 0.1  # the override is used
    with pytest.raises(ValueError, match="albedo"):
        renderer(coeffs, albedo=albedo[:, :10])


def _marked_albedo(model, tex: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The texture of `tex` with 8 dark marks (patches of vertices at 30 % albedo), and the mark mask."""
    xy = model.mean_shape[:, :2]
    centres = xy[torch.randint(0, 900, (8,), generator=gen)]
    marks = (torch.cdist(xy, centres) < 0.07).any(1)
    albedo = model.compute_texture(tex)[0].clone()
    albedo[marks] *= 0.3
    return albedo, marks


def test_appearance_fit_recovers_known_light_and_albedo(model):
    """Renders of known texture, per-frame SH light and dark marks -> fit_appearance (true geometry).

    Albedo x light is recovered up to one scale per channel (brighter skin under dimmer light renders
    the same), which the priors settle: the light and albedo are compared after that scale (the best
    per-channel ratio), and the scale itself is checked separately."""
    camera = face3d.PerspectiveCamera().resized(96)
    gen = torch.Generator().manual_seed(0)
    frames = 6
    tex = torch.randn(1, 80, generator=gen) * 0.7
    gamma = torch.zeros(frames, 3, 9)
    gamma[:, :, 0] = 0.1 * torch.rand(frames, 1, generator=gen) + 0.04 * torch.randn(frames, 3, generator=gen)
    gamma[:, :, 1:4] = 0.15 * torch.randn(frames, 1, 3, generator=gen)  # white directional light
    angle = torch.stack([0.1 * torch.randn(frames, generator=gen), 0.3 * torch.randn(frames, generator=gen),
                         0.05 * torch.randn(frames, generator=gen)], -1)  # fmt: skip
    truth = face3d.MorphableModel.join_coeffs(
        tex=tex.expand(frames, -1), gamma=gamma.view(frames, 27), angle=angle
    )
    albedo, marks = _marked_albedo(model, tex, gen)
    renderer = face3d.FaceRenderer(model, camera)
    with torch.no_grad():
        images = renderer(truth, albedo=albedo)["image"]
        normals = model.posed_geometry(truth)[1]
    basis = model.sh_basis(normals)

    def irradiance(g: torch.Tensor) -> torch.Tensor:
        return torch.einsum("tnk,tck->tnc", basis, g.view(frames, 3, 9) + model.default_light)

    true_light = irradiance(gamma)
    fits = {
        mode: face3d.fit_appearance(model, camera, truth, images, texture=mode)
        for mode in ("basis", "per_vertex")
    }
    seen = fits["per_vertex"].seen > 0
    light_before = (irradiance(torch.zeros_like(gamma)) - true_light).abs()[:, seen].mean()
    albedo_before = (model.mean_tex[seen] / 255 - albedo[seen]).abs().mean()
    results = {}
    for mode, fit in fits.items():
        assert fit.coeffs.shape == truth.shape
        assert torch.equal(fit.coeffs[:, :144], truth[:, :144]) and torch.equal(fit.coeffs[:, 224:227], angle)
        assert torch.equal(fit.coeffs[:, 144:224], fit.coeffs[:1, 144:224].expand(frames, -1))  # shared tex
        estimate = fit.albedo if fit.albedo is not None else model.compute_texture(fit.coeffs[:1, 144:224])[0]
        scale = (estimate[seen] / albedo[seen]).median(0).values  # (3,)
        light = (irradiance(fit.coeffs[:, 227:254]) * scale - true_light).abs()[:, seen].mean()
        error = (estimate / scale - albedo).abs()
        results[mode] = (error[seen].mean(), error[seen & marks].mean())
        print(
            f"{mode}: image error {fit.error_before.mean():.4f} -> {fit.error_after.mean():.4f}; light error "
            f"{light_before:.4f} -> {light:.4f}; albedo error {albedo_before:.4f} -> {results[mode][0]:.4f} "
            f"(marks {results[mode][1]:.4f}); scale {[round(float(x), 3) for x in scale]}"
        )
        assert fit.error_after.mean() < 0.35 * fit.error_before.mean()
        assert light < 0.15 * light_before
        assert ((scale > 0.8) & (scale < 1.25)).all()
        # The rasterisation is kept: I_3D from the fragments is the plain render of the fit.
        with torch.no_grad():
            kept, fresh = fit.render(renderer), renderer(fit.coeffs, albedo=fit.albedo)
        assert torch.allclose(kept["image"], fresh["image"], atol=1e-5)
    assert fits["basis"].albedo is None and fits["per_vertex"].albedo.shape == (model.num_vertices, 3)
    assert fits["per_vertex"].error_after.mean() < 0.6 * fits["basis"].error_after.mean()
    # The basis cannot draw the marks; the per-vertex albedo does.
    assert results["per_vertex"][0] < 0.5 * albedo_before
    assert results["per_vertex"][1] < 0.3 * results["basis"][1]


def _grace_hopper_clip(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two square face crops (the second panned and zoomed a little) of matplotlib's photo of Grace
    Hopper -- a real person who is not the procedural model's portrait -- and their dlib landmarks."""
    import cv2
    import matplotlib

    from datamodules.media.detect import DlibDetector

    photo = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))[..., ::-1]
    detector = DlibDetector()
    face = max(detector(photo), key=lambda f: f.score)
    (x0, y0, x1, y1), crops, landmarks = face.box, [], []
    for shift, zoom in ((0.0, 1.0), (0.06, 0.93)):
        side = 1.6 * max(x1 - x0, y1 - y0) * zoom
        cx, cy = (x0 + x1) / 2 + shift * side, (y0 + y1) / 2
        left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
        window = np.ascontiguousarray(photo[top : top + int(side), left : left + int(side)])
        crop = cv2.resize(window, (size, size), interpolation=cv2.INTER_AREA)
        found = detector(crop)
        assert len(found) == 1, f"dlib found {len(found)} faces in the crop"
        crops.append(crop)
        landmarks.append(found[0].landmarks)
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    return images, torch.from_numpy(np.stack(landmarks))


def test_appearance_fit_on_a_real_photo_shows_that_person(model):
    """dlib landmarks -> configured fit_landmarks -> configured fit_appearance (per_vertex) on a real
    photo: the photometric error falls far below the mean texture's, and the face's mean colour in
    I_3D is the photo's, not the procedural model's portrait's."""
    size = 128
    camera = face3d.PerspectiveCamera().resized(size)
    images, landmarks = _grace_hopper_clip(size)
    fit = face3d.fit_landmarks(model, camera, landmarks, **fitting_config())
    options = appearance_config()
    assert options["texture"] == "per_vertex"
    appearance = face3d.fit_appearance(model, camera, fit.coeffs, images, **options)
    renderer = face3d.FaceRenderer(model, camera)
    with torch.no_grad():
        i3d = appearance.render(renderer)
        mean_texture = renderer(fit.coeffs)["image"]  # tex = gamma = 0: what I_3D showed before
    mask = i3d["mask"][:, 0] > 0.5

    def face_colour(image: torch.Tensor) -> torch.Tensor:
        return image.permute(1, 0, 2, 3)[:, mask].mean(1)  # (3,) over the face pixels of both frames

    photo, fitted, before = face_colour(images), face_colour(i3d["image"]), face_colour(mean_texture)
    print(
        f"real photo: landmark error {fit.mean_landmark_error:.2f} px; photometric error "
        f"{appearance.error_before.mean():.4f} -> {appearance.error_after.mean():.4f}; face colour photo "
        f"{photo.tolist()}, I_3D {fitted.tolist()}, mean texture {before.tolist()}"
    )
    assert (appearance.error_after < 0.5 * appearance.error_before).all()
    assert (fitted - photo).abs().max() < 0.04
    assert (fitted - photo).norm() < 0.25 * (before - photo).norm()


def test_dlib_detects_the_rendered_face(model):
    """Frontal and 30-degree-yaw renders at 160 px on a noisy background: one face, landmarks agree."""
    import dlib

    camera = face3d.PerspectiveCamera().resized(160)
    exp = torch.zeros(2, 64)
    exp[1, EXPRESSION_NAMES.index("jaw_open")] = 1.0
    coeffs = face3d.MorphableModel.join_coeffs(
        exp=exp, angle=torch.tensor([[0.0, 0.0, 0.0], [0.0, math.radians(30), 0.0]])
    )
    with torch.no_grad():
        out = face3d.FaceRenderer(model, camera)(coeffs)
    background = 0.45 + 0.1 * torch.rand(out["image"].shape, generator=torch.Generator().manual_seed(0))
    frames = out["image"] * out["mask"] + background * (1 - out["mask"])
    # dlib reads the raw buffer: hand it C-contiguous HWC uint8 (a permuted tensor's numpy view is not).
    frames = np.ascontiguousarray((frames.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy())
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_landmark_predictor_path()))
    projected = model.landmarks_2d(coeffs, camera).numpy()
    for frame, expected in zip(frames, projected):
        rects, scores, _ = detector.run(frame, 1, 0.0)
        print(f"dlib detections {len(rects)}, scores {np.round(scores, 2).tolist()}")
        assert len(rects) == 1, f"dlib found {len(rects)} faces"
        shape = predictor(frame, rects[0])
        found = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float32)
        error = np.linalg.norm(found - expected, axis=1).mean()
        print(f"dlib vs projected landmarks: {error:.2f} px at 160")
        assert error < 5.0

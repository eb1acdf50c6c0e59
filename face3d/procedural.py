"""The procedural morphable model that ships with the suite (no licensed BFM needed).

How it is made, deterministically:
1. dlib's 68-point predictor (the `face_recognition_models` package) finds the landmarks of
   scikit-image's `astronaut()` portrait; a similarity transform maps them to model units (BFM-like
   decimetres: eye centres 0.62 apart, y up).
2. The face region (jaw line + a forehead arc) is filled with a regular grid plus the 68 landmark
   points and triangulated (Delaunay); triangles inside the inner-lip contour are removed so the mouth
   can open. Vertices 0..67 are the landmarks, so `keypoints` is `arange(68)`.
3. Depth is a smooth height field built from the landmarks (ellipsoidal head, nose ridge, eye sockets,
   brow ridge, lips, chin). The portrait's (slightly open) mouth is closed geometrically while the
   texture keeps sampling the portrait where it was, so the rest pose has closed lips.
4. A small mouth cavity (upper teeth from the portrait, dark elsewhere) sits behind the lips.
5. The expression basis is hand-built: its leading components open the jaw, round, spread and press
   the lips, smile and blink, then brows, lip raise/depress, jaw sideways, cheek puff; the rest are small
   smooth random fields. Identity and texture bases are global proportions / colour shifts followed by
   smooth random fields. Everything is seeded.

The arrays follow `BFM_model_front.mat` (flattened xyz per vertex, bases (3N, K), texture in 0..255), so
`MorphableModel` treats both sources alike. Generation takes about a second; `load_procedural_model`
caches the result as an `.npz` under `~/.cache/synergydub/` (or `cache_dir`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from scipy.spatial import Delaunay
from skimage.measure import points_in_poly

PROCEDURAL_VERSION = 2  # 2: the mouth_cavity flags
TEETH_HEIGHT = 0.06  # the band of upper teeth behind the lips, model units
INTEROCULAR = 0.62  # distance between the eye centres in model units (decimetres, as BFM)

# Expression components with a meaning (the rest are small random fields), in basis order.
EXPRESSION_NAMES = (
    "jaw_open",
    "lips_round",
    "lips_spread",
    "lips_press",
    "smile",
    "blink",
    "brows_raise",
    "brows_frown",
    "upper_lip_raise",
    "lower_lip_depress",
    "jaw_sideways",
    "cheeks_puff",
)


def _dlib_model_file(name: str) -> Path:
    """Locate a dlib model of `face_recognition_models` without importing it (it imports pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{name}: the `face_recognition_models` package is not installed "
            "(pip install face-recognition-models)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the face_recognition_models package")
    return path


def dlib_landmark_predictor_path() -> Path:
    """Path of dlib's 68-point shape predictor (iBUG order), shipped by `face_recognition_models`."""
    return _dlib_model_file("shape_predictor_68_face_landmarks.dat")


def detect_dlib_landmarks(image: np.ndarray) -> np.ndarray:
    """68 dlib landmarks (pixels, x right, y down) of the most confident face in an RGB uint8 image."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_landmark_predictor_path()))
    rects, scores, _ = detector.run(image, 1, 0)
    if len(rects) == 0:
        raise RuntimeError("dlib found no face in the portrait used to texture the procedural model")
    best = rects[int(np.argmax(scores))]
    shape = predictor(image, best)
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)


def _bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Sample an (H, W, C) image at continuous pixel coordinates (pixel centres at integer + 0.5)."""
    h, w = image.shape[:2]
    x = np.clip(xy[:, 0] - 0.5, 0, w - 1.001)
    y = np.clip(xy[:, 1] - 0.5, 0, h - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    img = image.astype(np.float64)
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _gauss(xy: np.ndarray, centre, sigma) -> np.ndarray:
    """Anisotropic 2D Gaussian bump (peak 1)."""
    d = (xy - np.asarray(centre, dtype=np.float64)) / np.asarray(sigma, dtype=np.float64)
    return np.exp(-0.5 * np.sum(d * d, axis=-1))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _resample_polyline(points: np.ndarray, step: float) -> np.ndarray:
    """Points along a polyline every `step` (the first point included, the last excluded)."""
    out = []
    for a, b in zip(points[:-1], points[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        out.extend(a + (b - a) * (i / n) for i in range(n))
    return np.array(out)


def _inner_lip_curves(lm: np.ndarray):
    """Upper and lower inner-lip curves as functions of x (y up), from landmarks 60..67."""
    upper = lm[[60, 61, 62, 63, 64]]
    lower = lm[[60, 67, 66, 65, 64]]
    upper, lower = upper[np.argsort(upper[:, 0])], lower[np.argsort(lower[:, 0])]

    def curves(x: np.ndarray):
        return np.interp(x, upper[:, 0], upper[:, 1]), np.interp(x, lower[:, 0], lower[:, 1])

    return curves


def _lip_line(xy: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Height of the closed lip line (midway between the inner lips) above x, flat beyond the corners."""
    y_up, y_lo = _inner_lip_curves(lm)(np.clip(xy[:, 0], lm[60, 0], lm[64, 0]))
    return (y_up + y_lo) / 2


def _height_field(xy: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Depth (towards the camera) of a face-like surface at texture-space points, from the landmarks."""
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    chin = lm[8]
    top = lm[17:27, 1].max() + 0.35
    yc, b = (top + chin[1]) / 2, (top - chin[1]) / 2 + 0.12
    a = abs(lm[16, 0] - lm[0, 0]) / 2 + 0.1
    xc = (lm[0, 0] + lm[16, 0]) / 2
    r2 = ((xy[:, 0] - xc) / a) ** 2 + ((xy[:, 1] - yc) / b) ** 2
    z = 0.55 * np.sqrt(np.clip(1 - r2, 0.02, None))

    # Nose: a ridge from the bridge (27) to the tip (30), widening and rising, then wings and base.
    ridge = np.zeros(len(xy))
    for t in np.linspace(0, 1, 12):
        centre = lm[27] + t * (lm[30] - lm[27])
        ridge = np.maximum(ridge, (0.05 + 0.19 * t**1.5) * _gauss(xy, centre, (0.045 + 0.04 * t,) * 2))
    nose = ridge + 0.07 * _gauss(xy, lm[33], (0.07, 0.045))
    nose += 0.05 * (_gauss(xy, lm[31], (0.045, 0.04)) + _gauss(xy, lm[35], (0.045, 0.04)))

    eyes = sum(
        -0.06 * _gauss(xy, e, (0.1, 0.07)) + 0.025 * _gauss(xy, e, (0.05, 0.03)) for e in (eye_l, eye_r)
    )
    brows = sum(0.03 * _gauss(xy, lm[i], (0.08, 0.05)) for i in range(17, 27)) / 3
    mouth_c = lm[48:68].mean(0)
    lips = 0.05 * _gauss(xy, (mouth_c[0], lm[51, 1]), (0.17, 0.06))
    lips += 0.045 * _gauss(xy, (mouth_c[0], lm[57, 1]), (0.15, 0.06))
    chin_bump = 0.07 * _gauss(xy, (chin[0], chin[1] + 0.15), (0.16, 0.1))
    cheeks = sum(0.03 * _gauss(xy, lm[i] + (0, -0.15), (0.12, 0.1)) for i in (36, 45))
    return z + nose + eyes + brows + lips + chin_bump + cheeks


def _lip_closing_offset(xy: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Vertical offset that closes the portrait's parted lips (upper lip down, lower lip up)."""
    curves = _inner_lip_curves(lm)
    y_up, y_lo = curves(xy[:, 0])
    inside_x = (xy[:, 0] > lm[60, 0]) & (xy[:, 0] < lm[64, 0])
    gap = np.where(inside_x, np.clip(y_up - y_lo, 0, None), 0.0)
    mid = (y_up + y_lo) / 2
    sigma = 0.12
    upper = xy[:, 1] >= mid
    dist = np.where(upper, xy[:, 1] - y_up, y_lo - xy[:, 1]).clip(0, None)
    fall = np.exp(-((dist / sigma) ** 2))
    return np.where(upper, -gap / 2 * fall, gap / 2 * fall)


def _jaw_weight(xy: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """How much each texture-space point follows the jaw: 1 on the lower lip and chin, 0 above the mouth."""
    curves = _inner_lip_curves(lm)
    x = np.clip(xy[:, 0], lm[60, 0], lm[64, 0])
    y_up, y_lo = curves(x)
    mid = (y_up + y_lo) / 2
    half_width = (lm[64, 0] - lm[60, 0]) / 2
    mouth_x = (lm[64, 0] + lm[60, 0]) / 2
    outside = np.clip(np.abs(xy[:, 0] - mouth_x) - half_width, 0, None)
    # Beside the mouth the transition widens into the cheeks, and the jaw angle (near the ears) moves less.
    ramp = 0.015 + 1.2 * outside
    w = _smoothstep((mid - xy[:, 1]) / ramp)
    return w * np.exp(-((outside / 0.45) ** 2))


def _eye_blink_field(xy: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Vertical displacement that closes both eyes: upper lid down onto the lower lid."""
    dy = np.zeros(len(xy))
    for idx in ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47)):
        e = lm[list(idx)]
        upper = e[[0, 1, 2, 3]]
        lower = e[[0, 5, 4, 3]]
        upper, lower = upper[np.argsort(upper[:, 0])], lower[np.argsort(lower[:, 0])]
        x = xy[:, 0]
        y_up = np.interp(x, upper[:, 0], upper[:, 1])
        y_lo = np.interp(x, lower[:, 0], lower[:, 1])
        gap = np.clip(y_up - y_lo, 0, None) + 0.005
        width = upper[-1, 0] - upper[0, 0]
        centre_x = (upper[-1, 0] + upper[0, 0]) / 2
        lateral = np.exp(-((np.clip(np.abs(x - centre_x) - width / 2, 0, None) / 0.04) ** 2))
        # 0 at the lower lid, 1 at the upper lid, fading to 0 towards the brow.
        t = np.clip((xy[:, 1] - y_lo) / gap, 0, None)
        w = np.where(t <= 1, t, np.exp(-(((xy[:, 1] - y_up) / 0.07) ** 2)))
        dy -= gap * w * lateral
    return dy


def _random_fields(
    rng: np.random.RandomState, xy: np.ndarray, count: int, scale: float, channels: int = 3
) -> np.ndarray:
    """`count` smooth random fields on the vertices (N, channels, count), magnitude decaying with index."""
    fields = np.zeros((len(xy), channels, count))
    for k in range(count):
        for _ in range(4):
            centre = xy[rng.randint(len(xy))]
            sigma = rng.uniform(0.12, 0.35)
            direction = rng.normal(size=channels)
            fields[:, :, k] += _gauss(xy, centre, (sigma, sigma))[:, None] * direction[None, :]
        fields[:, :, k] *= scale / (np.abs(fields[:, :, k]).max() + 1e-9) / (1 + k / 8)
    return fields


def generate_procedural_arrays(num_vertices: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Build the procedural model's arrays (see the module docstring). About `num_vertices` face vertices."""
    import skimage.data

    portrait = skimage.data.astronaut()
    lm_px = detect_dlib_landmarks(portrait)

    # Similarity transform: pixels -> model units, eye line horizontal, y up.
    eye_l, eye_r = lm_px[36:42].mean(0), lm_px[42:48].mean(0)
    d = eye_r - eye_l
    scale = INTEROCULAR / np.linalg.norm(d)
    angle = np.arctan2(d[1], d[0])
    rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    origin = (eye_l + eye_r) / 2

    def to_model(p: np.ndarray) -> np.ndarray:
        q = (p - origin) @ rot.T * scale
        return q * np.array([1.0, -1.0])

    def to_pixels(q: np.ndarray) -> np.ndarray:
        return (q * np.array([1.0, -1.0]) / scale) @ rot + origin

    lm = to_model(lm_px)

    # Face outline: the jaw (0..16) then a forehead arc back over the brows.
    xc, yc = (lm[0] + lm[16]) / 2
    rx = abs(lm[16, 0] - lm[0, 0]) / 2
    ry = lm[17:27, 1].max() + 0.3 - yc
    theta = np.linspace(0, np.pi, 15)[1:-1]
    arc = np.stack([xc + rx * np.cos(theta), yc + ry * np.sin(theta)], 1)
    outline = np.concatenate([lm[:17], arc])
    area = 0.5 * abs(
        np.dot(outline[:, 0], np.roll(outline[:, 1], 1)) - np.dot(outline[:, 1], np.roll(outline[:, 0], 1))
    )
    step = np.sqrt(area / num_vertices)

    boundary = _resample_polyline(np.concatenate([outline, outline[:1]]), step)
    xs = np.arange(outline[:, 0].min(), outline[:, 0].max(), step)
    ys = np.arange(outline[:, 1].min(), outline[:, 1].max(), step)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    grid[:, 0] += (np.round((grid[:, 1] - ys[0]) / step) % 2) * step / 2  # hexagonal rows: better triangles
    inner_lip = lm[60:68]
    keep = points_in_poly(grid, outline) & ~points_in_poly(grid, inner_lip)
    grid = grid[keep]
    fixed = np.concatenate([lm, boundary])
    fixed = fixed[
        np.r_[
            np.arange(68),
            68
            + np.flatnonzero(np.min(np.linalg.norm(boundary[:, None] - lm[None], axis=-1), 1) > 0.4 * step),
        ]
    ]
    near = np.min(np.linalg.norm(grid[:, None] - fixed[None], axis=-1), 1) < 0.6 * step
    tex_xy = np.concatenate([fixed, grid[~near]])

    tri = Delaunay(tex_xy).simplices
    centroids = tex_xy[tri].mean(1)
    keep = points_in_poly(centroids, outline) & ~points_in_poly(centroids, inner_lip)
    tri = tri[keep]

    # Mouth cavity behind the lips: a small grid, upper teeth from the portrait, dark elsewhere.
    mouth_lo, mouth_hi = inner_lip.min(0), inner_lip.max(0)
    cx = np.linspace(mouth_lo[0] - 0.03, mouth_hi[0] + 0.03, 9)
    cy = np.linspace(mouth_lo[1] - 0.15, mouth_hi[1] + 0.03, 12)
    cav_xy = np.stack(np.meshgrid(cx, cy), -1).reshape(-1, 2)
    n_face = len(tex_xy)
    cav_tri = []
    for j in range(len(cy) - 1):
        for i in range(len(cx) - 1):
            a, b_, c, d_ = (
                j * len(cx) + i,
                j * len(cx) + i + 1,
                (j + 1) * len(cx) + i,
                (j + 1) * len(cx) + i + 1,
            )
            cav_tri += [[a, b_, d_], [a, d_, c]]
    cav_tri = np.array(cav_tri) + n_face

    all_xy = np.concatenate([tex_xy, cav_xy])
    faces = np.concatenate([tri, cav_tri])
    # Counter-clockwise seen from +z (towards the camera), so normals point out of the face.
    e1, e2 = all_xy[faces[:, 1]] - all_xy[faces[:, 0]], all_xy[faces[:, 2]] - all_xy[faces[:, 0]]
    cw = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] < 0
    faces[cw] = faces[cw][:, [0, 2, 1]]

    # Geometry: height field, lips closed; the cavity sits well behind the lips.
    z_face = _height_field(tex_xy, lm)
    face_xy = tex_xy + np.stack([np.zeros(n_face), _lip_closing_offset(tex_xy, lm)], 1)
    mouth_z = _height_field(lm[60:68], lm).min()
    z_cav = np.full(len(cav_xy), mouth_z - 0.22)
    shape = np.concatenate([np.c_[face_xy, z_face], np.c_[cav_xy, z_cav]])
    shape -= shape[:n_face].mean(0)  # recentre on the face, as Deep3DFaceRecon does with BFM

    # Albedo (0..255) sampled from the portrait (its baked-in shading makes the face read as a face).
    colours = _bilinear(portrait, to_pixels(tex_xy))
    cav_col = np.tile(np.array([[70.0, 22.0, 28.0]]), (len(cav_xy), 1))
    cav_col[cav_xy[:, 1] > _lip_line(cav_xy, lm) - TEETH_HEIGHT] = (215.0, 210.0, 195.0)
    mean_tex = np.clip(np.concatenate([colours, cav_col]), 0, 255)

    n = len(all_xy)
    rng = np.random.RandomState(seed)
    exp_base = _expression_basis(all_xy, shape, lm, n_face, rng)
    id_base = _identity_basis(all_xy, shape, lm, rng)
    tex_base = _texture_basis(all_xy, rng)

    return {
        "meanshape": shape.reshape(1, 3 * n).astype(np.float32),
        "idBase": id_base.reshape(3 * n, 80).astype(np.float32),
        "exBase": exp_base.reshape(3 * n, 64).astype(np.float32),
        "meantex": mean_tex.reshape(1, 3 * n).astype(np.float32),
        "texBase": tex_base.reshape(3 * n, 80).astype(np.float32),
        "tri": faces.astype(np.int64),
        "keypoints": np.arange(68, dtype=np.int64),
        "mouth_cavity": np.arange(n) >= n_face,
    }


def _expression_basis(xy, shape, lm, n_face, rng) -> np.ndarray:
    """(N, 3, 64) displacement fields; coefficient 1 is a plainly visible, natural-size motion."""
    n = len(xy)
    basis = np.zeros((n, 3, 64))
    mouth_c = lm[48:68].mean(0)
    half_w = (lm[54, 0] - lm[48, 0]) / 2
    is_face = np.arange(n) < n_face
    curves = _inner_lip_curves(lm)
    y_up, y_lo = curves(np.clip(xy[:, 0], lm[60, 0], lm[64, 0]))
    upper = xy[:, 1] >= (y_up + y_lo) / 2
    lips = _gauss(xy, mouth_c, (1.1 * half_w, 0.16)) * is_face

    # 0 jaw open: rotation of the lower face about an axis near the ears, 0.12 rad per unit.
    jaw_w = _jaw_weight(xy, lm)
    # The cavity's lower half (below the lip line) follows the jaw too, so it never shows below the chin.
    jaw_w = np.where(is_face, jaw_w, _smoothstep((_lip_line(xy, lm) - TEETH_HEIGHT - xy[:, 1]) / 0.04))
    pivot = np.array([0.0, lm[0, 1] - 0.1, shape[:, 2].min() - 0.6])
    r = shape - pivot
    basis[:, :, 0] = 0.12 * jaw_w[:, None] * np.stack([np.zeros(n), -r[:, 2], r[:, 1]], 1)
    # 1 lips round: towards the mouth centre and forward.
    basis[:, 0, 1] = -0.45 * (xy[:, 0] - mouth_c[0]) * lips
    basis[:, 2, 1] = 0.06 * lips
    # 2 lips spread: corners outward, slightly back.
    basis[:, 0, 2] = 0.35 * (xy[:, 0] - mouth_c[0]) * lips
    basis[:, 2, 2] = -0.015 * lips
    # 3 lips press: lips towards each other and thinner (back).
    press = _gauss(xy, mouth_c, (1.1 * half_w, 0.08)) * is_face
    basis[:, 1, 3] = np.where(upper, -0.03, 0.03) * press
    basis[:, 2, 3] = -0.02 * press
    # 4 smile: mouth corners up and out, cheeks up.
    for corner, side in ((lm[48], -1.0), (lm[54], 1.0)):
        g = _gauss(xy, corner, (0.6 * half_w, 0.09)) * is_face
        basis[:, 0, 4] += side * 0.05 * g
        basis[:, 1, 4] += 0.06 * g
        basis[:, 2, 4] -= 0.015 * g
        cheek = _gauss(xy, (corner[0] + side * 0.1, corner[1] + 0.25), (0.15, 0.12)) * is_face
        basis[:, 1, 4] += 0.025 * cheek
        basis[:, 2, 4] += 0.02 * cheek
    # 5 blink: upper lids onto the lower lids (coefficient 1 closes the eyes).
    basis[:, 1, 5] = _eye_blink_field(xy, lm) * is_face
    basis[:, 2, 5] = 0.01 * (basis[:, 1, 5] != 0)
    # 6 brows raise, 7 brows frown (down and together).
    brows = sum(_gauss(xy, lm[i], (0.09, 0.07)) for i in range(17, 27)) * is_face
    brows = brows / brows.max()
    basis[:, 1, 6] = 0.05 * brows
    basis[:, 1, 7] = -0.035 * brows
    basis[:, 0, 7] = -0.03 * np.tanh((xy[:, 0] - lm[27, 0]) / 0.2) * brows
    # 8 upper lip raise, 9 lower lip depress.
    basis[:, 1, 8] = 0.03 * lips * upper
    basis[:, 1, 9] = -0.03 * lips * ~upper
    # 10 jaw sideways, 11 cheeks puff.
    basis[:, 0, 10] = 0.05 * jaw_w
    cheeks = sum(_gauss(xy, (c[0], mouth_c[1] + 0.05), (0.14, 0.16)) for c in (lm[4], lm[12])) * is_face
    basis[:, 2, 11] = 0.05 * cheeks
    basis[:, 0, 11] = 0.03 * np.sign(xy[:, 0] - mouth_c[0]) * cheeks
    # 12..63: small smooth random fields, weighted towards the lower face.
    lower_face = 0.3 + 0.7 * _smoothstep((lm[30, 1] - xy[:, 1]) / 0.3)
    rand = _random_fields(rng, xy, 52, 0.015) * (lower_face * is_face)[:, None, None]
    basis[:, :, 12:] = rand
    return basis


def _identity_basis(xy, shape, lm, rng) -> np.ndarray:
    """(N, 3, 80): global proportions first, then smooth random fields of decaying size."""
    n = len(xy)
    basis = np.zeros((n, 3, 80))
    centre = shape.mean(0)
    basis[:, 0, 0] = 0.06 * (shape[:, 0] - centre[0])  # face width
    basis[:, 1, 1] = 0.06 * (shape[:, 1] - centre[1])  # face length
    basis[:, 2, 2] = 0.15 * (shape[:, 2] - centre[2])  # depth
    nose = _gauss(xy, (lm[27] + lm[33]) / 2, (0.1, 0.2))
    basis[:, 2, 3] = 0.04 * nose  # nose protrusion
    below = _smoothstep((lm[33, 1] - xy[:, 1]) / 0.6)
    basis[:, 0, 4] = 0.08 * (shape[:, 0] - centre[0]) * below  # jaw width
    eyes = sum(np.sign(e[0]) * _gauss(xy, e, (0.12, 0.1)) for e in (lm[36:42].mean(0), lm[42:48].mean(0)))
    basis[:, 0, 5] = 0.02 * eyes  # eye spacing
    basis[:, :, 6:] = _random_fields(rng, xy, 74, 0.02)
    return basis


def _texture_basis(xy, rng) -> np.ndarray:
    """(N, 3, 80) colour fields in 0..255 units: skin tone shifts first, then smooth random fields."""
    n = len(xy)
    basis = np.zeros((n, 3, 80))
    basis[:, :, 0] = 15.0  # brightness
    basis[:, 0, 1], basis[:, 2, 1] = 10.0, -10.0  # warm / cool
    basis[:, 1, 2] = 8.0  # green-magenta
    basis[:, :, 3:] = _random_fields(rng, xy, 77, 12.0)
    return basis


def _cache_key(params: dict) -> str:
    """Parameters, version and this file's source: an edited generator never reads a stale cache."""
    text = json.dumps({"version": PROCEDURAL_VERSION, **params}, sort_keys=True)
    return hashlib.sha1(text.encode() + Path(__file__).read_bytes()).hexdigest()[:12]


def load_procedural_arrays(
    num_vertices: int = 1000, seed: int = 0, cache_dir: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
    """The procedural arrays, generated on first use and cached as `.npz` (keyed by version and params)."""
    params = {"num_vertices": int(num_vertices), "seed": int(seed)}
    directory = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "synergydub"
    path = directory / f"procedural_face_{_cache_key(params)}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    arrays = generate_procedural_arrays(**params)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, suffix=".npz", delete=False) as f:
            np.savez(f, **arrays)
        os.replace(f.name, path)  # atomic: parallel workers never read a half-written cache
    except OSError:
        pass  # a read-only home is fine: the model is just regenerated next time
    return arrays

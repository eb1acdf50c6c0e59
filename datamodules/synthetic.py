"""The embedded synthetic talking-head corpus (a stand-in for the main
paper's VoxCeleb2 on machines without it).

Each identity is a random draw of the procedural morphable model (identity, texture tint, SH lighting,
placement) in front of its own smooth random background, with appearance no fitted 3D face carries
(skin marks and pores, a specular highlight, teeth gaps: `DetailParams`), which a renderer must take
from the references. Each clip has speech-like audio (by default
the built-in `audio.synthesize_speech`, the same on every machine; espeak-ng's speech with
`audio_source: espeak`); the mouth follows the audio deterministically:
per video frame, loudness opens the jaw, low-frequency (vowel) energy rounds the lips, high-frequency
(fricative) energy spreads them, silence presses them, so audio -> lips is learnable. The head moves
with smooth sinusoidal sway plus, in some clips, one large turn, in the speaker's own pose style (sway
size and speed, a habitual head orientation: `pose_style`); the eyes blink every few seconds. Each clip
shows one emotion at an intensity level (datamodules/emotions.py, `clip_emotion`): a lasting expression
offset under the speech (the default corpus: all neutral, no offset).

Frames are rendered with PyTorch3D (`face3d.FaceRenderer`) and written as H.264/AAC mp4 at 25 fps in
the VoxCeleb2 layout `mp4/idXXXXX/<video-id>/00001.mp4`, with `00001.npz` beside each clip (the
ground truth: coefficients, 68 landmarks in frame pixels, the camera, the emotion with its level and
offset) and `splits.json` at the root (identity -> train/val/test: splits are by identity).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.emotions import NEUTRAL, emotion_offset, offset_table, parse_emotion
from datamodules.media import audio as audio_lib
from datamodules.media.files import atomic_write
from datamodules.media.video import write_mp4
from datamodules.recipe import face_model_recipe, read_recipe, recipe_differences, write_recipe
from face3d.procedural import EXPRESSION_NAMES

log = logging.getLogger(__name__)

SPLITS_FILE = "splits.json"


@dataclass(frozen=True)
class MotionParams:
    """How the synthetic face moves; amplitudes in expression-coefficient units or radians."""

    jaw_open: float = 1.8
    lips_round: float = 1.2
    lips_spread: float = 1.2
    lips_press: float = 0.6
    blink_interval_s: tuple[float, float] = (1.5, 4.0)
    sway_yaw: float = 0.12
    sway_pitch: float = 0.06
    sway_roll: float = 0.04
    large_turn_probability: float = 0.3
    large_turn_yaw: float = 0.5
    # Per-speaker pose style, drawn once per identity: [low, high] multipliers of the sway amplitudes (one
    # per axis) and of the sway frequencies, and the bound of a habitual head orientation (radians, per axis).
    sway_scale: tuple[float, float] = (1.0, 1.0)
    sway_speed: tuple[float, float] = (1.0, 1.0)
    pose_tilt: float = 0.0
    face_distance: float = -2.0  # z translation: face size in the frame
    placement_jitter: float = 0.08


def mouth_expression(
    features: np.ndarray, names: tuple[str, ...], motion: MotionParams, style: np.ndarray
) -> np.ndarray:
    """(T, 3) [loudness, brightness, lowness] -> (T, 64) expression coefficients (mouth part only).

    A 3-tap smoothing gives natural co-articulation; `style` (3,) scales open/round/spread per speaker."""
    kernel = np.array([0.25, 0.5, 0.25])
    smooth = np.stack(
        [np.convolve(np.pad(f, 1, mode="edge"), kernel, mode="valid") for f in features.T], axis=1
    )
    loud, bright, low = smooth.T
    exp = np.zeros((len(features), 64), dtype=np.float32)
    exp[:, names.index("jaw_open")] = motion.jaw_open * style[0] * loud * (0.5 + 0.5 * low)
    exp[:, names.index("lips_round")] = motion.lips_round * style[1] * loud * low * (1 - bright)
    exp[:, names.index("lips_spread")] = motion.lips_spread * style[2] * loud * bright
    exp[:, names.index("lips_press")] = motion.lips_press * (1 - loud) ** 2
    return exp


def blink_track(
    num_frames: int, rng: np.random.Generator, interval_s: tuple[float, float], fps: int = 25
) -> np.ndarray:
    """(T,) blink coefficient: a 5-frame close/open profile every `interval_s` seconds."""
    profile = np.array([0.35, 0.85, 1.0, 0.6, 0.2])
    track = np.zeros(num_frames, dtype=np.float32)
    t = int(rng.uniform(0.2, interval_s[0]) * fps)
    while t < num_frames:
        n = min(len(profile), num_frames - t)
        track[t : t + n] = profile[:n]
        t += int(rng.uniform(*interval_s) * fps)
    return track


def pose_style(rng: np.random.Generator, motion: MotionParams) -> dict[str, np.ndarray]:
    """One speaker's way of moving the head (the same in all their clips, so a model can learn pose per
    identity): sway amplitude multipliers (3,) for pitch, yaw, roll, a sway speed multiplier, and a habitual
    orientation (3,) the sway plays around."""
    return {
        "scale": rng.uniform(*motion.sway_scale, 3),
        "speed": np.float64(rng.uniform(*motion.sway_speed)),
        "tilt": rng.uniform(-motion.pose_tilt, motion.pose_tilt, 3),
    }


def head_pose(
    num_frames: int,
    rng: np.random.Generator,
    motion: MotionParams,
    style: Mapping[str, np.ndarray],
    fps: int = 25,
) -> np.ndarray:
    """(T, 3) angles (pitch, yaw, roll as Deep3DFaceRecon's x, y, z): sums of slow sinusoids in the
    speaker's `pose_style`, plus with `large_turn_probability` one smooth large yaw turn away and back."""
    t = np.arange(num_frames) / fps
    angles = np.zeros((num_frames, 3))
    for axis, amplitude in ((0, motion.sway_pitch), (1, motion.sway_yaw), (2, motion.sway_roll)):
        amplitude = amplitude * style["scale"][axis]
        for _ in range(2):
            freq, phase = rng.uniform(0.15, 0.6), rng.uniform(0, 2 * np.pi)
            angles[:, axis] += amplitude / 2 * np.sin(2 * np.pi * freq * style["speed"] * t + phase)
    angles += style["tilt"]
    if rng.random() < motion.large_turn_probability:
        centre, width = rng.uniform(0.3, 0.7) * t[-1], rng.uniform(0.25, 0.5)
        angles[:, 1] += (
            rng.choice([-1, 1]) * motion.large_turn_yaw * np.exp(-0.5 * ((t - centre) / width) ** 2)
        )
    return angles.astype(np.float32)


def random_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float background: a colour gradient plus a few soft blobs (a plausible room)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    c0, c1 = rng.uniform(0.15, 0.85, 3), rng.uniform(0.15, 0.85, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    image = c0 + (c1 - c0) * (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    for _ in range(4):
        centre, radius = rng.uniform(0, 1, 2), rng.uniform(0.08, 0.3)
        blob = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * radius**2))[..., None]
        image = image * (1 - 0.5 * blob) + 0.5 * blob * rng.uniform(0, 1, 3)
    return np.clip(image, 0, 1).astype(np.float32)


def identity_params(model, rng: np.random.Generator, motion: MotionParams) -> dict[str, np.ndarray]:
    """A random speaker: identity and texture coefficients, SH lighting, placement, mouth style."""
    gamma = np.zeros((3, 9), dtype=np.float32)
    # Ambient level and tint around the default light (never much darker: dlib's HOG detector misses
    # dim, low-contrast faces), plus one soft directional light, the same for all channels.
    gamma[:, 0] = rng.uniform(0.0, 0.2) + rng.uniform(-0.04, 0.04, 3)
    gamma[:, 1:4] = rng.uniform(-0.12, 0.12, 3)
    trans = np.array(
        [
            rng.uniform(-1, 1) * motion.placement_jitter,
            rng.uniform(-1, 1) * motion.placement_jitter,
            motion.face_distance,
        ],
        dtype=np.float32,
    )
    return {
        "id": rng.normal(0.0, 0.7, 80).astype(np.float32),
        "tex": rng.normal(0.0, 0.7, 80).astype(np.float32),
        "gamma": gamma.reshape(27),
        "trans": trans,
        "style": rng.uniform(0.8, 1.2, 3).astype(np.float32),
    }


@dataclass(frozen=True)
class DetailParams:
    """Appearance a fitted 3D face cannot carry, so that a renderer has to take it from the references
    (conf/data/synthetic.yaml `details`; ranges are drawn per identity): skin marks painted on the face
    (freckles and moles, smaller than the mesh's ~3 px vertex spacing), fine pore noise, a Blinn-Phong
    specular highlight that moves with the pose (the fit is Lambertian), and gaps between the teeth of
    the mouth's inside. Lengths in model units (the face is ~1.2 wide)."""

    freckles: tuple[int, int] = (20, 60)
    freckle_radius: tuple[float, float] = (0.01, 0.018)
    freckle_darkness: tuple[float, float] = (0.08, 0.2)
    moles: tuple[int, int] = (0, 2)
    mole_radius: tuple[float, float] = (0.018, 0.028)
    mole_darkness: float = 0.35
    pore_amplitude: float = 0.04
    pore_wavelength: tuple[float, float] = (0.02, 0.04)
    specular_strength: tuple[float, float] = (0.08, 0.2)
    shininess: tuple[float, float] = (25.0, 60.0)
    teeth_period: float = 0.045
    teeth_gap_darkness: float = 0.6


def identity_details(model, rng: np.random.Generator, params: DetailParams) -> dict[str, np.ndarray]:
    """One speaker's marks, pores, highlight and teeth, drawn once (the same in all their clips)."""
    face = ~model.mouth_cavity.cpu().numpy()
    canonical = model.mean_shape[:, :2].cpu().numpy()[face]

    def spots(count: tuple[int, int], radius: tuple[float, float], darkness) -> np.ndarray:
        n = int(rng.integers(count[0], count[1] + 1))
        centres = canonical[rng.integers(len(canonical), size=n)]
        dark = rng.uniform(*darkness, n) if np.ndim(darkness) else np.full(n, darkness)
        return np.c_[centres, rng.uniform(*radius, n), dark].astype(np.float32)

    pores = 8
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.2, 0.8), 1.0])
    return {
        "spots": np.concatenate(
            [
                spots(params.freckles, params.freckle_radius, params.freckle_darkness),
                spots(params.moles, params.mole_radius, params.mole_darkness),
            ]
        ),
        "pore_waves": np.c_[
            rng.normal(size=(pores, 2)) / np.linalg.norm(rng.normal(size=(pores, 2)), axis=1, keepdims=True),
            2 * np.pi / rng.uniform(*params.pore_wavelength, pores),
            rng.uniform(0, 2 * np.pi, pores),
        ].astype(np.float32),
        "light": (light / np.linalg.norm(light)).astype(np.float32),
        "specular": np.array(
            [rng.uniform(*params.specular_strength), rng.uniform(*params.shininess)], dtype=np.float32
        ),
        "teeth_phase": np.float32(rng.uniform()),
    }


@torch.no_grad()
def render_detailed(
    model, camera, coeffs: torch.Tensor, details: dict[str, np.ndarray], params: DetailParams, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Frames of the morphable model as `face3d.FaceRenderer` draws them (per-vertex Lambertian SH
    colour), times the identity's detail albedo at each pixel's point of the canonical face, plus its
    specular highlight: (T, S, S, 3) images in [0, 1] and (T, S, S, 1) masks."""
    import face3d

    renderer = face3d.FaceRenderer(model, camera)
    canonical = model.mean_shape[:, :2]
    cavity = model.mouth_cavity.float()[:, None]
    spots = torch.from_numpy(details["spots"])
    waves = torch.from_numpy(details["pore_waves"])
    light = torch.from_numpy(details["light"])
    strength, shininess = (float(v) for v in details["specular"])
    eye = torch.tensor([0.0, 0.0, camera.distance])
    images, masks = [], []
    for chunk in torch.split(coeffs, batch):
        out = model(chunk)
        vertices, normals = model.posed_geometry(chunk)
        fragments = renderer.rasterize(out["vertices"])
        n = len(chunk)
        attributes = torch.cat(
            [out["color"], canonical.expand(n, -1, -1), vertices, normals, cavity.expand(n, -1, -1)], dim=-1
        )
        pixel = renderer.interpolate(fragments, attributes)  # (n, S, S, 12)
        colour, uv, position, normal, inside = pixel.split([3, 2, 3, 3, 1], dim=-1)
        # Marks: dark Gaussian spots; pores: a sum of fine plane waves.
        distance2 = ((uv[..., None, :] - spots[:, :2]) ** 2).sum(-1)
        marks = (spots[:, 3] * torch.exp(-distance2 / (2 * spots[:, 2] ** 2))).sum(-1, keepdim=True)
        phase = (uv @ waves[:, :2].T) * waves[:, 2] + waves[:, 3]
        pores = params.pore_amplitude * torch.sin(phase).mean(-1, keepdim=True) * 2
        skin = (1 - marks.clamp(max=0.9)) * (1 + pores)
        # Teeth: dark gaps every `teeth_period` across the mouth's inside.
        cycle = torch.frac(uv[..., :1] / params.teeth_period + float(details["teeth_phase"])) - 0.5
        teeth = 1 - params.teeth_gap_darkness * torch.exp(-(cycle**2) / (2 * 0.08**2))
        albedo = (1 - inside) * skin + inside * teeth
        # Blinn-Phong highlight on the skin: half vector of the light and the view direction.
        normal = torch.nn.functional.normalize(normal, dim=-1)
        view = torch.nn.functional.normalize(eye - position, dim=-1)
        half = torch.nn.functional.normalize(view + light, dim=-1)
        highlight = strength * (normal * half).sum(-1, keepdim=True).clamp(min=0) ** shininess * (1 - inside)
        mask = (fragments[0][..., :1] >= 0).float()
        images.append(((colour * albedo + highlight).clamp(0, 1) * mask).numpy())
        masks.append(mask.numpy())
    return np.concatenate(images), np.concatenate(masks)


def split_identities(identities: list[str], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """identity -> split; val and test get at least one identity each when there are three or more."""
    order = np.random.default_rng(seed).permutation(len(identities))
    n = len(identities)
    n_val = max(1 if n >= 3 else 0, int(round(fractions.get("val", 0.0) * n)))
    n_test = max(1 if n >= 3 else 0, int(round(fractions.get("test", 0.0) * n)))
    split = {}
    for rank, index in enumerate(order):
        split[identities[index]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return split


def clip_emotion(
    identity_index: int, clip_index: int, emotions: Sequence[str], num_levels: int
) -> tuple[int, int]:
    """(emotion index, level) of clip j of identity i: emotions[(i + j) mod E], so every speaker shows a
    run of different emotions and every emotion is shown as often across speakers; the level (1 to
    `num_levels`) steps on with the clip and with each pass over the emotions, so every emotion comes at
    every level. Neutral is level 1 only, as in MEAD."""
    k = identity_index + clip_index
    emotion = parse_emotion(emotions[k % len(emotions)])
    level = 1 if emotion == NEUTRAL else 1 + (clip_index + k // len(emotions)) % num_levels
    return emotion, level


def with_emotion(exp: np.ndarray, offset: np.ndarray, blink: int) -> np.ndarray:
    """(T, 64) expression with an emotion's lasting (64,) offset on top; a blink still closes the eyes,
    from the emotion's lids (wide open or narrowed) to shut."""
    lids = exp[:, blink]
    out = exp + offset
    out[:, blink] = offset[blink] + (1 - offset[blink]) * lids
    return out


def check_emotions(emotions: Sequence[str], table: np.ndarray) -> None:
    """Every emotion the clips show has an offset (else its clips would look neutral, mislabelled)."""
    if not emotions:
        raise ValueError("synthetic.emotions is empty: list at least one (neutral for none)")
    for name in emotions:
        index = parse_emotion(name)
        if index != NEUTRAL and not np.any(table[index]):
            raise ValueError(f"emotion {name!r} has no entry in synthetic.emotion_offsets")


@dataclass(frozen=True)
class ClipJob:
    identity_index: int
    clip_index: int
    path: str


_WORKER: dict[str, Any] = {}


def _worker_setup(face_model: dict, image_size: int, camera: dict, torch_threads: int | None) -> None:
    import face3d

    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    model = face3d.face_model_from_config(face_model)
    cam = face3d.PerspectiveCamera(**camera).resized(image_size)
    _WORKER.update(model=model, camera=cam)


def render_clip(job: ClipJob, settings: dict[str, Any]) -> dict[str, Any]:
    """Renders one clip and writes its mp4 + ground-truth npz; returns a small summary."""

    model, camera = _WORKER["model"], _WORKER["camera"]
    motion = MotionParams(**settings["motion"])
    seed, num_frames, size = settings["seed"], settings["num_frames"], settings["image_size"]
    id_rng = np.random.default_rng([seed, job.identity_index])
    person = identity_params(model, id_rng, motion)
    background = random_background(size, id_rng)
    detail_params = DetailParams(**settings["details"])
    details = identity_details(model, id_rng, detail_params)
    style = pose_style(np.random.default_rng([seed, job.identity_index, 2]), motion)
    clip_rng = np.random.default_rng([seed, job.identity_index, job.clip_index, 1])
    audio_seed = int(clip_rng.integers(2**31))
    wave = audio_lib.speech(num_frames / audio_lib.VIDEO_FPS, audio_seed, settings["audio_source"])
    wave = audio_lib.fit_length(wave, num_frames * audio_lib.SAMPLES_PER_FRAME)
    exp = mouth_expression(
        audio_lib.frame_features(wave, num_frames), EXPRESSION_NAMES, motion, person["style"]
    )
    exp[:, EXPRESSION_NAMES.index("blink")] = blink_track(num_frames, clip_rng, motion.blink_interval_s)
    exp[:, EXPRESSION_NAMES.index("smile")] = 0.3 * np.clip(
        np.sin(np.linspace(0, clip_rng.uniform(1, 4), num_frames)), 0, 1
    )
    exp[:, EXPRESSION_NAMES.index("brows_raise")] = (
        0.2 * exp[:, EXPRESSION_NAMES.index("jaw_open")] * clip_rng.uniform()
    )
    gains = settings["emotion_level_gains"]
    emotion, level = clip_emotion(job.identity_index, job.clip_index, settings["emotions"], len(gains))
    offset = emotion_offset(
        offset_table(settings["emotion_offsets"], EXPRESSION_NAMES), emotion, level, gains
    )
    exp = with_emotion(exp, offset, EXPRESSION_NAMES.index("blink"))
    angles = head_pose(num_frames, clip_rng, motion, style)
    coeffs = model.join_coeffs(
        id=torch.from_numpy(np.tile(person["id"], (num_frames, 1))),
        exp=torch.from_numpy(exp),
        tex=torch.from_numpy(np.tile(person["tex"], (num_frames, 1))),
        angle=torch.from_numpy(angles),
        gamma=torch.from_numpy(np.tile(person["gamma"], (num_frames, 1))),
        trans=torch.from_numpy(np.tile(person["trans"], (num_frames, 1))),
    )
    with torch.no_grad():
        landmarks = model.landmarks_2d(coeffs, camera).numpy()
        image, mask = render_detailed(model, camera, coeffs, details, detail_params, settings["render_batch"])
        video = (image * mask + background * (1 - mask)) * 255
    video = video.round().astype(np.uint8)
    path = Path(job.path)
    write_mp4(path, video, wave, fps=audio_lib.VIDEO_FPS, crf=settings["crf"])
    with atomic_write(path.with_suffix(".npz"), "wb") as handle:
        np.savez(
            handle,
            coeffs=coeffs.numpy().astype(np.float32),
            landmarks=landmarks.astype(np.float32),
            image_size=np.int64(size),
            camera=np.array(
                [camera.image_size, camera.focal, camera.center, camera.distance], dtype=np.float64
            ),
            audio_seed=np.int64(audio_seed),
            emotion=np.int64(emotion),
            emotion_level=np.int64(level),
            emotion_offset=offset,
        )
    return {"path": str(path), "frames": num_frames}


def clip_path(root: Path, identity: str, clip_index: int) -> Path:
    return root / "mp4" / identity / f"syn{clip_index:04d}" / "00001.mp4"


# Bumped whenever the generator's code changes what it writes (2: speech with closures, gaps and
# pauses, normalised by loudness; 3: skin marks, pores, specular highlights and teeth gaps; 4: emotions,
# their labels in the ground truth, per-speaker pose style).
SYNTHETIC_VERSION = 4


def corpus_recipe(
    face_model: Mapping[str, Any],
    num_identities: int,
    clips_per_identity: int,
    num_frames: int,
    image_size: int,
    seed: int,
    split_fractions: Mapping[str, float] | None,
    audio_source: str,
    camera: Mapping[str, float] | None,
    motion: Mapping[str, Any] | None,
    crf: int,
    details: Mapping[str, Any] | None = None,
    emotions: Sequence[str] = ("neutral",),
    emotion_level_gains: Sequence[float] = (1.0,),
    emotion_offsets: Mapping[str, Mapping[str, float]] | None = None,
    **_: Any,
) -> dict[str, Any]:
    """What the corpus is made of: every generator setting that changes its files (not where they go or
    how many processes make them), the face model's settings and fingerprint, and the code version."""
    return {
        "generator": "synthetic",
        "version": SYNTHETIC_VERSION,
        "face_model": face_model_recipe(face_model),
        "num_identities": num_identities,
        "clips_per_identity": clips_per_identity,
        "num_frames": num_frames,
        "image_size": image_size,
        "seed": seed,
        "split_fractions": dict(split_fractions or {}),
        "audio_source": audio_source,
        "camera": dict(camera or {}),
        "motion": {**asdict(MotionParams()), **dict(motion or {})},
        "details": {**asdict(DetailParams()), **dict(details or {})},
        "emotions": list(emotions),
        "emotion_level_gains": list(emotion_level_gains),
        "emotion_offsets": {name: dict(v or {}) for name, v in (emotion_offsets or {}).items()},
        "crf": crf,
    }


def generate_synthetic_corpus(
    output_dir: str | os.PathLike,
    face_model: Mapping[str, Any],
    num_identities: int = 8,
    clips_per_identity: int = 2,
    num_frames: int = 50,
    image_size: int = 160,
    seed: int = 0,
    split_fractions: Mapping[str, float] | None = None,
    audio_source: str = "builtin",
    camera: Mapping[str, float] | None = None,
    motion: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
    emotions: Sequence[str] = ("neutral",),
    emotion_level_gains: Sequence[float] = (1.0,),
    emotion_offsets: Mapping[str, Mapping[str, float]] | None = None,
    render_batch: int = 25,
    crf: int = 18,
    num_workers: int = 0,
    torch_threads: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes the corpus under `output_dir` (see the module docstring) with its `recipe.json`. Clips already
    on disk are kept unless `overwrite` (a killed run resumes), but only when they were made with the
    same recipe: a corpus made otherwise (other settings, audio source, face model or generator version)
    is deleted and made anew, with the differences logged. `num_workers` > 0 renders clips in that many
    spawned processes (each with `torch_threads` threads when set). `emotions` (names of
    datamodules.emotions.EMOTIONS) are the emotions the clips cycle through (`clip_emotion`), at levels 1 to
    len(`emotion_level_gains`), each shown by its row of `emotion_offsets` ({emotion: {expression
    component: coefficient}}) times its level's gain. Returns {num_clips, num_frames, seconds, splits}."""

    start = time.perf_counter()
    check_emotions(emotions, offset_table(emotion_offsets or {}, EXPRESSION_NAMES))
    if audio_source not in audio_lib.AUDIO_SOURCES:
        raise ValueError(f"audio_source must be one of {audio_lib.AUDIO_SOURCES}, got {audio_source!r}")
    if audio_source == "espeak" and not audio_lib.espeak_available():
        audio_lib.espeak_speech(0.1, 0)  # raises the error that says how to install it
    root = Path(output_dir)
    recipe = corpus_recipe(
        face_model,
        num_identities,
        clips_per_identity,
        num_frames,
        image_size,
        seed,
        split_fractions,
        audio_source,
        camera,
        motion,
        crf,
        details,
        emotions,
        emotion_level_gains,
        emotion_offsets,
    )
    recorded = read_recipe(root)
    if (root / "mp4").exists() and (recorded is None or recipe_differences(recorded, recipe)):
        changes = recipe_differences(recorded, recipe) if recorded else ["no recipe.json (an older corpus)"]
        log.warning("synthetic corpus in %s was made otherwise, rebuilding it: %s", root, "; ".join(changes))
        shutil.rmtree(root / "mp4")
    root.mkdir(parents=True, exist_ok=True)
    write_recipe(root, recipe)  # first: the clips written from now on follow it, so a killed run resumes
    identities = [f"id{i:05d}" for i in range(num_identities)]
    splits = split_identities(
        identities, split_fractions or {"train": 0.75, "val": 0.125, "test": 0.125}, seed
    )
    with atomic_write(root / SPLITS_FILE) as handle:
        handle.write(json.dumps(splits, indent=1))
    jobs = [
        ClipJob(i, j, str(clip_path(root, identity, j)))
        for i, identity in enumerate(identities)
        for j in range(clips_per_identity)
        if overwrite
        or not (
            clip_path(root, identity, j).exists()
            and clip_path(root, identity, j).with_suffix(".npz").exists()
        )
    ]
    settings = {
        "seed": seed,
        "num_frames": num_frames,
        "image_size": image_size,
        "audio_source": audio_source,
        "motion": dict(motion or {}),
        "details": dict(details or {}),
        "emotions": list(emotions),
        "emotion_level_gains": list(emotion_level_gains),
        "emotion_offsets": {name: dict(v or {}) for name, v in (emotion_offsets or {}).items()},
        "render_batch": render_batch,
        "crf": crf,
    }
    setup_args = (dict(face_model), image_size, dict(camera or {}), torch_threads)
    if num_workers > 0 and len(jobs) > 1:
        with ProcessPoolExecutor(
            num_workers, mp_context=get_context("spawn"), initializer=_worker_setup, initargs=setup_args
        ) as pool:
            list(pool.map(render_clip, jobs, [settings] * len(jobs)))
    else:
        _worker_setup(*setup_args[:3], None)
        for job in jobs:
            render_clip(job, settings)
    seconds = time.perf_counter() - start
    total = num_identities * clips_per_identity
    log.info("synthetic corpus: %d clips (%d rendered now) in %s, %.1f s", total, len(jobs), root, seconds)
    return {
        "num_clips": total,
        "rendered": len(jobs),
        "num_frames": len(jobs) * num_frames,
        "seconds": seconds,
        "splits": splits,
    }


def generate_corpus(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`python run.py task=synthesize data=synthetic`: reads the `synthetic` node of the data config."""
    from omegaconf import OmegaConf

    node = data_cfg["synthetic"]
    options = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    return generate_synthetic_corpus(**options)

"""The dubbing generators: a face track (consecutive face crops with their 3DMM fit) and a speech track
become new face crops whose mouth follows the speech. `task=dub` (lightning_modules/dub.py) runs them on
videos, `task=eval` (lightning_modules/evaluation.py) on the test shards, through the same code.

- `SynergyDubber`: the suite's pipeline (METHOD.md 1.1): stage 1 maps the speech to expressions, I_3D is
  rendered with them and the track's own identity, pose, texture and light, and the renderer (stage 2,
  3 or 4, whichever checkpoint is given) makes the crop from I_3D, the mouth-masked crop and K references
  of the same track. With a `motion` source (`task=dub motion=diffusion`) Playmate's motion DiT
  (lightning_modules/motion_source.py) supplies the expression instead of stage 1.
- `Wav2LipDubber`: the Wav2Lip-architecture generator (an `experiment=teacher` checkpoint or the
  official `wav2lip.pth`): lower half masked, re-drawn from the mel window, as Wav2Lip's `inference.py`
  does (its reference is the frame itself) -- the peer row of Table 1.

Trained stages are rebuilt from their own run's configuration (`<run dir>/.hydra/config.yaml`, which
Hydra writes beside `checkpoints/`), so a checkpoint carries its architecture with it; the renderer's
run also says how its shards were made (crop size, detector, face model), which is how a new video is
analysed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

import face3d
from datamodules import audio as audio_lib
from datamodules.datasets import choose_references, mfcc_windows, mouth_mask, mouth_masked_crop

log = logging.getLogger(__name__)


@dataclass
class Speech:
    """The driving audio: 16 kHz mono float and its features for the whole track, computed once."""

    wave: np.ndarray
    mfcc: np.ndarray  # (N, 13), 100 frames/s
    mel: np.ndarray  # (80, M), 80 steps/s

    @classmethod
    def from_wave(cls, wave: np.ndarray) -> Speech:
        wave = audio_lib.to_float(wave)
        return cls(wave=wave, mfcc=audio_lib.mfcc(wave), mel=audio_lib.melspectrogram(wave))

    @property
    def duration_s(self) -> float:
        return len(self.wave) / audio_lib.SAMPLE_RATE


@dataclass
class FaceTrack:
    """Consecutive frames showing the speaker's face, analysed as preprocessing analyses a clip.

    crops (T, S, S, 3) uint8 at the analysis crop size; landmarks (T, 68, 2) in crop pixels; coeffs
    (T, 257) of the fit; albedo (N, 3) per-vertex or None; times (T,) seconds on the speech's clock
    (where each frame's audio is read)."""

    crops: np.ndarray
    landmarks: np.ndarray
    coeffs: np.ndarray
    albedo: np.ndarray | None
    times: np.ndarray

    def __len__(self) -> int:
        return len(self.crops)


@dataclass
class DubbedTrack:
    """The generators' result at their image size S': images (T, 3, S', S') in [0, 1], the crop with the
    new mouth; mouth_mask (T, 1, S', S'), where it may differ from the source crop; landmarks (T, 68, 2)
    in pixels of S' where the generated mouth lies (None when the generator does not know); coeffs
    (T, 257), the 3DMM coefficients I_3D was rendered with (None for generators without a 3D face)."""

    images: Tensor
    mouth_mask: Tensor
    landmarks: Tensor | None
    coeffs: Tensor | None = None


# --- trained stages from their runs ----------------------------------------------------------------


def run_config(checkpoint: str | Path) -> DictConfig:
    """The configuration a suite checkpoint was trained with: the `run_config` it carries (the resolved
    `model`, `data` and `face_model` nodes; lightning_modules/checkpointing.py), or, for a checkpoint
    written before it carried one, its run directory's `.hydra/config.yaml`."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found: train that stage first, or set the path")
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True).get("run_config")
    if stored is not None:
        return OmegaConf.create(stored)
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{checkpoint} carries no run_config and {path} is missing: the networks of a checkpoint are "
            "built from the configuration of the run that wrote it"
        )
    return OmegaConf.load(path)


def load_trained_module(checkpoint: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, DictConfig]:
    """The LightningModule of a suite checkpoint, built from its run's `model` config (no previous-stage
    checkpoint is read: this file holds every network), in eval mode on `device`. Returns (module, run
    config). The suite's own file, read with weights_only=True all the same. The training-only measures
    (VGG, RAFT, LPIPS) are not built."""
    cfg = run_config(checkpoint)
    with open_dict(cfg):
        if "init_checkpoint" in cfg.model:
            cfg.model.init_checkpoint = None
        if "weights_dir" in cfg.model:
            cfg.model.weights_dir = None
            for term in ("perceptual", "style", "correspondence"):
                if term in cfg.model.get("losses", {}):
                    cfg.model.losses[term] = 0.0
    with _quiet("lightning_modules.metrics"):
        module = hydra.utils.instantiate(cfg.model)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    frozen = tuple(getattr(module, "frozen_prefixes", ()))
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.startswith(frozen)]
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint} does not fit the networks of its run's config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    log.info("loaded %s (%s)", checkpoint, type(module).__name__)
    return module.to(device).eval().requires_grad_(False), cfg


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a logger's warnings (LPIPS "is off" at inference, where no metric is computed)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def float_images(crops: np.ndarray, size: int, device: torch.device | str) -> Tensor:
    """uint8 (T, S, S, 3) -> float (T, 3, size, size) in [0, 1]."""
    images = torch.from_numpy(np.ascontiguousarray(crops)).to(device).permute(0, 3, 1, 2).float() / 255.0
    return _resize(images, size).clamp(0, 1)


def silence_weights(
    wave: np.ndarray, times: np.ndarray, threshold_db: float, min_s: float, ramp_s: float
) -> np.ndarray:
    """(T,) weights in [0, 1] of the closed mouth at `times` (s): 1 inside stretches of at least `min_s`
    where the speech's RMS over each 25 fps frame stays below `threshold_db` dBFS, falling linearly to 0
    over `ramp_s` inside each stretch's ends (the mouth closes and opens smoothly, ahead of the sound)."""
    spf = audio_lib.SAMPLES_PER_FRAME
    count = max(1, int(np.ceil(len(wave) / spf)))
    frames = np.pad(wave, (0, count * spf - len(wave))).reshape(count, spf).astype(np.float64)
    quiet = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-10) < threshold_db
    rate = audio_lib.VIDEO_FPS
    weight = np.zeros(count)
    edges = np.flatnonzero(np.diff(np.r_[0, quiet.astype(int), 0]))
    for start, stop in zip(edges[::2], edges[1::2]):
        if (stop - start) / rate < min_s:
            continue
        frame = np.arange(start, stop)
        inside = np.minimum(frame - start, stop - frame)  # whole frames from the stretch's ends
        weight[start:stop] = np.clip(inside / max(ramp_s * rate, 1e-6), 0.0, 1.0)
    index = np.clip(np.round(times * rate).astype(int), 0, count - 1)
    return np.where(times * rate < count, weight[index], 0.0)


class SynergyDubber:
    """Stage 1 + the renderer (METHOD.md 1.1). `a2e_checkpoint`: an experiment=stage1 / demo run's
    checkpoint; `renderer_checkpoint`: a stage 2, 3 or 4 run's; `teacher_checkpoint`: the Wav2Lip teacher
    whose frames stage 1's visual branch reads (needed only when that network uses semantic images).
    `a2e_context` frames of speech on each side of a track give the Bi-LSTM its context; `batch_size`
    frames go through the renderer at once; the references (`num_references` of the renderer's config)
    are chosen once per track, so every frame of a track is made from the same ones (no flicker from
    references that change frame to frame). `silence` ({threshold_db, min_s, ramp_s}, or None to switch
    it off) closes the mouth in silent stretches of the speech, where stage 1 only drifts towards the mean
    mouth: the expression is blended into the neutral one (0) by `silence_weights`.

    `motion` (a conf/motion/*.yaml node; None or `source: stage1`: stage 1) replaces stage 1 with another
    expression source: `source: diffusion` is Playmate's motion DiT (lightning_modules/motion_source.py
    `DiffusionMotion`), whose generated expression drives I_3D while the track keeps its fitted identity,
    pose, texture and light; the stage-1 checkpoint is then not read. The silence gate applies to either
    (in silence it also fades an emotion's lasting expression, since it blends into the neutral face)."""

    name = "synergydub"

    def __init__(
        self,
        a2e_checkpoint: str | None,
        renderer_checkpoint: str,
        teacher_checkpoint: str | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        a2e_context: int = 12,
        seed: int = 0,
        silence: dict[str, float] | None = None,
        motion: dict[str, Any] | None = None,
    ) -> None:
        from lightning_modules.motion_source import build_motion_source

        self.device = torch.device(device)
        self.silence = dict(silence) if silence else None
        self.motion = build_motion_source(motion, device)
        self.a2e = None
        self.teacher = None
        if self.motion is None:
            if not a2e_checkpoint:
                raise ValueError("the pipeline's stage 1 needs a checkpoint (dub.pipeline.a2e_checkpoint)")
            self._load_stage1(a2e_checkpoint, teacher_checkpoint)
        self.renderer, renderer_cfg = load_trained_module(renderer_checkpoint, device)
        self.config = renderer_cfg
        data = renderer_cfg.data
        self.image_size = int(data.image_size)
        self.num_references = int(data.num_references)
        self.reference_policy = str(data.reference_policy)
        self.reference_min_gap = int(data.reference_min_gap)
        self.mask_mode, self.mask_dilation = str(data.mask_mode), float(data.mask_dilation)
        self.batch_size = batch_size
        self.a2e_context = a2e_context
        self.seed = seed
        self.face_model = face3d.face_model_from_config(
            OmegaConf.to_container(data.preprocess.face_model, resolve=True)
        ).to(self.device)
        self.camera = face3d.PerspectiveCamera(**OmegaConf.to_container(data.preprocess.camera, resolve=True))

    def _load_stage1(self, a2e_checkpoint: str, teacher_checkpoint: str | None) -> None:
        self.a2e, a2e_cfg = load_trained_module(a2e_checkpoint, self.device)
        self.mfcc_window = int(a2e_cfg.data.mfcc_window)
        self.semantic_size = int(a2e_cfg.data.image_size)
        if getattr(self.a2e.net, "use_semantic", False):
            if not teacher_checkpoint:
                raise ValueError(
                    f"the stage-1 network of {a2e_checkpoint} reads the teacher's semantic images: "
                    "set the teacher checkpoint (dub.pipeline.teacher_checkpoint)"
                )
            from lightning_modules.networks.wav2lip import load_wav2lip

            self.teacher = load_wav2lip(teacher_checkpoint).to(self.device)

    def preprocess_config(self) -> DictConfig:
        """The renderer's `data` config: how its shards were made, which is how a video is analysed."""
        return self.config.data

    # --- stage 1 ---------------------------------------------------------------------------------

    @torch.no_grad()
    def expressions(self, track: FaceTrack, speech: Speech) -> np.ndarray:
        """(T, 64) expressions for the track's frame times: stage 1 (or the `motion` source) on the 25 fps
        ticks that span them, interpolated to each frame's time (a 30 fps video gets expressions between
        ticks), then the silence gate."""
        if self.motion is not None:
            expression = self.motion.expressions(track, speech)
        else:
            expression = self.stage1_expressions(track, speech)
        return self.gate(expression, speech, track.times)

    def gate(self, expression: np.ndarray, speech: Speech, times: np.ndarray) -> np.ndarray:
        """The silence gate (`silence_weights`): expression (T, 64) at `times` (s) blended into the neutral
        one (0) in silent stretches of the speech; unchanged without `silence`."""
        if self.silence:
            closed = silence_weights(speech.wave, times, **self.silence)
            expression = expression * (1.0 - closed[:, None])
        return expression.astype(np.float32)

    @torch.no_grad()
    def stage1_expressions(self, track: FaceTrack, speech: Speech) -> np.ndarray:
        """Stage 1 on the ticks that span the track's frame times plus `a2e_context` on each side."""
        rate = audio_lib.VIDEO_FPS
        first = int(np.floor(track.times.min() * rate)) - self.a2e_context
        last = int(np.ceil(track.times.max() * rate)) + self.a2e_context
        ticks = np.arange(first, last + 1)
        mfcc = torch.from_numpy(mfcc_windows(speech.mfcc, ticks, self.mfcc_window)).to(self.device)
        semantic = None
        if self.teacher is not None:
            from lightning_modules.networks.wav2lip import generate_semantic_frames

            nearest = np.clip(np.searchsorted(track.times * rate, ticks), 0, len(track) - 1)
            frames = float_images(track.crops[nearest], track.crops.shape[1], self.device)
            semantic = generate_semantic_frames(
                self.teacher, frames, audio_lib.mel_windows(speech.mel, np.maximum(ticks, 0)), mel_lead=1
            )
            semantic = _resize(semantic, self.semantic_size)[None]
        expression = self.a2e.net(mfcc[None].float(), semantic)[0].float().cpu().numpy()
        return np.stack(
            [np.interp(track.times * rate, ticks, expression[:, k]) for k in range(expression.shape[1])], 1
        ).astype(np.float32)

    # --- the renderer ----------------------------------------------------------------------------

    def references(self, track: FaceTrack) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return choose_references(
            track.coeffs,
            len(track) // 2,
            self.num_references,
            self.reference_policy,
            self.reference_min_gap,
            rng,
        )

    @torch.no_grad()
    def render(self, track: FaceTrack, expression: np.ndarray) -> DubbedTrack:
        """The renderer's crops for the track driven by `expression` (T, 64)."""
        size, device = self.image_size, self.device
        camera = self.camera.resized(size)
        renderer = face3d.FaceRenderer(self.face_model, camera)
        coeffs_true = torch.from_numpy(np.ascontiguousarray(track.coeffs)).float().to(device)
        coeffs = face3d.with_expression(coeffs_true, torch.from_numpy(expression).to(device))
        albedo = None if track.albedo is None else torch.from_numpy(track.albedo).float().to(device)[None]
        chosen = self.references(track)
        references = float_images(track.crops[chosen], size, device)
        references_render = renderer(coeffs_true[chosen], albedo=face3d.clip_albedo(albedo, len(chosen)))
        scale = size / track.crops.shape[1]
        images, masks, landmarks = [], [], []
        for start in range(0, len(track), self.batch_size):
            part = slice(start, min(start + self.batch_size, len(track)))
            n = part.stop - part.start
            crops = track.crops[part]
            masked = np.stack(
                [
                    mouth_masked_crop(c, lm, self.mask_mode, self.mask_dilation)
                    for c, lm in zip(crops, track.landmarks[part])
                ]
            )
            mask = np.stack(
                [
                    mouth_mask(*c.shape[:2], lm, self.mask_mode, self.mask_dilation)
                    for c, lm in zip(crops, track.landmarks[part])
                ]
            )
            mask = torch.from_numpy(mask[:, None].astype(np.float32)).to(device)
            rendered = renderer(coeffs[part], albedo=face3d.clip_albedo(albedo, n))
            batch: dict[str, Any] = {
                "target": float_images(crops, size, device),
                "render3d": rendered["image"].clamp(0, 1),
                "masked": float_images(masked, size, device),
                "mouth_mask": (_resize(mask, size) > 0.5).float(),
                "face_mask": rendered["mask"],
                "references": references[None].expand(n, -1, -1, -1, -1),
                "references_render3d": references_render["image"][None].expand(n, -1, -1, -1, -1),
                "coeffs": coeffs[part],
                "references_coeffs": coeffs_true[chosen][None].expand(n, -1, -1),
                "landmarks": torch.from_numpy(track.landmarks[part] * np.float32(scale)).to(device),
            }
            out = self.renderer.generate(batch)
            images.append(self.renderer.candidates(batch, out)["output"].clamp(0, 1).float().cpu())
            masks.append(batch["mouth_mask"].cpu())
            landmarks.append(self.face_model.landmarks_2d(coeffs[part], camera).float().cpu())
        return DubbedTrack(torch.cat(images), torch.cat(masks), torch.cat(landmarks), coeffs.float().cpu())

    def dub(self, track: FaceTrack, speech: Speech) -> DubbedTrack:
        return self.render(track, self.expressions(track, speech))


class Wav2LipDubber:
    """The Wav2Lip-architecture generator as a dubbing model: `checkpoint` is an `experiment=teacher` /
    `demo_wav2lip` checkpoint or the official `wav2lip.pth` / `wav2lip_gan.pth`. Each frame's lower half
    is masked and re-drawn at 96 px from the mel window starting `mel_lead` frames before it, with the
    frame itself as the reference (Wav2Lip's `inference.py`)."""

    name = "wav2lip"

    def __init__(self, checkpoint: str, device: str = "cpu", batch_size: int = 32, mel_lead: int = 1) -> None:
        from lightning_modules.networks.wav2lip import load_wav2lip

        self.device = torch.device(device)
        self.generator = load_wav2lip(checkpoint).to(self.device)
        self.checkpoint = checkpoint
        self.batch_size = batch_size
        self.mel_lead = mel_lead

    @torch.no_grad()
    def dub(self, track: FaceTrack, speech: Speech) -> DubbedTrack:
        from lightning_modules.networks.wav2lip import IMAGE_SIZE, generate_semantic_frames

        ticks = np.round(track.times * audio_lib.VIDEO_FPS).astype(np.int64) - self.mel_lead
        mel = audio_lib.mel_windows(speech.mel, np.maximum(ticks, 0))
        faces = float_images(track.crops, IMAGE_SIZE, self.device)
        images = generate_semantic_frames(
            self.generator, faces, mel, references=faces, mel_lead=0, batch_size=self.batch_size
        )
        mask = torch.zeros(len(track), 1, IMAGE_SIZE, IMAGE_SIZE)
        mask[..., IMAGE_SIZE // 2 :, :] = 1.0
        return DubbedTrack(images.float().cpu(), mask, None)


def build_dubber(node: DictConfig | dict, device: str = "cpu") -> SynergyDubber | Wav2LipDubber:
    """A dubber from its config node (conf/dub/*.yaml `generator`, or conf/model/wav2lip.yaml). A setting
    the dubber refuses (`ConfigurationError`) is raised as itself, not wrapped in Hydra's error."""
    from hydra.errors import InstantiationException

    from lightning_modules.motion_source import ConfigurationError

    node = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    try:
        return hydra.utils.instantiate({**node, "device": device})
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigurationError):
            raise error.__cause__ from None
        raise

"""The dubbing generators: a face track (consecutive face crops with their 3DMM fit) and a speech track
become new face crops whose mouth follows the speech. `task=dub` (lightning_modules/tasks/dub.py) runs them on
videos, `task=eval` (lightning_modules/evaluation/dubbing.py) on the test shards, through the same code.

- `SynergyDubber`: the suite's pipeline (main paper, 3DMM): stage 1 maps the speech to expressions, I_3D is
  rendered with them and the track's own identity, pose, texture and light, and the renderer (stage 2,
  3 or 4, whichever checkpoint is given) makes the crop from I_3D, the mouth-masked crop and K references
  of the same track. With a `motion` source (`task=dub motion=diffusion`) Playmate's motion DiT
  (lightning_modules/inference/motion_source.py) supplies the expression instead of stage 1.
- `Wav2LipDubber`: the Wav2Lip-architecture generator (an `experiment=teacher` checkpoint or the
  official `wav2lip.pth`): lower half masked, re-drawn from the mel window, as Wav2Lip's `inference.py`
  does (its reference is the frame itself) -- the peer row of Table 1.

Trained stages are rebuilt from their own run's configuration (`<run dir>/.hydra/config.yaml`, which
Hydra writes beside `checkpoints/`), so a checkpoint carries its architecture with it; the renderer's
run also says how its shards were made (crop size, detector, face model), which is how a new video is
analysed.
"""

from __future__ import annotations

from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

import face3d
from datamodules.datasets import choose_references, mfcc_windows
from datamodules.media import audio as audio_lib
from datamodules.media.masks import mouth_mask, mouth_masked_crop
from lightning_modules.common.checkpoints import load_trained_module
from lightning_modules.common.errors import ConfigurationError
from lightning_modules.inference.motion_source import build_motion_source
from lightning_modules.inference.tracks import DubbedTrack, FaceTrack, Speech, float_images, resize_images
from lightning_modules.networks.wav2lip import IMAGE_SIZE, generate_semantic_frames, load_wav2lip


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


def renderer_inputs(
    renderer: face3d.FaceRenderer,
    coeffs: Tensor,
    albedo: Tensor | None,
    references: Tensor,
    references_coeffs: Tensor,
    references_render: Tensor,
    landmarks: Tensor,
) -> dict[str, Any]:
    """The renderer's batch for n frames driven by `coeffs` (n, 257), for dubbing and animation alike: I_3D
    and its face mask, the K references (K, 3, S, S) with their coefficients (K, 257) and I_3D (K, 3, S, S)
    shared by every frame, and the frames' `landmarks` (n, 68, 2) in pixels of S. The caller adds the
    target, the mouth-masked crop and the mouth mask (`target`, `masked`, `mouth_mask`)."""
    n = len(coeffs)
    rendered = renderer(coeffs, albedo=face3d.clip_albedo(albedo, n))
    return {
        "render3d": rendered["image"].clamp(0, 1),
        "face_mask": rendered["mask"],
        "references": references[None].expand(n, -1, -1, -1, -1),
        "references_render3d": references_render[None].expand(n, -1, -1, -1, -1),
        "coeffs": coeffs,
        "references_coeffs": references_coeffs[None].expand(n, -1, -1),
        "landmarks": landmarks,
    }


class SynergyDubber:
    """Stage 1 + the renderer (main paper, 3DMM). `a2e_checkpoint`: an experiment=stage1 / demo run's
    checkpoint; `renderer_checkpoint`: a stage 2, 3 or 4 run's; `teacher_checkpoint`: the Wav2Lip teacher
    whose frames stage 1's visual branch reads (needed only when that network uses semantic images).
    `a2e_context` frames of speech on each side of a track give the Bi-LSTM its context; `batch_size`
    frames go through the renderer at once; the references (`num_references` of the renderer's config)
    are chosen once per track, so every frame of a track is made from the same ones (no flicker from
    references that change frame to frame). `silence` ({threshold_db, min_s, ramp_s}, or None to switch
    it off) closes the mouth in silent stretches of the speech, where stage 1 only drifts towards the mean
    mouth: the expression is blended into the neutral one (0) by `silence_weights`.

    `motion` (a conf/motion/*.yaml node; None or `source: stage1`: stage 1) replaces stage 1 with another
    expression source: `source: diffusion` is Playmate's motion DiT
    (lightning_modules/inference/motion_source.py
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

        self.device = torch.device(device)
        self.silence = dict(silence) if silence else None
        self.motion = build_motion_source(motion, device)
        self.a2e = None
        self.teacher = None
        if self.motion is None:
            if not a2e_checkpoint:
                raise ValueError("the pipeline's stage 1 needs a checkpoint (generator.a2e_checkpoint)")
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
                    "set the teacher checkpoint (generator.teacher_checkpoint)"
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
            semantic = resize_images(semantic, self.semantic_size)[None]
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
            batch = renderer_inputs(
                renderer,
                coeffs[part],
                albedo,
                references,
                coeffs_true[chosen],
                references_render["image"],
                torch.from_numpy(track.landmarks[part] * np.float32(scale)).to(device),
            )
            batch.update(
                target=float_images(crops, size, device),
                masked=float_images(masked, size, device),
                mouth_mask=(resize_images(mask, size) > 0.5).float(),
            )
            out = self.renderer.generate(batch)
            images.append(self.renderer.final_image(batch, out).clamp(0, 1).float().cpu())
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

        self.device = torch.device(device)
        self.generator = load_wav2lip(checkpoint).to(self.device)
        self.checkpoint = checkpoint
        self.batch_size = batch_size
        self.mel_lead = mel_lead

    @torch.no_grad()
    def dub(self, track: FaceTrack, speech: Speech) -> DubbedTrack:

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

    node = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    try:
        return hydra.utils.instantiate({**node, "device": device})
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigurationError):
            raise error.__cause__ from None
        raise

"""Playmate's motion DiT (lightning_modules/motion/dit.py) as a motion source for dubbing and animation
(Playmate): a trained `MotionDiffusionModule` / `EmotionControlModule` checkpoint, a speech track and a
person's identity coefficients become per-frame 3DMM motion at 25 fps.

- `task=dub motion=diffusion [emotion=happy]` takes the generated *expression* in place of stage 1's
  (`SynergyDubber` with a `motion` node); the video keeps its own pose.
- `task=animate` takes expression and head pose (lightning_modules/tasks/animate.py).

The whole speech is generated at once, on the 25 fps ticks that cover it, in the DiT's own overlapping
windows (each continuing the previous one's last frames, lightning_modules/diffusion.py `sample_long`),
and every face track of a dubbing run reads its frames from that one sequence (`expressions`). Dubbing
reads a long video in chunks, and its tracks break where the face is lost: a motion sampled per chunk or
per track would start each from fresh noise and jump at every join; continuing each chunk from the
previous one's last frames would tie the sampling to the analysis order and still condition each chunk on
its own, slightly different, identity fit. One sequence costs the same sampling (the windows are the
same), holds only T x 70 numbers, and joins only where the DiT was trained to join. Its identity is that
of the first track analysed (dubbing shows one speaker; the identity conditions the motion's style, not
where it is). The noise comes from a generator seeded with `seed`: the same seed, speech, identity and
emotion give the same motion.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from datamodules.datasets import mfcc_windows
from datamodules.emotions import EMOTIONS, NEUTRAL, parse_emotion
from datamodules.media import audio as audio_lib
from datamodules.shards import COEFF_SLICES
from lightning_modules.common.checkpoints import load_trained_module
from lightning_modules.common.errors import ConfigurationError
from lightning_modules.motion.dit import MotionDiffusionModule

log = logging.getLogger(__name__)

SOURCES = ("stage1", "diffusion")


def speech_frames(speech: Any) -> int:
    """The 25 fps frames that cover a speech (frame t covers samples [640 t, 640 (t + 1)))."""
    return max(1, math.ceil(len(speech.wave) / audio_lib.SAMPLES_PER_FRAME))


def emotion_label(name: str | None) -> int | None:
    """The root `emotion` setting as an EMOTIONS index (None: the null emotion)."""
    if name is None:
        return None
    try:
        return parse_emotion(str(name))
    except ValueError as error:
        raise ConfigurationError(f"emotion={name}: {error}") from None


class DiffusionMotion:
    """A trained motion DiT checkpoint as the source of 3DMM motion for a speech (module docstring).

    `emotion` a name of EMOTIONS or None (the null emotion); `level` its intensity (neutral: 1); `sampler`,
    `steps`, `audio_guidance`, `emotion_guidance`: None keeps the checkpoint's own `model.sampling`."""

    def __init__(
        self,
        checkpoint: str,
        emotion: str | None = None,
        level: int = 2,
        sampler: str | None = None,
        steps: int | None = None,
        audio_guidance: float | None = None,
        emotion_guidance: float | None = None,
        seed: int = 0,
        device: str = "cpu",
        source: str = "diffusion",
    ) -> None:

        if source != "diffusion":
            raise ConfigurationError(f"DiffusionMotion is the `diffusion` motion source, got {source!r}")
        self.checkpoint = str(checkpoint)
        label = emotion_label(emotion)  # a bad name fails before the checkpoint is read
        self.module, run_cfg = load_trained_module(checkpoint, device)
        if not isinstance(self.module, MotionDiffusionModule):
            raise ConfigurationError(
                f"{checkpoint} holds a {type(self.module).__name__}, not a motion DiT: set the motion "
                "checkpoint to an experiment=motion_emotion / demo_motion_emotion (or motion_diffusion) run's"
            )
        if label is not None and not self.module.has_emotion:
            raise ConfigurationError(
                f"emotion={emotion}: {checkpoint} is a motion DiT without an emotion controller "
                f"({type(self.module).__name__}); use an experiment=motion_emotion / demo_motion_emotion "
                "checkpoint (motion.checkpoint=..., animate.motion.checkpoint=...) or emotion=null"
            )
        self.emotion_name = None if label is None else EMOTIONS[label]
        self.emotion = label
        self.level = 0 if label is None else (1 if label == NEUTRAL else int(level))
        if label is not None:
            levels = int(self.module.controller.num_levels)
            if not 1 <= self.level <= levels:
                raise ConfigurationError(f"motion level {level}: the controller knows levels 1..{levels}")
        self.overrides = {
            key: value
            for key, value in {
                "sampler": sampler,
                "steps": steps,
                "audio_guidance": audio_guidance,
                "emotion_guidance": emotion_guidance,
            }.items()
            if value is not None
        }
        if label is None:  # out(audio, null emotion) is out(audio): the emotion term adds nothing
            self.overrides["emotion_guidance"] = 0.0
        self.seed = int(seed)
        self.device = torch.device(device)
        self.audio_input = str(self.module.net.audio_input)
        self.mfcc_window = int(run_cfg.data.mfcc_window)
        self.mel_window = int(run_cfg.data.mel_window)
        self._cached: tuple[Any, np.ndarray] | None = None

    @property
    def normalizer(self):
        return self.module.normalizer

    def audio_inputs(self, speech: Any, num_frames: int) -> torch.Tensor:
        """What a `view: window` batch holds under `net.audio_input` for the frames 0..num_frames-1 of
        the speech: MFCC windows (1, T, 1, 13, W), mel windows (1, T, 80, W) or the waveform (1, 640 T)."""
        frames = np.arange(num_frames)
        if self.audio_input == "mfcc":
            features = mfcc_windows(speech.mfcc, frames, self.mfcc_window)
        elif self.audio_input == "mel":
            features = audio_lib.mel_windows(speech.mel, frames, self.mel_window)
        else:
            samples = num_frames * audio_lib.SAMPLES_PER_FRAME
            features = np.zeros(samples, np.float32)
            features[: min(samples, len(speech.wave))] = speech.wave[:samples]
        return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))[None].to(self.device)

    def generate(self, speech: Any, identity: np.ndarray, num_frames: int | None = None) -> np.ndarray:
        """Normalised motion (T, 70) for the speech's 25 fps frames (`speech_frames` unless given), for the
        person of `identity` (80,) coefficients."""
        num_frames = num_frames or speech_frames(speech)
        size = (1,)
        emotion = None if self.emotion is None else torch.full(size, self.emotion, dtype=torch.long)
        level = None if self.emotion is None else torch.full(size, self.level, dtype=torch.long)
        identity_tensor = torch.as_tensor(np.asarray(identity, np.float32)).reshape(1, -1).to(self.device)
        motion = self.module.generate(
            self.audio_inputs(speech, num_frames),
            identity_tensor,
            num_frames,
            None if emotion is None else emotion.to(self.device),
            None if level is None else level.to(self.device),
            torch.Generator().manual_seed(self.seed),
            **self.overrides,
        )
        log.info(
            "motion DiT: %d frames, emotion %s (level %d), seed %d, %s",
            num_frames,
            self.emotion_name or "null",
            self.level,
            self.seed,
            self.overrides,
        )
        return motion[0].float().cpu().numpy()

    def expression_of(self, motion: np.ndarray) -> np.ndarray:
        """Normalised motion (T, 70) -> expression coefficients (T, 64) (the training set's statistics)."""
        pose_dims = motion.shape[1] - len(self.normalizer.expression_mean)
        return self.decode(motion, np.zeros(pose_dims), np.ones(pose_dims))[0]

    def decode_pose(self, motion: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """Normalised motion (T, 70) -> pose (T, 6) (angles, translation) around `mean` (6,) with the
        per-identity std `std` (6,)."""
        return self.decode(motion, mean, std)[1]

    def decode(self, motion: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`MotionNormalizer.decode` on arrays: (expression (T, 64), pose (T, 6))."""

        def tensor(values: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(
                np.asarray(values, np.float32), device=self.normalizer.expression_mean.device
            )

        expression, pose = self.normalizer.decode(tensor(motion), (tensor(mean), tensor(std)))
        return expression.float().cpu().numpy(), pose.float().cpu().numpy()

    def expressions(self, track: Any, speech: Any) -> np.ndarray:
        """(T, 64) expressions at a face track's frame times (s): the speech's one generated sequence
        (made on the first call for this speech, with this track's identity; module docstring),
        interpolated between its 25 fps frames as stage 1's are (a 30 fps video gets expressions between
        them)."""
        if self._cached is None or self._cached[0] is not speech:
            identity = np.asarray(track.coeffs, np.float32)[:, COEFF_SLICES["id"]].mean(axis=0)
            self._cached = (speech, self.expression_of(self.generate(speech, identity)))
        expression = self._cached[1]
        ticks = np.arange(len(expression))
        position = np.asarray(track.times, np.float64) * audio_lib.VIDEO_FPS
        return np.stack(
            [np.interp(position, ticks, expression[:, k]) for k in range(expression.shape[1])], axis=1
        ).astype(np.float32)


def build_motion_source(node: Any, device: str = "cpu") -> DiffusionMotion | None:
    """The motion source a `motion` config node names (conf/motion/*.yaml): None for stage 1 (the
    pipeline's own), a `DiffusionMotion` for the diffusion one. An emotion without the diffusion source is
    an error: stage 1 has no emotion control."""
    if node is None:
        return None
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    source = values.get("source", "stage1")
    if source not in SOURCES:
        raise ConfigurationError(f"motion source {source!r} is not one of {SOURCES}")
    if source == "stage1":
        if values.get("emotion") is not None:
            emotion_label(values["emotion"])  # an unknown name is named as such first
            raise ConfigurationError(
                f"emotion={values['emotion']} needs the diffusion motion (motion=diffusion): stage 1 of the "
                "pipeline has no emotion control"
            )
        return None
    return DiffusionMotion(**values, device=device)

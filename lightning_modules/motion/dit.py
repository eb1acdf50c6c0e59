"""Playmate's motion generation (Playmate, seed 003): a diffusion transformer over 3DMM motion, and
its emotion controller.

Motion: per frame the 64 expression and 6 pose values (angle 3, trans 3) of the fitted coefficients
(`face3d.COEFF_DIMS` order), as Playmate decouples them: the expression normalised with the mean and
std of the training set (`MotionNormalizer` buffers, computed from the training shards when a run
starts, stored in every checkpoint); the pose normalised per identity, by the mean and std over the
frames of the sequence itself (a training window; a whole clip at evaluation), so that the model learns
head *motion* rather than where each person holds their head. A generated pose is put back with the
statistics of a reference clip of the same person (`MotionNormalizer.to_coeffs`).

`MotionDiffusionModule` (the DiT pretraining) trains `MotionDiT` (`networks/motion_dit.py`): x_0 noised by the
diffusers DDPM schedule, MSE on the velocity or on the noise (`diffusion.prediction_type`; v by default, see
conf/model/motion_diffusion.yaml: with the noise a clip-level condition is barely learnt), audio and
identity dropped independently (learned null embeddings) with `condition_dropout` probabilities, and a
random clean prefix of up to `motion_prefix.max_frames` frames on a `motion_prefix.probability` share of
the windows (what lets long sequences continue across windows; prefix frames are left out of the loss).
Sampling (`generate`): DDPM or DDIM, `sampling.steps`, windows of `sampling.window_frames` overlapping
by `sampling.overlap_frames` (`lightning_modules/diffusion.py`), classifier-free guidance

    out = out(null) + w_a (out(audio) - out(null)) + w_e (out(audio, emotion) - out(audio))

(`diffusion.combine_guidance`; w_a `sampling.audio_guidance`, w_e `sampling.emotion_guidance`). The
identity is the person, not a guided condition: it is kept in every term (its dropout lets a model
sample without one, `identity=None`).

`EmotionControlModule` (the emotion stage) loads a pretrained DiT checkpoint (`init_checkpoint`), freezes the
DiT (no gradients, eval mode throughout, so its weights stay bit-identical) and trains only the
`EmotionController` (`networks/emotion_control.py`), whose zero-initialised residuals join the DiT's
audio tokens and its adaLN condition. The batch's `emotion` / `emotion_level` (datamodules.emotions: the
label index, or -1 / 0 when unknown) are the condition; unknown labels and a dropped share
(`emotion_dropout`) are the null emotion, which is out(audio) of the guidance above. out(null) is the
frozen DiT without audio.

Validation, per epoch: `val/loss` (the training objective at seeded random timesteps; also `_exp`,
`_pose`; each sample's noise seeded by its clip and window), and on the first window of every clip
(`validation.sample_windows`) a sampled sequence's mouth opening (inner-lip gap of the face model's
projected landmarks, ground-truth pose) against the ground truth's:
`val/mouth_corr` (Pearson over time, mean over sequences) and, with the same noise and no conditions,
`val/mouth_corr_audio_free`, the floor an audio-driven model must beat. The emotion stage adds
`val/loss_null_emotion` (same noise, null emotion): below `val/loss` once the controller uses emotion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import lightning as L
import torch
import torchmetrics
from omegaconf import OmegaConf
from torch import nn

import face3d
from lightning_modules.common.checkpoints import LearnedStateOnly
from lightning_modules.common.optim import optimizer_config
from lightning_modules.diffusion import (
    DEFAULT_PREDICTION_TYPE,
    SampleRandom,
    combine_guidance,
    noise_scheduler,
    padded_length,
    sample_long,
    sample_seed,
    sampling_scheduler,
    training_target,
)
from lightning_modules.motion.normalizer import (
    EXPRESSION_DIM,
    MOTION_DIM,
    POSE_DIM,
    MotionNormalizer,
    fit_to_training_set,
    identity_of,
)
from lightning_modules.networks.motion_dit import MotionCondition

# A random source of the diffusion loss: a CPU generator for the batch, one per sample, or the global RNG.
Random = torch.Generator | SampleRandom | None
# The motion values each loss term averages over.
LOSS_DIMS = {"loss": MOTION_DIM, "loss_exp": EXPRESSION_DIM, "loss_pose": POSE_DIM}

# iBUG 68 inner lips: upper 61-63 over lower 67-65.
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))


@dataclass
class DiffusionOptions:
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = DEFAULT_PREDICTION_TYPE
    clip_sample_range: float | None = 5.0


@dataclass
class SamplingOptions:
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    timestep_spacing: str = "trailing"
    audio_guidance: float = 2.0
    emotion_guidance: float = 0.0
    window_frames: int = 50
    overlap_frames: int = 10


@dataclass
class ConditionDropout:
    audio: float = 0.1
    identity: float = 0.1


@dataclass
class MotionPrefix:
    probability: float = 0.5
    max_frames: int = 10


@dataclass
class ValidationOptions:
    # Windows sampled for val/mouth_corr: `first` (the first window of every clip: a fixed set, the same
    # under any batching or number of ranks) | `none`.
    sample_windows: str = "first"
    # The key of run configs written before `sample_windows`: 0 reads as `none`, otherwise `first`.
    sample_batches: int | None = None
    steps: int = 20
    audio_free_baseline: bool = True
    seed: int = 0


def _options(cls: type, node: Any) -> Any:
    """A config node (DictConfig, dict or None) as the dataclass `cls` (unknown keys are an error)."""
    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; expected {[f.name for f in fields(cls)]}")
    return cls(**values)


def mouth_opening(
    face_model: face3d.MorphableModel, camera: face3d.PerspectiveCamera, coeffs: torch.Tensor
) -> torch.Tensor:
    """(B, T, 257) -> (B, T): the mean gap in pixels between the upper and lower inner lip landmarks."""
    with torch.autocast(device_type=coeffs.device.type, enabled=False):
        landmarks = face_model.landmarks_2d(coeffs.float().flatten(0, 1), camera).unflatten(
            0, coeffs.shape[:2]
        )
    upper = landmarks[:, :, [u for u, _ in INNER_LIP_PAIRS]]
    lower = landmarks[:, :, [lo for _, lo in INNER_LIP_PAIRS]]
    return (upper - lower).norm(dim=-1).mean(-1)


def temporal_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation over time of (B, T) signals -> (B,); NaN where either is constant."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    denominator = a.norm(dim=-1) * b.norm(dim=-1)
    corr = (a * b).sum(-1) / denominator.clamp(min=eps)
    return torch.where(denominator > eps, corr, torch.full_like(corr, float("nan")))


class MotionDiffusionModule(LearnedStateOnly, L.LightningModule):
    """The DiT pretraining: trains a `MotionDiT` on `view: window` batches (module docstring)."""

    # The face model (mouth metric) and a frozen wav2vec2 are configuration, not learned state.
    frozen_prefixes = ("face_model.", "net.audio_encoder.wav2vec2.")
    has_emotion = False
    # What evaluation logs: the loss terms (`diffusion_errors`) and the mouth correlation of sampled windows.
    loss_names: tuple[str, ...] = tuple(LOSS_DIMS)
    sampled_names = ("mouth_corr", "mouth_corr_audio_free")

    def __init__(
        self,
        net: nn.Module,
        face_model: face3d.MorphableModel,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        diffusion: dict[str, Any] | None = None,
        sampling: dict[str, Any] | None = None,
        condition_dropout: dict[str, float] | None = None,
        motion_prefix: dict[str, Any] | None = None,
        normalization: dict[str, float] | None = None,
        validation: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.face_model = face_model.requires_grad_(False)
        self.camera: face3d.PerspectiveCamera = face_model.camera
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.diffusion = _options(DiffusionOptions, diffusion)
        self.sampling = _options(SamplingOptions, sampling)
        self.condition_dropout = _options(ConditionDropout, condition_dropout)
        self.motion_prefix = _options(MotionPrefix, motion_prefix)
        self.validation = _options(ValidationOptions, validation)
        if self.validation.sample_batches is not None:
            self.validation.sample_windows = "none" if self.validation.sample_batches == 0 else "first"
        if self.validation.sample_windows not in ("first", "none"):
            raise ValueError(
                f"validation.sample_windows: first | none, got {self.validation.sample_windows!r}"
            )
        # Sums and counts over every evaluated sample, reduced over ranks: exact under any DDP world size.
        self.evaluation_metrics = nn.ModuleDict(
            {
                f"{split}_{name}": torchmetrics.MeanMetric()
                for split in ("val", "test")
                for name in (*self.loss_names, *self.sampled_names)
            }
        )
        self.normalizer = MotionNormalizer(**dict(normalization or {}))
        self.noise_scheduler = noise_scheduler(**asdict(self.diffusion))
        if not self.has_emotion and self.sampling.emotion_guidance != 0:
            raise ValueError(
                "sampling.emotion_guidance must be 0 for the motion DiT alone (it has no emotion condition; "
                "the emotion stage, experiment=motion_emotion, adds one)"
            )
        if self.sampling.overlap_frames > self.motion_prefix.max_frames:
            raise ValueError(
                f"sampling.overlap_frames ({self.sampling.overlap_frames}) is longer than the prefixes the "
                f"DiT is trained with (motion_prefix.max_frames = {self.motion_prefix.max_frames})"
            )

    # --- set-up --------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """The expression statistics of the training set, at the start of a fresh training run (a resumed
        run or a loaded checkpoint overwrites them with its own)."""
        if stage == "fit" and not self.normalizer.fitted:
            fit_to_training_set(self.normalizer, self.trainer)

    def train(self, mode: bool = True) -> MotionDiffusionModule:
        super().train(mode)
        self.face_model.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    # --- the model's output and its guidance ---------------------------------------------------------

    def model_output(
        self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: MotionCondition
    ) -> torch.Tensor:
        """The network's prediction (noise or velocity). `condition.audio` None: the unconditional model.
        Emotion is ignored here (the emotion stage overrides this)."""
        return self.net(x_t, timesteps, condition)

    def guided_output(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        condition: MotionCondition,
        audio_weight: float = 1.0,
        emotion_weight: float = 0.0,
    ) -> torch.Tensor:
        """`diffusion.combine_guidance` of out(null) (`condition` without audio, null emotion), out(audio)
        (null emotion) and out(audio, emotion). The unconditional term runs on its own; the conditioned
        ones, when their weight needs them, in one batch."""
        unconditional = self.model_output(
            x_t, timesteps, condition.replace(audio=None, drop_audio=None, emotion=None, level=None)
        )
        if audio_weight == 0 and emotion_weight == 0:
            return unconditional
        batch = x_t.shape[0]
        copies = 2 if emotion_weight != 0 else 1
        emotion, level = condition.emotion, condition.level
        none = torch.full((batch,), -1, dtype=torch.long, device=x_t.device)
        emotions = [none] + ([emotion if emotion is not None else none] if copies == 2 else [])
        levels = [torch.zeros_like(none)] + (
            [level if level is not None else torch.zeros_like(none)] * (copies - 1)
        )
        conditioned = condition.repeated(copies).replace(emotion=torch.cat(emotions), level=torch.cat(levels))
        outputs = self.model_output(torch.cat([x_t] * copies), timesteps, conditioned).chunk(copies)
        return combine_guidance(
            unconditional,
            outputs[0],
            outputs[1] if copies == 2 else None,
            audio_weight,
            emotion_weight,
        )

    # --- the diffusion loss --------------------------------------------------------------------------

    def emotion_inputs(
        self, batch: dict[str, Any], generator: torch.Generator | None, training: bool
    ) -> dict[str, torch.Tensor | None]:
        """The emotion condition of a batch (none here; the emotion stage reads the labels)."""
        return {}

    @staticmethod
    def _rand(shape: tuple[int, ...], generator: Random, device: torch.device) -> torch.Tensor:
        if isinstance(generator, SampleRandom):
            return generator.rand(*shape[1:]).to(device)
        return (
            torch.rand(shape, generator=generator).to(device)
            if generator
            else torch.rand(shape, device=device)
        )

    def random_prefix(self, batch: int, length: int, generator: Random, device: torch.device):
        """(B, T) bool: a clean prefix of 1..max_frames frames on a `probability` share of the windows."""
        mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
        options = self.motion_prefix
        if options.probability <= 0 or options.max_frames <= 0 or length < 2:
            return mask
        chosen = self._rand((batch,), generator, device) < options.probability
        frames = (self._rand((batch,), generator, device) * min(options.max_frames, length - 1)).long() + 1
        mask = torch.arange(length, device=device)[None] < frames[:, None]
        return mask & chosen[:, None]

    def diffusion_loss(
        self, batch: dict[str, Any], generator: Random = None, training: bool = True
    ) -> dict[str, torch.Tensor]:
        """The training objective on one batch: `diffusion_errors` averaged over all its noised frames."""
        sums, frames = self.diffusion_errors(batch, generator, training)
        total = frames.sum().clamp(min=1)
        return {name: value.sum() / (total * LOSS_DIMS[name]) for name, value in sums.items()}

    def diffusion_errors(
        self, batch: dict[str, Any], generator: Random = None, training: bool = True
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per sample, the squared error of the training objective summed over its noised (non-prefix)
        frames and the motion values of each term (`LOSS_DIMS`), (B,) each, and its count of those frames
        (B,). `generator` draws every random number: a CPU generator for the batch, a `SampleRandom`
        (evaluation: each sample's draws are its own), or None (training)."""
        coeffs = batch["coeffs"]
        device = coeffs.device
        motion = self.normalizer.encode(coeffs)
        size, length, _ = motion.shape
        audio = self.net.encode_audio(batch[self.net.audio_input], length)
        identity = identity_of(coeffs.float())
        if generator is None:
            noise = torch.randn_like(motion)
            timesteps = torch.randint(0, self.diffusion.num_train_timesteps, (size,), device=device)
        elif isinstance(generator, SampleRandom):
            noise = generator.randn(*motion.shape[1:]).to(motion)
            timesteps = generator.randint(self.diffusion.num_train_timesteps).to(device)
        else:
            noise = torch.randn(motion.shape, generator=generator).to(motion)
            timesteps = torch.randint(0, self.diffusion.num_train_timesteps, (size,), generator=generator).to(
                device
            )
        x_t = self.noise_scheduler.add_noise(motion, noise, timesteps)
        dropout = self.condition_dropout if training else ConditionDropout(0.0, 0.0)
        drop_audio = self._rand((size,), generator, device) < dropout.audio
        drop_identity = self._rand((size,), generator, device) < dropout.identity
        prefix_mask = self.random_prefix(size, length, generator, device)
        condition = MotionCondition(
            audio=audio,
            identity=identity,
            drop_audio=drop_audio,
            drop_identity=drop_identity,
            prefix=motion,
            prefix_mask=prefix_mask,
            **self.emotion_inputs(batch, generator, training),
        )
        output = self.model_output(x_t, timesteps, condition)
        error = (output.float() - training_target(self.noise_scheduler, motion, noise, timesteps)).square()
        error = error * (~prefix_mask)[..., None].to(error)
        sums = {
            "loss": error.sum(dim=(1, 2)),
            "loss_exp": error[..., :EXPRESSION_DIM].sum(dim=(1, 2)),
            "loss_pose": error[..., EXPRESSION_DIM:].sum(dim=(1, 2)),
        }
        return sums, (~prefix_mask).sum(dim=1).to(error)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.diffusion_loss(batch)
        size = batch["coeffs"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=size)
        return losses["loss"]

    # --- sampling ------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        audio_inputs: torch.Tensor,
        identity: torch.Tensor | None,
        num_frames: int,
        emotion: torch.Tensor | None = None,
        level: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **overrides: Any,
    ) -> torch.Tensor:
        """Normalised motion (B, num_frames, 70) for the audio (the batch's `net.audio_input` entry, over
        num_frames frames) and identity (B, 80), in windows. `overrides`: any `SamplingOptions` field
        (sampler, steps, eta, audio_guidance, emotion_guidance, window_frames, overlap_frames)."""
        options = _options(SamplingOptions, {**asdict(self.sampling), **overrides})
        features = self.net.encode_audio(audio_inputs, num_frames)
        window, overlap = options.window_frames, options.overlap_frames
        total = padded_length(num_frames, window, overlap)
        if total > num_frames:  # past the end the conditioning repeats the last frame, as the loader does
            features = torch.cat([features, features[:, -1:].expand(-1, total - num_frames, -1)], dim=1)
        scheduler = sampling_scheduler(
            self.noise_scheduler, options.sampler, options.steps, options.timestep_spacing
        )

        condition = MotionCondition(identity=identity, emotion=emotion, level=level)

        def denoise_window(x, t, prefix, mask, start):
            window_condition = condition.replace(
                audio=features[:, start : start + window], prefix=prefix, prefix_mask=mask
            )
            return self.guided_output(
                x, t, window_condition, options.audio_guidance, options.emotion_guidance
            )

        return sample_long(
            denoise_window,
            scheduler,
            features.shape[0],
            num_frames,
            MOTION_DIM,
            window,
            overlap,
            generator,
            options.eta,
            features.device,
            features.dtype,
        )

    def generate_coeffs(
        self, batch: dict[str, Any], generator: torch.Generator | None = None, **overrides: Any
    ) -> torch.Tensor:
        """Coefficients (B, T, 257) generated for a `view: window` batch: its audio, its clip's identity
        (and emotion, in the emotion stage); identity, texture, light and the pose statistics of its own
        coefficients."""
        coeffs = batch["coeffs"]
        emotion = self.emotion_inputs(batch, None, training=False)
        motion = self.generate(
            batch[self.net.audio_input],
            identity_of(coeffs.float()),
            coeffs.shape[1],
            emotion.get("emotion"),
            emotion.get("level"),
            generator,
            **overrides,
        )
        return self.normalizer.to_coeffs(motion, coeffs)

    # --- validation, test, prediction ----------------------------------------------------------------

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, batch_idx, "test")

    def evaluate(self, batch: dict[str, Any], batch_idx: int, split: str) -> None:
        """The loss terms of every window and the mouth correlation of the sampled ones, into metrics that
        sum over samples and ranks; each sample's random draws are seeded by the sample itself."""
        options = self.validation
        seeds = [
            sample_seed(options.seed, clip, start) for clip, start in zip(batch["clip_id"], batch["start"])
        ]
        sums, frames = self.diffusion_errors(batch, SampleRandom(seeds), training=False)
        self.update_losses(split, sums, frames)
        self.extra_losses(batch, seeds, split)
        names = list(self.loss_names)
        if options.sample_windows == "first":
            for index, start in enumerate(batch["start"]):
                if int(start) == 0:
                    self.sample_mouth(batch, index, seeds[index], split)
            names += [
                n for n in self.sampled_names if n != "mouth_corr_audio_free" or options.audio_free_baseline
            ]
        for name in names:
            self.log(f"{split}/{name}", self.evaluation_metrics[f"{split}_{name}"], prog_bar=name == "loss")

    def update_losses(
        self, split: str, sums: dict[str, torch.Tensor], frames: torch.Tensor, suffix: str = ""
    ) -> None:
        """Each term's per-sample error sums into its metric, weighted by the values they sum over."""
        for name, value in sums.items():
            count = frames * LOSS_DIMS[name]
            self.evaluation_metrics[f"{split}_{name}{suffix}"].update(value / count.clamp(min=1), count)

    def sample_mouth(self, batch: dict[str, Any], index: int, seed: int, split: str) -> None:
        """One window sampled on its own (its own seed), its mouth opening correlated with the truth's."""
        options = self.validation
        window = {
            key: value[index : index + 1] if isinstance(value, (torch.Tensor, list)) else value
            for key, value in batch.items()
        }
        truth = mouth_opening(self.face_model, self.camera, window["coeffs"])
        runs = {"mouth_corr": {}}
        if options.audio_free_baseline:
            runs["mouth_corr_audio_free"] = {"audio_guidance": 0.0, "emotion_guidance": 0.0}
        for name, overrides in runs.items():
            generated = self.generate_coeffs(
                window, torch.Generator().manual_seed(seed), steps=options.steps, **overrides
            )
            # The generated expression on the ground-truth pose: the mouth metric sees expression only.
            expression = face3d.expression_of(generated)
            opening = mouth_opening(
                self.face_model, self.camera, face3d.with_expression(window["coeffs"], expression)
            )
            corr = temporal_correlation(opening, truth)
            valid = ~torch.isnan(corr)
            if valid.any():  # a still mouth has no correlation: it counts nowhere
                self.evaluation_metrics[f"{split}_{name}"].update(corr[valid])

    def extra_losses(self, batch: dict[str, Any], seeds: list[int], split: str) -> None:
        """Further evaluation terms of a subclass (the emotion stage's null-emotion loss)."""

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Whole clips (`task=predict`): generated `expression` (B, T, 64) and `coeffs` (with the generated
        expression and pose), the clip's own coefficients (`coeffs_true`), audio and albedo."""
        coeffs = self.generate_coeffs(batch, torch.Generator().manual_seed(self.validation.seed + batch_idx))
        return {
            "clip_id": batch["clip_id"],
            "start": batch["start"],
            "expression": face3d.expression_of(coeffs),
            "coeffs": coeffs,
            "coeffs_true": batch["coeffs"],
            "audio": batch["audio"],
            "albedo": batch["albedo"],
        }

    # --- optimisation --------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.trainable_parameters())
        return optimizer_config(optimizer, self.scheduler_factory, self.scheduler_interval)

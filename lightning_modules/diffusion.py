"""Diffusion over motion sequences with diffusers' schedulers: the training noise schedule, the
DDPM / DDIM samplers, two-condition classifier-free guidance, and long sequences in overlapping windows.

Plain functions over tensors and a denoiser callable: nothing here knows Lightning or the network
(`lightning_modules/motion/dit.py` wires them).

- Training (Ho et al. 2020): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps from `DDPMScheduler.add_noise`;
  the network regresses eps (`epsilon`) or the velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
  (`v_prediction`, Salimans & Ho 2022, `DDPMScheduler.get_velocity`).
- Every sampling step clips its x_0 estimate to +-`clip_sample_range` (diffusers' `clip_sample`): normalised
  motion lies within a few units, and at the noisiest steps of the cosine schedule (abar_999 = 2e-9) a
  noise prediction's x_0 divides its error by sqrt(abar), 5e-5: unclipped, a trained but imperfect network's
  samples reach 1e4 there and never come back.
- Sampling: `DDPMScheduler` (ancestral) or `DDIMScheduler` (Song et al. 2021; `eta` 0 is
  deterministic) built from the training schedule's config, with `timestep_spacing="trailing"` by
  default (Lin et al. 2024: few-step samplers should start at the last training timestep).
- Long sequences: windows of `window` frames, each starting `window - overlap` frames after the previous
  one; the first `overlap` frames of every window after the first are the previous window's result,
  given to the denoiser as a clean prefix (the network is trained with such prefixes) and written into
  x_t at every step, noised to its level (RePaint-style replacement, Lugmayr et al. 2022), then set
  exactly at the end: the windows agree on the overlap and the sequence continues without a jump. The
  conditioning past the sequence's end is the caller's to pad (the data pipeline repeats the edge step).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler

PREDICTION_TYPES = ("epsilon", "v_prediction")
# The one default (the DiT's `diffusion.prediction_type` and conf/model/motion_diffusion.yaml follow it):
# v-prediction keeps the target's scale the same at every noise level (Salimans & Ho 2022).
DEFAULT_PREDICTION_TYPE = "v_prediction"


def sample_seed(seed: int, clip_id: str, start: int) -> int:
    """A seed of one evaluation sample: its clip and window start, and the evaluation's seed."""
    digest = hashlib.sha1(f"{seed}:{clip_id}:{int(start)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class SampleRandom:
    """Random numbers drawn sample by sample, each from its own generator (`sample_seed`): what a sample
    draws does not depend on the batch it is in, the rank that scores it or the number of ranks, so an
    evaluation's value is the same under any batching and any DDP world size. Shapes exclude the batch."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.stack([torch.rand(shape, generator=g) for g in self.generators])

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g) for g in self.generators])

    def randint(self, high: int) -> torch.Tensor:
        return torch.stack([torch.randint(0, high, (), generator=g) for g in self.generators])


SAMPLERS = ("ddpm", "ddim")

# (x_t (B, W, D), timestep (scalar tensor), prefix (B, W, D), prefix_mask (B, W) bool) -> model output.
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def noise_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "squaredcos_cap_v2",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    prediction_type: str = DEFAULT_PREDICTION_TYPE,
    clip_sample_range: float | None = 5.0,
) -> DDPMScheduler:
    """The training noise schedule (beta_start / beta_end are used by the `linear` schedules only);
    `clip_sample_range` None: x_0 estimates unclipped."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        prediction_type=prediction_type,
        clip_sample=clip_sample_range is not None,
        clip_sample_range=float(clip_sample_range or 1.0),
    )


def sampling_scheduler(
    train_scheduler: DDPMScheduler, sampler: str = "ddim", steps: int = 50, timestep_spacing: str = "trailing"
) -> DDPMScheduler | DDIMScheduler:
    """A sampler over the training schedule with `steps` denoising steps set."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    scheduler = cls.from_config(train_scheduler.config, timestep_spacing=timestep_spacing)
    scheduler.set_timesteps(int(steps))
    return scheduler


def training_target(
    scheduler: DDPMScheduler, motion: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the network regresses: the noise, or the velocity."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
    return scheduler.get_velocity(motion, noise, timesteps)


def combine_guidance(
    unconditional: torch.Tensor,
    audio: torch.Tensor | None = None,
    audio_emotion: torch.Tensor | None = None,
    audio_weight: float = 1.0,
    emotion_weight: float = 0.0,
) -> torch.Tensor:
    """Two-condition classifier-free guidance, nested as in InstructPix2Pix (Brooks et al. 2023):

        out = out(null) + w_a (out(audio) - out(null)) + w_e (out(audio, emotion) - out(audio))

    i.e. a score of p(x) p(audio | x)^w_a p(emotion | x, audio)^w_e. Nested rather than two independent
    terms because emotion is only defined together with the audio (the controller reads the audio):
    w_e scales what the emotion adds *given* the audio, w_a what the audio adds. w_a = w_e = 1 is the
    fully conditioned model, w_a = w_e = 0 the unconditional one. Outputs (noise or velocity) enter
    linearly. A term whose weight is 0 is not added (its output may be None)."""
    out = unconditional
    if audio_weight != 0:
        out = out + audio_weight * (audio - unconditional)
    if emotion_weight != 0:
        out = out + emotion_weight * (audio_emotion - audio)
    return out


def _step_kwargs(scheduler: DDPMScheduler | DDIMScheduler, eta: float) -> dict:
    return {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}


@torch.no_grad()
def sample(
    denoise: Denoiser,
    scheduler: DDPMScheduler | DDIMScheduler,
    shape: tuple[int, int, int],
    generator: torch.Generator | None = None,
    prefix: torch.Tensor | None = None,
    prefix_mask: torch.Tensor | None = None,
    eta: float = 0.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One window (B, W, D) from noise, through the scheduler's timesteps (set beforehand). Frames where
    `prefix_mask` is true are the clean `prefix`: noised to each step's level in x_t, and exact at the end.
    `generator` (a CPU generator) draws every random number, so a seed gives the same sample anywhere."""
    batch, length, dim = shape
    if prefix is None or prefix_mask is None:
        prefix = torch.zeros(shape, device=device, dtype=dtype)
        prefix_mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
    keep = prefix_mask[..., None]
    x = torch.randn(shape, generator=generator).to(device, dtype) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        if prefix_mask.any():
            noise = torch.randn(shape, generator=generator).to(device, dtype)
            noised = scheduler.add_noise(prefix, noise, t.reshape(1).expand(batch).to(device))
            x = torch.where(keep, noised, x)
        output = denoise(x, t.to(device), prefix, prefix_mask)
        x = scheduler.step(output, t, x, generator=generator, **_step_kwargs(scheduler, eta)).prev_sample
    return torch.where(keep, prefix, x)


def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """Starts of the windows covering `num_frames` frames, `window - overlap` apart (the last one may
    reach past the end: `padded_length`)."""
    if window <= overlap or overlap < 0:
        raise ValueError(f"need 0 <= overlap < window, got window {window}, overlap {overlap}")
    starts = [0]
    while starts[-1] + window < num_frames:
        starts.append(starts[-1] + window - overlap)
    return starts


def padded_length(num_frames: int, window: int, overlap: int) -> int:
    """Frames the windows span: the conditioning must cover this many (num_frames or more)."""
    return window_starts(num_frames, window, overlap)[-1] + window


@torch.no_grad()
def sample_long(
    denoise_window: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor],
    scheduler: DDPMScheduler | DDIMScheduler,
    batch: int,
    num_frames: int,
    dim: int,
    window: int,
    overlap: int,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(B, num_frames, D) in windows (module docstring). `denoise_window(x_t, t, prefix, mask, start)`
    denoises the window starting at frame `start` (the caller slices its conditioning there)."""
    starts = window_starts(num_frames, window, overlap)
    out = torch.zeros(batch, starts[-1] + window, dim, device=device, dtype=dtype)
    for index, start in enumerate(starts):
        prefix = torch.zeros(batch, window, dim, device=device, dtype=dtype)
        mask = torch.zeros(batch, window, dtype=torch.bool, device=device)
        if index > 0:
            prefix[:, :overlap] = out[:, start : start + overlap]
            mask[:, :overlap] = True

        def denoise(x: torch.Tensor, t: torch.Tensor, p: torch.Tensor, m: torch.Tensor, s: int = start):
            return denoise_window(x, t, p, m, s)

        out[:, start : start + window] = sample(
            denoise, scheduler, (batch, window, dim), generator, prefix, mask, eta, device, dtype
        )
    return out[:, :num_frames]

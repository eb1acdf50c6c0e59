"""Playmate's motion DiT and emotion controller (lightning_modules/motion/dit.py, diffusion.py,
networks/motion_dit.py, networks/emotion_control.py): shapes, the noise schedule, classifier-free
guidance, windowed long sequences, the wav2vec2 option, and the two stages through `run_task`."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import face3d
from lightning_modules.diffusion import (
    combine_guidance,
    noise_scheduler,
    padded_length,
    sample,
    sample_long,
    sampling_scheduler,
    training_target,
    window_starts,
)
from lightning_modules.motion.dit import MotionDiffusionModule, mouth_opening, temporal_correlation
from lightning_modules.motion.emotion import EmotionControlModule
from lightning_modules.motion.normalizer import MOTION_DIM, MotionNormalizer, expression_moments, pose_of
from lightning_modules.networks.emotion_control import EmotionController
from lightning_modules.networks.motion_dit import MotionCondition, MotionDiT
from tests.helpers import SHORT, TINY_MOTION

TINY_DIT = dict(
    model_dim=32, depth=2, heads=2, audio_feature_dim=16, audio_channels=(4, 8), audio_hidden_dim=16
)
TINY_SAMPLING = dict(window_frames=12, overlap_frames=4, steps=4)
QUIET = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null", "logger=csv"]


@pytest.fixture(scope="module")
def face_model() -> face3d.MorphableModel:
    return face3d.build_face_model("procedural")


def window_batch(batch: int, length: int, seed: int = 0, emotion: list[int] | None = None) -> dict:
    """A `view: window` batch of random content with the documented shapes."""
    gen = torch.Generator().manual_seed(seed)
    coeffs = torch.randn(batch, length, 257, generator=gen) * 0.3
    coeffs[:, :, :80] = coeffs[:, :1, :80]  # one identity per clip
    coeffs[..., 224:227] *= 0.1
    coeffs[..., 254:257] *= 0.05
    out = {
        "mfcc": torch.randn(batch, length, 1, 13, 28, generator=gen),
        "mel": torch.rand(batch, length, 80, 16, generator=gen) * 8 - 4,
        "coeffs": coeffs,
        "audio": torch.rand(batch, 640 * length, generator=gen) * 0.2 - 0.1,
        "albedo": torch.zeros(batch, 0, 3),
        "clip_id": [f"clip{i}" for i in range(batch)],
        "start": torch.zeros(batch, dtype=torch.long),
    }
    if emotion is not None:
        out["emotion"] = torch.tensor(emotion)
        out["emotion_level"] = torch.where(out["emotion"] >= 0, 2, 0)
    return out


def randomise_zero_layers(module: nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised layers (adaLN-Zero gates, output, the controller's fusion) random
    weights, so that every input reaches the output of an untrained network."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.abs().sum() == 0:
                parameter.copy_(torch.randn(parameter.shape, generator=gen) * 0.1)


def tiny_module(face_model, emotion: bool = False, **kwargs) -> MotionDiffusionModule:
    torch.manual_seed(0)
    common = dict(
        net=MotionDiT(**TINY_DIT, **kwargs),
        face_model=face_model,
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        sampling={**TINY_SAMPLING, "emotion_guidance": 1.0 if emotion else 0.0},
        motion_prefix={"max_frames": 4},
    )
    if emotion:
        return EmotionControlModule(
            controller=EmotionController(model_dim=32, hidden_dim=16, depth=1, heads=2), **common
        )
    return MotionDiffusionModule(**common)


# --- the networks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("audio_encoder", ["mfcc", "mel"])
def test_dit_shapes_and_every_parameter_reached(audio_encoder: str) -> None:
    torch.manual_seed(0)
    net = MotionDiT(**TINY_DIT, audio_encoder=audio_encoder)
    randomise_zero_layers(net)
    batch = window_batch(4, 10)
    audio = net.encode_audio(batch[net.audio_input], 10)
    assert audio.shape == (4, 10, 16)
    prefix_mask = torch.arange(10)[None] < torch.tensor([0, 3, 0, 5])[:, None]
    out = net(
        torch.randn(4, 10, MOTION_DIM),
        torch.tensor([0, 10, 500, 999]),
        MotionCondition(
            audio,
            torch.randn(4, 80),
            drop_audio=torch.tensor([True, False, False, True]),
            drop_identity=torch.tensor([False, True, False, False]),
            prefix=torch.randn(4, 10, MOTION_DIM),
            prefix_mask=prefix_mask,
        ),
        audio_residual=torch.randn(4, 10, 32),
    )
    assert out.shape == (4, 10, MOTION_DIM)
    out.square().mean().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_zero_initialisation_dit_outputs_zero_and_controller_adds_nothing(face_model) -> None:
    """adaLN-Zero: the untrained DiT predicts exactly 0; the controller's residual starts at exactly 0,
    so the emotion stage starts from the stage-1 model's output, whatever the emotion."""
    torch.manual_seed(0)
    net = MotionDiT(**TINY_DIT)
    batch = window_batch(2, 8)
    out = net(
        torch.randn(2, 8, MOTION_DIM),
        torch.tensor([5, 700]),
        MotionCondition(net.encode_audio(batch["mfcc"], 8), None),
    )
    assert torch.equal(out, torch.zeros_like(out))
    controller = EmotionController(model_dim=32, hidden_dim=16, depth=1, heads=2)
    residual, condition = controller(torch.randn(2, 8, 32), torch.tensor([3, -1]), torch.tensor([2, 0]))
    assert residual.shape == (2, 8, 32) and torch.equal(residual, torch.zeros_like(residual))
    assert condition.shape == (2, 32) and torch.equal(condition, torch.zeros_like(condition))
    module = tiny_module(face_model, emotion=True)
    randomise_zero_layers(module.net)
    args = (torch.randn(2, 8, MOTION_DIM), torch.tensor([5, 700]))
    dit_condition = MotionCondition(module.net.encode_audio(batch["mfcc"], 8), torch.randn(2, 80))
    torch.testing.assert_close(
        module.model_output(
            *args, dit_condition.replace(emotion=torch.tensor([5, 1]), level=torch.tensor([3, 1]))
        ),
        module.net(*args, dit_condition),
        rtol=0,
        atol=0,
    )


def test_emotion_embedding_null_for_unknown_and_levels_differ() -> None:
    controller = EmotionController(model_dim=8, hidden_dim=8, depth=1, heads=2)
    null = controller.embed(torch.tensor([-1]), torch.tensor([0]), 1)
    torch.testing.assert_close(controller.embed(None, None, 1), null)
    torch.testing.assert_close(controller.embed(torch.tensor([-1]), torch.tensor([3]), 1), null)
    assert not torch.allclose(controller.embed(torch.tensor([2]), torch.tensor([1]), 1), null)
    assert not torch.allclose(
        controller.embed(torch.tensor([2]), torch.tensor([1]), 1),
        controller.embed(torch.tensor([2]), torch.tensor([3]), 1),
    )
    with pytest.raises(ValueError, match="emotion labels"):
        controller.embed(torch.tensor([8]), None, 1)


# --- the representation ---------------------------------------------------------------------------------


def test_normalizer_statistics_and_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    clips = [np.asarray(torch.randn(n, 257, generator=gen) * 0.5 + 0.2) for n in (7, 11)]
    normalizer = MotionNormalizer()
    assert not normalizer.fitted
    normalizer.fit(*expression_moments(clips))
    expressions = np.concatenate([c[:, 80:144] for c in clips])
    np.testing.assert_allclose(normalizer.expression_mean.numpy(), expressions.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normalizer.expression_std.numpy(), expressions.std(0), rtol=1e-4)
    assert int(normalizer.expression_count) == 18
    state = normalizer.state_dict()  # stored with the checkpoint
    assert {"expression_mean", "expression_std", "expression_count"} <= set(state)

    coeffs = window_batch(3, 9)["coeffs"]
    motion = normalizer.encode(coeffs)
    assert motion.shape == (3, 9, MOTION_DIM)
    pose = motion[..., 64:]  # per sequence: zero mean, unit std over its frames
    torch.testing.assert_close(pose.mean(1), torch.zeros(3, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(pose.std(1, unbiased=False), torch.ones(3, 6), atol=1e-4, rtol=0)
    back = normalizer.to_coeffs(motion, coeffs)
    torch.testing.assert_close(face3d.expression_of(back), face3d.expression_of(coeffs), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pose_of(back), pose_of(coeffs), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back[..., :80], coeffs[..., :80])


def test_mouth_opening_follows_the_jaw_and_correlation(face_model) -> None:
    """The inner-lip gap grows with the procedural model's jaw_open component; a signal correlates 1 with
    itself, -1 with its negative, and a constant one is NaN (skipped by validation)."""
    from face3d.procedural import EXPRESSION_NAMES

    coeffs = torch.zeros(1, 5, 257)
    coeffs[..., 254:257] = torch.tensor([0.0, 0.0, -2.0])
    jaw = 80 + list(EXPRESSION_NAMES).index("jaw_open")
    coeffs[0, :, jaw] = torch.linspace(0, 1.5, 5)
    opening = mouth_opening(face_model, face_model.camera, coeffs)
    assert opening.shape == (1, 5) and (opening.diff(dim=1) > 0).all(), opening
    signal = torch.randn(2, 20)
    torch.testing.assert_close(temporal_correlation(signal, signal), torch.ones(2))
    torch.testing.assert_close(temporal_correlation(signal, -signal), -torch.ones(2))
    assert torch.isnan(temporal_correlation(signal, torch.ones(2, 20))).all()


# --- the noise schedule and sampling --------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_noise_schedule_round_trip(prediction_type: str, sampler: str) -> None:
    """x_t from x_0 and the true noise, then the sampler's own x_0 estimate from the true target, gives
    x_0 back."""
    train = noise_scheduler(prediction_type=prediction_type, clip_sample_range=None)
    scheduler = sampling_scheduler(train, sampler, steps=20)
    gen = torch.Generator().manual_seed(0)
    # In float64; the schedule itself is float32 (diffusers), and x_0 from the noise divides by sqrt(abar)
    # (5e-5 at t = 999): the tolerance grows with 1 / sqrt(abar), the ill-conditioning v-prediction avoids.
    x0 = torch.randn(2, 12, MOTION_DIM, generator=gen, dtype=torch.float64)
    # The timesteps the sampler visits (20 of them, 999 down to 49), the noisiest ones included.
    for t in scheduler.timesteps.tolist():
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        timesteps = torch.full((2,), t)
        x_t = train.add_noise(x0, noise, timesteps)
        target = training_target(train, x0, noise, timesteps)
        recovered = scheduler.step(target, t, x_t, generator=gen).pred_original_sample
        tolerance = 1e-6 + 1e-8 / float(train.alphas_cumprod[t]) ** 0.5
        torch.testing.assert_close(recovered, x0, atol=tolerance, rtol=0, msg=f"t={t}")
    if prediction_type == "epsilon":
        assert torch.equal(training_target(train, x0, noise, timesteps), noise)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_an_imperfect_denoiser_does_not_blow_the_samples_up(sampler: str) -> None:
    """The exact Gaussian-process denoiser with a 5% error on its noise prediction (as a trained network
    has): at t = 999 the x_0 estimate divides that error by sqrt(abar) = 5e-5. Unclipped the samples end
    tens of units out (DDPM) or hundreds (DDIM); with the configured clipping of x_0 they stay those of the
    data (std ~1)."""
    results = {}
    for clip in (None, 5.0):
        train = noise_scheduler(prediction_type="epsilon", clip_sample_range=clip)
        exact = gp_denoiser(train, 4.0, use_prefix=False)
        gen = torch.Generator().manual_seed(0)
        error = torch.randn(16, 24, 4, generator=gen)

        def denoise(x, t, prefix, mask, exact=exact, error=error):
            return exact(x, t, prefix, mask) + 0.05 * error

        scheduler = sampling_scheduler(train, sampler, steps=20)
        results[clip] = sample(denoise, scheduler, (16, 24, 4), gen)
    assert results[None].abs().max() > 20, results[None].abs().max()
    assert results[5.0].std() < 1.5 and results[5.0].abs().max() < 6.0, results[5.0].abs().max()


def test_guidance_with_zero_weights_is_the_unconditional_model(face_model) -> None:
    """w_a = w_e = 0: exactly the unconditional output, and a sample that ignores the audio; w_a = 1: the
    audio-conditioned output; w_a = w_e = 1: the fully conditioned one (emotion stage)."""
    module = tiny_module(face_model).eval()
    randomise_zero_layers(module.net)
    batch = window_batch(2, 12)
    audio = module.net.encode_audio(batch["mfcc"], 12)
    identity = torch.randn(2, 80)
    x_t, t = torch.randn(2, 12, MOTION_DIM), torch.tensor(400)
    unconditional = module.model_output(x_t, t, MotionCondition(None, identity))
    conditional = module.model_output(x_t, t, MotionCondition(audio, identity))
    assert not torch.allclose(unconditional, conditional, atol=1e-4), "the audio must matter"
    guided = module.guided_output(
        x_t, t, MotionCondition(audio, identity), audio_weight=0.0, emotion_weight=0.0
    )
    assert torch.equal(guided, unconditional)
    torch.testing.assert_close(
        module.guided_output(x_t, t, MotionCondition(audio, identity), audio_weight=1.0), conditional
    )
    torch.testing.assert_close(
        module.guided_output(x_t, t, MotionCondition(audio, identity), audio_weight=3.0),
        unconditional + 3.0 * (conditional - unconditional),
    )
    # w_a = 0 returns early without combining: a vanishing w_a goes through the arithmetic and must land
    # within w_a of the unconditional output.
    weight = 1e-6
    barely = module.guided_output(
        x_t, t, MotionCondition(audio, identity), audio_weight=weight, emotion_weight=0.0
    )
    torch.testing.assert_close(barely, unconditional + weight * (conditional - unconditional))
    rounding = 4 * torch.finfo(torch.float32).eps * unconditional.abs().max()
    tolerance = 2 * weight * (conditional - unconditional).abs().max() + rounding
    assert (barely - unconditional).abs().max() <= tolerance, (barely - unconditional).abs().max()
    assert (conditional - unconditional).abs().max() > 1e3 * tolerance, "the check cannot tell w_a = 1 from 0"
    other = window_batch(2, 30, seed=5)["mfcc"]
    samples = [
        module.generate(mfcc, identity, 30, generator=torch.Generator().manual_seed(3), audio_guidance=0.0)
        for mfcc in (window_batch(2, 30)["mfcc"], other)
    ]
    assert torch.equal(samples[0], samples[1])
    guided_sample = module.generate(other, identity, 30, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(guided_sample, samples[1], atol=1e-4)

    emotional = tiny_module(face_model, emotion=True).eval()
    randomise_zero_layers(emotional)
    audio = emotional.net.encode_audio(batch["mfcc"], 12)
    emotion, level = torch.tensor([5, 1]), torch.tensor([3, 2])
    assert torch.equal(
        emotional.guided_output(
            x_t, t, MotionCondition(audio, identity, emotion=emotion, level=level), 0.0, 0.0
        ),
        emotional.net(x_t, t, MotionCondition(None, identity)),
    )
    full = emotional.model_output(x_t, t, MotionCondition(audio, identity, emotion=emotion, level=level))
    assert not torch.allclose(
        full, emotional.model_output(x_t, t, MotionCondition(audio, identity)), atol=1e-4
    )
    torch.testing.assert_close(
        emotional.guided_output(
            x_t, t, MotionCondition(audio, identity, emotion=emotion, level=level), 1.0, 1.0
        ),
        full,
        atol=1e-5,
        rtol=1e-5,
    )


def test_combine_guidance_follows_its_formula() -> None:
    """out = u + w_a (a - u) + w_e (e - a) (`combine_guidance`'s docstring), on known outputs: u at (0, 0),
    a at (1, 0), e at (1, 1), and the formula at other weights, negative and fractional ones too."""
    u = torch.tensor([[1.0, -2.0, 0.5], [4.0, 0.0, -1.0]])
    a = torch.tensor([[3.0, 2.0, 0.5], [-4.0, 1.0, 2.0]])
    e = torch.tensor([[0.0, 6.0, -1.5], [-2.0, -3.0, 2.0]])
    assert torch.equal(combine_guidance(u, a, e, 0.0, 0.0), u)
    assert torch.equal(combine_guidance(u, None, None, 0.0, 0.0), u)  # a term of weight 0 may be absent
    torch.testing.assert_close(combine_guidance(u, a, e, 1.0, 0.0), a)
    torch.testing.assert_close(combine_guidance(u, a, None, 1.0, 0.0), a)
    torch.testing.assert_close(combine_guidance(u, a, e, 1.0, 1.0), e)
    # By hand: (2, 0.5) -> u + 2 (a - u) + 0.5 (e - a) = 2 a - u + 0.5 (e - a).
    torch.testing.assert_close(
        combine_guidance(u, a, e, 2.0, 0.5),
        torch.tensor([[3.5, 8.0, -0.5], [-11.0, 0.0, 5.0]]),
    )
    for audio_weight, emotion_weight in [(0.0, 1.0), (0.5, 0.0), (3.0, 2.0), (1.0, -1.0), (-0.5, 4.0)]:
        torch.testing.assert_close(
            combine_guidance(u, a, e, audio_weight, emotion_weight),
            u + audio_weight * (a - u) + emotion_weight * (e - a),
            msg=lambda m, w=(audio_weight, emotion_weight): f"weights {w}: {m}",
        )
    gen = torch.Generator().manual_seed(0)
    u, a, e = (torch.randn(2, 12, MOTION_DIM, generator=gen) for _ in range(3))
    for audio_weight, emotion_weight in [(0.0, 0.0), (1.0, 0.0), (2.5, 1.5), (1e-6, 0.0)]:
        torch.testing.assert_close(
            combine_guidance(u, a, e, audio_weight, emotion_weight),
            u + audio_weight * (a - u) + emotion_weight * (e - a),
        )


def test_predict_step_generates_whole_clips(face_model) -> None:
    """`task=predict`'s step: a 30-frame clip generated in three windows, as coefficients that keep the
    clip's identity, texture and light and move the expression and pose; seeded, so repeatable."""
    module = tiny_module(face_model).eval()
    randomise_zero_layers(module.net)
    batch = window_batch(1, 30)
    out = module.predict_step(batch, 0)
    assert out["coeffs"].shape == (1, 30, 257) and out["expression"].shape == (1, 30, 64)
    torch.testing.assert_close(out["coeffs"][..., :80], batch["coeffs"][..., :80])
    torch.testing.assert_close(
        out["coeffs"][..., 144:224], batch["coeffs"][:, :1, 144:224].expand(-1, 30, -1)
    )
    assert not torch.allclose(out["expression"], face3d.expression_of(batch["coeffs"]))
    assert torch.equal(out["coeffs"], module.predict_step(batch, 0)["coeffs"])
    assert out["coeffs_true"] is batch["coeffs"]


def test_the_dit_alone_refuses_emotion_guidance(face_model) -> None:
    with pytest.raises(ValueError, match="emotion_guidance"):
        MotionDiffusionModule(
            net=MotionDiT(**TINY_DIT),
            face_model=face_model,
            optimizer=partial(torch.optim.AdamW),
            sampling={"emotion_guidance": 1.0},
        )


def test_window_plan() -> None:
    assert window_starts(50, 50, 10) == [0]
    assert window_starts(30, 50, 10) == [0]
    assert window_starts(75, 50, 10) == [0, 40]
    assert padded_length(75, 50, 10) == 90
    assert window_starts(60, 24, 6) == [0, 18, 36] and padded_length(60, 24, 6) == 60
    with pytest.raises(ValueError, match="overlap"):
        window_starts(60, 10, 10)


def gp_covariance(length: int, scale: float) -> torch.Tensor:
    i = torch.arange(length, dtype=torch.float64)
    return torch.exp(-((i[:, None] - i[None]) ** 2) / (2 * scale**2)) + 1e-6 * torch.eye(
        length, dtype=torch.float64
    )


def gp_denoiser(train, scale: float, use_prefix: bool):
    """The exact noise prediction for data drawn from a Gaussian process over frames (a squared-exponential
    kernel of `scale` frames, the dims independent): the best any trained network can do. With `use_prefix`
    it conditions on the clean prefix frames as the trained DiT does; without, it sees x_t alone."""

    def denoise(x, t, prefix, mask, start=0):
        alpha = train.alphas_cumprod[int(t)].double()
        s, length = alpha.sqrt(), x.shape[1]
        k = gp_covariance(length, scale)
        known = mask[0] if use_prefix else torch.zeros(length, dtype=torch.bool)
        # Observations: the clean prefix, and s x_0 + sqrt(1 - alpha) eps elsewhere.
        gain = torch.where(known, 1.0, s).double()
        cov_y = gain[:, None] * k * gain[None] + torch.diag(torch.where(known, 0.0, 1 - alpha)).double()
        cov_xy = k * gain[None]
        y = torch.where(known[None, :, None], prefix, x).double()
        x0 = torch.einsum("ij,bjd->bid", cov_xy @ torch.linalg.inv(cov_y + 1e-9 * torch.eye(length)), y)
        return ((x.double() - s * x0) / (1 - alpha).sqrt()).float()

    return denoise


def join_profile(sequence: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (T - 1,): mean absolute frame-to-frame step at each position."""
    return sequence.diff(dim=1).abs().mean(dim=(0, 2))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_long_sequences_join_without_a_jump(sampler: str) -> None:
    """Three windows of 24 frames overlapping by 6, with the exact denoiser of a smooth Gaussian-process
    motion that conditions on the prefix as the DiT is trained to: at the joins the mean frame-to-frame
    step is no larger than within a window (within 15%). The measure sees a seam where there is one: with
    the prefix only written into x_t (a denoiser that ignores it, plain RePaint replacement) the joins
    step noticeably more, and independently sampled windows jump."""
    train = noise_scheduler(prediction_type="epsilon")
    scheduler = sampling_scheduler(train, sampler, steps=30)
    window, overlap, length, scale, batch = 24, 6, 60, 4.0, 96
    joins = [s + overlap for s in window_starts(length, window, overlap)[1:]]  # first frames of new windows

    def long(use_prefix: bool) -> torch.Tensor:
        return sample_long(
            gp_denoiser(train, scale, use_prefix),
            scheduler,
            batch=batch,
            num_frames=length,
            dim=4,
            window=window,
            overlap=overlap,
            generator=torch.Generator().manual_seed(0),
        )

    conditioned, replaced = long(True), long(False)
    assert conditioned.shape == (batch, length, 4)
    gen = torch.Generator().manual_seed(1)
    independent = torch.cat(
        [sample(gp_denoiser(train, scale, False), scheduler, (batch, 20, 4), gen) for _ in range(3)], dim=1
    )
    profile = join_profile(conditioned)
    within = profile[: window - 1].mean()
    for join in joins:
        assert profile[join - 3 : join + 3].max() <= 1.15 * within, (
            join,
            profile[join - 3 : join + 3],
            within,
        )
        assert join_profile(replaced)[join - 1] > 1.3 * within, (join, join_profile(replaced), within)
    for seam in (20, 40):
        assert join_profile(independent)[seam - 1] > 3.0 * within


# --- the wav2vec2 option --------------------------------------------------------------------------------


def test_wav2vec2_without_weights_names_the_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        MotionDiT(**TINY_DIT, audio_encoder="wav2vec2", weights_dir=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "wav2vec2-base-960h") in message
    assert "config.json" in message and "model.safetensors" in message


def test_wav2vec2_features_from_a_local_folder_frozen_and_out_of_checkpoints(face_model, tmp_path) -> None:
    """A (tiny, randomly initialised) Wav2Vec2Model saved in the released layout under weights_dir: the
    encoder loads it offline, gives one feature per video frame, stays frozen, and the module's
    checkpoints leave it out (it is restored from the folder)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8,) * 7,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(config).save_pretrained(tmp_path / "wav2vec2-base-960h")
    module = tiny_module(face_model, audio_encoder="wav2vec2", weights_dir=str(tmp_path))
    assert module.net.audio_input == "audio"
    batch = window_batch(2, 12)
    features = module.net.encode_audio(batch["audio"], 12)
    assert features.shape == (2, 12, 16)
    encoder = module.net.audio_encoder
    assert not any(p.requires_grad for p in encoder.wav2vec2.parameters())
    module.train()
    assert not encoder.wav2vec2.training
    loss = module.diffusion_loss(batch)["loss"]
    loss.backward()
    assert all(p.grad is None for p in encoder.wav2vec2.parameters())
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert not any(k.startswith("net.audio_encoder.wav2vec2.") for k in checkpoint["state_dict"])
    assert any(k.startswith("net.audio_encoder.projection.") for k in checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])  # strict: the frozen part is put back


# --- the stages through run_task ------------------------------------------------------------------------


def test_demo_motion_diffusion_fast_dev_run(corpus_args, tmp_path: Path) -> None:
    """`python run.py experiment=demo_motion_diffusion debug=fdr`, on the tiny corpus: a training and a
    validation batch, the latter sampled (in two windows per 30-frame clip) for the mouth metric."""
    from lightning_modules.common.config import compose_config
    from lightning_modules.tasks.dispatch import run_task

    cfg = compose_config(
        ["experiment=demo_motion_diffusion", "debug=fdr", f"paths.log_dir={tmp_path}", *QUIET, *corpus_args]
        + [*TINY_MOTION, "data.batch_size=2", "data.examples_per_clip=1"],
        tmp_path / "run",
    )
    run_task(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    for key in ("train/loss", "val/loss", "val/loss_exp", "val/loss_pose"):
        assert np.isfinite(metrics[key]), key
    for key in ("val/mouth_corr", "val/mouth_corr_audio_free"):
        assert -1.0 <= metrics[key] <= 1.0, key


def test_emotion_stage_trains_the_controller_and_leaves_the_dit_bit_identical(
    tiny_motion, tiny_corpus
) -> None:
    """demo_motion_diffusion, then demo_motion_emotion on its last.ckpt, two steps each (the `tiny_motion`
    fixture): the emotion run's checkpoint holds the DiT and the motion statistics exactly as stage 1 saved
    them, the statistics are those of the training shards, and the controller has moved off its zero
    start."""
    from datamodules.shards import ShardReader

    dit_checkpoint, emotion_checkpoint = tiny_motion.dit, tiny_motion.emotion
    before = torch.load(dit_checkpoint, weights_only=True)["state_dict"]
    after = torch.load(emotion_checkpoint, weights_only=True)["state_dict"]
    frozen = [k for k in before if k.startswith(("net.", "normalizer."))]
    assert frozen and set(frozen) == {k for k in after if k.startswith(("net.", "normalizer."))}
    for key in frozen:
        assert torch.equal(before[key], after[key]), f"{key} changed in the emotion stage"
    assert not any(k.startswith("face_model.") for k in after)
    fusion = after["controller.fusion.3.weight"]
    assert fusion.abs().sum() > 0, "the controller's zero-initialised output did not train"

    total, squares, count = expression_moments(
        clip["coeffs"] for clip in ShardReader(tiny_corpus.shard_dir / "train")
    )
    normalizer = MotionNormalizer()
    normalizer.fit(total, squares, count)
    torch.testing.assert_close(before["normalizer.expression_mean"], normalizer.expression_mean)
    torch.testing.assert_close(before["normalizer.expression_std"], normalizer.expression_std)
    assert int(before["normalizer.expression_count"]) == count


def offset_corpus(batch: int, length: int, offsets: torch.Tensor, gen: torch.Generator) -> dict:
    """Windows whose expression is a label's lasting offset (an emotion, as the synthetic corpus draws it)
    plus an audio-driven coefficient and small noise."""
    coeffs = torch.zeros(batch, length, 257)
    mfcc = torch.randn(batch, length, 1, 13, 28, generator=gen)
    emotion = torch.randint(0, len(offsets), (batch,), generator=gen)
    coeffs[..., 80] = mfcc[:, :, 0, 0, 10:18].mean(-1)
    coeffs[..., 81:144] = torch.randn(batch, length, 63, generator=gen) * 0.1
    coeffs[..., 80:144] += offsets[emotion][:, None]
    coeffs[..., 224:227] = torch.randn(batch, length, 3, generator=gen) * 0.05
    return {"mfcc": mfcc, "coeffs": coeffs, "emotion": emotion, "emotion_level": torch.ones_like(emotion)}


@pytest.mark.slow  # 800 steps of a tiny DiT: about 15 s on one core
def test_emotion_controller_steers_a_frozen_dit_to_the_label(face_model) -> None:
    """A DiT trained without labels on clips whose expression carries one of 8 lasting offsets, frozen;
    an emotion controller trained over it: samples conditioned on a label show that label's offset
    (nearest of the 8) when the emotion guidance is on, and chance without it; the DiT is untouched."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    offsets = torch.randn(8, 64, generator=gen) * 0.5
    options = dict(
        face_model=face_model,
        optimizer=partial(torch.optim.AdamW, lr=2e-3),
        sampling={"window_frames": 16, "overlap_frames": 4, "emotion_guidance": 1.0, "audio_guidance": 1.0},
        motion_prefix={"max_frames": 4},
        condition_dropout={"audio": 0.1, "identity": 0.1},
    )
    dit = dict(TINY_DIT, audio_channels=(16, 32), audio_feature_dim=32)
    stage1 = MotionDiffusionModule(
        net=MotionDiT(**dit), **{**options, "sampling": {**options["sampling"], "emotion_guidance": 0.0}}
    )
    stage1.normalizer.fit(
        *expression_moments(
            c.numpy() for _ in range(5) for c in offset_corpus(32, 16, offsets, gen)["coeffs"]
        )
    )
    optimizer = torch.optim.AdamW(stage1.trainable_parameters(), 2e-3)
    for _ in range(400):
        loss = stage1.diffusion_loss(offset_corpus(32, 16, offsets, gen))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module = EmotionControlModule(
        controller=EmotionController(model_dim=32, hidden_dim=32, depth=1, heads=2),
        net=MotionDiT(**dit),
        **options,
    )
    module.load_state_dict(stage1.state_dict(), strict=False)
    frozen = {k: v.clone() for k, v in module.net.state_dict().items()}
    module.train()
    optimizer = torch.optim.AdamW(module.trainable_parameters(), 2e-3)
    for _ in range(400):
        module.on_train_batch_start(None, 0)
        loss = module.diffusion_loss(offset_corpus(32, 16, offsets, gen))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(frozen[k], v) for k, v in module.net.state_dict().items())
    module.eval()
    test = offset_corpus(32, 16, offsets, gen)
    accuracy = {}
    for weight in (0.0, 1.0):
        generated = module.generate_coeffs(
            test, torch.Generator().manual_seed(1), steps=20, emotion_guidance=weight
        )
        nearest = torch.cdist(face3d.expression_of(generated).mean(1), offsets).argmin(1)
        accuracy[weight] = (nearest == test["emotion"]).float().mean().item()
    assert accuracy[1.0] >= 0.9 and accuracy[0.0] <= 0.35, accuracy


def test_emotion_stage_names_a_missing_dit_checkpoint(tmp_path: Path) -> None:
    import hydra

    from lightning_modules.common.config import compose_config

    missing = tmp_path / "nothing.ckpt"
    cfg = compose_config(["experiment=demo_motion_emotion", f"model.init_checkpoint={missing}"], tmp_path)
    module = hydra.utils.instantiate(cfg.model)
    with pytest.raises(FileNotFoundError, match="demo_motion_diffusion"):
        module.setup("fit")


def test_eval_motion_writes_its_tables_for_every_model(tiny_motion, corpus_args, tmp_path) -> None:
    """`task=eval_motion` on the tiny corpus with 2-step checkpoints: the generator (`tiny_motion`), the
    judge (demo_emotion_classifier) and stage 1 (demo) trained by their real tasks, the Sync column
    through a random expert: every row and column is written, in range; the guidance table has every
    weight and the per-emotion table every emotion; stage 1 is deterministic (diversity exactly 0), the
    diffusion rows are not."""
    from datamodules.emotions import EMOTIONS
    from lightning_modules.common.config import compose_config
    from lightning_modules.networks.syncnet import SyncNet
    from lightning_modules.tasks.dispatch import run_task

    common = [f"paths.log_dir={tmp_path}", *SHORT, *corpus_args]
    classifier_dir = tmp_path / "classifier"
    run_task(
        compose_config(
            ["experiment=demo_emotion_classifier", "data=synthetic", "data.window_frames=16", *common],
            classifier_dir,
        )
    )
    a2e_dir = tmp_path / "a2e"
    run_task(compose_config(["experiment=demo", "callbacks.a2e_media=null", *common], a2e_dir))
    expert = tmp_path / "lipsync_expert.pth"
    torch.save({"state_dict": SyncNet(width=0.25).state_dict()}, expert)
    out = tmp_path / "eval"
    cfg = compose_config(
        [
            "task=eval_motion",
            "experiment=demo_motion_emotion",
            *corpus_args,
            f"paths.log_dir={tmp_path}",
            "data=synthetic",
            f"motion_eval.emotion_checkpoint={tiny_motion.emotion}",
            f"motion_eval.classifier_checkpoint={classifier_dir}/checkpoints/last.ckpt",
            f"motion_eval.a2e_checkpoint={a2e_dir}/checkpoints/last.ckpt",
            f"motion_eval.syncnet_checkpoint={expert}",
            "motion_eval.steps=2",
            "motion_eval.seeds=2",
            "motion_eval.emotion_guidance=[0.0,2.0]",
        ],
        out,
    )
    run_task(cfg)
    results = json.loads((out / "motion_eval.json").read_text())
    rows = {row["model"]: row for row in results["models"]}
    assert set(rows) == {
        "ground truth",
        "diffusion, own emotion (w_e 2)",
        "diffusion, null emotion",
        "diffusion, no audio",
        "stage 1",
    }
    assert rows["ground truth"]["mouth corr"] == pytest.approx(1.0)
    assert rows["ground truth"]["mouth LMD"] == pytest.approx(0.0, abs=1e-5)
    assert rows["stage 1"]["diversity"] == 0.0
    assert rows["diffusion, null emotion"]["diversity"] > 0
    for name, row in rows.items():
        assert 0.0 <= row["emotion acc"] <= 1.0, name
        assert np.isfinite(row["Sync"]) and np.isfinite(row["mouth LMD"]), name
        if name != "ground truth":  # the test clip's two 25-frame windows (stride 5) against the real ones
            assert np.isfinite(row["FD"]) and row["FD"] >= 0, name
    assert [g["emotion guidance"] for g in results["guidance"]] == [0.0, 2.0]
    assert all(0 < g["confidence"] < 1 for g in results["guidance"])
    assert [e["emotion"] for e in results["per_emotion"]] == list(EMOTIONS)
    for name in ("motion_eval.md", "motion_eval_models.csv", "motion_eval_guidance.csv"):
        assert (out / name).is_file(), name


def test_frechet_distance_of_gaussians() -> None:
    """Two samples of one Gaussian: near 0; a mean shifted by d: d^2 more; scaled covariances: FID's
    closed form for diagonal ones, sum (s_a - s_b)^2."""
    from lightning_modules.evaluation.motion import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4000, 4)), rng.normal(size=(4000, 4))
    assert frechet_distance(a, b) < 0.02
    assert frechet_distance(a, b + np.array([3.0, 0, 0, 0])) == pytest.approx(9.0, abs=0.1)
    scale = np.array([1.0, 2.0, 3.0, 0.5])
    assert frechet_distance(a, b * scale) == pytest.approx(float(np.sum((1 - scale) ** 2)), abs=0.1)
    assert np.isnan(frechet_distance(a[:1], b))


@pytest.mark.slow  # the emotion corpus (some 10 min on 2 cores), then the three demo recipes (some 5 min)
def test_demo_recipe_names_the_requested_emotion_on_unseen_speakers(tmp_path: Path) -> None:
    """The CPU recipe end to end, as a user runs it: experiment=demo_motion_diffusion (which builds
    data=synthetic_emotion), demo_motion_emotion, demo_emotion_classifier, then task=eval_motion on the
    unseen test speakers. At the recipe's emotion guidance the judge names the requested emotion in at
    least 60 % of the sequences (chance 12.5 %); its confidence in it rises with the guidance weight; the
    audio-conditioned mouth follows the ground truth's clearly more than audio-free sampling does."""
    from lightning_modules.common.config import compose_config
    from lightning_modules.tasks.dispatch import run_task

    common = [f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'logs'}", *QUIET]
    for experiment in ("demo_motion_diffusion", "demo_motion_emotion", "demo_emotion_classifier"):
        run_dir = tmp_path / "logs" / "train" / experiment / experiment
        run_task(compose_config([f"experiment={experiment}", *common], run_dir))
    out = tmp_path / "eval"
    run_task(compose_config(["task=eval_motion", "experiment=demo_motion_emotion", *common], out))
    results = json.loads((out / "motion_eval.json").read_text())
    guidance = {g["emotion guidance"]: g for g in results["guidance"]}
    recipe = compose_config(["experiment=demo_motion_emotion"], tmp_path / "recipe").model.sampling
    assert guidance[recipe.emotion_guidance]["accuracy"] >= 0.6, guidance
    weights = sorted(guidance)
    confidence = [guidance[w]["confidence"] for w in weights]
    assert all(a < b for a, b in zip(confidence, confidence[1:])), guidance
    rows = {row["model"]: row for row in results["models"]}
    own = rows[f"diffusion, own emotion (w_e {recipe.emotion_guidance:g})"]
    assert own["mouth corr"] > rows["diffusion, no audio"]["mouth corr"] + 0.3, rows
    assert own["emotion acc"] > rows["diffusion, null emotion"]["emotion acc"] + 0.3, rows
    assert own["diversity"] > 0, rows

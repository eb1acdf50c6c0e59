"""The synthetic corpus and the audio helpers: real mp4 files, ground truth that matches the pixels,
mouth motion that follows the audio, splits by identity."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from datamodules.media import audio as audio_lib
from datamodules.media.video import decode_audio, decode_frames, write_mp4
from datamodules.synthetic import MotionParams, mouth_expression


def test_speech_synthesiser_is_deterministic_and_speech_like():
    a = audio_lib.synthesize_speech(2.0, seed=3)
    b = audio_lib.synthesize_speech(2.0, seed=3)
    c = audio_lib.synthesize_speech(2.0, seed=4)
    assert a.shape == (32000,) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.abs(a).max() <= 1.0
    loudness = audio_lib.frame_features(a, 50)[:, 0]
    # syllables and pauses: the loudness envelope must really vary from frame to frame
    assert loudness.max() > 0.6 and loudness.min() < 0.3


@pytest.mark.skipif(not audio_lib.espeak_available(), reason="needs espeak-ng (`make system-deps`)")
def test_espeak_speech_is_16k_and_fitted_to_length():
    wave = audio_lib.espeak_speech(1.5, seed=1)
    assert wave.shape == (24000,)
    assert np.abs(wave).max() > 0.1


def test_features_have_the_documented_rates_and_ranges():
    wave = audio_lib.synthesize_speech(2.0, seed=0)
    mfcc = audio_lib.mfcc(wave)
    assert mfcc.shape == (199, 13)  # 25 ms windows every 10 ms over 2 s
    mel = audio_lib.melspectrogram(wave)
    assert mel.shape == (80, 1 + 32000 // 200)  # 80 steps/s
    assert mel.min() >= -4.0 and mel.max() <= 4.0 and mel.max() > 0.0
    windows = audio_lib.mel_windows(mel, np.arange(50))
    assert windows.shape == (50, 80, 16)
    np.testing.assert_array_equal(windows[10], mel[:, 32:48])  # frame 10 starts at int(80 * 10 / 25)


def test_mouth_follows_the_audio():
    """How the synthetic lips answer to sound, checked on sounds with known content rather than against the
    formula: silence presses the lips shut, louder speech opens the jaw wider, a low vowel rounds the lips
    more than a hiss, a hiss spreads them more than a vowel does."""
    from face3d.procedural import EXPRESSION_NAMES

    rate, frames = audio_lib.SAMPLE_RATE, 25
    t = np.arange(rate) / rate
    vowel = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((150, 300, 450, 700)))
    hiss = np.random.default_rng(0).standard_normal(rate)
    hiss = np.fft.irfft(np.fft.rfft(hiss) * (np.fft.rfftfreq(rate, 1 / rate) > 3000), n=rate)

    def mouth(wave: np.ndarray, level_db: float) -> dict[str, float]:
        wave = wave / np.sqrt((wave**2).mean()) * 10 ** (level_db / 20)
        exp = mouth_expression(
            audio_lib.frame_features(wave.astype(np.float32), frames),
            EXPRESSION_NAMES,
            MotionParams(),
            np.ones(3),
        )
        return {name: float(exp[:, EXPRESSION_NAMES.index(name)].mean()) for name in EXPRESSION_NAMES[:4]}

    silence = mouth(np.zeros(rate) + 1e-9, -120)
    quiet, loud, hissing = mouth(vowel, -30), mouth(vowel, -15), mouth(hiss, -15)
    assert silence["jaw_open"] == 0 and silence["lips_press"] > 0.5
    assert loud["jaw_open"] > quiet["jaw_open"] > 0.2 and loud["lips_press"] < 0.05
    assert loud["lips_round"] > 2 * hissing["lips_round"]
    assert hissing["lips_spread"] > 2 * loud["lips_spread"]
    # Speech-sized motion: the median voiced frame of the built-in speech opens the jaw about as wide as
    # coefficient 1 (the procedural model's natural-size jaw opening).
    wave = audio_lib.synthesize_speech(4.0, seed=5)
    features = audio_lib.frame_features(wave, 100)
    jaw = mouth_expression(features, EXPRESSION_NAMES, MotionParams(), np.ones(3))[:, 0]
    assert 0.6 < np.median(jaw[features[:, 0] > 0.3]) < 1.6


def test_write_mp4_round_trip(tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    # smooth colour content (yuv420 keeps one chroma sample per 2 x 2 pixels)
    frames = (
        np.stack([np.stack([xx * 3 + 10 * t, yy * 3, 255 - (xx + yy) * 2], axis=-1) for t in range(10)])
        .clip(0, 255)
        .astype(np.uint8)
    )
    wave = audio_lib.synthesize_speech(10 / 25, seed=0)
    path = tmp_path / "clip.mp4"
    write_mp4(path, frames, wave)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        assert container.streams.audio[0].codec_context.sample_rate == 16000
        assert float(container.streams.video[0].average_rate) == 25.0
    decoded = decode_frames(path)
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(float) - frames).mean() < 6.0
    audio = audio_lib.to_float(decode_audio(path, len(wave)))
    assert np.corrcoef(audio, wave)[0, 1] > 0.9  # AAC is lossy, the waveform survives


def test_corpus_layout_ground_truth_and_splits(tiny_corpus):
    from datamodules.media.detect import DlibDetector

    raw = tiny_corpus.raw_dir
    clips = sorted(raw.glob("mp4/id*/*/00001.mp4"))
    assert len(clips) == 4
    splits = json.loads((raw / "splits.json").read_text())
    assert sorted(splits.values()) == ["test", "train", "train", "val"]
    detector = DlibDetector()
    errors = []
    for path in clips:
        truth = np.load(path.with_suffix(".npz"))
        frames = decode_frames(path)
        assert frames.shape == (30, 160, 160, 3)
        assert truth["coeffs"].shape == (30, 257) and truth["landmarks"].shape == (30, 68, 2)
        # identity, texture and lighting are constant within a clip; expression and pose move
        assert np.ptp(truth["coeffs"][:, :80], axis=0).max() == 0
        assert np.ptp(truth["coeffs"][:, 80:144], axis=0).max() > 0.1
        # the lips are a function of the soundtrack: recompute the jaw from the decoded (AAC) audio
        from face3d.procedural import EXPRESSION_NAMES

        jaw_index = EXPRESSION_NAMES.index("jaw_open")
        heard = audio_lib.frame_features(audio_lib.to_float(decode_audio(path, 30 * 640)), 30)
        expected = mouth_expression(heard, EXPRESSION_NAMES, MotionParams(), np.ones(3))[:, jaw_index]
        jaw = truth["coeffs"][:, 80 + jaw_index]
        if np.ptp(jaw) > 0.05:
            assert np.corrcoef(jaw, expected)[0, 1] > 0.9
        for t in (0, 15, 29):
            faces = detector(frames[t])
            if faces:
                errors.append(np.linalg.norm(faces[0].landmarks - truth["landmarks"][t], axis=-1).mean())
    print(f"dlib landmarks vs ground truth: mean {np.mean(errors):.2f} px over {len(errors)} frames")
    assert len(errors) >= 10
    assert np.mean(errors) < 4.0

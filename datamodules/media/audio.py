"""16 kHz mono audio helpers shared by the synthetic corpus, preprocessing and the datamodules.

- `synthesize_speech`: a built-in source-filter "speech-like" signal (words of syllables: closures,
  bursts and fricatives, voiced vowels through formants, gaps and pauses): the synthetic corpus's
  default audio, the same on every machine and needing no system package.
- `espeak_speech`: real synthetic speech from the espeak-ng command, where it is installed.
- `mfcc`: python_speech_features MFCC with its default parameters (13 coefficients, 25 ms window,
  10 ms step, i.e. 100 frames/s), as the A2E audio encoder of the main paper (seed 002) uses.
- `melspectrogram`: the 80-bin mel spectrogram of Wav2Lip (Prajwal et al. 2020, `hparams.py` /
  `audio.py` of Rudrabha/Wav2Lip): n_fft 800, hop 200, win 800 at 16 kHz (80 steps/s), fmin 55,
  fmax 7600, pre-emphasis 0.97, dB with ref 20 and floor -100, symmetric normalisation to [-4, 4].
- `frame_features`: per-video-frame loudness and spectral shape, the drive of the synthetic lips.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import python_speech_features
import scipy.io.wavfile
import scipy.signal

SAMPLE_RATE = 16000
VIDEO_FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS  # 640: frame t covers samples [640 t, 640 (t + 1))


@dataclass(frozen=True)
class MelParams:
    """Wav2Lip's mel-spectrogram numbers (hparams.py of Rudrabha/Wav2Lip)."""

    sample_rate: int = 16000
    n_fft: int = 800
    hop_length: int = 200
    win_length: int = 800
    n_mels: int = 80
    fmin: float = 55.0
    fmax: float = 7600.0
    preemphasis: float = 0.97
    ref_level_db: float = 20.0
    min_level_db: float = -100.0
    max_abs_value: float = 4.0


def to_int16(wave: np.ndarray) -> np.ndarray:
    """Float waveform in [-1, 1] -> int16 PCM (clipped)."""
    return (np.clip(wave, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def to_float(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM (or any float array) -> float32 in [-1, 1]."""
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / 32768.0
    return pcm.astype(np.float32)


def fit_length(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """Truncate or zero-pad `wave` to exactly `num_samples`."""
    if len(wave) >= num_samples:
        return wave[:num_samples]
    return np.pad(wave, (0, num_samples - len(wave)))


# --- built-in speech-like synthesiser --------------------------------------------------------------

# (F1, F2, F3) in Hz of a few vowels (Peterson & Barney 1952, adult male averages).
VOWEL_FORMANTS = np.array(
    [
        [730, 1090, 2440],  # a
        [530, 1840, 2480],  # e
        [270, 2290, 3010],  # i
        [570, 840, 2410],  # o
        [300, 870, 2240],  # u
        [660, 1720, 2410],  # ae
    ],
    dtype=np.float64,
)


def _resonator(signal: np.ndarray, freq: float, bandwidth: float, sr: int) -> np.ndarray:
    """Second-order formant resonator (Klatt 1980)."""
    r = np.exp(-np.pi * bandwidth / sr)
    a1, a2 = 2 * r * np.cos(2 * np.pi * freq / sr), -(r**2)
    return scipy.signal.lfilter([1 - r], [1, -a1, -a2], signal)


def _voiced(n: int, pitch: float, vowel: np.ndarray, rng: np.random.Generator, sr: int) -> np.ndarray:
    """n samples of a vowel: a glottal pulse train with a gliding pitch through three formants."""
    t = np.arange(n) / sr
    f0 = pitch * (1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 6)))
    phase = np.cumsum(f0 / sr)
    source = np.diff((phase % 1.0) - 0.5, prepend=-0.5)  # pulse-like excitation
    return sum(
        _resonator(source, f, bw, sr) * g for f, bw, g in zip(vowel, (80.0, 100.0, 140.0), (1.0, 0.6, 0.3))
    )


def synthesize_speech(
    duration_s: float,
    seed: int,
    sample_rate: int = SAMPLE_RATE,
    syllables_per_word: tuple[int, int] = (1, 3),
    word_gap_s: tuple[float, float] = (0.06, 0.3),
    pause_probability: float = 0.15,
    pitch_hz: tuple[float, float] = (95.0, 210.0),
) -> np.ndarray:
    """A deterministic speech-like waveform with the timing structure of speech: words of 1-3 syllables
    separated by short gaps (and now and then a longer pause); each syllable is an onset (a plosive:
    a silent closure then a burst; a fricative: band-passed noise; or none) and a voiced vowel
    (glottal pulses through three formant resonators) with its own loudness and vowel quality.

    The closures, gaps and pauses are what make the audio drive the synthetic lips the way espeak-ng's
    speech does: the mouth closes and opens every syllable and rests between words, so that the lips
    carry more than the fitting noise (an envelope that never falls silent keeps the jaw half open
    all the time and leaves stage 1 nothing to learn beyond the mean). Returns float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    sr = sample_rate
    num_samples = int(round(duration_s * sr))
    out = np.zeros(num_samples + sr, dtype=np.float64)  # room for the last syllable
    base_pitch = rng.uniform(*pitch_hz)
    position = int(rng.uniform(0.0, 0.15) * sr)
    while position < num_samples:
        for _ in range(rng.integers(syllables_per_word[0], syllables_per_word[1] + 1)):
            onset = rng.choice(("plosive", "fricative", "none"), p=(0.4, 0.35, 0.25))
            if onset == "plosive":
                position += int(rng.uniform(0.03, 0.07) * sr)  # lips closed, no sound
                burst = int(rng.uniform(0.01, 0.025) * sr)
                noise = rng.standard_normal(burst) * rng.uniform(0.15, 0.4)
                out[position : position + burst] += _resonator(noise, rng.uniform(1000, 4000), 2500.0, sr)
                position += burst
            elif onset == "fricative":
                length = int(rng.uniform(0.05, 0.12) * sr)
                noise = rng.standard_normal(length) * np.hanning(length) * rng.uniform(0.1, 0.35)
                out[position : position + length] += _resonator(noise, rng.uniform(2500, 6000), 1500.0, sr)
                position += length
            length = int(rng.uniform(0.1, 0.24) * sr)
            vowel = VOWEL_FORMANTS[rng.integers(len(VOWEL_FORMANTS))] * rng.uniform(0.92, 1.08)
            envelope = np.sin(np.pi * np.arange(length) / length) ** 0.5
            loudness = rng.uniform(0.6, 1.0)
            out[position : position + length] += (
                loudness * envelope * _voiced(length, base_pitch, vowel, rng, sr)
            )
            position += length
        gap = rng.uniform(0.3, 0.7) if rng.random() < pause_probability else rng.uniform(*word_gap_s)
        position += int(gap * sr)
    out = out[:num_samples]
    # Loudness normalisation, not peak: pulse trains have a high crest factor, and peak-normalised
    # they would sit ~10 dB below espeak-ng's speech. The loudest frames land at -14 dBFS.
    frames = out[: len(out) // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME].reshape(-1, SAMPLES_PER_FRAME)
    rms = np.sqrt((frames**2).mean(axis=1))
    if rms.max() > 0:
        out = out * (10 ** (-14 / 20) / np.percentile(rms[rms > 0.05 * rms.max()], 95))
    return np.clip(out, -1.0, 1.0).astype(np.float32)


# --- espeak-ng ---------------------------------------------------------------------------------------

_WORD_TEXT = (
    "the quick brown fox jumps over a lazy dog while seven bright children sing about morning light "
    "under open windows people gather near the river to share bread water stories and music every "
    "evening before the small boats return home across calm blue waves"
)
WORDS = tuple(_WORD_TEXT.split())


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_speech(
    duration_s: float,
    seed: int,
    voices: tuple[str, ...] = ("en-us", "en-gb"),
    words_per_second: float = 2.6,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Real synthetic speech of seeded random words from espeak-ng, resampled to 16 kHz and fitted to
    `duration_s` (trimmed or zero-padded). Raises RuntimeError if espeak-ng is missing or fails."""
    if not espeak_available():
        raise RuntimeError(
            "audio source 'espeak' needs the espeak-ng program, which is not installed: `make system-deps` "
            "(apt-get install espeak-ng), or data.synthetic.audio_source=builtin"
        )
    rng = np.random.default_rng(seed)
    count = max(2, int(duration_s * words_per_second * 1.3))
    text = " ".join(rng.choice(WORDS, size=count))
    voice = voices[int(rng.integers(len(voices)))]
    speed = int(rng.uniform(140, 190))
    pitch = int(rng.uniform(25, 75))
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "speech.wav"
        cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav_path), text]
        result = subprocess.run(cmd, capture_output=True, timeout=60)
        if result.returncode != 0 or not wav_path.exists():
            raise RuntimeError(f"espeak-ng failed: {result.stderr.decode(errors='replace')}")
        rate, pcm = scipy.io.wavfile.read(wav_path)
    wave = to_float(pcm if pcm.ndim == 1 else pcm[:, 0])
    if rate != sample_rate:
        g = np.gcd(rate, sample_rate)
        wave = scipy.signal.resample_poly(wave, sample_rate // g, rate // g).astype(np.float32)
    wave = fit_length(wave, int(round(duration_s * sample_rate)))
    peak = np.abs(wave).max()
    return (0.8 * wave / peak).astype(np.float32) if peak > 0 else wave


AUDIO_SOURCES = ("builtin", "espeak")


def speech(duration_s: float, seed: int, source: str = "builtin") -> np.ndarray:
    """Speech for the synthetic corpus: `builtin` (`synthesize_speech`, the same on every machine) or
    `espeak` (espeak-ng's, which must be installed: `make system-deps`)."""
    if source == "builtin":
        return synthesize_speech(duration_s, seed)
    if source == "espeak":
        return espeak_speech(duration_s, seed)
    raise ValueError(f"audio source must be one of {AUDIO_SOURCES}, got {source!r}")


# --- features ----------------------------------------------------------------------------------------


def mfcc(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(N, 13) MFCC at 100 frames/s with python_speech_features' defaults (25 ms window, 10 ms step,
    26 filters, 512-point FFT, pre-emphasis 0.97, liftering 22, log-energy as coefficient 0)."""
    return python_speech_features.mfcc(to_float(wave), samplerate=sample_rate).astype(np.float32)


def melspectrogram(wave: np.ndarray, params: MelParams = MelParams()) -> np.ndarray:
    """(80, M) Wav2Lip mel spectrogram, M = 1 + len(wave) // 200 (80 steps/s), values in [-4, 4]."""
    y = to_float(wave).astype(np.float64)
    y = scipy.signal.lfilter([1.0, -params.preemphasis], [1.0], y)
    spectrum = np.abs(
        librosa.stft(
            y,
            n_fft=params.n_fft,
            hop_length=params.hop_length,
            win_length=params.win_length,
            pad_mode="reflect",
        )
    )
    basis = librosa.filters.mel(
        sr=params.sample_rate, n_fft=params.n_fft, n_mels=params.n_mels, fmin=params.fmin, fmax=params.fmax
    )
    floor = np.exp(params.min_level_db / 20.0 * np.log(10.0))
    db = 20.0 * np.log10(np.maximum(floor, basis @ spectrum)) - params.ref_level_db
    scaled = (
        2 * params.max_abs_value * (db - params.min_level_db) / (-params.min_level_db) - params.max_abs_value
    )
    return np.clip(scaled, -params.max_abs_value, params.max_abs_value).astype(np.float32)


# dBFS of a frame's RMS that maps to loudness 0 and 1: the range of peak-normalised speech (voiced frames
# of espeak-ng and of the built-in synthesiser lie between about -30 and -12 dBFS; pauses below -40).
LOUDNESS_RANGE_DB = (-42.0, -12.0)


def frame_features(wave: np.ndarray, num_frames: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(T, 3) per-video-frame drive for the synthetic mouth: [loudness, brightness, lowness] in [0, 1].

    loudness: RMS of the frame's 640 samples in dB mapped from `LOUDNESS_RANGE_DB` to [0, 1];
    brightness: share of energy above 2 kHz (fricatives, spread lips);
    lowness: share of energy below 1 kHz among voiced energy (open/rounded vowels)."""
    spf = sample_rate // VIDEO_FPS
    y = fit_length(to_float(wave), num_frames * spf).reshape(num_frames, spf).astype(np.float64)
    rms = np.sqrt((y**2).mean(axis=1) + 1e-12)
    low_db, high_db = LOUDNESS_RANGE_DB
    loudness = np.clip((20 * np.log10(rms + 1e-9) - low_db) / (high_db - low_db), 0.0, 1.0)
    spec = np.abs(np.fft.rfft(y * np.hanning(spf), axis=1)) ** 2
    freqs = np.fft.rfftfreq(spf, 1.0 / sample_rate)
    total = spec.sum(axis=1) + 1e-12
    brightness = spec[:, freqs >= 2000].sum(axis=1) / total
    lowness = spec[:, freqs < 1000].sum(axis=1) / total
    return np.stack([loudness, brightness, lowness], axis=1).astype(np.float32)


def write_wav(path: str | Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    scipy.io.wavfile.write(str(path), sample_rate, to_int16(wave))


def mel_windows(mel: np.ndarray, frames: np.ndarray, width: int = 16) -> np.ndarray:
    """(len(frames), 80, width): the mel window starting at each video frame t, at step
    int(80 t / 25) as Wav2Lip's `crop_audio_window`; steps past either end repeat the edge column."""
    steps_per_second = SAMPLE_RATE // MelParams().hop_length
    start = (steps_per_second * np.asarray(frames, dtype=np.int64)) // VIDEO_FPS
    steps = start[:, None] + np.arange(width)[None, :]
    windows = mel[:, np.clip(steps, 0, mel.shape[1] - 1)]  # (80, n, width)
    return np.ascontiguousarray(windows.transpose(1, 0, 2), dtype=np.float32)

"""16 kHz mono audio helpers shared by the synthetic corpus, preprocessing and the datamodules.

- `synthesize_speech`: a built-in source-filter "speech-like" signal (glottal pulses through vowel
  formants, syllable envelopes, fricative bursts, pauses) so the demo corpus needs no system package.
- `espeak_speech`: real synthetic speech from the espeak-ng command when it is installed.
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


def synthesize_speech(
    duration_s: float,
    seed: int,
    sample_rate: int = SAMPLE_RATE,
    syllable_rate_hz: float = 4.5,
    pause_probability: float = 0.15,
    pitch_hz: tuple[float, float] = (95.0, 210.0),
) -> np.ndarray:
    """A deterministic speech-like waveform: syllables of voiced vowels (glottal pulse train through
    three formant resonators) separated by short fricative bursts and occasional pauses, with a
    drifting pitch contour. Loudness and vowel quality change every syllable, which is what makes the
    audio -> lips mapping of the synthetic corpus learnable. Returns float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    num_samples = int(round(duration_s * sample_rate))
    out = np.zeros(num_samples, dtype=np.float64)
    base_pitch = rng.uniform(*pitch_hz)
    position = int(rng.uniform(0.0, 0.15) * sample_rate)
    while position < num_samples:
        length = int(sample_rate * rng.uniform(0.6, 1.4) / syllable_rate_hz)
        end = min(position + length, num_samples)
        n = end - position
        if n <= 0:
            break
        if rng.random() < pause_probability:
            position = end
            continue
        t = np.arange(n) / sample_rate
        # glottal source: pulse train with jittered, gliding pitch, smoothed into a sawtooth-like wave
        f0 = base_pitch * (1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 6)))
        phase = np.cumsum(f0 / sample_rate)
        source = (phase % 1.0) - 0.5
        source = np.diff(source, prepend=source[0])  # pulse-like excitation
        vowel = VOWEL_FORMANTS[rng.integers(len(VOWEL_FORMANTS))] * rng.uniform(0.92, 1.08)
        voiced = sum(
            _resonator(source, f, bw, sample_rate) * g
            for f, bw, g in zip(vowel, (80.0, 100.0, 140.0), (1.0, 0.6, 0.3))
        )
        # onset consonant: a short band-passed noise burst (fricative/plosive)
        burst_len = min(n, int(sample_rate * rng.uniform(0.02, 0.07)))
        noise = rng.standard_normal(n) * (np.arange(n) < burst_len)
        fricative = _resonator(noise, rng.uniform(2500, 6000), 1500.0, sample_rate) * rng.uniform(0.1, 0.4)
        envelope = np.sin(np.pi * np.clip((np.arange(n) - burst_len) / max(n - burst_len, 1), 0, 1)) ** 0.7
        loudness = rng.uniform(0.35, 1.0)
        out[position:end] += loudness * envelope * voiced + fricative
        position = end
    peak = np.abs(out).max()
    if peak > 0:
        out = 0.8 * out / peak
    return out.astype(np.float32)


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
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng); use synthesize_speech")
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


def speech(duration_s: float, seed: int, use_espeak: bool = True) -> np.ndarray:
    """espeak-ng speech when asked for and installed, otherwise the built-in synthesiser."""
    if use_espeak and espeak_available():
        return espeak_speech(duration_s, seed)
    return synthesize_speech(duration_s, seed)


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

"""Synthetic datasets in the official ESC-50 and UrbanSound8K layouts, for tests, demos and smoke runs.

Every clip is a procedurally generated sound event from one of six recipes (:data:`FAMILIES`), each
played at a class-specific frequency, with random per-clip jitter in pitch, timing, level, background
noise and an occasional quiet distractor event:

- ``tone``: harmonic tone (1-3 notes) with vibrato;
- ``bursts``: bursts of 1/3-octave band noise;
- ``chirp_up`` / ``chirp_down``: repeated exponential sweeps over one octave around the class frequency;
- ``clicks``: a train of damped-sinusoid clicks ringing at the class frequency;
- ``am_noise``: one-octave band noise, amplitude modulated at a few Hz.

ESC-50 class ``k`` uses recipe ``FAMILIES[k % 6]`` at the ``k``-th of ``num_classes`` log-spaced
frequencies, so classes differ both in their spectrum and in their temporal pattern: a small CNN on
log-mel learns them, but the jitter, noise and distractors keep it from being trivial. Everything is
numpy with generators seeded from ``(seed, clip)``, so a dataset is identical for a seed.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf

__all__ = [
    "ESC50_COLUMNS",
    "FAMILIES",
    "URBANSOUND8K_CLASSES",
    "URBANSOUND8K_COLUMNS",
    "URBANSOUND8K_FORMATS",
    "WavFormat",
    "esc50_class_specs",
    "make_synthetic_esc50",
    "make_synthetic_urbansound8k",
    "render_clip",
]

ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
"""Columns of the official ``meta/esc50.csv``, in order."""

URBANSOUND8K_COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
"""Columns of the official ``metadata/UrbanSound8K.csv``, in order."""

URBANSOUND8K_CLASSES = (
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
)
"""The 10 official UrbanSound8K classes; ``classID`` is the index."""

FAMILIES = ("tone", "bursts", "chirp_up", "chirp_down", "clicks", "am_noise")
"""Sound recipes; ESC-50 class ``k`` uses ``FAMILIES[k % len(FAMILIES)]``."""

_ESC50_MAX_CLASSES = 50
_LOWEST_CLASS_HZ = 150.0
_HIGHEST_CLASS_HZ = 5000.0
_TAKES = "ABCDEFGH"


class WavFormat(NamedTuple):
    """One WAV encoding: soundfile ``subtype`` and ``container`` (``format``), channels and rate."""

    subtype: str
    container: str
    channels: int
    sample_rate: int


URBANSOUND8K_FORMATS: tuple[WavFormat, ...] = tuple(
    WavFormat(subtype, container, channels, rate)
    for subtype, container in (("PCM_16", "WAV"), ("PCM_24", "WAVEX"), ("FLOAT", "WAV"))
    for channels in (1, 2)
    for rate in (22050, 24000, 44100, 48000, 96000)
)
"""The 30 encodings cycled over the synthetic UrbanSound8K files (every one appears once the set has
30 files or more): 16-bit PCM (WAVE_FORMAT_PCM), 24-bit PCM as WAVE_FORMAT_EXTENSIBLE and 32-bit float
(WAVE_FORMAT_IEEE_FLOAT); mono and stereo; 22.05, 24, 44.1, 48 and 96 kHz."""

# (family, frequency in Hz) for each UrbanSound8K class, loosely after what the class sounds like.
_US8K_RECIPES = (
    ("am_noise", 300.0),  # air_conditioner
    ("tone", 440.0),  # car_horn
    ("tone", 900.0),  # children_playing
    ("bursts", 700.0),  # dog_bark
    ("am_noise", 2500.0),  # drilling
    ("clicks", 120.0),  # engine_idling
    ("bursts", 1600.0),  # gun_shot
    ("clicks", 1800.0),  # jackhammer
    ("chirp_up", 1000.0),  # siren
    ("chirp_down", 600.0),  # street_music
)


# ----------------------------------------------------------------------------------------------
# Signal primitives (float64, unit scale).


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def _band_noise(rng: np.random.Generator, n: int, sr: int, centre: float, octaves: float) -> np.ndarray:
    """Gaussian noise with a Gaussian-in-log-frequency band around ``centre`` (``octaves`` wide at -3 dB)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    with np.errstate(divide="ignore"):
        distance = np.log2(np.maximum(freqs, 1e-9) / centre)
    sigma = octaves / 2.355  # FWHM -> standard deviation
    noise = np.fft.irfft(spec * np.exp(-0.5 * (distance / sigma) ** 2), n)
    return noise / max(_rms(noise), 1e-12)


def _pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f noise with unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    spec[1:] /= np.sqrt(np.arange(1, spec.size))
    spec[0] = 0.0
    noise = np.fft.irfft(spec, n)
    return noise / max(_rms(noise), 1e-12)


def _envelope(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    """Linear attack, flat sustain, linear release (seconds), length ``n``."""
    env = np.ones(n)
    a = min(n, max(1, int(attack * sr)))
    r = min(n - a, max(1, int(release * sr)))
    env[:a] = np.linspace(0.0, 1.0, a, endpoint=False)
    if r > 0:
        env[n - r :] = np.linspace(1.0, 0.0, r)
    return env


def _add(out: np.ndarray, segment: np.ndarray, start: int) -> None:
    """Add ``segment`` into ``out`` at ``start``, dropping what falls past the end."""
    end = min(out.size, start + segment.size)
    if start < end:
        out[start:end] += segment[: end - start]


def _jitter_pitch(rng: np.random.Generator, f: float, sr: int, cents: float = 50.0) -> float:
    return float(min(f * 2.0 ** (rng.normal(0.0, cents) / 1200.0), 0.4 * sr))


def _harmonic_tone(rng: np.random.Generator, n: int, sr: int, f0: float) -> np.ndarray:
    t = np.arange(n) / sr
    vib_rate, vib_depth = rng.uniform(4.0, 7.0), rng.uniform(0.004, 0.015)
    inst = f0 * (1.0 + vib_depth * np.sin(2 * np.pi * vib_rate * t + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(inst) / sr
    tilt = rng.uniform(0.8, 1.8)
    tone = np.zeros(n)
    for k in range(1, int(rng.integers(4, 9)) + 1):
        if k * f0 * (1 + vib_depth) >= 0.45 * sr:
            break
        tone += np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k**tilt
    return tone


def _tone(rng: np.random.Generator, n: int, sr: int, f: float) -> np.ndarray:
    out, f0 = np.zeros(n), _jitter_pitch(rng, f, sr)
    pos = int(rng.uniform(0.0, 0.5) * n)
    for _ in range(int(rng.integers(1, 4))):
        length = max(1, int(rng.uniform(0.25, 1.2) * sr))
        note = _harmonic_tone(rng, length, sr, f0 * 2.0 ** (rng.normal(0.0, 15.0) / 1200.0))
        _add(out, note * _envelope(length, sr, 0.02, rng.uniform(0.05, 0.3)), pos)
        pos += length + int(rng.uniform(0.05, 0.3) * sr)
    return out


def _bursts(rng: np.random.Generator, n: int, sr: int, f: float) -> np.ndarray:
    noise = _band_noise(rng, n, sr, _jitter_pitch(rng, f, sr), octaves=1.0 / 3.0)
    gate = np.zeros(n)
    pos, period = int(rng.uniform(0.0, 0.4) * n), rng.uniform(0.15, 0.5)
    for _ in range(int(rng.integers(3, 11))):
        length = max(1, int(rng.uniform(0.04, 0.2) * sr))
        _add(gate, np.exp(-np.arange(length) / (0.3 * length)) * _envelope(length, sr, 0.003, 0.01), pos)
        pos += int(period * rng.uniform(0.8, 1.25) * sr)
    return noise * gate


def _sweeps(rng: np.random.Generator, n: int, sr: int, f: float, upward: bool) -> np.ndarray:
    out, centre = np.zeros(n), _jitter_pitch(rng, f, sr)
    lo, hi = centre / np.sqrt(2.0), min(centre * np.sqrt(2.0), 0.45 * sr)
    pos = int(rng.uniform(0.0, 0.4) * n)
    for _ in range(int(rng.integers(2, 7))):
        length = max(2, int(rng.uniform(0.15, 0.5) * sr))
        ratio = np.linspace(0.0, 1.0, length)
        inst = lo * (hi / lo) ** (ratio if upward else 1.0 - ratio)
        phase = 2 * np.pi * np.cumsum(inst) / sr
        sweep = np.sin(phase) + (0.3 * np.sin(2 * phase) if 2 * hi < 0.45 * sr else 0.0)
        _add(out, sweep * _envelope(length, sr, 0.01, 0.03), pos)
        pos += length + int(rng.uniform(0.02, 0.2) * sr)
    return out


def _clicks(rng: np.random.Generator, n: int, sr: int, f: float) -> np.ndarray:
    out, ring = np.zeros(n), _jitter_pitch(rng, f, sr)
    decay = rng.uniform(6.0, 15.0) / ring  # seconds: a fixed number of cycles, so low clicks thump
    k = np.arange(max(2, int(5 * decay * sr)))
    click = np.sin(2 * np.pi * ring * k / sr) * np.exp(-k / (decay * sr))
    rate = rng.uniform(6.0, 20.0)
    pos, stop = int(rng.uniform(0.0, 0.4) * n), n * rng.uniform(0.6, 1.0)
    while pos < stop:
        _add(out, click * rng.uniform(0.6, 1.0), pos)
        pos += max(1, int(sr / rate * rng.uniform(0.9, 1.1)))
    return out


def _am_noise(rng: np.random.Generator, n: int, sr: int, f: float) -> np.ndarray:
    noise = _band_noise(rng, n, sr, _jitter_pitch(rng, f, sr), octaves=1.0)
    t = np.arange(n) / sr
    depth = rng.uniform(0.5, 1.0)
    am = 1.0 - depth * 0.5 * (
        1.0 + np.sin(2 * np.pi * rng.uniform(2.0, 12.0) * t + rng.uniform(0, 2 * np.pi))
    )
    start = int(rng.uniform(0.0, 0.3) * n)
    length = max(1, int(rng.uniform(0.5, 1.0) * (n - start)))
    gate = np.zeros(n)
    gate[start : start + length] = _envelope(length, sr, 0.05, 0.1)
    return noise * am * gate


_RECIPES: dict[str, Callable[[np.random.Generator, int, int, float], np.ndarray]] = {
    "tone": _tone,
    "bursts": _bursts,
    "chirp_up": lambda rng, n, sr, f: _sweeps(rng, n, sr, f, upward=True),
    "chirp_down": lambda rng, n, sr, f: _sweeps(rng, n, sr, f, upward=False),
    "clicks": _clicks,
    "am_noise": _am_noise,
}


def render_clip(
    rng: np.random.Generator, family: str, freq: float, sample_rate: int, num_samples: int
) -> np.ndarray:
    """One clip of ``family`` at ``freq`` Hz: event at -18..-3 dB peak, pink background 10-30 dB below the
    event, and with probability 0.3 a distractor event (random recipe and frequency) 15-25 dB below it.
    Returns float64 ``[num_samples]`` with peak at most 0.95."""
    if family not in _RECIPES:
        raise ValueError(f"unknown sound family {family!r}; choose from {FAMILIES}")
    event = _RECIPES[family](rng, num_samples, sample_rate, freq)
    event *= 10.0 ** (rng.uniform(-18.0, -3.0) / 20.0) / max(np.max(np.abs(event)), 1e-12)
    active = event[np.abs(event) > 1e-6]
    level = _rms(active) if active.size else 1e-3
    clip = event + _pink_noise(rng, num_samples) * level * 10.0 ** (-rng.uniform(10.0, 30.0) / 20.0)
    if rng.random() < 0.3:
        other = FAMILIES[int(rng.integers(len(FAMILIES)))]
        high = min(_HIGHEST_CLASS_HZ, 0.3 * sample_rate)
        distractor = _RECIPES[other](
            rng, num_samples, sample_rate, float(np.exp(rng.uniform(np.log(150.0), np.log(high))))
        )
        scale = (
            level
            * 10.0 ** (-rng.uniform(15.0, 25.0) / 20.0)
            / max(_rms(distractor[np.abs(distractor) > 1e-6]), 1e-12)
        )
        clip += distractor * scale
    peak = np.max(np.abs(clip))
    return clip * (0.95 / peak) if peak > 0.95 else clip


# ----------------------------------------------------------------------------------------------
# ESC-50 layout.


def esc50_class_specs(num_classes: int, sample_rate: int) -> list[tuple[str, str, float]]:
    """``(category, family, frequency_hz)`` for each target; frequencies log-spaced from 150 Hz to
    ``min(5000, 0.3 * sample_rate)`` Hz, e.g. ``("synth_tone_150", "tone", 150.0)`` for target 0."""
    high = min(_HIGHEST_CLASS_HZ, 0.3 * sample_rate)
    freqs = np.geomspace(_LOWEST_CLASS_HZ, high, num_classes) if num_classes > 1 else np.array([440.0])
    specs = []
    for k, f in enumerate(freqs):
        family = FAMILIES[k % len(FAMILIES)]
        specs.append((f"synth_{family}_{round(f)}", family, float(f)))
    return specs


def make_synthetic_esc50(
    root: str | os.PathLike,
    num_classes: int = 5,
    clips_per_class: int = 10,
    num_folds: int = 5,
    sample_rate: int = 16000,
    seconds: float = 5.0,
    seed: int = 0,
    file_format: str = "flac",
) -> Path:
    """Write a synthetic dataset in the official ESC-50 layout and return ``root``.

    Layout: ``root/meta/esc50.csv`` (columns :data:`ESC50_COLUMNS`, rows sorted by file name) and
    ``root/audio/{fold}-{src_file}-{take}-{target}.{file_format}`` (mono 16-bit). Clip ``j`` of a class
    goes to fold ``j % num_folds + 1``, so every fold holds every class and per-class fold sizes differ
    by at most one. Consecutive clips of a class within a fold are takes A, B of one ``src_file`` (as
    in ESC-50, takes of one source never straddle folds). ``esc10`` is ``True`` for even targets.
    Existing files with the same names are overwritten; nothing else in ``root`` is touched.
    """
    if not 1 <= num_classes <= _ESC50_MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{_ESC50_MAX_CLASSES}, got {num_classes}")
    if num_folds < 1:
        raise ValueError(f"num_folds must be >= 1, got {num_folds}")
    if clips_per_class < num_folds:
        raise ValueError(
            f"clips_per_class={clips_per_class} < num_folds={num_folds}: every fold must hold every class"
        )
    if not 4000 <= sample_rate <= 384000:
        raise ValueError(f"sample_rate must be in 4000..384000 Hz, got {sample_rate}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if file_format not in ("flac", "wav"):
        raise ValueError(f"file_format must be 'flac' or 'wav', got {file_format!r}")

    root = Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    meta_rng = np.random.default_rng(np.random.SeedSequence([seed, 0, 0]))
    src_ids = iter(
        meta_rng.choice(np.arange(10_000, 300_000), size=num_classes * clips_per_class, replace=False)
    )
    num_samples = int(round(seconds * sample_rate))
    rows = []
    for target, (category, family, freq) in enumerate(esc50_class_specs(num_classes, sample_rate)):
        for fold in range(1, num_folds + 1):
            clip_ids = range(fold - 1, clips_per_class, num_folds)
            for position, j in enumerate(clip_ids):
                if position % 2 == 0:
                    src = int(next(src_ids))
                take = _TAKES[position % 2]
                rng = np.random.default_rng(np.random.SeedSequence([seed, 1, target, j]))
                audio = render_clip(rng, family, freq, sample_rate, num_samples)
                filename = f"{fold}-{src}-{take}-{target}.{file_format}"
                sf.write(root / "audio" / filename, audio.astype(np.float32), sample_rate, subtype="PCM_16")
                rows.append((filename, fold, target, category, target % 2 == 0, src, take))
    rows.sort(key=lambda r: r[0])
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ESC50_COLUMNS)
        writer.writerows(rows)
    return root


# ----------------------------------------------------------------------------------------------
# UrbanSound8K layout.


def make_synthetic_urbansound8k(
    root: str | os.PathLike,
    clips_per_fold: int = 3,
    seed: int = 0,
    num_folds: int = 10,
    min_seconds: float = 0.1,
    max_seconds: float = 4.0,
) -> Path:
    """Write a synthetic dataset in the official UrbanSound8K layout and return ``root``.

    Layout: ``root/metadata/UrbanSound8K.csv`` (columns :data:`URBANSOUND8K_COLUMNS`) and
    ``root/audio/fold{k}/{fsID}-{classID}-{occurrence}-{slice}.wav``. File ``i`` (counting fold by
    fold) has ``classID = i % 10``, so classes are balanced over the whole set. Encodings cycle through
    a seeded permutation of :data:`URBANSOUND8K_FORMATS` for every 30 files, so every encoding appears
    once there are 30 files (the default: 3 per fold x 10 folds). Durations: the first file lasts
    ``min_seconds``, the second ``max_seconds``, the rest are ``max_seconds`` (like most of the real
    set) or uniform in between, half each. ``start``/``end`` place the slice in its made-up source
    recording (``end - start`` is the duration); ``salience`` is 1 (foreground) or 2 (background).
    """
    if clips_per_fold < 1:
        raise ValueError(f"clips_per_fold must be >= 1, got {clips_per_fold}")
    if num_folds < 1:
        raise ValueError(f"num_folds must be >= 1, got {num_folds}")
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds} and {max_seconds}")

    root = Path(root)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    meta_rng = np.random.default_rng(np.random.SeedSequence([seed, 2, 0]))
    total = clips_per_fold * num_folds
    fs_ids = meta_rng.choice(np.arange(1_000, 600_000), size=total, replace=False)
    formats: list[WavFormat] = []
    while len(formats) < total:
        formats.extend(URBANSOUND8K_FORMATS[int(k)] for k in meta_rng.permutation(len(URBANSOUND8K_FORMATS)))
    rows = []
    for i in range(total):
        fold = i // clips_per_fold + 1
        class_id = i % len(URBANSOUND8K_CLASSES)
        fmt = formats[i]
        if i == 0:
            seconds = min_seconds
        elif i == 1 or meta_rng.random() < 0.5:
            seconds = max_seconds
        else:
            seconds = float(meta_rng.uniform(min_seconds, max_seconds))
        occurrence, slice_index = int(meta_rng.integers(0, 4)), int(meta_rng.integers(0, 6))
        start = slice_index * max_seconds + float(meta_rng.uniform(0.0, 2.0))
        salience = int(meta_rng.integers(1, 3))

        num_samples = max(1, int(round(seconds * fmt.sample_rate)))
        family, freq = _US8K_RECIPES[class_id]
        rng = np.random.default_rng(np.random.SeedSequence([seed, 3, i]))
        audio = render_clip(rng, family, freq, fmt.sample_rate, num_samples)
        if fmt.channels == 2:  # second channel: delayed, attenuated copy plus its own faint noise
            delay = int(rng.integers(0, 20))
            right = np.roll(audio, delay) * rng.uniform(0.5, 1.0) + 1e-3 * rng.standard_normal(num_samples)
            audio = np.stack([audio, np.clip(right, -0.99, 0.99)], axis=1)

        name = f"{int(fs_ids[i])}-{class_id}-{occurrence}-{slice_index}.wav"
        folder = root / "audio" / f"fold{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(
            folder / name,
            audio.astype(np.float32),
            fmt.sample_rate,
            subtype=fmt.subtype,
            format=fmt.container,
        )
        end = start + num_samples / fmt.sample_rate
        rows.append(
            (
                name,
                int(fs_ids[i]),
                f"{start:.6f}",
                f"{end:.6f}",
                salience,
                fold,
                class_id,
                URBANSOUND8K_CLASSES[class_id],
            )
        )
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(URBANSOUND8K_COLUMNS)
        writer.writerows(rows)
    return root

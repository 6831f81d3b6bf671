"""Audio decoding with strict validation: read with soundfile, mix to mono, resample with torchaudio.

:func:`decode_audio` is the single entry point used by the waveform cache. It either returns a clean
float32 waveform at the requested rate or raises :class:`AudioDecodeError` whose message names the file
and the reason. Files are never silently repaired: a WAV (or RF64/RIFX/AIFF/Wave64) whose sample-data
chunk is cut short (libsndfile quietly shortens such files to the bytes present, so
``sf.info(path).frames`` cannot reveal it: the chunk header is read instead), a FLAC or other file that
decodes to fewer frames than its header promises, NaN/Inf samples in float files, empty files and
out-of-range sample rates are all reported.

Resampling uses :func:`torchaudio.functional.resample` (integer-ratio polyphase: the rates are reduced
by their gcd, e.g. 44100 -> 16000 is 441 -> 160) with librosa's ``kaiser_best`` settings as given in the
torchaudio resampling tutorial: a Kaiser-windowed sinc (beta 14.77) of 64 zero crossings, rolloff 0.9476.
For 44.1 kHz -> 16 kHz the response is flat to 7 kHz (-3 dB at 7.5 kHz) and at least 115 dB down from
8.5 kHz on, where torchaudio's default (Hann, 6 zero crossings) lets 8.5 kHz through at -11 dB and
10 kHz at -45 dB, aliasing into the band a log-mel front end sees. It costs a few ms per 4 s clip, and
every file is decoded once (the waveform cache keeps the result).
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "RESAMPLE_KWARGS",
    "AudioDecodeError",
    "AudioInfo",
    "audio_info",
    "decode_audio",
]

MIN_SAMPLE_RATE = 1_000
"""Lowest sample rate (Hz) accepted for files and targets."""
MAX_SAMPLE_RATE = 384_000
"""Highest sample rate (Hz) accepted for files and targets."""

RESAMPLE_KWARGS: dict = {
    "lowpass_filter_width": 64,
    "rolloff": 0.9475937167399596,
    "resampling_method": "sinc_interp_kaiser",
    "beta": 14.769656459379492,
}
"""Keyword arguments passed to :func:`torchaudio.functional.resample` (librosa ``kaiser_best``)."""

# libsndfile's frame counts for MP3 are estimates (encoder delay and padding), so a short read there is
# not evidence of truncation; every other format it reads records an exact count.
_INEXACT_FRAME_COUNT_FORMATS = {"MP3"}
_UNKNOWN_CHUNK_SIZES = {0, 0xFFFFFFFF}  # streaming writers leave these when the length is unknown


class AudioDecodeError(ValueError):
    """An audio file could not be decoded into a valid waveform.

    Built either as ``AudioDecodeError(path, reason)`` (message ``"<path>: <reason>"``, with ``path``
    and ``reason`` kept as attributes) or, like any ``ValueError``, from a ready-made message.
    """

    def __init__(self, path: str | os.PathLike, reason: str | None = None):
        self.path = None if reason is None else str(path)
        self.reason = reason
        super().__init__(str(path) if reason is None else f"{path}: {reason}")

    def __reduce__(self):  # survive pickling across worker processes with path and reason intact
        if self.reason is None:
            return (self.__class__, (str(self),))
        return (self.__class__, (self.path, self.reason))


class AudioInfo(NamedTuple):
    """What the file header says (see :func:`audio_info`)."""

    sample_rate: int
    channels: int
    frames: int
    subtype: str


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """``(sample_rate, channels, frames, subtype)`` from the file header, e.g. ``(44100, 2, 176400, "PCM_24")``.

    Raises :class:`AudioDecodeError` for a missing or unreadable file. The header is not validated
    further: use :func:`decode_audio` for that.
    """
    info = _open_info(Path(path))
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), str(info.subtype))


def decode_audio(
    path: str | os.PathLike, sample_rate: int, mono: bool = True, min_seconds: float = 0.0
) -> np.ndarray:
    """Decode ``path`` to a contiguous float32 waveform at ``sample_rate`` Hz.

    Args:
        path: any file libsndfile reads (WAV/WAVEX/FLAC/OGG/AIFF/...).
        sample_rate: target rate in Hz, an int in [``MIN_SAMPLE_RATE``, ``MAX_SAMPLE_RATE``]. The file is
            resampled (see module docstring) only if its own rate differs.
        mono: average the channels into one (shape ``[T]``); ``False`` keeps them (shape ``[C, T]``).
        min_seconds: reject clips whose duration (at the file's own rate) is below this.

    Returns:
        float32 array, ``[T]`` if ``mono`` else ``[C, T]``; after resampling
        ``T = ceil(frames * sample_rate / file_rate)``. Samples are not clipped or normalised.

    Raises:
        AudioDecodeError: naming the file and the reason: missing file, unreadable or corrupt data (with
            libsndfile's message), zero frames, truncated data, NaN/Inf samples, a file or target sample
            rate outside the accepted range, or a clip shorter than ``min_seconds``.
    """
    path = Path(path)
    _check_target_rate(path, sample_rate)
    if (
        isinstance(min_seconds, bool)
        or not isinstance(min_seconds, (int, float))
        or not 0 <= min_seconds < math.inf
    ):
        raise AudioDecodeError(path, f"min_seconds must be a finite number >= 0, got {min_seconds!r}")

    info = _open_info(path)
    file_rate = int(info.samplerate)
    if not MIN_SAMPLE_RATE <= file_rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            path,
            f"unsupported file sample rate {file_rate} Hz (accepted: {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)",
        )
    if info.frames <= 0:
        raise AudioDecodeError(path, f"empty audio: the file holds 0 frames ({info.format}/{info.subtype})")
    shortfall = _data_chunk_shortfall(path)
    if shortfall is not None:
        declared, present = shortfall
        raise AudioDecodeError(
            path,
            f"truncated {info.format} file: the sample-data chunk header declares {declared} bytes "
            f"but only {present} are in the file",
        )

    try:
        data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioDecodeError(path, f"corrupt audio data, decoding failed ({err})") from err
    if data.shape[0] == 0:
        raise AudioDecodeError(path, "empty audio: no frames could be decoded")
    if data.shape[0] < info.frames and info.format not in _INEXACT_FRAME_COUNT_FORMATS:
        raise AudioDecodeError(
            path, f"truncated audio: the header declares {info.frames} frames but only {data.shape[0]} decode"
        )
    if not np.isfinite(data).all():
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise AudioDecodeError(path, f"{bad} non-finite samples (NaN or Inf) in {info.subtype} data")
    seconds = data.shape[0] / file_rate
    if seconds < min_seconds:
        raise AudioDecodeError(
            path,
            f"too short: {seconds:.4f} s ({data.shape[0]} frames at {file_rate} Hz) < min_seconds={min_seconds}",
        )

    wave = data.T  # [C, T]
    if mono:
        wave = wave.mean(axis=0, keepdims=True, dtype=np.float32)
    if file_rate != sample_rate:
        wave = AF.resample(
            torch.from_numpy(np.ascontiguousarray(wave)), file_rate, int(sample_rate), **RESAMPLE_KWARGS
        )
        wave = wave.numpy()
    wave = wave[0] if mono else wave
    return np.ascontiguousarray(wave, dtype=np.float32)


def _check_target_rate(path: Path, sample_rate: object) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise AudioDecodeError(path, f"target sample_rate must be a positive int, got {sample_rate!r}")
    if not MIN_SAMPLE_RATE <= int(sample_rate) <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            path,
            f"unsupported target sample_rate {sample_rate} Hz (accepted: {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)",
        )


def _open_info(path: Path) -> sf._SoundFileInfo:
    if not path.exists():
        raise AudioDecodeError(path, "file does not exist")
    if not path.is_file():
        raise AudioDecodeError(path, "not a regular file")
    try:
        return sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as err:
        size = path.stat().st_size
        raise AudioDecodeError(path, f"unreadable or corrupt audio file ({size} bytes): {err}") from err


class _Container(NamedTuple):
    """How to walk the chunks of one uncompressed container to its sample-data chunk."""

    first_chunk: int  # offset of the first chunk after the file header
    id_size: int  # bytes of a chunk id (4, or a 16-byte GUID in Wave64)
    size_format: str  # struct format of the chunk size field
    size_counts_header: bool  # Wave64 sizes include the 24-byte chunk header
    align: int  # chunks start on multiples of this
    data_id: bytes  # id (prefix) of the sample-data chunk


_RIFF = _Container(12, 4, "<I", False, 2, b"data")
_CONTAINERS = {
    (b"RIFF", b"WAVE"): _RIFF,
    (b"RF64", b"WAVE"): _RIFF,
    (b"RIFX", b"WAVE"): _Container(12, 4, ">I", False, 2, b"data"),
    (b"FORM", b"AIFF"): _Container(12, 4, ">I", False, 2, b"SSND"),
    (b"FORM", b"AIFC"): _Container(12, 4, ">I", False, 2, b"SSND"),
    (b"riff", b"wave"): _Container(40, 16, "<Q", True, 8, b"data"),  # Sony Wave64 (GUID ids)
}


def _data_chunk_shortfall(path: Path) -> tuple[int, int] | None:
    """(declared bytes, bytes present) when the sample-data chunk of a WAV/RF64/RIFX/AIFF/Wave64 file is
    cut short, else ``None``.

    libsndfile silently shortens such files to the frames present (``sf.info`` already reports the
    smaller count), so the chunk header is read here. ``None`` also for other formats, unknown
    (streaming) data sizes, and headers too damaged to walk (libsndfile reports those itself).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(40)
        key = (head[:4], head[8:12]) if head[:4] != b"riff" else (b"riff", head[24:28])
        layout = _CONTAINERS.get(key)
        if layout is None:
            return None
        header_size = layout.id_size + struct.calcsize(layout.size_format)
        rf64_data_size = None
        pos = layout.first_chunk
        while pos + header_size <= size:
            f.seek(pos)
            header = f.read(header_size)
            chunk_id = header[: layout.id_size]
            (chunk_size,) = struct.unpack(layout.size_format, header[layout.id_size :])
            if layout.size_counts_header:
                chunk_size -= header_size
            if chunk_id == b"ds64":  # RF64: the 64-bit sizes live here, the 32-bit fields hold 0xFFFFFFFF
                body = f.read(16)
                if len(body) == 16:
                    rf64_data_size = struct.unpack("<QQ", body)[1]
            elif chunk_id[:4] == layout.data_id:
                if key[0] == b"RF64" and chunk_size == 0xFFFFFFFF and rf64_data_size is not None:
                    chunk_size = rf64_data_size
                elif chunk_size in _UNKNOWN_CHUNK_SIZES or chunk_size < 0:
                    return None
                present = size - (pos + header_size)
                return (chunk_size, present) if chunk_size > present else None
            if chunk_size < 0:
                return None
            pos += header_size + chunk_size
            pos += -pos % layout.align  # chunks are padded to the container's alignment
    return None

"""Audio decoding with strict validation: read with soundfile, mix to mono, resample with soxr.

:func:`decode_audio` is the single entry point used by the waveform cache. It either returns a clean
float32 waveform at the requested rate or raises :class:`AudioDecodeError` whose message names the file
and the reason: every failure, of any kind (libsndfile errors, numpy allocation errors, out-of-memory in
the resampler, anything else), leaves it as that one error type, so ``skip_bad_files`` and per-file
reports always work. Files are never silently repaired: a WAV (or RF64/RIFX/AIFF/Wave64) whose
sample-data chunk is cut short (libsndfile quietly shortens such files to the bytes present, so
``sf.info(path).frames`` cannot reveal it: the chunk header is read instead), a FLAC or other file that
decodes to fewer frames than its header promises, NaN/Inf samples in float files, empty files and
out-of-range sample rates are all reported. A header that does not know the length (a FLAC whose
STREAMINFO total is 0, as streaming encoders write it; libsndfile then reports 2**63 - 1 frames) is not an
error: every file is read block by block to its end, whatever the header claims, and a header that
claims more frames than the file holds is reported as truncation.

Resampling (:func:`resample`) uses libsoxr (python-soxr, the resampler librosa uses) at its ``VHQ``
setting: a polyphase filter bank whose size depends on the quality setting, not on the rate pair, so time
and memory grow with the length of the signal only, for every pair of rates from 1 Hz to 384 kHz (the
integer-ratio sinc kernel of ``torchaudio.functional.resample`` used before needed ``orig/gcd`` phases:
a 16001 Hz file took 22 s and 5.2 GB). ``VHQ`` (measured for 44.1 kHz -> 16 kHz): flat within 0.01 dB
to 7.3 kHz, -0.3 dB at 7.5 kHz, and tones at 8.5 kHz or above (which would alias into the band a log-mel
front end sees) come out more than 150 dB down, at the float32 noise floor; phase linear.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "RESAMPLE_QUALITY",
    "UNKNOWN_FRAMES",
    "AudioDecodeError",
    "AudioInfo",
    "audio_info",
    "decode_audio",
    "resample",
]

MIN_SAMPLE_RATE = 1_000
"""Lowest sample rate (Hz) accepted for files and targets."""
MAX_SAMPLE_RATE = 384_000
"""Highest sample rate (Hz) accepted for files and targets."""

RESAMPLE_QUALITY = "VHQ"
"""The libsoxr quality preset :func:`resample` uses (see the module docstring)."""
UNKNOWN_FRAMES = -1
""":attr:`AudioInfo.frames` of a file whose header does not record its length."""

_SF_COUNT_MAX = 2**63 - 1  # libsndfile's frame count for "unknown length"
_READ_BLOCK = 1 << 20  # frames per read (4 MB per channel)

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

    ``frames`` is :data:`UNKNOWN_FRAMES` (-1) when the header does not record the length (a streamed FLAC
    whose total-samples field is 0); :func:`decode_audio` still reads such a file to its end.

    Raises :class:`AudioDecodeError` for a missing or unreadable file. The header is not validated
    further: use :func:`decode_audio` for that.
    """
    path = Path(path)
    info = _open_info(path)
    frames = UNKNOWN_FRAMES if _length_unknown(info) else int(info.frames)
    return AudioInfo(int(info.samplerate), int(info.channels), frames, str(info.subtype))


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample ``x`` from ``orig_sr`` to ``target_sr`` Hz with libsoxr (:data:`RESAMPLE_QUALITY`).

    Args:
        x: float waveform, ``[T]`` or ``[C, T]`` (time last; each channel is resampled on its own).
        orig_sr, target_sr: rates in Hz, ints in ``[1, MAX_SAMPLE_RATE]``; any pair, co-prime or not.

    Returns:
        float32 array of shape ``[T']`` or ``[C, T']`` with ``T' = ceil(T * target_sr / orig_sr)`` (the
        last sample is zero where libsoxr's own length, the nearest integer, is one shorter). ``x`` itself
        (as float32) when the rates are equal.

    Time and memory are linear in ``T + T'`` whatever the rates (a fixed-size polyphase filter bank, see the
    module docstring): the worst pair in ``benchmarks/resample_worst_case.py`` takes a few ms for 0.25 s.

    Raises:
        ValueError: a rate that is not an int in range, or ``x`` not 1-D/2-D.
    """
    for name, rate in (("orig_sr", orig_sr), ("target_sr", target_sr)):
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not 1 <= rate <= MAX_SAMPLE_RATE:
            raise ValueError(f"resample: {name} must be an int in [1, {MAX_SAMPLE_RATE}] Hz, got {rate!r}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (1, 2):
        raise ValueError(f"resample: expected a waveform of shape [T] or [C, T], got shape {x.shape}")
    if orig_sr == target_sr:
        return x
    frames = x.shape[-1]
    out_frames = -(-frames * int(target_sr) // int(orig_sr))  # ceil, exact in integers
    if frames == 0:
        return np.zeros(x.shape[:-1] + (0,), np.float32)
    y = soxr.resample(np.ascontiguousarray(x.T), int(orig_sr), int(target_sr), quality=RESAMPLE_QUALITY).T
    if y.shape[-1] != out_frames:
        fitted = np.zeros(x.shape[:-1] + (out_frames,), np.float32)
        keep = min(out_frames, y.shape[-1])
        fitted[..., :keep] = y[..., :keep]
        y = fitted
    return np.ascontiguousarray(y, dtype=np.float32)


def decode_audio(
    path: str | os.PathLike, sample_rate: int, mono: bool = True, min_seconds: float = 0.0
) -> np.ndarray:
    """Decode ``path`` to a contiguous float32 waveform at ``sample_rate`` Hz.

    Args:
        path: any file libsndfile reads (WAV/WAVEX/FLAC/OGG/AIFF/...).
        sample_rate: target rate in Hz, an int in [``MIN_SAMPLE_RATE``, ``MAX_SAMPLE_RATE``]. The file is
            resampled (:func:`resample`) only if its own rate differs.
        mono: average the channels into one (shape ``[T]``); ``False`` keeps them (shape ``[C, T]``).
        min_seconds: reject clips whose duration (at the file's own rate) is below this.

    Returns:
        float32 array, ``[T]`` if ``mono`` else ``[C, T]``; after resampling
        ``T = ceil(frames * sample_rate / file_rate)``. Samples are not clipped or normalised.

    Raises:
        AudioDecodeError: naming the file and the reason: missing file, unreadable or corrupt data (with
            libsndfile's message), zero frames, truncated data, NaN/Inf samples, a file or target sample
            rate outside the accepted range, a clip shorter than ``min_seconds``, and any other failure
            while reading or resampling (its type and message kept, the original chained as the cause).
    """
    path = Path(path)
    try:
        return _decode(path, sample_rate, mono, min_seconds)
    except AudioDecodeError:
        raise
    except Exception as err:  # noqa: BLE001 - every failure becomes the one error that names the file
        kind = "out of memory" if isinstance(err, MemoryError) else type(err).__name__
        raise AudioDecodeError(path, f"decoding failed ({kind}: {err})") from err


def _decode(path: Path, sample_rate: int, mono: bool, min_seconds: float) -> np.ndarray:
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
    unknown_length = _length_unknown(info)
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
        data = _read_all(path)
    except (sf.SoundFileError, sf.LibsndfileError, RuntimeError) as err:
        raise AudioDecodeError(path, f"corrupt audio data, decoding failed ({err})") from err
    if data.shape[0] == 0:
        raise AudioDecodeError(path, "empty audio: no frames could be decoded")
    if (
        not unknown_length
        and data.shape[0] < info.frames
        and info.format not in _INEXACT_FRAME_COUNT_FORMATS
    ):
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
    wave = resample(wave, file_rate, int(sample_rate))
    wave = wave[0] if mono else wave
    return np.ascontiguousarray(wave, dtype=np.float32)


def _length_unknown(info) -> bool:
    return int(info.frames) >= _SF_COUNT_MAX


def _read_all(path: Path) -> np.ndarray:
    """Every frame ``path`` holds, as float32 ``[T, C]``, whatever its header claims.

    ``sf.read`` allocates the frame count of the header up front (2**63 - 1 for a FLAC of unknown length:
    "array is too big"), and ``SoundFile.read`` seeks to its new position after every read, which libsndfile
    refuses at the end of a stream that is shorter than its header says (the frames of that read are then
    lost behind "Internal psf_fseek() failed"). So the file is read in blocks of :data:`_READ_BLOCK` frames
    with libsndfile's own ``sf_readf_float`` through soundfile's cffi handle, which returns the number of
    frames read and 0 at the end of the data: memory follows what the file holds, not what it claims.
    """
    with sf.SoundFile(str(path)) as f:
        channels = f.channels
        blocks = list(read_sndfile_blocks(f, _READ_BLOCK))
    if len(blocks) == 1:
        return np.ascontiguousarray(blocks[0])
    return np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)


def read_sndfile_blocks(handle: sf.SoundFile, block_frames: int):
    """Yield float32 ``[n, C]`` blocks (``n <= block_frames``) of an open ``SoundFile`` until its data ends,
    whatever its header claims about the length (see :func:`_read_all`; the whole-file decoder and the
    streaming reader of :mod:`audio_ssl.data.stream` both read this way). Raises RuntimeError with
    libsndfile's message when a read fails."""
    channels = handle.channels
    while True:
        block = np.empty((block_frames, channels), np.float32)
        got = sf._snd.sf_readf_float(handle._file, sf._ffi.cast("float *", block.ctypes.data), block_frames)
        error = sf._snd.sf_error(handle._file)
        if error:
            raise RuntimeError(sf._ffi.string(sf._snd.sf_error_number(error)).decode("utf-8", "replace"))
        if got <= 0:
            return
        yield block[:got] if got < block_frames else block


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

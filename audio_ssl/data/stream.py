"""Block-by-block decoding of recordings of any length and format, mixed to mono and resampled as they stream.

:func:`open_audio` opens a file with libsndfile (WAV/RF64/W64/FLAC/OGG-Vorbis/Opus/MP3/AIFF/...) and, for what
libsndfile cannot read (m4a/AAC/ALAC, webm/Opus, wma, mp4, ...), with FFmpeg's decoders through PyAV
(``pip install 'audio-ssl[formats]'``) when PyAV is installed. The returned :class:`AudioStream` yields
float32 blocks ``[frames, channels]`` at the file's own rate; :func:`stream_mono` turns them into mono blocks
``[samples]`` at a target rate, resampled by ``soxr.ResampleStream`` (its output, concatenated, equals
``soxr.resample`` of the whole signal sample for sample). Only one block (plus the resampler's filter state)
is in memory at a time, so memory does not grow with the length of the recording.

The checks of :func:`audio_ssl.data.audio.decode_audio` apply block by block: a missing or unreadable file,
a file or target rate outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``, a WAV-family file whose sample-data
chunk is cut short, fewer frames than the header declares (where the header count is exact), NaN/Inf
samples and a file with no audio all raise :class:`~audio_ssl.data.audio.AudioDecodeError` naming the file
and the reason; a problem found late in a long file is raised when its block is reached.
"""

from __future__ import annotations

import abc
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from audio_ssl.data.audio import (
    _INEXACT_FRAME_COUNT_FORMATS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    RESAMPLE_QUALITY,
    AudioDecodeError,
    _check_target_rate,
    _data_chunk_shortfall,
    read_sndfile_blocks,
)

__all__ = [
    "BLOCK_SECONDS",
    "FFMPEG_SUFFIXES",
    "INSTALL_HINT",
    "RESAMPLE_QUALITY",
    "AudioStream",
    "ffmpeg_available",
    "open_audio",
    "stream_mono",
]

BLOCK_SECONDS = 10.0
"""Default block length (seconds at the file's rate) read per step."""
# RESAMPLE_QUALITY (imported above) is the whole-file decoder's soxr quality: both paths give the same samples.
FFMPEG_SUFFIXES = frozenset({"m4a", "m4b", "mp4", "aac", "adts", "alac", "wma", "asf", "webm", "weba", "mka",
                             "mkv", "opus", "amr", "3gp", "3ga", "ac3", "ec3", "wv", "ape", "mp2", "mov"})
"""Suffixes (lower case, no dot) of formats that people record in and that need FFmpeg (through PyAV); some,
like Opus in Ogg, libsndfile also reads, and it is tried first."""
INSTALL_HINT = "install PyAV (FFmpeg's decoders): pip install 'audio-ssl[formats]' (or: pip install av)"


def ffmpeg_available() -> bool:
    """Whether PyAV (``import av``) is installed, i.e. whether :data:`FFMPEG_SUFFIXES` formats can be read."""
    return importlib.util.find_spec("av") is not None


class AudioStream(abc.ABC):
    """An open recording read block by block (a context manager; see :func:`open_audio`).

    Attributes:
        path: the file.
        sample_rate: the file's rate in Hz.
        channels: channel count.
        frames: frames the header declares (an estimate for MP3 and FFmpeg formats; ``None`` if unknown).
        backend: ``"libsndfile"`` or ``"ffmpeg"``.
        format: the container/codec as the backend names it, e.g. ``"WAV/PCM_16"`` or ``"mov,mp4,m4a/aac"``.
    """

    def __init__(self, path: Path, sample_rate: int, channels: int, frames: int | None, backend: str, fmt: str):
        self.path, self.sample_rate, self.channels = path, int(sample_rate), int(channels)
        self.frames, self.backend, self.format = frames, backend, fmt
        self.frames_read = 0
        """Frames yielded so far by :meth:`blocks`."""

    @property
    def duration(self) -> float | None:
        """Seconds the header declares (``frames / sample_rate``), ``None`` if unknown."""
        return None if self.frames is None else self.frames / self.sample_rate

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        """Float32 blocks ``[n, channels]`` (``n <= block_frames``; the last may be shorter) at the file's rate.

        Raises :class:`AudioDecodeError` for corrupt data, NaN/Inf samples, no frames at all, or (formats
        with exact frame counts) fewer frames than the header declares.
        """
        if block_frames <= 0:
            raise ValueError(f"block_frames must be positive, got {block_frames}")
        for block in self._read(block_frames):
            if not np.isfinite(block).all():
                bad = int(block.size - np.count_nonzero(np.isfinite(block)))
                where = self.frames_read / self.sample_rate
                raise AudioDecodeError(self.path, f"{bad} non-finite samples (NaN or Inf) in the block at {where:.1f} s")
            self.frames_read += len(block)
            yield block
        if self.frames_read == 0:
            raise AudioDecodeError(self.path, f"empty audio: no frames could be decoded ({self.format})")
        if self.exact_frames and self.frames is not None and self.frames_read < self.frames:
            raise AudioDecodeError(self.path, f"truncated audio: the header declares {self.frames} frames but only "
                                              f"{self.frames_read} decode")

    exact_frames = True

    @abc.abstractmethod
    def _read(self, block_frames: int) -> Iterator[np.ndarray]:
        """Raw float32 blocks ``[n, channels]`` from the backend (each backend implements it)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend's file handle."""

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _SoundFileStream(AudioStream):
    def __init__(self, path: Path, handle: sf.SoundFile):
        self._handle = handle
        frames = None if int(handle.frames) >= 2**63 - 1 else int(handle.frames)  # 2**63-1: "unknown length"
        super().__init__(path, handle.samplerate, handle.channels, frames, "libsndfile",
                         f"{handle.format}/{handle.subtype}")
        self.exact_frames = handle.format not in _INEXACT_FRAME_COUNT_FORMATS

    def _read(self, block_frames: int) -> Iterator[np.ndarray]:
        # float32 in [-1, 1) for integer formats, as sf.read; read to the end of the data whatever the header
        # says (a streamed FLAC of unknown length), like the whole-file decoder
        try:
            yield from read_sndfile_blocks(self._handle, block_frames)
        except (sf.SoundFileError, RuntimeError) as err:
            raise AudioDecodeError(self.path, f"corrupt audio data, decoding failed ({err})") from err

    def close(self) -> None:
        self._handle.close()


class _FFmpegStream(AudioStream):
    exact_frames = False  # container durations are estimates (encoder delay, padding)

    def __init__(self, path: Path, container):
        self._container = container
        self._stream = container.streams.audio[0]
        codec = self._stream.codec_context
        rate, channels = int(codec.sample_rate or self._stream.rate or 0), int(codec.channels or 0)
        frames = None
        if self._stream.duration is not None and self._stream.time_base is not None:
            frames = round(float(self._stream.duration * self._stream.time_base) * rate)
        elif container.duration is not None:
            frames = round(container.duration / 1_000_000 * rate)  # av.time_base: microseconds
        super().__init__(path, rate, channels, frames, "ffmpeg", f"{container.format.name}/{codec.name}")

    def _read(self, block_frames: int) -> Iterator[np.ndarray]:
        import av

        resampler = av.AudioResampler(format="fltp")  # sample format only: rate and layout stay the file's
        pending: list[np.ndarray] = []
        held = 0
        try:
            for frame in self._container.decode(self._stream):
                if frame.sample_rate != self.sample_rate:
                    raise AudioDecodeError(self.path, f"the sample rate changes from {self.sample_rate} to "
                                                      f"{frame.sample_rate} Hz inside the stream")
                for out in resampler.resample(frame):
                    planes = out.to_ndarray()  # [channels, n] float32
                    if planes.shape[0] != self.channels:
                        raise AudioDecodeError(self.path, f"the channel count changes from {self.channels} to "
                                                          f"{planes.shape[0]} inside the stream")
                    pending.append(planes.T)
                    held += planes.shape[1]
                    while held >= block_frames:
                        joined = np.concatenate(pending)
                        yield np.ascontiguousarray(joined[:block_frames])
                        pending, held = [joined[block_frames:]], len(joined) - block_frames
        except av.FFmpegError as err:
            raise AudioDecodeError(self.path, f"corrupt audio data, FFmpeg decoding failed ({err})") from err
        if held:
            yield np.ascontiguousarray(np.concatenate(pending))

    def close(self) -> None:
        self._container.close()


def open_audio(path: str | os.PathLike) -> AudioStream:
    """Open ``path`` for block-by-block reading: libsndfile first, then FFmpeg (PyAV) if it is installed.

    Raises:
        AudioDecodeError: naming the file and the reason: missing file, not a regular file, a format
            neither decoder reads (with both messages), a format that needs PyAV when it is not installed
            (with what to install), no audio stream, a truncated WAV-family data chunk, a sample rate
            outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]`` or an empty file.
    """
    path = Path(path)
    if not path.exists():
        raise AudioDecodeError(path, "file does not exist")
    if not path.is_file():
        raise AudioDecodeError(path, "not a regular file")
    size = path.stat().st_size
    try:
        stream: AudioStream = _SoundFileStream(path, sf.SoundFile(str(path)))
    except (sf.SoundFileError, RuntimeError) as sndfile_err:
        suffix = path.suffix.lower().lstrip(".")
        if not ffmpeg_available():
            if suffix in FFMPEG_SUFFIXES:
                raise AudioDecodeError(path, f".{suffix} files need FFmpeg's decoders, which are not installed: "
                                             f"{INSTALL_HINT}") from None
            raise AudioDecodeError(path, f"unreadable or corrupt audio file ({size} bytes): {sndfile_err} (for "
                                         f"compressed formats libsndfile does not read, {INSTALL_HINT})") from None
        stream = _open_ffmpeg(path, size, sndfile_err)
    else:
        shortfall = _data_chunk_shortfall(path)
        if shortfall is not None:
            stream.close()
            raise AudioDecodeError(path, f"truncated {stream.format.split('/')[0]} file: the sample-data chunk header "
                                         f"declares {shortfall[0]} bytes but only {shortfall[1]} are in the file")
    if not MIN_SAMPLE_RATE <= stream.sample_rate <= MAX_SAMPLE_RATE:
        stream.close()
        raise AudioDecodeError(path, f"unsupported file sample rate {stream.sample_rate} Hz "
                                     f"(accepted: {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)")
    if stream.channels <= 0:
        stream.close()
        raise AudioDecodeError(path, f"no audio channels ({stream.format})")
    if stream.frames == 0 and stream.backend == "libsndfile":
        stream.close()
        raise AudioDecodeError(path, f"empty audio: the file holds 0 frames ({stream.format})")
    return stream


def _open_ffmpeg(path: Path, size: int, sndfile_err: Exception) -> AudioStream:
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise AudioDecodeError(path, f"unreadable or corrupt audio file ({size} bytes): libsndfile: {sndfile_err}; "
                                     f"FFmpeg: {err}") from None
    if not container.streams.audio:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise AudioDecodeError(path, f"no audio stream in this {container.format.name} file (streams: "
                                     f"{', '.join(kinds)})")
    return _FFmpegStream(path, container)


def stream_mono(stream: AudioStream, sample_rate: int, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Mono float32 blocks ``[n]`` at ``sample_rate`` Hz from an open :class:`AudioStream`.

    Channels are averaged, then (if the rates differ) the blocks go through one ``soxr.ResampleStream``
    (:data:`RESAMPLE_QUALITY`), flushed at the end: the concatenated output equals ``soxr.resample`` of the
    whole mono signal (``frames * sample_rate / file_rate`` samples, rounded up). Blocks may be empty
    while the resampler fills its filter. Memory: one block of ``block_seconds`` at the file's rate.

    Raises:
        AudioDecodeError: a bad target rate, or anything :meth:`AudioStream.blocks` raises.
    """
    _check_target_rate(stream.path, sample_rate)
    block_frames = max(1, round(block_seconds * stream.sample_rate))
    resampler = None
    if stream.sample_rate != sample_rate:
        resampler = soxr.ResampleStream(stream.sample_rate, int(sample_rate), 1, dtype="float32",
                                        quality=RESAMPLE_QUALITY)
    for block in stream.blocks(block_frames):
        mono = block[:, 0].copy() if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
        yield mono if resampler is None else resampler.resample_chunk(mono, last=False)
    if resampler is not None:
        yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)

"""Streaming decode (audio_ssl.data.stream): blocks add up to the whole-file decode, memory stays bounded, every
failure names the file, compressed formats go through FFmpeg (PyAV) and say what to install without it."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import soxr
from encoded_audio import encode

from audio_ssl.data import stream as stream_module
from audio_ssl.data.audio import AudioDecodeError
from audio_ssl.data.stream import RESAMPLE_QUALITY, open_audio, stream_mono


def noise(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 0.5, (round(seconds * rate), channels)).astype(np.float32)


def streamed(path, rate: int, block_seconds: float = 1.0) -> np.ndarray:
    with open_audio(path) as stream:
        return np.concatenate(list(stream_mono(stream, rate, block_seconds)))


@pytest.mark.parametrize(("rate", "channels", "subtype", "suffix"),
                         [(16000, 1, "PCM_16", "wav"), (44100, 2, "PCM_24", "wav"), (22050, 2, "PCM_16", "flac"),
                          (48000, 1, "FLOAT", "wav")])
def test_blocks_add_up_to_the_whole_file_decode(tmp_path, rate, channels, subtype, suffix):
    path = tmp_path / f"x.{suffix}"
    sf.write(path, noise(7.3, rate, channels), rate, subtype=subtype)
    whole, _ = sf.read(path, dtype="float32", always_2d=True)
    mono = whole.mean(axis=1, dtype=np.float32)
    expected = mono if rate == 16000 else soxr.resample(mono, rate, 16000, quality=RESAMPLE_QUALITY)
    got = streamed(path, 16000, block_seconds=0.77)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_memory_is_bounded_by_the_block(tmp_path, monkeypatch):
    """Three minutes of 44.1 kHz stereo (63 MB as float32): the reader never asks for more than a block,
    and the peak of Python/numpy allocations stays near one block whatever the length."""
    path = tmp_path / "long.wav"
    rate, seconds = 44100, 180
    with sf.SoundFile(path, "w", rate, 2, subtype="PCM_16") as f:
        for i in range(seconds // 10):
            f.write(noise(10, rate, 2, seed=i))
    import audio_ssl.data.stream as stream_module

    requested = []
    read = stream_module.read_sndfile_blocks

    def spy(handle, block_frames):
        requested.append(block_frames)
        return read(handle, block_frames)

    monkeypatch.setattr(stream_module, "read_sndfile_blocks", spy)
    tracemalloc.start()
    try:
        total = 0
        with open_audio(path) as stream:
            for block in stream_mono(stream, 16000, block_seconds=2.0):
                total += len(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == seconds * 16000
    assert requested and max(requested) == 2 * rate and -1 not in requested
    whole_file = seconds * rate * 2 * 4
    assert peak < 4 * (2 * rate * 2 * 4), f"peak {peak / 2**20:.1f} MiB for 2 s blocks"  # ~1.4 MiB per block
    assert peak < whole_file / 20


def test_failures_name_the_file_and_the_reason(tmp_path):
    with pytest.raises(AudioDecodeError, match=r"missing\.wav: file does not exist"):
        open_audio(tmp_path / "missing.wav")
    bad = noise(30, 16000, 1)
    bad[25 * 16000 + 5] = np.nan  # found when its block is reached, with the time
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match=r"nan\.wav: 1 non-finite samples .* at 2\d\.0 s"):
        streamed(tmp_path / "nan.wav", 16000, block_seconds=5.0)
    sf.write(tmp_path / "cut.wav", noise(2, 16000, 1), 16000, subtype="PCM_16")
    data = (tmp_path / "cut.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioDecodeError, match=r"cut\.wav: truncated WAV file"):
        open_audio(tmp_path / "cut.wav")
    sf.write(tmp_path / "rate.wav", noise(0.1, 500, 1), 500)
    with pytest.raises(AudioDecodeError, match=r"rate\.wav: unsupported file sample rate 500 Hz"):
        open_audio(tmp_path / "rate.wav")
    (tmp_path / "junk.m4a").write_bytes(b"\0" * 100)
    with pytest.raises(AudioDecodeError, match=r"junk\.m4a: unreadable or corrupt audio file \(100 bytes\)"):
        open_audio(tmp_path / "junk.m4a")


@pytest.mark.parametrize("suffix", ["m4a", "aac", "webm", "mp3", "wma"])
def test_compressed_formats_decode_through_ffmpeg(tmp_path, suffix):
    pytest.importorskip("av")
    rate = 44100 if suffix == "wma" else 48000
    t = np.arange(3 * rate) / rate
    left = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = encode(tmp_path / f"rec.{suffix}", np.stack([left, 0.5 * left], axis=1), rate)
    with open_audio(path) as stream:
        assert (stream.sample_rate, stream.channels) == (rate, 2)
        assert stream.backend == ("libsndfile" if suffix == "mp3" else "ffmpeg")  # libsndfile reads mp3 itself
        got = np.concatenate(list(stream_mono(stream, 16000, block_seconds=0.5)))
    # lossy codecs add priming samples or drop a partial last frame (< 0.1 s here); level and pitch come through
    assert 2.95 * 16000 <= len(got) <= 3.1 * 16000
    steady = got[4000:-4000]
    assert np.sqrt(np.mean(steady**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.05)
    spectrum = np.abs(np.fft.rfft(steady))
    assert np.fft.rfftfreq(len(steady), 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=2)


def test_without_pyav_compressed_formats_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(stream_module, "ffmpeg_available", lambda: False)
    (tmp_path / "rec.m4a").write_bytes(b"\0\0\0\x20ftypM4A " + b"\0" * 200)
    with pytest.raises(AudioDecodeError, match=r"rec\.m4a: \.m4a files need FFmpeg's decoders.*pip install 'audio-ssl\[formats\]'"):
        open_audio(tmp_path / "rec.m4a")
    (tmp_path / "odd.bin").write_bytes(b"\1" * 300)
    with pytest.raises(AudioDecodeError, match=r"odd\.bin: unreadable or corrupt audio file \(300 bytes\).*pip install av"):
        open_audio(tmp_path / "odd.bin")

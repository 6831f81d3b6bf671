"""Tests for audio_ssl.data.audio: decoding every UrbanSound8K encoding, resampling, mono mixing, bad files."""

from __future__ import annotations

import csv
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_ssl.data.audio import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    AudioDecodeError,
    AudioInfo,
    audio_info,
    decode_audio,
)
from audio_ssl.data.synthetic import URBANSOUND8K_FORMATS, WavFormat, make_synthetic_urbansound8k

TARGET = 16000
KSDATAFORMAT_SUBTYPE_PCM = bytes.fromhex("0100000000001000800000aa00389b71")
WAVE_FORMAT_TAGS = {"PCM_16": 0x0001, "FLOAT": 0x0003, "PCM_24": 0xFFFE}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def riff_chunks(path: Path) -> dict[bytes, bytes]:
    """Chunk id -> body of a little-endian RIFF/WAVE file (independent of the code under test)."""
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE"
    chunks, pos = {}, 12
    while pos + 8 <= len(raw):
        cid, size = struct.unpack("<4sI", raw[pos : pos + 8])
        chunks[cid] = raw[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    return chunks


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr  # float64 phase, then float32 samples
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1)


def peak_frequency(x: np.ndarray, sr: int) -> float:
    """Frequency of the largest spectral peak, to a fraction of a Hz (Hann window, 16x zero padding)."""
    n = 16 * len(x)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    return float(np.argmax(spectrum) * sr / n)


# ----------------------------------------------------------------------------------------------
# Every UrbanSound8K encoding.


@pytest.fixture(scope="module")
def us8k_files(tmp_path_factory) -> list[tuple[Path, WavFormat]]:
    root = make_synthetic_urbansound8k(tmp_path_factory.mktemp("us8k"), max_seconds=1.0)
    with open(root / "metadata" / "UrbanSound8K.csv") as f:
        rows = list(csv.DictReader(f))
    files = []
    for row in rows:
        path = root / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
        info = sf.info(str(path))
        files.append((path, WavFormat(info.subtype, info.format, info.channels, info.samplerate)))
    return files


def test_fixture_covers_every_us8k_format(us8k_files):
    assert {fmt for _, fmt in us8k_files} == set(URBANSOUND8K_FORMATS)


def test_every_us8k_format_decodes_to_16k_mono(us8k_files):
    for path, fmt in us8k_files:
        frames = sf.info(str(path)).frames
        x = decode_audio(path, TARGET)
        assert x.dtype == np.float32 and x.ndim == 1 and x.flags.c_contiguous, (path, fmt)
        assert abs(len(x) - round(frames * TARGET / fmt.sample_rate)) <= 1, (path, fmt)
        assert np.isfinite(x).all() and 0 < np.abs(x).max() < 1.5, (path, fmt)


def test_every_us8k_format_decodes_exactly_at_native_rate(us8k_files):
    """No resampling at the file's own rate: samples are exactly soundfile's, channels kept or averaged."""
    for path, fmt in us8k_files:
        reference, _ = sf.read(str(path), dtype="float32", always_2d=True)
        multi = decode_audio(path, fmt.sample_rate, mono=False)
        assert multi.shape == (fmt.channels, len(reference)), (path, fmt)
        np.testing.assert_array_equal(multi, reference.T)
        np.testing.assert_allclose(decode_audio(path, fmt.sample_rate), reference.mean(axis=1), atol=1e-7)


def test_wav_headers_use_the_expected_format_tags(us8k_files):
    """24-bit files really are WAVE_FORMAT_EXTENSIBLE (0xFFFE) with the PCM sub-format GUID."""
    for path, fmt in us8k_files:
        body = riff_chunks(path)[b"fmt "]
        tag, channels, rate = struct.unpack("<HHI", body[:8])
        bits = struct.unpack("<H", body[14:16])[0]
        assert (tag, channels, rate) == (WAVE_FORMAT_TAGS[fmt.subtype], fmt.channels, fmt.sample_rate), path
        assert bits == {"PCM_16": 16, "PCM_24": 24, "FLOAT": 32}[fmt.subtype]
        if tag == 0xFFFE:
            cb_size, valid_bits = struct.unpack("<HH", body[16:20])
            assert fmt.container == "WAVEX" and cb_size == 22 and valid_bits == 24
            assert body[24:40] == KSDATAFORMAT_SUBTYPE_PCM


def test_audio_info(us8k_files):
    path, fmt = us8k_files[0]
    info = audio_info(path)
    assert isinstance(info, AudioInfo) and isinstance(info, tuple)
    sample_rate, channels, frames, subtype = info
    assert (sample_rate, channels, subtype) == (fmt.sample_rate, fmt.channels, fmt.subtype)
    assert frames == sf.info(str(path)).frames


# ----------------------------------------------------------------------------------------------
# Resampling.


@pytest.mark.parametrize("orig", [44100, 96000, 22050, 48000, 8000])
@pytest.mark.parametrize("freq", [440.0, 3000.0])
def test_resampled_sine_keeps_frequency_and_amplitude(tmp_path, orig, freq):
    path = tmp_path / "sine.wav"
    sf.write(path, sine(freq, orig, 1.0, amp=0.5), orig, subtype="FLOAT")
    y = decode_audio(path, TARGET)
    assert abs(len(y) - round(orig * 1.0 * TARGET / orig)) <= 1
    middle = y[2000:-2000].astype(np.float64)  # away from the zero-padded edges
    assert peak_frequency(middle, TARGET) == pytest.approx(freq, abs=0.5)
    assert np.sqrt(2 * np.mean(middle**2)) == pytest.approx(0.5, rel=2e-3)


@pytest.mark.parametrize("orig", [44100, 96000])
def test_resampling_removes_content_above_the_new_nyquist(tmp_path, orig):
    """A 10 kHz tone cannot be represented at 16 kHz: it must vanish instead of aliasing to 6 kHz."""
    path = tmp_path / "high.wav"
    sf.write(path, sine(10_000.0, orig, 0.5), orig, subtype="FLOAT")
    y = decode_audio(path, TARGET)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) < 1e-4 * 0.5 / np.sqrt(2)  # >80 dB down


@pytest.mark.parametrize(
    "orig,frames",
    [(44100, 1), (44100, 7), (44100, 12345), (96000, 96001), (22050, 88200), (24000, 333), (8000, 999)],
)
def test_resampled_length(tmp_path, orig, frames):
    path = tmp_path / "noise.wav"
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, (frames, 1)).astype(np.float32)
    sf.write(path, noise, orig, subtype="FLOAT")
    assert abs(len(decode_audio(path, TARGET)) - round(frames * TARGET / orig)) <= 1


# ----------------------------------------------------------------------------------------------
# Mono mixing.


def test_mono_is_the_channel_average(tmp_path):
    rng = np.random.default_rng(1)
    stereo = np.stack(
        [sine(440.0, 44100, 0.5)[:, 0], rng.uniform(-0.3, 0.3, 22050).astype(np.float32)], axis=1
    )
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44100, subtype="FLOAT")
    np.testing.assert_allclose(decode_audio(path, 44100), stereo.mean(axis=1), atol=1e-7)
    both = decode_audio(path, TARGET, mono=False)
    assert both.shape == (2, round(22050 * TARGET / 44100))
    np.testing.assert_allclose(
        decode_audio(path, TARGET), both.mean(axis=0), atol=1e-6
    )  # resampling is linear
    # and each channel is resampled like the same signal written as its own mono file
    sf.write(tmp_path / "left.wav", stereo[:, :1], 44100, subtype="FLOAT")
    np.testing.assert_allclose(both[0], decode_audio(tmp_path / "left.wav", TARGET), atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Bad input: each case raises AudioDecodeError naming the file and the reason.


def assert_rejected(path: Path, reason: str, *args, **kwargs) -> AudioDecodeError:
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(path, *args, **kwargs) if args else decode_audio(path, TARGET, **kwargs)
    message = str(info.value)
    assert str(path) in message and reason in message, message
    return info.value


def test_missing_file_and_directory(tmp_path):
    assert_rejected(tmp_path / "nope.wav", "does not exist")
    assert_rejected(tmp_path, "not a regular file")
    with pytest.raises(AudioDecodeError, match="does not exist"):
        audio_info(tmp_path / "nope.wav")


def test_garbage_and_zero_byte_files(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    err = assert_rejected(garbage, "unreadable or corrupt")
    assert "Format not recognised" in str(err)  # libsndfile's own message is kept
    zero = tmp_path / "zero.wav"
    zero.write_bytes(b"")
    assert_rejected(zero, "unreadable or corrupt audio file (0 bytes)")


def test_empty_wav_with_valid_header(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), np.float32), 16000, subtype="PCM_16")
    assert sf.info(str(path)).frames == 0
    assert_rejected(path, "empty audio")


@pytest.mark.parametrize(
    "subtype,container",
    [("PCM_16", "WAV"), ("PCM_24", "WAVEX"), ("FLOAT", "WAV"), ("PCM_16", "RF64"), ("PCM_16", "AIFF")],
)
@pytest.mark.parametrize("cut", [1, 5001])
def test_truncated_file_is_reported_not_shortened(tmp_path, subtype, container, cut):
    intact = tmp_path / "intact.wav"
    sf.write(intact, sine(440.0, 16000, 1.0, channels=2), 16000, subtype=subtype, format=container)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(intact.read_bytes()[:-cut])
    # the premise: libsndfile reads the cut file without complaint and just returns fewer frames
    data, _ = sf.read(str(truncated), always_2d=True)
    assert len(data) < 16000 and sf.info(str(truncated)).frames == len(data)
    assert decode_audio(intact, TARGET).shape == (16000,)
    assert_rejected(truncated, f"truncated {container} file")


def test_truncated_flac_is_reported(tmp_path):
    intact = tmp_path / "intact.flac"
    sf.write(intact, sine(440.0, 16000, 2.0) + 0.01, 16000)
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(intact.read_bytes()[: intact.stat().st_size // 2])
    err = assert_rejected(truncated, "")
    assert "truncated" in str(err) or "corrupt" in str(err)


def test_chunks_after_the_data_are_not_mistaken_for_truncation(tmp_path):
    """An odd-sized data chunk (24-bit mono, odd frames) followed by a LIST chunk decodes in full."""
    path = tmp_path / "list.wav"
    x = np.random.default_rng(2).uniform(-0.5, 0.5, (1001, 1)).astype(np.float32)
    sf.write(path, x, 16000, subtype="PCM_24")
    raw = bytearray(path.read_bytes())
    if len(raw) % 2:
        raw += b"\x00"  # pad byte after the odd data chunk
    info_chunk = b"INFOICMT" + struct.pack("<I", 6) + b"hello\x00"
    raw += b"LIST" + struct.pack("<I", len(info_chunk)) + info_chunk
    raw[4:8] = struct.pack("<I", len(raw) - 8)
    path.write_bytes(bytes(raw))
    assert len(riff_chunks(path)[b"data"]) == 3003 and b"LIST" in riff_chunks(path)
    np.testing.assert_allclose(decode_audio(path, 16000), x[:, 0], atol=2**-22)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_samples(tmp_path, bad):
    x = sine(440.0, 16000, 0.5)
    x[100, 0] = bad
    path = tmp_path / "nonfinite.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    assert_rejected(path, "1 non-finite samples")


@pytest.mark.parametrize(
    "rate", [0, -16000, 16000.0, "16000", True, None, MIN_SAMPLE_RATE - 1, MAX_SAMPLE_RATE + 1]
)
def test_bad_target_rate_names_the_value(tmp_path, rate):
    path = tmp_path / "ok.wav"
    sf.write(path, sine(440.0, 16000, 0.1), 16000)
    err = assert_rejected(path, "target sample_rate", rate)
    assert repr(rate) in str(err) or str(rate) in str(err)


def test_numpy_integer_target_rate_is_accepted(tmp_path):
    path = tmp_path / "ok.wav"
    sf.write(path, sine(440.0, 16000, 0.1), 16000)
    assert decode_audio(path, np.int64(8000)).shape == (800,)


@pytest.mark.parametrize("file_rate", [500, 400_000])
def test_unsupported_file_rate(tmp_path, file_rate):
    path = tmp_path / "rate.wav"
    sf.write(path, np.zeros((100, 1), np.float32) + 0.1, file_rate, subtype="PCM_16")
    assert_rejected(path, f"unsupported file sample rate {file_rate} Hz")


def test_min_seconds(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, sine(440.0, 16000, 0.05), 16000)
    assert decode_audio(path, TARGET, min_seconds=0.05).shape == (800,)
    assert_rejected(path, "too short: 0.0500 s", min_seconds=0.1)
    for bad in (-1.0, math.nan, math.inf):
        assert_rejected(path, "min_seconds must be", min_seconds=bad)


def test_error_keeps_path_and_reason_through_pickling():
    err = AudioDecodeError("/data/a.wav", "truncated")
    assert isinstance(err, ValueError) and str(err) == "/data/a.wav: truncated"
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.path, copy.reason) == (str(err), "/data/a.wav", "truncated")
    plain = pickle.loads(pickle.dumps(AudioDecodeError("/data/b.wav: listed but missing")))
    assert str(plain) == "/data/b.wav: listed but missing" and plain.reason is None

"""Every way the public audio loader (:func:`audio_ssl.data.audio.decode_audio`, and through it the waveform cache)
can meet a bad input, each with a generated fixture (written with soundfile/numpy, headers byte-edited) and the
outcome it must have. Every failure is an :class:`AudioDecodeError` whose message names the file, so
``skip_bad_files`` skips it and per-file reports work.

Failure kinds covered (19):

1. the file does not exist;
2. the path is a folder;
3. a zero-byte file;
4. bytes that are no audio format (libsndfile's "Format not recognised" is kept);
5. a valid header with zero frames;
6. a WAV whose data chunk is cut short (libsndfile would silently shorten it);
7. a FLAC cut in half;
8. a FLAC header claiming more samples than the stream holds;
9. NaN or Inf samples in a float WAV;
10. a file sample rate outside 1 kHz..384 kHz;
11. a target sample rate that is not an int in range;
12. a clip shorter than ``min_seconds`` (and a bad ``min_seconds``);
13. any other exception inside decoding (here: the resampler runs out of memory), kept as the cause;
14. a file that cannot be opened for reading (an OS error while libsndfile opens it);
15. a float WAV whose peak (1e5) does not fit the float16 cache (a peak of 200 does), at cache build: an error
    naming the file, or skipped with ``skip_bad_files``;

and the inputs that must *not* fail:

16. a FLAC whose header gives the length as unknown (total samples 0, as streaming encoders write it): libsndfile
    reports 2**63 - 1 frames; the file decodes in full, also through the cache;
17. a rate co-prime with the target (16001 Hz -> 16000 Hz): decoded with memory bounded (checked under an
    address-space cap of 512 MB above the process; the torchaudio path needed 5.2 GB);
18. extreme rate pairs of :func:`resample` (1 Hz <-> 384 kHz, 383999 -> 384000 Hz): exact lengths, tone kept;
19. a worker of the cache build that dies (killed for memory): an error naming the files it was decoding.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import resource
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_ssl.data import audio as audio_module
from audio_ssl.data.audio import UNKNOWN_FRAMES, AudioDecodeError, audio_info, decode_audio, resample
from audio_ssl.data.cache import WaveformCache

TARGET = 16000


def tone(sr: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def rejected(path: Path, reason: str, *args, **kwargs) -> AudioDecodeError:
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(path, *(args or (TARGET,)), **kwargs)
    message = str(info.value)
    assert str(path) in message and reason in message, message
    return info.value


def flac_with_total_samples(tmp_path: Path, name: str, total: int, seconds: float = 1.0) -> Path:
    """A 16 kHz 16-bit FLAC whose STREAMINFO total-samples field (36 bits) is byte-edited to ``total``."""
    x = tone(16000, seconds)
    path = tmp_path / name
    sf.write(path, x, 16000, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    assert raw[:4] == b"fLaC" and raw[4] & 0x7F == 0  # STREAMINFO first: bytes 8.. hold its 34-byte body
    # body offset 13 (file 21): low 4 bits = total samples bits 35..32; file bytes 22..25 = bits 31..0
    raw[21] = (raw[21] & 0xF0) | ((total >> 32) & 0x0F)
    raw[22:26] = struct.pack(">I", total & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    return path


# ---------------------------------------------------------------------------------------------- 1-5: no audio


def test_1_missing_file(tmp_path):
    rejected(tmp_path / "nope.wav", "does not exist")


def test_2_folder(tmp_path):
    rejected(tmp_path, "not a regular file")


def test_3_zero_bytes(tmp_path):
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    rejected(path, "unreadable or corrupt audio file (0 bytes)")


def test_4_not_audio(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    assert "Format not recognised" in str(rejected(path, "unreadable or corrupt"))


def test_5_header_without_frames(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), np.float32), 16000, subtype="PCM_16")
    rejected(path, "empty audio")


# ---------------------------------------------------------------------------------------------- 6-8: cut files


def test_6_truncated_wav(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, tone(16000, 1.0), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:-1000])
    rejected(path, "truncated WAV file: the sample-data chunk header declares 32000 bytes but only 31000")


def test_7_truncated_flac(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, tone(16000, 2.0) + 0.01, 16000)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = str(rejected(path, ""))
    assert "truncated" in message or "corrupt" in message


def test_8_flac_header_claims_more_than_it_holds(tmp_path):
    path = flac_with_total_samples(tmp_path, "long.flac", total=32000)
    rejected(path, "truncated audio: the header declares 32000 frames but only 16000 decode")


# ---------------------------------------------------------------------------------------------- 9-12: values


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_9_non_finite_samples(tmp_path, bad):
    x = tone(16000, 0.5)
    x[[10, 20]] = bad
    path = tmp_path / "nonfinite.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    rejected(path, "2 non-finite samples (NaN or Inf) in FLOAT data")


def test_10_file_rate_out_of_range(tmp_path):
    path = tmp_path / "slow.wav"
    sf.write(path, np.full(100, 0.1, np.float32), 999, subtype="PCM_16")
    rejected(path, "unsupported file sample rate 999 Hz (accepted: 1000..384000 Hz)")


@pytest.mark.parametrize("rate", [0, 16000.0, "16000", None, 384001])
def test_11_bad_target_rate(tmp_path, rate):
    path = tmp_path / "ok.wav"
    sf.write(path, tone(16000, 0.1), 16000)
    rejected(path, "target sample_rate", rate)


def test_12_too_short_and_bad_min_seconds(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, tone(16000, 0.05), 16000)
    rejected(path, "too short: 0.0500 s (800 frames at 16000 Hz) < min_seconds=0.1", min_seconds=0.1)
    rejected(path, "min_seconds must be a finite number >= 0, got nan", min_seconds=float("nan"))


# ---------------------------------------------------------------------------------------------- 13-14: anything else


def test_13_any_other_failure_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "44k.wav"
    sf.write(path, tone(44100, 0.2), 44100)

    def out_of_memory(*args, **kwargs):
        raise MemoryError("cannot allocate 1032768000 bytes")

    monkeypatch.setattr(audio_module.soxr, "resample", out_of_memory)
    err = rejected(path, "decoding failed (out of memory: cannot allocate 1032768000 bytes)")
    assert isinstance(err.__cause__, MemoryError) and err.path == str(path)


def test_14_os_error_while_opening(tmp_path, monkeypatch):
    path = tmp_path / "ok.wav"
    sf.write(path, tone(16000, 0.1), 16000)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(audio_module.sf, "info", denied)
    rejected(path, "decoding failed (PermissionError: [Errno 13] Permission denied")


# ---------------------------------------------------------------------------------------------- 15: the cache's dtype


def _float_wav(folder: Path, name: str, peak: float) -> Path:
    x = tone(16000, 0.5) / 0.5 * peak
    path = folder / name
    sf.write(path, x, 16000, subtype="FLOAT")
    return path


def test_15_values_the_float16_cache_cannot_hold(tmp_path, caplog):
    loud = _float_wav(tmp_path, "loud.wav", 1e5)
    fine = _float_wav(tmp_path, "fine.wav", 200.0)
    assert np.abs(decode_audio(loud, TARGET)).max() == pytest.approx(1e5, rel=1e-4)  # decoding itself is fine
    with pytest.raises(AudioDecodeError) as info:
        WaveformCache.build([fine, loud], TARGET, cache_dir=tmp_path / "c1", num_workers=1, progress=False)
    message = str(info.value)
    assert str(loud) in message and "do not fit the float16 waveform cache: peak magnitude 100000" in message
    assert "above 65504" in message and "skip_bad_files" in message
    with caplog.at_level(logging.WARNING):
        cache = WaveformCache.build([fine, loud], TARGET, cache_dir=tmp_path / "c2", num_workers=1,
                                    progress=False, skip_bad_files=True)
    assert cache.files == [str(fine)] and str(loud) in cache.skipped
    stored = np.asarray(cache[0], dtype=np.float32)
    assert np.isfinite(stored).all() and np.abs(stored).max() == pytest.approx(200.0, rel=1e-3)


# ---------------------------------------------------------------------------------------------- 16-18: must decode


def test_16_flac_with_unknown_length_decodes_in_full(tmp_path):
    path = flac_with_total_samples(tmp_path, "stream.flac", total=0)
    reference = tone(16000, 1.0)
    assert sf.info(str(path)).frames == 2**63 - 1  # the premise: libsndfile's "unknown"
    with pytest.raises(ValueError, match="array is too big"):  # and what a plain read then does
        sf.read(str(path))
    assert audio_info(path).frames == UNKNOWN_FRAMES
    x = decode_audio(path, 16000)
    assert x.shape == (16000,)
    np.testing.assert_allclose(x, reference, atol=2**-15)
    assert decode_audio(path, 44100).shape == (44100,)
    cache = WaveformCache.build([path], TARGET, cache_dir=tmp_path / "cache", num_workers=1, progress=False)
    assert cache.lengths.tolist() == [16000]
    # the streaming reader of classify and serve reads it to its end too, in blocks of any size
    from audio_ssl.data.stream import open_audio

    with open_audio(path) as stream:
        assert stream.duration is None
        blocks = list(stream.blocks(3000))
    np.testing.assert_array_equal(np.concatenate(blocks)[:, 0], decode_audio(path, 16000))


def _decode_under_cap(path: str, cap: int, conn) -> None:
    try:
        with open("/proc/self/status") as fh:
            vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + cap, resource.RLIM_INFINITY))
        conn.send(("ok", decode_audio(path, TARGET).shape))
    except BaseException as err:  # noqa: BLE001
        conn.send(("error", repr(err)))


def test_17_coprime_rate_decodes_with_bounded_memory(tmp_path):
    path = tmp_path / "odd.wav"
    sf.write(path, tone(16001, 0.25), 16001, subtype="PCM_16")
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_decode_under_cap, args=(str(path), 512 * 2**20, child))
    proc.start()
    assert parent.poll(120), "decoding a 16001 Hz file took over 2 minutes"
    result = parent.recv()
    proc.join()
    assert result == ("ok", (4000,)), result  # ceil(4000.25 * 16000 / 16001)


@pytest.mark.parametrize("orig, target", [(1, 384000), (384000, 1), (383999, 384000), (16001, 16000), (7, 1000)])
def test_18_extreme_rate_pairs(orig, target):
    n = max(8, orig // 4)
    y = resample(np.ones(n, np.float32), orig, target)
    assert y.dtype == np.float32 and y.shape == (-(-n * target // orig),)
    if min(orig, target) > 1000:
        x = tone(orig, 0.25, freq=440.0)
        y = resample(x, orig, target)[500:-500]
        assert np.sqrt(2 * np.mean(y.astype(np.float64) ** 2)) == pytest.approx(0.5, rel=1e-3)
    with pytest.raises(ValueError, match="orig_sr must be an int in"):
        resample(np.ones(4, np.float32), 0, target)


def _die(args):
    os._exit(9)  # what the kernel's OOM killer leaves: no exception, no message


def test_19_a_dead_cache_worker_is_reported_with_the_files(tmp_path, monkeypatch):
    files = []
    for i in range(3):
        files.append(tmp_path / f"clip{i}.wav")
        sf.write(files[-1], tone(16000, 0.1), 16000)
    monkeypatch.setattr("audio_ssl.data.cache._decode_one", _die)
    with pytest.raises(AudioDecodeError, match=r"a decoding worker died .* 3 file\(s\): .*clip0\.wav"):
        WaveformCache.build(files, TARGET, cache_dir=tmp_path / "cache", num_workers=2, progress=False)

"""A damaged waveform cache is found when it is opened and rebuilt (or named in a clear error), a cache damaged after
that never feeds NaN to a model, cache files are shareable, and ``audio-ssl cache list`` / ``cache clean`` work.

Every cache and audio file here is generated; damage is done by editing the bytes of the written files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_ssl.data.cache import (
    CacheDamagedError,
    WaveformCache,
    clean_caches,
    list_caches,
    verify_cache,
)
from audio_ssl.data.datasets import ClipDataset
from audio_ssl.tools import cache as cache_tool

SR = 16000


@pytest.fixture
def clips(tmp_path) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        files.append(tmp_path / "audio" / f"clip{i}.wav")
        files[-1].parent.mkdir(exist_ok=True)
        sf.write(files[-1], rng.uniform(-0.5, 0.5, 4000 + 1000 * i).astype(np.float32), SR, subtype="PCM_16")
    return files


def build(files, cache_dir, **kwargs) -> WaveformCache:
    return WaveformCache.build(files, SR, cache_dir=cache_dir, num_workers=1, progress=False, **kwargs)


def _truncate_array(data: Path, index: Path) -> None:
    data.write_bytes(data.read_bytes()[:-100])


def _truncate_index(data: Path, index: Path) -> None:
    index.write_text(index.read_text()[:40])


def _corrupt_header(data: Path, index: Path) -> None:
    raw = bytearray(data.read_bytes())
    raw[10:40] = b"{'descr': object, 'shape': !!"  # same length, not a header any more
    data.write_bytes(bytes(raw))


def _overwrite_with_nan(data: Path, index: Path) -> None:
    raw = bytearray(data.read_bytes())
    nan = np.full(500, np.nan, np.float16).tobytes()
    raw[-len(nan):] = nan  # same size: only the checksum can tell
    data.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage, reason", [
    (_truncate_array, "the cache array file has"),
    (_truncate_index, "the cache index cannot be read (JSONDecodeError"),
    (_corrupt_header, "the cache array header is unreadable"),
    (_overwrite_with_nan, "SHA-256 differs"),
])
def test_damaged_cache_is_named_and_rebuilt(clips, tmp_path, caplog, damage, reason):
    cache = build(clips, tmp_path / "cache")
    original = np.array(cache.array)
    data, index = WaveformCache.paths(clips, SR, tmp_path / "cache")
    damage(data, index)
    with pytest.raises(CacheDamagedError, match=re.escape(reason)):
        verify_cache(data, index)
    with caplog.at_level(logging.WARNING, logger="audio_ssl.data.cache"):
        rebuilt = build(clips, tmp_path / "cache")
    assert any("damaged, rebuilding" in r.message and reason in r.message for r in caplog.records), caplog.text
    np.testing.assert_array_equal(rebuilt.array, original)
    verify_cache(data, index)


def test_damaged_cache_that_cannot_be_deleted_is_a_clear_error(clips, tmp_path, monkeypatch):
    build(clips, tmp_path / "cache")
    data, index = WaveformCache.paths(clips, SR, tmp_path / "cache")
    _truncate_array(data, index)

    def read_only(self, missing_ok=False):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(CacheDamagedError, match=rf"{data.name}: the cache array file has .* cannot be deleted"):
        build(clips, tmp_path / "cache")


def test_cache_truncated_after_opening_names_the_file(clips, tmp_path):
    cache = build(clips, tmp_path / "cache")
    cache.data_path.write_bytes(cache.data_path.read_bytes()[:200])
    with pytest.raises(CacheDamagedError, match=rf"{cache.data_path.name}: the waveform cache array cannot be mapped"):
        cache.view(0, 0, 10)


def test_nan_in_the_cache_never_reaches_a_model(clips, tmp_path):
    """Damage after the cache was verified: the dataset refuses the clip, naming its file."""
    cache = build(clips, tmp_path / "cache")
    dataset = ClipDataset(cache, [0, 1, 2], [0, 1, 2], clip_samples=8000, random_crop=False, files=cache.files)
    assert np.isfinite(dataset[1]["audio"].float().numpy()).all()
    raw = bytearray(cache.data_path.read_bytes())
    start = len(raw) - 2 * int(cache.lengths.sum()) + 2 * int(cache.offsets[1])
    raw[start + 20 : start + 22] = np.float16(np.nan).tobytes()
    cache.data_path.write_bytes(bytes(raw))
    fresh = WaveformCache(cache.data_path, json.loads(cache.data_path.with_name(cache.stem + ".json").read_text()))
    dataset = ClipDataset(fresh, [0, 1, 2], [0, 1, 2], clip_samples=8000, random_crop=False, files=cache.files)
    assert dataset[0]["audio"].shape == (8000,)
    with pytest.raises(FloatingPointError, match=r"clip1\.wav: 1 non-finite sample\(s\)"):
        dataset[1]


def test_cache_files_follow_the_umask(clips, tmp_path):
    old = os.umask(0o022)
    try:
        cache = build(clips, tmp_path / "cache")
    finally:
        os.umask(old)
    for path in (cache.data_path, cache.data_path.with_name(cache.stem + ".json")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def _make_caches(clips, folder: Path) -> dict[str, Path]:
    """Four caches (ok, unused for 40 days, damaged, an old version) and a leftover temporary file."""
    now = time.time()
    names = {}
    for i, name in enumerate(["fresh", "unused", "damaged", "old"]):
        cache = build(clips[: i % 3 + 1], folder, name=name)
        names[name] = cache.data_path.with_name(cache.stem + ".json")
    os.utime(names["unused"], (now - 40 * 86400, now - 40 * 86400))
    damaged_array = names["damaged"].with_name(names["damaged"].name.replace(".json", ".f16.npy"))
    _truncate_array(damaged_array, names["damaged"])
    index = json.loads(names["old"].read_text())
    index["version"] = 1
    names["old"].write_text(json.dumps(index))
    leftover = folder / ".fresh-x.f16.npy.abc.tmp"
    leftover.write_bytes(b"\x00" * 10)
    os.utime(leftover, (now - 7200, now - 7200))
    names["leftover"] = leftover
    return names


def test_cache_list_and_clean(clips, tmp_path, capsys):
    folder = tmp_path / "cache"
    names = _make_caches(clips, folder)
    entries = {e.stem.split("-")[0] if not e.stem.startswith(".") else "leftover": e for e in list_caches(folder)}
    assert {k: e.status for k, e in entries.items()} == {
        "fresh": "ok", "unused": "ok", "damaged": "damaged", "old": "old version", "leftover": "temporary"}
    assert entries["fresh"].clips == 1 and entries["unused"].clips == 2 and entries["fresh"].sample_rate == SR

    cache_tool.main(["list", "--cache-dir", str(folder)])
    out = capsys.readouterr().out
    assert "damaged" in out and "old version" in out and "5 entries" in out and "40 d ago" in out

    cache_tool.main(["clean", "--cache-dir", str(folder), "--stale", "--dry-run"])
    assert "would delete 3 entries" in capsys.readouterr().out and names["leftover"].exists()
    cache_tool.main(["clean", "--cache-dir", str(folder), "--stale"])
    assert "deleted 3 entries" in capsys.readouterr().out
    assert sorted(e.stem.split("-")[0] for e in list_caches(folder)) == ["fresh", "unused"]
    removed = clean_caches(folder, unused_days=30)
    assert [e.stem.split("-")[0] for e in removed] == ["unused"] and not names["unused"].exists()
    assert names["fresh"].exists()
    cache_tool.main(["clean", "--cache-dir", str(folder), "--all"])
    assert list_caches(folder) == [] and sorted(p.name for p in folder.iterdir()) == []


def test_cache_clean_needs_a_selector_and_spares_builds_in_progress(clips, tmp_path, capsys):
    folder = tmp_path / "cache"
    build(clips, folder)
    with pytest.raises(SystemExit) as info:
        cache_tool.main(["clean", "--cache-dir", str(folder)])
    assert info.value.code == 2 and "--unused-days N, --stale or --all" in capsys.readouterr().err
    young = folder / ".x.f16.npy.123.tmp"
    young.write_bytes(b"\x00")
    assert [e.status for e in list_caches(folder) if e.stem == young.name] == ["in progress"]
    clean_caches(folder, everything=True)
    assert young.exists() and len(list(folder.glob("*.json"))) == 0


def test_cache_is_a_cli_tool(capsys):
    from audio_ssl.cli import TOOL_HELP, TOOLS, main

    assert TOOLS["cache"] == "audio_ssl.tools.cache" and "cache" in TOOL_HELP
    main(["--help"])
    assert "cache" in capsys.readouterr().out

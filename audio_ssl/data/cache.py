"""On-disk cache of decoded audio: every file is decoded, mixed to mono and resampled exactly once.

The cache for a list of files (the data modules keep one per fold, see :class:`CacheGroup`) is a pair of
files in ``cache_dir``:

- ``<name>-<sr>hz-<key>.f16.npy``: all clips concatenated into one flat float16 array (2 bytes per
  sample; float16 keeps ~66 dB of relative precision at any level, which is far below what a log-mel
  front end resolves, and it cannot clip like int16 can after resampling);
- ``<name>-<sr>hz-<key>.json``: the index (file names, offsets, lengths, skipped files and why).

``key`` hashes the file list (path, size, modification time), the sample rate and the cache version,
so a changed file list or parameter builds a new cache while every run over the same files shares one
(a listed file that does not exist enters the key as missing, so the cache is rebuilt once it appears).
Both files are written to temporary names and renamed into place (the index last), so a crashed build
never leaves a cache that looks complete. Workers open the array memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from audio_ssl.data.audio import AudioDecodeError, decode_audio
from audio_ssl.utils.io import atomic_write

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MISSING_REASON = "file listed in the metadata does not exist"
PREVIEW = 5
"""How many names an error or warning about many files spells out before 'and N more'."""


def preview_names(items: Sequence[str], limit: int = PREVIEW) -> str:
    """``a, b, c, d, e and 17 more``: the first ``limit`` items and how many are left out."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def default_cache_dir() -> Path:
    """``$AUDIO_SSL_CACHE`` or ``~/.cache/audio-ssl/waveforms``."""
    env = os.environ.get("AUDIO_SSL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "audio-ssl" / "waveforms"


def cache_key(files: Sequence[str | os.PathLike], sample_rate: int) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION}|sr={sample_rate}|".encode())
    for f in files:
        try:
            st = os.stat(f)
        except FileNotFoundError:
            digest.update(f"{os.path.abspath(f)}|missing\n".encode())
            continue
        digest.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _init_worker() -> None:
    # Resampling in many processes at once is far faster with one intra-op thread each.
    import torch

    torch.set_num_threads(1)


def _decode_one(args: tuple[str, int]) -> tuple[str, np.ndarray | None, str | None]:
    path, sample_rate = args
    try:
        return path, decode_audio(path, sample_rate, mono=True).astype(np.float16), None
    except AudioDecodeError as err:
        return path, None, str(err)


class WaveformCache:
    """Random access to the cached clips of one file list (memory-mapped, opened lazily per process)."""

    def __init__(self, data_path: Path, index: dict):
        self.data_path = Path(data_path)
        self.files: list[str] = index["files"]
        self.offsets = np.asarray(index["offsets"], dtype=np.int64)
        self.lengths = np.asarray(index["lengths"], dtype=np.int64)
        self.sample_rate: int = index["sample_rate"]
        self.skipped: dict[str, str] = index.get("skipped", {})
        self._position = {f: i for i, f in enumerate(self.files)}
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def stem(self) -> str:
        """The cache's name without suffix (``<name>-<sr>hz-<key>``): a key for anything derived from it."""
        return self.data_path.name.removesuffix(".f16.npy")

    @property
    def directory(self) -> Path:
        return self.data_path.parent

    def __getstate__(self) -> dict:  # do not ship the memory map to workers; each one reopens it
        state = self.__dict__.copy()
        state["_array"] = None
        return state

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            # Copy-on-write mapping: torch.from_numpy accepts it without a read-only warning, and the
            # file itself is never written.
            self._array = np.load(self.data_path, mmap_mode="c")
        return self._array

    def position(self, file: str | os.PathLike) -> int:
        try:
            return self._position[os.path.abspath(file)]
        except KeyError:
            raise KeyError(f"{file} is not in the waveform cache {self.data_path}") from None

    def __getitem__(self, i: int) -> np.ndarray:
        """The whole clip ``i`` as a float16 view into the memory map."""
        start = self.offsets[i]
        return self.array[start : start + self.lengths[i]]

    def view(self, i: int, start: int, length: int) -> np.ndarray:
        """Up to ``length`` samples of clip ``i`` from ``start`` (clipped to the clip): a float16 view, no copy."""
        start = max(0, min(int(start), int(self.lengths[i])))
        stop = min(start + length, int(self.lengths[i]))
        base = self.offsets[i]
        return self.array[base + start : base + stop]

    def segment(self, i: int, start: int, length: int) -> np.ndarray:
        """Like :meth:`view`, copied to float32."""
        return torch.from_numpy(self.view(i, start, length)).float().numpy()

    @staticmethod
    def paths(files: Sequence[str | os.PathLike], sample_rate: int, cache_dir: str | os.PathLike | None = None,
              name: str = "audio") -> tuple[Path, Path]:
        """``(array, index)`` paths of the cache of ``files`` (whether or not it has been built)."""
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        stem = f"{name}-{sample_rate}hz-{cache_key(files, sample_rate)}"
        return cache_dir / f"{stem}.f16.npy", cache_dir / f"{stem}.json"

    @classmethod
    def build(
        cls,
        files: Sequence[str | os.PathLike],
        sample_rate: int,
        cache_dir: str | os.PathLike | None = None,
        name: str = "audio",
        skip_bad_files: bool = False,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> WaveformCache:
        """Open the cache for ``files``, building it first if it does not exist yet.

        A bad file is one that does not exist or fails to decode. With ``skip_bad_files`` bad files are
        left out (listed in :attr:`skipped` with the reason; a warning gives their count and the first
        names); otherwise missing files raise :class:`AudioDecodeError` with their count and the first
        names before anything is decoded, and the first file that fails to decode raises.
        """
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        files = [os.path.abspath(f) for f in files]
        missing = [f for f in files if not os.path.exists(f)]
        if missing and not skip_bad_files:
            raise AudioDecodeError(
                f"{len(missing)} of {len(files)} file(s) listed in the metadata do not exist: "
                f"{preview_names(missing)} (set skip_bad_files=True to leave bad files out instead)"
            )
        data_path, index_path = cls.paths(files, sample_rate, cache_dir, name)
        cache_dir = data_path.parent
        if index_path.exists() and data_path.exists():
            index = json.loads(index_path.read_text())
            cache = cls(data_path, index)
            cache._report_skipped(skip_bad_files)
            return cache

        cache_dir.mkdir(parents=True, exist_ok=True)
        workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
        clips: dict[str, np.ndarray] = {}
        skipped: dict[str, str] = {f: f"{f}: {MISSING_REASON}" for f in missing}
        absent = set(missing)
        jobs = [(f, sample_rate) for f in files if f not in absent]
        bar = tqdm(total=len(jobs), desc=f"decoding {name} at {sample_rate} Hz", unit="file", disable=not progress)
        if workers > 1:
            with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
                results = pool.map(_decode_one, jobs, chunksize=16)
                for path, wave, err in results:
                    cls._collect(path, wave, err, clips, skipped, skip_bad_files)
                    bar.update()
        else:
            for job in jobs:
                cls._collect(*_decode_one(job), clips, skipped, skip_bad_files)
                bar.update()
        bar.close()

        kept = [f for f in files if f in clips]
        lengths = np.array([len(clips[f]) for f in kept], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if kept else lengths
        flat = np.concatenate([clips[f] for f in kept]) if kept else np.zeros(0, np.float16)
        index = {
            "version": CACHE_VERSION,
            "sample_rate": sample_rate,
            "files": kept,
            "offsets": offsets.tolist(),
            "lengths": lengths.tolist(),
            "skipped": skipped,
        }
        with atomic_write(data_path) as fh:
            np.save(fh, flat)
        with atomic_write(index_path, "w") as fh:
            fh.write(json.dumps(index))
        cache = cls(data_path, index)
        cache._report_skipped(skip_bad_files)
        return cache

    @staticmethod
    def _collect(path, wave, err, clips, skipped, skip_bad_files) -> None:
        if err is None:
            clips[path] = wave
        elif skip_bad_files:
            log.debug("skipping bad audio file: %s", err)
            skipped[path] = err
        else:
            raise AudioDecodeError(f"{err} (set skip_bad_files=True to leave bad files out instead)")

    def _report_skipped(self, skip_bad_files: bool) -> None:
        if self.skipped and not skip_bad_files:
            first = next(iter(self.skipped.items()))
            raise AudioDecodeError(
                f"the cache at {self.data_path} was built with skip_bad_files=True and leaves out "
                f"{len(self.skipped)} file(s), e.g. {first[1]}; fix them or pass skip_bad_files=True"
            )
        if self.skipped:
            reasons = list(self.skipped.values())
            missing = sum(r.endswith(MISSING_REASON) for r in reasons)
            log.warning(
                "%d bad audio file(s) skipped in total (%d missing, %d undecodable) of %d listed: %s; every one "
                "with its reason is in %s", len(reasons), missing, len(reasons) - missing,
                len(reasons) + len(self.files), preview_names(reasons), self.data_path.parent / f"{self.stem}.json")


class CacheGroup:
    """Several :class:`WaveformCache` (the data modules keep one per fold) read as one cache.

    Positions run through the clips of the first cache, then the second's, and so on; :attr:`files`,
    :attr:`lengths`, :attr:`skipped`, :meth:`position`, :meth:`view`, :meth:`segment` and indexing
    behave as on a single cache.
    """

    def __init__(self, caches: Sequence[WaveformCache]):
        self.caches = list(caches)
        if not self.caches:
            raise ValueError("a CacheGroup needs at least one cache")
        rates = sorted({c.sample_rate for c in self.caches})
        if len(rates) > 1:
            raise ValueError(f"caches at different sample rates {rates} cannot be grouped")
        self.sample_rate: int = rates[0]
        sizes = [len(c) for c in self.caches]
        self.files: list[str] = [f for c in self.caches for f in c.files]
        self.lengths = np.concatenate([c.lengths for c in self.caches]).astype(np.int64)
        self._owner = np.repeat(np.arange(len(sizes)), sizes)
        self._local = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes])
        self.skipped: dict[str, str] = {k: v for c in self.caches for k, v in c.skipped.items()}
        self._position = {f: i for i, f in enumerate(self.files)}

    def __len__(self) -> int:
        return len(self.files)

    @property
    def stem(self) -> str:
        digest = hashlib.sha256("|".join(c.stem for c in self.caches).encode()).hexdigest()[:16]
        return f"group-{len(self.caches)}-{digest}"

    @property
    def directory(self) -> Path:
        return self.caches[0].directory

    def position(self, file: str | os.PathLike) -> int:
        try:
            return self._position[os.path.abspath(file)]
        except KeyError:
            names = ", ".join(str(c.data_path) for c in self.caches)
            raise KeyError(f"{file} is not in the waveform caches {names}") from None

    def __getitem__(self, i: int) -> np.ndarray:
        return self.caches[self._owner[i]][int(self._local[i])]

    def view(self, i: int, start: int, length: int) -> np.ndarray:
        return self.caches[self._owner[i]].view(int(self._local[i]), start, length)

    def segment(self, i: int, start: int, length: int) -> np.ndarray:
        return self.caches[self._owner[i]].segment(int(self._local[i]), start, length)

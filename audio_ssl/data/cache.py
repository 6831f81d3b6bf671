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

Values the cache cannot hold are errors: a clip whose samples overflow float16 (a float WAV with a peak
above 65504) is a bad file like any other (:class:`AudioDecodeError` naming it; skipped with
``skip_bad_files``), never ``inf`` in the cache.

A cache is verified whenever it is opened (:meth:`WaveformCache.build`): the index must parse and agree
with itself, the array header must be a 1-D float16 ``.npy`` of exactly the indexed length, the file size
must match the header, and the SHA-256 of the array file must equal the one recorded in the index (about
1.7 s per GB). A damaged cache is named in a warning, deleted and rebuilt from the audio; when it cannot be
deleted (a read-only shared folder) :class:`CacheDamagedError` names it. The data loaders also refuse a
non-finite sample (:class:`~audio_ssl.data.datasets.ClipDataset`), so no NaN/Inf reaches a model from
the data path. Files are created with the umask's permissions (shareable); opening a cache marks it used
(the index's modification time), which ``audio-ssl cache list`` / ``cache clean`` read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from audio_ssl.data.audio import AudioDecodeError, decode_audio
from audio_ssl.utils.io import atomic_write

log = logging.getLogger(__name__)

CACHE_VERSION = 2
"""Version of the cache layout (2: the index records the array's size and SHA-256)."""
ARRAY_SUFFIX = ".f16.npy"
INDEX_SUFFIX = ".json"
FLOAT16_MAX = float(np.finfo(np.float16).max)
"""65504: the largest finite float16, so the largest sample magnitude the cache holds."""
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


class CacheDamagedError(RuntimeError):
    """A waveform cache on disk that fails verification and cannot be rebuilt here; the message names it."""


def to_cache_dtype(path: str | os.PathLike, wave: np.ndarray) -> np.ndarray:
    """``wave`` as float16 for the cache; :class:`AudioDecodeError` naming ``path`` when a sample would not
    survive the conversion (magnitude above :data:`FLOAT16_MAX`: it would become ``inf``)."""
    with np.errstate(over="ignore"):
        stored = wave.astype(np.float16)
    if not np.isfinite(stored).all():
        overflow = int(stored.size - np.count_nonzero(np.isfinite(stored)))
        peak = float(np.abs(wave).max())
        raise AudioDecodeError(
            path,
            f"sample values do not fit the float16 waveform cache: peak magnitude {peak:.6g} (after mixing and "
            f"resampling), {overflow} sample(s) above {FLOAT16_MAX:g}; audio is expected near full scale 1.0, "
            "so rescale the file (e.g. normalise its peak)",
        )
    return stored


def _decode_one(args: tuple[str, int]) -> tuple[str, np.ndarray | None, str | None]:
    path, sample_rate = args
    try:
        return path, to_cache_dtype(path, decode_audio(path, sample_rate, mono=True)), None
    except AudioDecodeError as err:
        return path, None, str(err)
    except Exception as err:  # noqa: BLE001 - anything else is still this file's failure, reported with its name
        return path, None, str(AudioDecodeError(path, f"decoding failed ({type(err).__name__}: {err})"))


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_cache(data_path: str | os.PathLike, index_path: str | os.PathLike, checksum: bool = True) -> dict:
    """Check a cache on disk and return its index; raise :class:`CacheDamagedError` saying what is wrong.

    Checks: the index parses as a version-:data:`CACHE_VERSION` object whose ``files``/``offsets``/``lengths``
    agree (contiguous offsets, non-negative lengths); the array file has a valid ``.npy`` header for a 1-D
    little-endian float16 array of ``sum(lengths)`` samples; the file size is header + 2 bytes per sample;
    with ``checksum``, the SHA-256 of the array file equals the index's ``sha256``.
    """
    data_path, index_path = Path(data_path), Path(index_path)
    try:
        index = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CacheDamagedError(f"{index_path}: the cache index cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(index, dict):
        raise CacheDamagedError(f"{index_path}: the cache index is not a JSON object")
    if index.get("version") != CACHE_VERSION:
        raise CacheDamagedError(f"{index_path}: cache version {index.get('version')!r}, expected {CACHE_VERSION}")
    try:
        files, offsets, lengths = index["files"], index["offsets"], index["lengths"]
        total, digest = int(index["samples"]), str(index["sha256"])
        int(index["sample_rate"])
        lengths_arr = np.asarray(lengths, dtype=np.int64)
        offsets_arr = np.asarray(offsets, dtype=np.int64)
    except (KeyError, TypeError, ValueError) as err:
        raise CacheDamagedError(f"{index_path}: the cache index lacks or garbles a field ({err!r})") from err
    expected = np.concatenate([[0], np.cumsum(lengths_arr)[:-1]]) if len(lengths_arr) else lengths_arr
    if not (len(files) == len(offsets_arr) == len(lengths_arr)) or (lengths_arr < 0).any() \
            or not np.array_equal(offsets_arr, expected) or int(lengths_arr.sum()) != total:
        raise CacheDamagedError(f"{index_path}: the cache index is inconsistent ({len(files)} files, "
                                f"{len(offsets_arr)} offsets, {len(lengths_arr)} lengths, {total} samples)")
    try:
        with open(data_path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, fortran, dtype = readers[version](fh)
            header_end = fh.tell()
        size = data_path.stat().st_size
    except (OSError, ValueError, SyntaxError) as err:
        raise CacheDamagedError(f"{data_path}: the cache array header is unreadable ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if dtype != np.dtype("<f2") or fortran or shape != (total,):
        raise CacheDamagedError(f"{data_path}: the cache array holds {dtype} {shape}, the index expects "
                                f"float16 ({total},)")
    if size != header_end + 2 * total:
        raise CacheDamagedError(f"{data_path}: the cache array file has {size} bytes, expected "
                                f"{header_end + 2 * total} (truncated or padded)")
    if checksum and _sha256(data_path) != digest:
        raise CacheDamagedError(f"{data_path}: the cache array's SHA-256 differs from the one in {index_path.name} "
                                "(its contents were changed after it was written)")
    return index


def _mark_used(index_path: Path) -> None:
    """Record a use of the cache (the index's modification time), for ``audio-ssl cache clean --unused-days``;
    silently nothing in a read-only folder."""
    try:
        os.utime(index_path)
    except OSError:
        pass


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
        """The memory-mapped float16 array; :class:`CacheDamagedError` naming the file when it cannot be
        mapped (e.g. truncated after the cache was opened)."""
        if self._array is None:
            # Copy-on-write mapping: torch.from_numpy accepts it without a read-only warning, and the
            # file itself is never written.
            try:
                array = np.load(self.data_path, mmap_mode="c")
            except (OSError, ValueError) as err:
                raise CacheDamagedError(
                    f"{self.data_path}: the waveform cache array cannot be mapped ({type(err).__name__}: {err}); "
                    "it was damaged after it was verified: delete it and its .json index to rebuild it"
                ) from err
            expected = int(self.offsets[-1] + self.lengths[-1]) if len(self.offsets) else 0
            if array.dtype != np.float16 or array.shape != (expected,):
                raise CacheDamagedError(f"{self.data_path}: the waveform cache array holds {array.dtype} "
                                        f"{array.shape}, its index expects float16 ({expected},)")
            self._array = array
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
        names before anything is decoded, and the first file that fails to decode raises. A file whose samples
        overflow float16 is a bad file (see :func:`to_cache_dtype`).

        An existing cache is verified first (:func:`verify_cache`, SHA-256 included); a damaged one is logged,
        deleted and rebuilt.

        Raises:
            AudioDecodeError: bad files without ``skip_bad_files`` (named, with the reason).
            CacheDamagedError: a damaged cache that cannot be deleted (read-only folder).
            OSError: the cache folder cannot be written (e.g. full disk), with the path.
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
            try:
                index = verify_cache(data_path, index_path)
            except CacheDamagedError as err:
                log.warning("waveform cache damaged, rebuilding it: %s", err)
                for damaged in (index_path, data_path):
                    try:
                        damaged.unlink(missing_ok=True)
                    except OSError as unlink_err:
                        raise CacheDamagedError(
                            f"{err}; it cannot be deleted for a rebuild ({unlink_err}): delete {data_path} and "
                            f"{index_path} by hand, or pass another cache_dir") from unlink_err
            else:
                _mark_used(index_path)
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
            done: set[str] = set()
            try:
                with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
                    results = pool.map(_decode_one, jobs, chunksize=16)
                    for path, wave, err in results:
                        cls._collect(path, wave, err, clips, skipped, skip_bad_files)
                        done.add(path)
                        bar.update()
            except BrokenProcessPool as err:
                pending = [f for f, _ in jobs if f not in done]
                raise AudioDecodeError(
                    f"a decoding worker died (killed by the system, most often for memory) while decoding one of "
                    f"{len(pending)} file(s): {preview_names(pending)}; rebuild with num_workers=1 (the data "
                    "module's num_workers=0) to see which file it is") from err
        else:
            for job in jobs:
                cls._collect(*_decode_one(job), clips, skipped, skip_bad_files)
                bar.update()
        bar.close()

        kept = [f for f in files if f in clips]
        lengths = np.array([len(clips[f]) for f in kept], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if kept else lengths
        flat = np.concatenate([clips[f] for f in kept]) if kept else np.zeros(0, np.float16)
        with atomic_write(data_path) as fh:
            np.save(fh, flat)
        index = {
            "version": CACHE_VERSION,
            "sample_rate": sample_rate,
            "files": kept,
            "offsets": offsets.tolist(),
            "lengths": lengths.tolist(),
            "samples": int(lengths.sum()),
            "sha256": _sha256(data_path),
            "skipped": skipped,
        }
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


# ----------------------------------------------------------------------------------------------------------------
# Listing and cleaning a cache folder (``audio-ssl cache list`` / ``cache clean``).

TEMP_GRACE_SECONDS = 3600
"""A temporary file, or an array without its index, younger than this may be a build in progress: never stale."""


class CacheEntry(NamedTuple):
    """One cache (or leftover) in a cache folder, as :func:`list_caches` finds it."""

    stem: str
    """``<name>-<sr>hz-<key>`` (a temporary file: its own name)."""
    paths: tuple[Path, ...]
    """Its files on disk."""
    status: str
    """``ok``, ``damaged``, ``old version``, ``incomplete`` (array or index alone), ``temporary`` (a leftover of an
    interrupted write) or ``in progress`` (an array or temporary file younger than :data:`TEMP_GRACE_SECONDS`)."""
    reason: str
    """Why it is not ``ok`` (empty when it is)."""
    sample_rate: int | None
    clips: int | None
    skipped: int | None
    nbytes: int
    """Bytes on disk of all its files."""
    last_used: float
    """Seconds since the epoch: the index's modification time (updated whenever the cache is opened), else the
    newest file's."""

    @property
    def stale(self) -> bool:
        """Whether ``cache clean --stale`` removes it."""
        return self.status in ("damaged", "old version", "incomplete", "temporary")


def list_caches(cache_dir: str | os.PathLike | None = None, checksum: bool = False, now: float | None = None
                ) -> list[CacheEntry]:
    """Every waveform cache and leftover in ``cache_dir`` (default :func:`default_cache_dir`), by name.

    Each cache is checked with :func:`verify_cache` (sizes and headers; the SHA-256 too with ``checksum``).
    Subfolders (e.g. ``features/`` of the baselines) are not looked into. A missing folder lists nothing.
    """
    import time

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    now = time.time() if now is None else now
    if not cache_dir.is_dir():
        return []
    stems: dict[str, dict[str, Path]] = {}
    temporaries = []
    for path in cache_dir.iterdir():
        if not path.is_file():
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            temporaries.append(path)
        elif path.name.endswith(ARRAY_SUFFIX):
            stems.setdefault(path.name[: -len(ARRAY_SUFFIX)], {})["array"] = path
        elif path.name.endswith(INDEX_SUFFIX):
            stems.setdefault(path.name[: -len(INDEX_SUFFIX)], {})["index"] = path
    entries = []
    for stem, found in stems.items():
        paths = tuple(found[k] for k in ("array", "index") if k in found)
        stats = [p.stat() for p in paths]
        nbytes = sum(st.st_size for st in stats)
        last_used = found["index"].stat().st_mtime if "index" in found else max(st.st_mtime for st in stats)
        rate = clips = skipped = None
        if len(found) < 2:
            young = now - last_used < TEMP_GRACE_SECONDS and "array" in found
            status = "in progress" if young else "incomplete"
            reason = f"{'index' if 'array' in found else 'array'} missing"
        else:
            try:
                index = verify_cache(found["array"], found["index"], checksum=checksum)
                status, reason = "ok", ""
                rate, clips, skipped = int(index["sample_rate"]), len(index["files"]), len(index.get("skipped", {}))
            except CacheDamagedError as err:
                old = "cache version" in str(err)
                status, reason = ("old version" if old else "damaged"), str(err)
        entries.append(CacheEntry(stem, paths, status, reason, rate, clips, skipped, nbytes, last_used))
    for path in temporaries:
        st = path.stat()
        young = now - st.st_mtime < TEMP_GRACE_SECONDS
        entries.append(CacheEntry(path.name, (path,), "in progress" if young else "temporary",
                                  "an interrupted write left it" if not young else "being written", None, None,
                                  None, st.st_size, st.st_mtime))
    return sorted(entries, key=lambda e: e.stem)


def clean_caches(cache_dir: str | os.PathLike | None = None, unused_days: float | None = None, stale: bool = False,
                 everything: bool = False, dry_run: bool = False, now: float | None = None) -> list[CacheEntry]:
    """Delete caches from ``cache_dir`` and return the ones deleted (or, with ``dry_run``, that would be).

    Args:
        unused_days: delete caches not opened for this many days (index modification time).
        stale: delete damaged, incomplete and old-version caches and leftovers of interrupted writes (never
            anything younger than :data:`TEMP_GRACE_SECONDS`, which may be a build in progress).
        everything: delete every cache (builds in progress excepted).
        dry_run: delete nothing.

    Raises:
        ValueError: none of ``unused_days``, ``stale``, ``everything`` given, or ``unused_days < 0``.
        OSError: a file that cannot be deleted (read-only folder), naming it.
    """
    import time

    if unused_days is None and not stale and not everything:
        raise ValueError("say what to clean: unused_days, stale or everything")
    if unused_days is not None and not unused_days >= 0:
        raise ValueError(f"unused_days must be >= 0, got {unused_days!r}")
    now = time.time() if now is None else now
    chosen = []
    for entry in list_caches(cache_dir, now=now):
        if entry.status == "in progress":
            continue
        unused = unused_days is not None and now - entry.last_used > unused_days * 86400
        if everything or (stale and entry.stale) or unused:
            chosen.append(entry)
    if not dry_run:
        for entry in chosen:
            # the index first: a cache without its index is never opened as complete
            for path in sorted(entry.paths, key=lambda p: not p.name.endswith(INDEX_SUFFIX)):
                try:
                    path.unlink(missing_ok=True)
                except OSError as err:
                    raise OSError(err.errno, f"cannot delete {path}: {err.strerror}") from err
            log.info("deleted waveform cache %s (%s)", entry.stem, entry.status)
    return chosen

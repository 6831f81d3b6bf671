"""Datasets over the waveform cache: they only slice arrays (crop or pad), everything else runs on the device.

Random crops are drawn per item from a *draw*, a uniform integer in ``[0, DRAW_BOUND)`` that the training sampler
hands out with each index (:class:`~audio_ssl.data.sampler.CropDraws`): the crop of an item is a function of its
index and draw only, so it is the same whichever DataLoader worker reads the item, with any ``num_workers``, and
on the device-resident path (:class:`ResidentClips`), which gathers whole batches on the accelerator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from audio_ssl.data.cache import WaveformCache, preview_names
from audio_ssl.data.sampler import DRAW_BOUND


def crop_windows(lengths: np.ndarray | Sequence[int], target: int, draws: np.ndarray | Sequence[int] | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Where to read ``target`` samples from clips of ``lengths`` samples (vectorised over clips).

    Returns int64 arrays ``(read_start, write_start)``: clip ``k`` is read from ``read_start[k]`` and written into
    a zero buffer of ``target`` samples at ``write_start[k]``. With ``draws=None`` (evaluation) long clips are
    cropped at the centre and short ones padded at the end; with draws (training, uniform integers in
    ``[0, DRAW_BOUND)``, one per clip) the crop start, or the offset of a short clip in the buffer, is
    ``draw mod (|length - target| + 1)``: uniform up to a bias below ``|length - target| / 2**63``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    long = lengths >= target
    if draws is None:
        return np.where(long, (lengths - target) // 2, 0), np.zeros_like(lengths)
    draws = np.asarray(draws, dtype=np.int64)
    if draws.shape != lengths.shape:
        raise ValueError(f"{draws.size} crop draws for {lengths.size} clips")
    if (draws < 0).any():
        raise ValueError(f"crop draws must lie in [0, 2**63), got {int(draws.min())}")
    pick = draws % (np.abs(lengths - target) + 1)
    return np.where(long, pick, 0), np.where(long, 0, pick)


def crop_or_pad_window(length: int, target: int, random: bool, rng: np.random.Generator | None = None) -> tuple[int, int]:
    """:func:`crop_windows` for one clip of ``length`` samples, its draw taken from ``rng`` when ``random``:
    ``(read_start, write_start)``."""
    draws = [int(rng.integers(0, DRAW_BOUND))] if random else None
    read, write = crop_windows([length], target, draws)
    return int(read[0]), int(write[0])


class ClipDataset(Dataset):
    """Fixed-length clips from a :class:`WaveformCache`.

    Items are dicts: ``audio`` (float16 [clip_samples], as stored in the cache), ``label`` (int64), ``index`` (the row of
    this dataset, so predictions can be traced back to files via :attr:`files`).

    An item is read by row ``i`` or by ``(i, draw)`` (what :class:`~audio_ssl.data.sampler.CropDraws` yields): with
    ``random_crop`` its crop is :func:`crop_windows` of that draw, and a row alone takes a draw from this
    dataset's own generator (:meth:`draw`). Without
    ``random_crop`` draws are ignored (centre crops).

    Raises ``FloatingPointError`` naming the file for an item with a NaN/Inf sample (a cache damaged after it
    was verified): no non-finite value reaches a model from the data path.
    """

    def __init__(
        self,
        cache: WaveformCache,
        positions: Sequence[int],
        labels: Sequence[int],
        clip_samples: int,
        random_crop: bool,
        files: Sequence[str] | None = None,
        seed: int = 0,
    ):
        if len(positions) != len(labels):
            raise ValueError(f"{len(positions)} positions but {len(labels)} labels")
        if clip_samples <= 0:
            raise ValueError(f"clip_samples must be positive, got {clip_samples}")
        self.cache = cache
        self.positions = np.asarray(positions, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.clip_samples = int(clip_samples)
        self.random_crop = random_crop
        self.files = list(files) if files is not None else [cache.files[p] for p in self.positions]
        self.seed = seed
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def draw(self) -> int:
        """A crop draw from this dataset's own generator, for an item read by its row alone. One generator per
        process, seeded from ``seed`` and torch's seed of the process (per worker: the DataLoader's worker seed),
        so workers never repeat each other's crops."""
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, torch.initial_seed() % 2**32])
        return int(self._rng.integers(0, DRAW_BOUND))

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, draw = key if isinstance(key, tuple) else (key, None)
        pos = int(self.positions[i])
        length = int(self.cache.lengths[pos])
        if self.random_crop and draw is None:
            draw = self.draw()
        reads, writes = crop_windows([length], self.clip_samples, [draw] if self.random_crop else None)
        read, write = int(reads[0]), int(writes[0])
        view = self.cache.view(pos, read, self.clip_samples)
        # NaN/Inf float16 have all exponent bits set (|bits| >= 0x7C00): ~10 us per 5 s clip, unlike np.isfinite.
        # The cache is verified when opened; this guards the model against a cache damaged afterwards.
        if len(view) and int((view.view(np.uint16) & 0x7FFF).max()) >= 0x7C00:
            bad = int(np.count_nonzero(~np.isfinite(view)))
            raise FloatingPointError(
                f"{self.files[i]}: {bad} non-finite sample(s) read from the waveform cache in "
                f"{getattr(self.cache, 'directory', '?')}: the cache is damaged; delete its files for this "
                "dataset to rebuild them (audio-ssl cache list; audio-ssl cache clean --stale)")
        segment = torch.from_numpy(view)
        if write == 0 and len(segment) == self.clip_samples:
            audio = segment.clone()
        else:
            audio = torch.zeros(self.clip_samples, dtype=segment.dtype)
            audio[write : write + len(segment)] = segment
        # float16 on the way to the device (half the bytes between workers and to the accelerator);
        # BaseMethod converts to float32 right after the transfer.
        return {"audio": audio, "label": torch.tensor(self.labels[i]), "index": torch.tensor(i)}


def already_batched(batch: dict) -> dict:
    """The ``collate_fn`` of a DataLoader over :class:`ResidentClips`, whose ``__getitems__`` returns the batch."""
    return batch


class ResidentClips(Dataset):
    """The clips of a :class:`ClipDataset`, uploaded once to ``device``; batches are gathered there by index.

    A DataLoader (``num_workers=0``, ``collate_fn=``:func:`already_batched`) over it with the sampler of the
    ``ClipDataset``'s loader yields, batch for batch, what that loader yields (the same rows, crops and pads, the
    same dict ``{"audio": float16 [B, clip_samples], "label": int64 [B], "index": int64 [B]}``), but already on
    ``device``: ``__getitems__`` computes the crops of a batch with :func:`crop_windows` (the clip's index and
    draw, or for a row alone a draw from the ``ClipDataset``'s generator, as :meth:`ClipDataset.__getitem__`) and
    reads them with one gather. Per batch only the ``2B`` integers of rows and window starts go to the device.

    Layout: the clips in dataset order in one flat float16 tensor, each preceded and the last also followed by
    ``gap = max(0, clip_samples - shortest clip)`` zeros, so that every crop or pad window, ``clip_samples`` long,
    is one contiguous slice (a short clip's pad is the zeros around it). Memory: :meth:`nbytes`.

    Raises ``FloatingPointError`` naming the files when the cache holds non-finite samples (checked once, at
    the upload: the uploaded copy does not change).
    """

    def __init__(self, clips: ClipDataset, device: torch.device | str):
        self.clips, self.device = clips, torch.device(device)
        self.clip_samples, self.random_crop = clips.clip_samples, clips.random_crop
        self.lengths = clips.cache.lengths[clips.positions].astype(np.int64)
        gap = self.gap(clips)
        self.starts = gap + np.concatenate([[0], np.cumsum(self.lengths + gap)[:-1]]).astype(np.int64)
        host = np.zeros(int(self.starts[-1] + self.lengths[-1] + gap), dtype=np.float16)
        bad = []
        for row, (pos, start) in enumerate(zip(clips.positions, self.starts)):
            clip = clips.cache[int(pos)]
            host[start : start + len(clip)] = clip
            if len(clip) and int((clip.view(np.uint16) & 0x7FFF).max()) >= 0x7C00:  # NaN/Inf, as ClipDataset
                bad.append(clips.files[row])
        if bad:
            raise FloatingPointError(
                f"{len(bad)} clip(s) hold non-finite samples in the waveform cache in "
                f"{getattr(clips.cache, 'directory', '?')}: {preview_names(bad)}; the cache is damaged: delete its "
                "files for this dataset to rebuild them (audio-ssl cache list; audio-ssl cache clean --stale)")
        self.audio = torch.from_numpy(host).to(self.device)
        self.labels = torch.from_numpy(clips.labels).to(self.device)
        self.windows = self.audio.unfold(0, self.clip_samples, 1)  # [positions, clip_samples], a view

    @staticmethod
    def gap(clips: ClipDataset) -> int:
        """Zeros between clips in the flat layout: ``max(0, clip_samples - shortest clip)``."""
        return max(0, clips.clip_samples - int(clips.cache.lengths[clips.positions].min()))

    @classmethod
    def nbytes(cls, clips: ClipDataset) -> int:
        """Device bytes of ``clips`` uploaded: float16 audio with its gaps, int64 labels."""
        samples = int(clips.cache.lengths[clips.positions].sum()) + (len(clips) + 1) * cls.gap(clips)
        return 2 * samples + 8 * len(clips)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> dict:
        if keys and isinstance(keys[0], tuple):
            rows, draws = (np.asarray(column, dtype=np.int64) for column in zip(*keys))
        else:  # rows alone (e.g. Lightning's sequential sampler for overfit_batches): draws as ClipDataset takes them
            rows = np.asarray(keys, dtype=np.int64)
            draws = np.asarray([self.clips.draw() for _ in keys], dtype=np.int64) if self.random_crop else None
        read, write = crop_windows(self.lengths[rows], self.clip_samples, draws if self.random_crop else None)
        where = torch.from_numpy(np.stack([rows, self.starts[rows] + read - write])).to(self.device, non_blocking=True)
        return {"audio": self.windows[where[1]], "label": self.labels[where[0]], "index": where[0]}

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        batch = self.__getitems__([key])
        return {name: value[0] for name, value in batch.items()}

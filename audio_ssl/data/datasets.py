"""Datasets over the waveform cache: they only slice arrays (crop or pad), everything else runs on the device."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from audio_ssl.data.cache import WaveformCache


def crop_or_pad_window(length: int, target: int, random: bool, rng: np.random.Generator | None = None) -> tuple[int, int]:
    """Where to read ``target`` samples from a clip of ``length`` samples.

    Returns ``(read_start, write_start)``: the clip is read from ``read_start`` and written into a
    zero buffer of ``target`` samples at ``write_start``. Long clips are cropped (random start in
    training, the centre in evaluation); short clips are padded with silence (placed at a random
    offset in training, at the start in evaluation).
    """
    if length >= target:
        start = int(rng.integers(0, length - target + 1)) if random else (length - target) // 2
        return start, 0
    offset = int(rng.integers(0, target - length + 1)) if random else 0
    return 0, offset


class ClipDataset(Dataset):
    """Fixed-length clips from a :class:`WaveformCache`.

    Items are dicts: ``audio`` (float16 [clip_samples], as stored in the cache), ``label`` (int64), ``index`` (the row of
    this dataset, so predictions can be traced back to files via :attr:`files`).

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

    def _generator(self) -> np.random.Generator:
        # One generator per worker process, seeded from torch's per-worker seed (which Lightning's
        # seed_everything(workers=True) makes reproducible), so workers never repeat each other's crops.
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, torch.initial_seed() % 2**32])
        return self._rng

    def __getitem__(self, i: int) -> dict:
        pos = int(self.positions[i])
        length = int(self.cache.lengths[pos])
        read, write = crop_or_pad_window(length, self.clip_samples, self.random_crop, self._generator())
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

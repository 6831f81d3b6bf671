"""Shared LightningDataModule for fold-based audio classification datasets (ESC-50, UrbanSound8K)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader

from audio_ssl.data.cache import WaveformCache
from audio_ssl.data.datasets import ClipDataset
from audio_ssl.data.sampler import ShardSampler
from audio_ssl.utils.download import fetch_and_extract

log = logging.getLogger(__name__)


class FoldAudioDataModule(L.LightningDataModule):
    """Cross-validation by official folds over a decoded-once waveform cache.

    Subclasses describe one dataset: its name, number of folds and classes, where the archive lives,
    and :meth:`read_metadata`, which returns one row per clip with the columns ``path`` (absolute),
    ``fold``, ``label`` and ``category``.

    Splits: ``test_fold`` is held out; ``val_fold`` (optional) is held out for validation; the
    training set is every other fold. Without ``val_fold`` the validation loop runs on the test fold
    and is for monitoring only (the usual ESC-50 protocol reports the final model on the test fold,
    not a checkpoint chosen on it). ``transductive=True`` puts every fold's audio into the training
    set: only for self-supervised pretraining, whose results must then be marked as such.
    """

    dataset_name: str = "audio"
    num_folds: int = 0
    official_num_classes: int = 0
    download_url: str | None = None
    metadata_relpath: str = ""
    default_clip_seconds: float = 5.0

    def __init__(
        self,
        data_dir: str,
        test_fold: int = 1,
        val_fold: int | None = None,
        sample_rate: int = 16000,
        clip_seconds: float | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        cache_dir: str | None = None,
        download: bool = False,
        skip_bad_files: bool = False,
        transductive: bool = False,
        pin_memory: bool = True,
        eval_batch_size: int | None = None,
    ):
        super().__init__()
        self._check_fold("test_fold", test_fold)
        if val_fold is not None:
            self._check_fold("val_fold", val_fold)
            if val_fold == test_fold:
                raise ValueError(f"val_fold and test_fold are both {test_fold}; pick different folds")
        if not isinstance(sample_rate, int) or not 1000 <= sample_rate <= 192000:
            raise ValueError(f"sample_rate={sample_rate!r} is not supported: use an integer in [1000, 192000]")
        clip_seconds = self.default_clip_seconds if clip_seconds is None else clip_seconds
        if clip_seconds <= 0:
            raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
        self.data_dir = Path(data_dir).expanduser()
        self.test_fold, self.val_fold = test_fold, val_fold
        self.sample_rate, self.clip_seconds = sample_rate, float(clip_seconds)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.eval_batch_size = eval_batch_size or batch_size
        self.cache_dir = cache_dir
        self.download, self.skip_bad_files = download, skip_bad_files
        self.transductive, self.pin_memory = transductive, pin_memory
        self.metadata: pd.DataFrame | None = None
        self.cache: WaveformCache | None = None
        self.train_set = self.val_set = self.test_set = None

    # ----------------------------------------------------------------- dataset description
    # Every subclass defines ``read_metadata(self) -> pd.DataFrame`` (columns path, fold, label, category).

    @property
    def clip_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def train_folds(self) -> list[int]:
        held_out = {self.test_fold, self.val_fold} - {None}
        return [f for f in range(1, self.num_folds + 1) if self.transductive or f not in held_out]

    def _check_fold(self, name: str, fold) -> None:
        if not isinstance(fold, int) or not 1 <= fold <= self.num_folds:
            raise ValueError(f"{name}={fold!r} is out of range: {self.dataset_name} has folds 1..{self.num_folds}")

    def _metadata(self) -> pd.DataFrame:
        if self.metadata is None:
            self._ensure_present()
            meta = self.read_metadata()
            bad_folds = sorted(set(meta["fold"]) - set(range(1, self.num_folds + 1)))
            if bad_folds:
                raise ValueError(f"{self.metadata_path}: fold values {bad_folds} are outside 1..{self.num_folds}")
            self.metadata = meta.reset_index(drop=True)
        return self.metadata

    @property
    def metadata_path(self) -> Path:
        return self.data_dir / self.metadata_relpath

    @property
    def num_classes(self) -> int:
        """Number of classes in the metadata (the official count if the data is not present yet)."""
        if self.metadata is None and not self.metadata_path.exists():
            return self.official_num_classes
        return int(self._metadata()["label"].max()) + 1

    @property
    def class_names(self) -> list[str]:
        meta = self._metadata()
        names = meta.drop_duplicates("label").set_index("label")["category"]
        return [str(names.get(i, i)) for i in range(self.num_classes)]

    def _ensure_present(self) -> None:
        if self.metadata_path.exists():
            return
        if self.download and self.download_url:
            log.info("%s not found at %s: downloading %s", self.dataset_name, self.data_dir, self.download_url)
            fetch_and_extract(self.download_url, self.data_dir)
            if not self.metadata_path.exists():
                raise FileNotFoundError(
                    f"downloaded {self.download_url} into {self.data_dir}, but {self.metadata_path} is not there"
                )
            return
        hint = (
            f"download {self.download_url}, unpack it and point data_dir at the folder that holds "
            f"'{self.metadata_relpath}' (or pass download=True on a machine with network access)"
            if self.download_url
            else f"place the dataset so that '{self.metadata_relpath}' is inside data_dir"
        )
        raise FileNotFoundError(f"{self.dataset_name} metadata not found at {self.metadata_path}: {hint}")

    @staticmethod
    def _require_columns(frame: pd.DataFrame, columns: list[str], source: Path) -> None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{source}: missing column(s) {missing}; found {list(frame.columns)}")

    # ----------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Download if asked, then decode every file once into the shared cache (local rank 0 only)."""
        self._open_cache(progress=True)

    def _open_cache(self, progress: bool = False) -> WaveformCache:
        if self.cache is None:
            meta = self._metadata()
            self.cache = WaveformCache.build(
                meta["path"].tolist(),
                self.sample_rate,
                cache_dir=self.cache_dir,
                name=self.dataset_name,
                skip_bad_files=self.skip_bad_files,
                num_workers=max(1, min(self.num_workers, os.cpu_count() or 1)),
                progress=progress,
            )
        return self.cache

    def split(self, folds: list[int], random_crop: bool) -> ClipDataset:
        meta = self._metadata()
        cache = self._open_cache()
        rows = meta[meta["fold"].isin(folds)]
        if cache.skipped:
            dropped = rows["path"].isin(cache.skipped.keys())
            if dropped.any():
                log.warning("folds %s: %d skipped bad file(s) left out of this split", folds, int(dropped.sum()))
            rows = rows[~dropped]
        if len(rows) == 0:
            raise ValueError(f"{self.dataset_name}: no clips in folds {folds}")
        positions = [cache.position(p) for p in rows["path"]]
        return ClipDataset(cache, positions, rows["label"].tolist(), self.clip_samples, random_crop,
                           files=rows["path"].tolist())

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self.split(self.train_folds, random_crop=True)
            self.val_set = self.split([self.val_fold or self.test_fold], random_crop=False)
            self.test_set = self.split([self.test_fold], random_crop=False)

    def _loader(self, dataset: ClipDataset, train: bool) -> DataLoader:
        # Evaluation under DDP: every clip once (Lightning's padded DistributedSampler repeats clips).
        shards = None if train else getattr(self.trainer, "distributed_sampler_kwargs", None)
        sampler = ShardSampler(dataset, shards["num_replicas"], shards["rank"]) if shards else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            sampler=sampler,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

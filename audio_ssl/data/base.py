"""Shared LightningDataModule for fold-based audio classification datasets (ESC-50, UrbanSound8K)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader

from audio_ssl.data.audio import AudioDecodeError
from audio_ssl.data.cache import CacheGroup, WaveformCache, preview_names
from audio_ssl.data.datasets import ClipDataset, ResidentClips, already_batched
from audio_ssl.data.paths import DATA_ENV, DatasetNotFoundError, default_data_dir
from audio_ssl.data.sampler import CropDraws, DistributedCropDraws, ShardSampler
from audio_ssl.utils.distributed import destroy_process_group_at_exit
from audio_ssl.utils.download import fetch_and_extract

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "pretrain")
"""The splits of :meth:`FoldAudioDataModule.split_folds` (see there)."""

STAGE_SETS = {
    "fit": ("train_set", "val_set"),
    "validate": ("val_set",),
    "test": ("test_set",),
    "predict": ("test_set",),
}
"""The datasets each Lightning stage builds (and so the only folds whose audio it reads)."""

SET_SPLITS = {"train_set": "pretrain", "val_set": "val", "test_set": "test"}
"""The split of each dataset attribute: ``fit`` trains on ``pretrain`` (``train`` unless transductive)."""

RESIDENT_MEMORY_FRACTION = 0.25
"""``device_resident="auto"`` uploads a stage's clips only when they take at most this fraction of the device's
free memory (at the time the first loader of the stage is built)."""


class FoldAudioDataModule(L.LightningDataModule):
    """Cross-validation by official folds over a decoded-once waveform cache.

    Subclasses describe one dataset: its name, number of folds and classes, where the archive lives,
    and :meth:`read_metadata`, which returns one row per clip with the columns ``path`` (absolute),
    ``fold``, ``label`` and ``category``.

    Splits: ``test_fold`` is held out; ``val_fold`` (optional) is held out for validation; the
    training set is every other fold. Without ``val_fold`` the validation loop runs on the test fold
    and is for monitoring only (the usual ESC-50 protocol reports the final model on the test fold,
    not a checkpoint chosen on it). ``transductive=True`` puts every fold's audio into the training
    set of ``fit``: only for self-supervised pretraining, whose results must then be marked as such.

    This class is the single source of truth for the fold protocol: :meth:`split_folds` and
    :meth:`split_dataset` give the folds and the clips of each split (``train``, ``val``, ``test``,
    ``pretrain``), and every training and evaluation path (Lightning fit/validate/test/predict, the
    probes, the pretraining pipelines, the baselines) asks them.

    Each stage reads only the folds it uses (fit: train + val, validate: val, test and predict:
    test): the waveform cache is kept per fold, so a layout that holds only the test fold can be
    tested, and every fold is still decoded once for all runs.

    ``data_dir=None`` (a recipe without ``data_dir``) means ``$AUDIO_SSL_DATA/<dataset_name>``
    (default root ``~/.cache/audio-ssl/data``; see :mod:`audio_ssl.data.paths`).

    ``device_resident`` (``"auto"``, ``True``, ``False``): the loaders' clips uploaded once to the trainer's device
    (:class:`~audio_ssl.data.datasets.ResidentClips`, float16 as in the cache: ESC-50 at 16 kHz is about 320 MB)
    and batches gathered there by index, with no workers and no per-step copy of audio. The batches are those of
    the worker DataLoader (same sampler, order, crops, DDP shards, batch dict, ``drop_last``). ``"auto"``: on
    when the trainer runs on a CUDA device and the clips of the stage's sets (fit: train + val) fit in
    :data:`RESIDENT_MEMORY_FRACTION` of its free memory, else off; ``True``: on for any device (a CPU trainer, or
    no trainer: the CPU), an error when the clips do not fit in the free memory of a CUDA device.
    """

    dataset_name: str = "audio"
    num_folds: int = 0
    official_num_classes: int = 0
    download_url: str | None = None
    metadata_relpath: str = ""
    default_clip_seconds: float = 5.0

    def __init__(
        self,
        data_dir: str | None = None,
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
        device_resident: bool | Literal["auto"] = "auto",
    ):
        super().__init__()
        if not (isinstance(device_resident, bool) or device_resident == "auto"):
            raise ValueError(f"device_resident={device_resident!r} is not one of 'auto', true, false")
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
        self.data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir(self.dataset_name)
        self.test_fold, self.val_fold = test_fold, val_fold
        self.sample_rate, self.clip_seconds = sample_rate, float(clip_seconds)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.eval_batch_size = eval_batch_size or batch_size
        self.cache_dir = cache_dir
        self.download, self.skip_bad_files = download, skip_bad_files
        self.transductive, self.pin_memory = transductive, pin_memory
        self.device_resident = device_resident
        self._resident: dict[tuple[int, str], tuple[ClipDataset, ResidentClips]] = {}
        self.metadata: pd.DataFrame | None = None
        self._fold_caches: dict[int, WaveformCache] = {}
        self._groups: dict[tuple[int, ...], CacheGroup] = {}
        self.train_set = self.val_set = self.test_set = None

    # ----------------------------------------------------------------- dataset description
    # Every subclass defines ``read_metadata(self) -> pd.DataFrame`` (columns path, fold, label, category).

    @property
    def clip_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def train_folds(self) -> list[int]:
        """The labelled training folds: ``split_folds("train")``."""
        return self.split_folds("train")

    def split_folds(self, split: str, test_fold: int | None = None) -> list[int]:
        """The folds of ``split`` for held-out fold ``test_fold`` (default: this module's ``test_fold``).

        - ``train``: every fold but the test fold and ``val_fold``; what supervised training, fine-tuning,
          linear probes and baselines fit on (never the test fold, whatever ``transductive`` says);
        - ``val``: ``[val_fold]``, or ``[test_fold]`` without one (validation is then monitoring only);
        - ``test``: ``[test_fold]``;
        - ``pretrain``: the audio a ``fit`` trains on: ``train``, or every fold with ``transductive=True``
          (self-supervised pretraining only).
        """
        if test_fold is None:
            test_fold = self.test_fold
        else:
            self._check_fold("test_fold", test_fold)
            if test_fold == self.val_fold:
                raise ValueError(f"held-out fold {test_fold} is the data module's val_fold; pick another test fold")
        every = list(range(1, self.num_folds + 1))
        train = [f for f in every if f not in {test_fold, self.val_fold}]
        if split == "train":
            return train
        if split == "val":
            return [self.val_fold if self.val_fold is not None else test_fold]
        if split == "test":
            return [test_fold]
        if split == "pretrain":
            return every if self.transductive else train
        raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")

    def split_dataset(self, split: str, random_crop: bool = False, test_fold: int | None = None) -> ClipDataset:
        """The clips of ``split`` (see :meth:`split_folds`); bad files skipped with ``skip_bad_files`` are
        left out with a warning that counts them."""
        folds = self.split_folds(split, test_fold)
        return self._clips(folds, random_crop, what=f"{split} split (folds {folds})")

    def split_files(self, split: str, test_fold: int | None = None) -> list[str]:
        """The files of :meth:`split_dataset` (``split``), in its order."""
        return list(self.split_dataset(split, test_fold=test_fold).files)

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

    def describe(self) -> dict:
        """What a checkpoint needs to be used without this data module: the dataset, folds, rate, clip length
        and class names (``None`` when the metadata is not available). Plain values only."""
        names = list(self.class_names) if self.metadata is not None or self.metadata_path.exists() else None
        return {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "dataset": self.dataset_name,
            "data_dir": str(self.data_dir.absolute()),
            "num_folds": self.num_folds,
            "test_fold": self.test_fold,
            "val_fold": self.val_fold,
            "train_folds": list(self.train_folds),
            "transductive": bool(self.transductive),
            "sample_rate": int(self.sample_rate),
            "clip_seconds": float(self.clip_seconds),
            "batch_size": int(self.batch_size),
            "num_classes": len(names) if names is not None else int(self.official_num_classes),
            "class_names": names,
        }

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
        fetch = (f"or download {self.download_url} and unpack it there (--data.init_args.download true does "
                 "both on a machine with network access)"
                 if self.download_url else "and place the dataset so that it holds this file")
        raise DatasetNotFoundError(
            f"{self.dataset_name} not found: {self.metadata_path} does not exist; point at your copy with "
            f"--data.init_args.data_dir DIR (or set ${DATA_ENV} to the folder holding '{self.dataset_name}/') "
            f"{fetch}")

    @staticmethod
    def _require_columns(frame: pd.DataFrame, columns: list[str], source: Path) -> None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{source}: missing column(s) {missing}; found {list(frame.columns)}")

    # ----------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Download if asked, then decode the files of the folds the trainer's stage uses (every fold when
        called outside a trainer) once into the shared per-fold caches (local rank 0 only)."""
        stage = self._trainer_stage()
        if stage is None:
            self._open_cache(progress=True)
        else:
            folds = sorted({f for name in STAGE_SETS[stage] for f in self._set_folds(name)})
            self._open_cache(folds, progress=True)

    def _trainer_stage(self) -> str | None:
        trainer = getattr(self, "trainer", None)
        fn = getattr(getattr(trainer, "state", None), "fn", None)
        stage = getattr(fn, "value", fn)
        return stage if stage in STAGE_SETS else None

    def _set_split(self, name: str) -> str:
        """The split of the dataset attribute ``name`` (``train_set``: what fit trains on)."""
        split = SET_SPLITS[name]
        return "train" if split == "pretrain" and not self.transductive else split  # the same folds, named plainly

    def _set_folds(self, name: str) -> list[int]:
        return self.split_folds(self._set_split(name))

    @property
    def cache(self) -> CacheGroup | None:
        """Every fold cache opened so far, read as one (``None`` before any is opened)."""
        if not self._fold_caches:
            return None
        return self._open_cache(sorted(self._fold_caches))

    def cache_is_built(self, folds: list[int] | None = None) -> bool:
        """Whether the waveform cache of every one of ``folds`` (default: every fold in the metadata) exists,
        so that opening them decodes nothing."""
        meta = self._metadata()
        folds = sorted(int(f) for f in meta["fold"].unique()) if folds is None else folds
        for fold in folds:
            data_path, index_path = WaveformCache.paths(
                meta.loc[meta["fold"] == fold, "path"].tolist(), self.sample_rate, self.cache_dir,
                self._cache_name(fold))
            if not (data_path.exists() and index_path.exists()):
                return False
        return True

    def _cache_name(self, fold: int) -> str:
        return f"{self.dataset_name}-fold{fold}"

    def _open_cache(self, folds: list[int] | None = None, progress: bool = False) -> CacheGroup:
        """The caches of ``folds`` (default: every fold in the metadata) as one, decoding what is not
        cached yet. Only the files of these folds are read (or required to exist)."""
        meta = self._metadata()
        if folds is None:
            folds = sorted(int(f) for f in meta["fold"].unique())
        if not folds:
            raise ValueError(f"{self.metadata_path} lists no clips")
        empty = sorted(set(folds) - set(int(f) for f in meta["fold"].unique()))
        if empty:
            raise ValueError(f"{self.dataset_name}: {self.metadata_path} lists no clips in folds {empty} "
                             f"(it has folds {sorted(int(f) for f in meta['fold'].unique())})")
        new = [f for f in folds if f not in self._fold_caches]
        self._check_files_exist(meta[meta["fold"].isin(new)])
        for fold in new:
            if fold not in self._fold_caches:
                self._fold_caches[fold] = WaveformCache.build(
                    meta.loc[meta["fold"] == fold, "path"].tolist(),
                    self.sample_rate,
                    cache_dir=self.cache_dir,
                    name=self._cache_name(fold),
                    skip_bad_files=self.skip_bad_files,
                    num_workers=max(1, min(self.num_workers, os.cpu_count() or 1)),
                    progress=progress,
                )
        key = tuple(sorted(set(folds)))
        if key not in self._groups:  # one group object per fold set: datasets of the same folds share it
            self._groups[key] = CacheGroup([self._fold_caches[f] for f in key])
        return self._groups[key]

    def _check_files_exist(self, rows: pd.DataFrame) -> None:
        """Without ``skip_bad_files``, every listed file of ``rows`` must exist: one error counts the missing
        ones and names the first few (with ``skip_bad_files`` the cache skips them as bad files)."""
        if self.skip_bad_files or len(rows) == 0:
            return
        missing = [p for p in rows["path"] if not os.path.exists(p)]
        if missing:
            raise AudioDecodeError(
                f"{len(missing)} of {len(rows)} file(s) listed in {self.metadata_path} (folds "
                f"{sorted(int(f) for f in rows['fold'].unique())}) do not exist: {preview_names(missing)} "
                f"(set skip_bad_files=True to leave bad files out instead)"
            )

    def split(self, folds: list[int], random_crop: bool) -> ClipDataset:
        """The clips of ``folds`` (low level: to train or evaluate by the protocol use :meth:`split_dataset`)."""
        return self._clips(list(folds), random_crop, what=f"folds {list(folds)}")

    def _clips(self, folds: list[int], random_crop: bool, what: str) -> ClipDataset:
        meta = self._metadata()
        rows = meta[meta["fold"].isin(folds)]
        if len(rows) == 0:
            raise ValueError(f"{self.dataset_name} {what}: {self.metadata_path} lists no clips in these folds "
                             f"(it has folds {sorted(int(f) for f in meta['fold'].unique())})")
        cache = self._open_cache(sorted(set(folds)))
        dropped = rows["path"].isin(cache.skipped.keys())
        if dropped.any():
            names = [Path(p).name for p in rows.loc[dropped, "path"]]
            log.warning("%s %s: %d of %d clip(s) left out as bad files (skip_bad_files=True): %s",
                        self.dataset_name, what, len(names), len(rows), preview_names(names))
            rows = rows[~dropped]
        if len(rows) == 0:
            raise ValueError(f"{self.dataset_name} {what}: every clip is a skipped bad file")
        positions = [cache.position(p) for p in rows["path"]]
        return ClipDataset(cache, positions, rows["label"].tolist(), self.clip_samples, random_crop,
                           files=rows["path"].tolist())

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets ``stage`` uses (fit: train + val, validate: val, test/predict: test; every one
        without a stage); the others stay ``None`` and their folds are never read."""
        if stage is not None and stage not in STAGE_SETS:
            raise ValueError(f"stage={stage!r} is not one of {list(STAGE_SETS)}")
        destroy_process_group_at_exit()  # see there: also for models that are not a BaseMethod
        names = STAGE_SETS[stage] if stage is not None else tuple(SET_SPLITS)
        for name in names:
            if getattr(self, name) is None:
                setattr(self, name, self.split_dataset(self._set_split(name), random_crop=name == "train_set"))

    def _loader(self, dataset: ClipDataset, train: bool) -> DataLoader:
        """The DataLoader of ``dataset``: shuffled with crop draws for training (:class:`CropDraws`; under DDP the
        shard of :class:`DistributedCropDraws`, what Lightning would inject, seeded by ``PL_GLOBAL_SEED``), in
        order for evaluation (under DDP :class:`ShardSampler`: every clip once). Over the device-resident clips
        (see ``device_resident``) the same sampler, no workers."""
        trainer = getattr(self, "trainer", None)
        shards = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
        # Private generators, seeded by two draws from the global one when the loader is built: the order, the
        # crops and the worker seeds then take nothing from the global generator while batches are drawn (the
        # DataLoader draws a worker seed per pass, except in later passes with persistent workers), so the
        # model's random numbers are the same on every path.
        sampler_seed, loader_seed = torch.empty(2, dtype=torch.int64).random_().tolist()
        if train and isinstance(dataset, ClipDataset) and dataset.random_crop:
            sampler = (DistributedCropDraws(dataset, shards["num_replicas"], shards["rank"],
                                            seed=int(os.getenv("PL_GLOBAL_SEED", 0)))
                       if shards else CropDraws(dataset, torch.Generator().manual_seed(sampler_seed)))
        else:  # an evaluation set, or another dataset given for training (shuffled by Lightning under DDP)
            sampler = None if train or not shards else ShardSampler(dataset, shards["num_replicas"], shards["rank"])
        batch_size = self.batch_size if train else self.eval_batch_size
        drop_last = train and len(dataset) > self.batch_size
        device = self._resident_device() if isinstance(dataset, ClipDataset) else None
        if device is not None:
            return DataLoader(self._resident_clips(dataset, device), batch_size=batch_size,
                              shuffle=train and sampler is None, sampler=sampler, drop_last=drop_last,
                              num_workers=0, collate_fn=already_batched,
                              generator=torch.Generator().manual_seed(loader_seed))
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(loader_seed),
        )

    def _resident_clips(self, dataset: ClipDataset, device: torch.device) -> ResidentClips:
        """``dataset`` on ``device``, uploaded once per data module (Lightning asks for loaders again)."""
        key = (id(dataset), str(device))
        if key not in self._resident:
            self._resident[key] = (dataset, ResidentClips(dataset, device))
            log.info("%s: %d clips (%.0f MB) uploaded to %s; batches are drawn there (device_resident)",
                     self.dataset_name, len(dataset), ResidentClips.nbytes(dataset) / 1e6, device)
        return self._resident[key][1]

    def _resident_device(self) -> torch.device | None:
        """Where the loaders' clips live (``None``: the worker DataLoader path); see ``device_resident``."""
        if self.device_resident is False:
            return None
        trainer = getattr(self, "trainer", None)
        device = torch.device(trainer.strategy.root_device) if trainer is not None else torch.device("cpu")
        if device.type != "cuda":
            return device if self.device_resident is True else None
        stage = self._trainer_stage()
        sets = [getattr(self, name) for name in (STAGE_SETS[stage] if stage else SET_SPLITS)]
        need = sum(ResidentClips.nbytes(s) for s in sets if s is not None
                   and (id(s), str(device)) not in self._resident)
        free = torch.cuda.mem_get_info(device)[0]
        if self.device_resident == "auto" and need > RESIDENT_MEMORY_FRACTION * free:
            log.info("%s: the clips take %.0f MB, more than %.0f%% of the %.0f MB free on %s: the worker DataLoader "
                     "path is used (device_resident=auto)", self.dataset_name, need / 1e6,
                     100 * RESIDENT_MEMORY_FRACTION, free / 1e6, device)
            return None
        if need > free:
            raise MemoryError(f"device_resident=True: the clips of the {stage or 'every'} stage's sets take "
                              f"{need / 1e6:.0f} MB, more than the {free / 1e6:.0f} MB free on {device}; use "
                              "device_resident: auto (or false)")
        return device

    def teardown(self, stage: str) -> None:
        """Free the device-resident clips at the end of a stage (the next stage uploads what it uses)."""
        self._resident.clear()

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

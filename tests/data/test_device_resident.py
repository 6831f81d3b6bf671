"""The device-resident data path (``device_resident``) yields exactly the worker DataLoader's batches.

Every check runs on the CPU (``device_resident=True`` puts the clips on the trainer's device, here the CPU): same
rows, crops, pads, labels and indices, batch for batch over two epochs, for training (shuffled, random crops of
long clips and random placement of short ones) and evaluation, in one process and as two DDP ranks, with and
without DataLoader workers; and a Lightning fit gives bit-identical weights on either path.
"""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from audio_ssl.data import ESC50DataModule
from audio_ssl.data.datasets import ClipDataset, ResidentClips, crop_windows
from audio_ssl.data.sampler import CropDraws


def make_dm(root, cache_dir, resident, **kwargs):
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", 4)
    dm = ESC50DataModule(str(root), cache_dir=str(cache_dir), device_resident=resident, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


def epochs_of(make_loader, epochs=2, seed=0, set_epoch=False):
    """The batches of ``epochs`` passes over the loader ``make_loader()`` (global RNG seeded once, as in a fit)."""
    L.seed_everything(seed, verbose=False)
    loader = make_loader()
    out = []
    for epoch in range(epochs):
        if set_epoch:
            loader.sampler.set_epoch(epoch)
        out.append([{k: v.clone() for k, v in batch.items()} for batch in loader])
    return out


def assert_same_batches(expected, actual):
    assert [len(e) for e in expected] == [len(a) for a in actual]
    for epoch_e, epoch_a in zip(expected, actual):
        for e, a in zip(epoch_e, epoch_a):
            assert e.keys() == a.keys()
            for key in e:
                assert e[key].dtype == a[key].dtype and e[key].shape == a[key].shape, key
                assert torch.equal(e[key], a[key]), key


def fake_trainer(num_replicas=None, rank=None):
    """What the data module reads of a trainer: its device and, under DDP, its shard."""
    shards = None if num_replicas is None else {"num_replicas": num_replicas, "rank": rank}
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")),
                           distributed_sampler_kwargs=shards, state=SimpleNamespace(fn=None))


# clip_seconds 0.5 crops the 1 s clips at random starts; 1.5 pads them at random offsets
@pytest.mark.parametrize("clip_seconds", [0.5, 1.5])
def test_resident_batches_equal_the_dataloader_batches(esc50_root, cache_dir, clip_seconds):
    plain = make_dm(esc50_root, cache_dir, False, clip_seconds=clip_seconds)
    resident = make_dm(esc50_root, cache_dir, True, clip_seconds=clip_seconds)
    for name in ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader"):
        expected = epochs_of(getattr(plain, name))
        actual = epochs_of(getattr(resident, name))
        assert isinstance(getattr(resident, name)().dataset, ResidentClips)
        assert_same_batches(expected, actual)
    train = epochs_of(plain.train_dataloader)
    assert len(train[0]) == 40 // 4  # drop_last keeps full batches only (40 training clips here)
    rows = [torch.cat([b["index"] for b in epoch]) for epoch in train]
    assert not torch.equal(rows[0], rows[1]) and sorted(rows[0].tolist()) == list(range(40))  # reshuffled
    audio = torch.cat([b["audio"] for b in train[0]])
    row = int(rows[0][0])
    again = torch.cat([b["audio"] for b in train[1]])[rows[1].tolist().index(row)]
    assert not torch.equal(audio[0], again)  # a new crop of the same clip in the next epoch


def test_crops_do_not_depend_on_the_workers(esc50_root, cache_dir):
    """Crop draws travel with the indices: two workers give the batches of the main process (and of the device)."""
    plain = make_dm(esc50_root, cache_dir, False, clip_seconds=0.5)
    workers = make_dm(esc50_root, cache_dir, False, clip_seconds=0.5, num_workers=2)
    resident = make_dm(esc50_root, cache_dir, True, clip_seconds=0.5, num_workers=2)
    expected = epochs_of(plain.train_dataloader)
    assert_same_batches(expected, epochs_of(workers.train_dataloader))
    assert_same_batches(expected, epochs_of(resident.train_dataloader))


def test_resident_items_are_the_dataset_items(esc50_root, cache_dir):
    """Against the plain reference: each gathered row is ClipDataset's item for the same (row, draw)."""
    dm = make_dm(esc50_root, cache_dir, True, clip_seconds=1.5)
    resident = ResidentClips(dm.train_set, "cpu")
    keys = [(3, 7), (0, 2**62 + 5), (39, 123456789)]
    batch = resident.__getitems__(keys)
    for k, key in enumerate(keys):
        item = dm.train_set[key]
        assert torch.equal(batch["audio"][k], item["audio"]) and int(batch["label"][k]) == int(item["label"])
    read, write = crop_windows([16000], 24000, [7])
    assert (int(read[0]), int(write[0])) == (0, 7 % 8001)
    nonzero = torch.nonzero(batch["audio"][0].float()).flatten()
    assert int(nonzero.min()) >= 7 and int(nonzero.max()) < 7 + 16000  # the clip sits at offset 7 in silence


@pytest.mark.parametrize("train", [True, False])
def test_resident_batches_equal_under_ddp_sharding(esc50_root, cache_dir, train):
    plain = make_dm(esc50_root, cache_dir, False, clip_seconds=0.5)
    resident = make_dm(esc50_root, cache_dir, True, clip_seconds=0.5)
    name = "train_dataloader" if train else "val_dataloader"
    seen = []
    for rank in (0, 1):
        plain.trainer = resident.trainer = fake_trainer(2, rank)
        expected = epochs_of(getattr(plain, name), set_epoch=train)
        assert_same_batches(expected, epochs_of(getattr(resident, name), set_epoch=train))
        seen.append(torch.cat([b["index"] for b in expected[0]]).tolist())
    assert not set(seen[0]) & set(seen[1])  # disjoint shards
    assert len(seen[0]) + len(seen[1]) == (40 if train else 10)


class TinyModel(L.LightningModule):
    """A linear classifier on the raw waveform (float16 -> float32 after the transfer, as BaseMethod)."""

    def __init__(self, samples: int):
        super().__init__()
        self.head = torch.nn.Linear(samples, 5)
        self.seen: list[int] = []

    def on_after_batch_transfer(self, batch, dataloader_idx):
        batch["audio"] = batch["audio"].float()
        return batch

    def training_step(self, batch, batch_idx):
        self.seen += batch["index"].tolist()
        noise = torch.randn_like(batch["audio"]) * 0.01  # the global RNG, as augmentations use it
        return torch.nn.functional.cross_entropy(self.head(batch["audio"] + noise), batch["label"])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.nn.functional.cross_entropy(self.head(batch["audio"]), batch["label"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_gives_identical_weights(esc50_root, cache_dir):
    """Two epochs with validation, the worker path with two persistent workers (which draw worker seeds only in
    the first pass) against the resident path: the same batches and the same global random numbers."""
    weights, seen = [], []
    for resident in (False, True):
        L.seed_everything(0, verbose=False)
        dm = ESC50DataModule(str(esc50_root), cache_dir=str(cache_dir), clip_seconds=0.5, batch_size=8,
                             num_workers=0 if resident else 2, device_resident=resident)
        model = TinyModel(8000)
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, datamodule=dm)
        assert isinstance(trainer.train_dataloader.dataset, ResidentClips) == resident
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        seen.append(model.seen)
    assert seen[0] == seen[1] and len(seen[0]) == 2 * 40
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_auto_is_off_on_a_cpu_trainer(esc50_root, cache_dir):
    dm = make_dm(esc50_root, cache_dir, "auto")
    dm.trainer = fake_trainer()
    assert isinstance(dm.train_dataloader().dataset, ClipDataset)
    dm = make_dm(esc50_root, cache_dir, True)
    dm.trainer = fake_trainer()
    assert isinstance(dm.train_dataloader().dataset, ResidentClips)


def test_auto_on_a_cuda_trainer_follows_the_free_memory(esc50_root, cache_dir, monkeypatch):
    """The decision only (no upload): on when the fit's clips take <= RESIDENT_MEMORY_FRACTION of the free memory."""
    from audio_ssl.data import base

    dm = make_dm(esc50_root, cache_dir, "auto", clip_seconds=1.0)
    dm.trainer = fake_trainer()
    dm.trainer.strategy.root_device = torch.device("cuda", 0)
    dm.trainer.state.fn = "fit"
    need = ResidentClips.nbytes(dm.train_set) + ResidentClips.nbytes(dm.val_set)
    assert need == 2 * 50 * 16000 + 8 * 50  # 1 s clips at 16 kHz (no gaps at clip_seconds 1.0), labels
    free = int(need / base.RESIDENT_MEMORY_FRACTION)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 2 * free))
    assert dm._resident_device() == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free - 1, 2 * free))
    assert dm._resident_device() is None  # auto: the worker path
    dm.device_resident = True
    assert dm._resident_device() == torch.device("cuda", 0)  # forced, and it fits
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (need - 1, 2 * free))
    with pytest.raises(MemoryError, match=r"device_resident=True: the clips of the fit stage's sets take 2 MB, more "
                                          r"than the 2 MB free on cuda:0; use device_resident: auto"):
        dm._resident_device()


@pytest.mark.parametrize("value", ["yes", 1, None, "true", 0.5])
def test_bad_device_resident_values_are_named(esc50_root, value):
    with pytest.raises(ValueError, match=rf"device_resident={value!r} is not one of 'auto', true, false"):
        ESC50DataModule(str(esc50_root), device_resident=value)


def test_bad_crop_draws_are_refused():
    with pytest.raises(ValueError, match="2 crop draws for 1 clips"):
        crop_windows([100], 40, [1, 2])
    with pytest.raises(ValueError, match=r"crop draws must lie in \[0, 2\*\*63\)"):
        crop_windows([100], 40, [-1])


def test_crop_draws_come_from_their_generator():
    sampler = CropDraws(range(10), torch.Generator().manual_seed(3))
    first, second = list(sampler), list(sampler)
    assert list(CropDraws(range(10), torch.Generator().manual_seed(3))) == first  # reproducible
    assert first != second  # a new order and new draws every pass
    assert sorted(i for i, _ in first) == list(range(10)) and all(0 <= d < 2**63 for _, d in first)
    assert len({d for _, d in first}) == 10


def test_mixed_lengths_crop_and_pad_alike(tmp_path):
    """Clips shorter and longer than the window in one set (as UrbanSound8K): random pads and crops, and centre
    crops / end pads in evaluation, equal on both paths; the gaps of the layout hold the pads."""
    import soundfile as sf
    from torch.utils.data import DataLoader

    from audio_ssl.data.cache import WaveformCache
    from audio_ssl.data.datasets import already_batched

    rng = np.random.default_rng(0)
    files = []
    for k, seconds in enumerate([0.3, 1.0, 2.0, 0.05, 1.7, 0.99]):
        files.append(str(tmp_path / f"clip{k}.wav"))
        sf.write(files[-1], rng.uniform(-0.5, 0.5, round(seconds * 16000)).astype(np.float32), 16000)
    cache = WaveformCache.build(files, 16000, cache_dir=tmp_path / "cache", num_workers=1, progress=False)
    for random_crop in (True, False):
        clips = ClipDataset(cache, range(6), [0, 1, 2, 3, 4, 0], clip_samples=16000, random_crop=random_crop)
        resident = ResidentClips(clips, "cpu")
        assert ResidentClips.gap(clips) == 16000 - 800  # the shortest clip, 0.05 s, needs 15200 zeros of pad
        assert resident.audio.numel() == int(cache.lengths.sum()) + 7 * 15200
        samplers = [CropDraws(clips, torch.Generator().manual_seed(5)) if random_crop else None for _ in range(2)]
        plain = DataLoader(clips, batch_size=4, sampler=samplers[0])
        gathered = DataLoader(resident, batch_size=4, sampler=samplers[1], collate_fn=already_batched)
        assert_same_batches([list(plain), list(plain)], [list(gathered), list(gathered)])  # two passes
    # rows without draws (Lightning's sequential sampler under overfit_batches): each path's own ClipDataset
    # generator, seeded alike in one process, so the same random crops too
    plain = DataLoader(ClipDataset(cache, range(6), [0] * 6, clip_samples=16000, random_crop=True), batch_size=4)
    gathered = DataLoader(ResidentClips(ClipDataset(cache, range(6), [0] * 6, clip_samples=16000, random_crop=True),
                                        "cpu"), batch_size=4, collate_fn=already_batched)
    assert_same_batches([list(plain), list(plain)], [list(gathered), list(gathered)])

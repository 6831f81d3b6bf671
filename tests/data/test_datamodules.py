"""Fold splits, the decode-once cache, crop/pad and bad-input errors of the ESC-50 / UrbanSound8K modules."""

from __future__ import annotations

import logging
import re
import shutil

import lightning as L
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audio_ssl.data import ESC50DataModule, UrbanSound8KDataModule
from audio_ssl.data import cache as cache_mod
from audio_ssl.data.audio import AudioDecodeError
from audio_ssl.data.cache import WaveformCache
from audio_ssl.data.datasets import crop_or_pad_window


def make_dm(root, cache_dir, **kwargs):
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", 4)
    dm = ESC50DataModule(str(root), cache_dir=str(cache_dir), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


def folds_of(dm, dataset):
    meta = dm.metadata.set_index("path")
    return set(meta.loc[dataset.files, "fold"])


@pytest.mark.parametrize("test_fold", [1, 3, 5])
def test_fold_splits_are_disjoint_and_complete(esc50_root, cache_dir, test_fold):
    dm = make_dm(esc50_root, cache_dir, test_fold=test_fold)
    assert folds_of(dm, dm.test_set) == {test_fold}
    assert folds_of(dm, dm.train_set) == set(range(1, 6)) - {test_fold}
    assert not set(dm.train_set.files) & set(dm.test_set.files)
    assert len(dm.train_set) + len(dm.test_set) == 50
    assert dm.num_classes == 5 and len(dm.class_names) == 5


def test_validation_fold_is_held_out_of_training(esc50_root, cache_dir):
    dm = make_dm(esc50_root, cache_dir, test_fold=5, val_fold=4)
    assert folds_of(dm, dm.val_set) == {4}
    assert folds_of(dm, dm.train_set) == {1, 2, 3}


def test_transductive_training_set_has_every_fold(esc50_root, cache_dir):
    dm = make_dm(esc50_root, cache_dir, test_fold=2, transductive=True)
    assert folds_of(dm, dm.train_set) == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("fold", [0, 6, -1, "2"])
def test_fold_out_of_range_is_named(esc50_root, fold):
    with pytest.raises(ValueError, match=rf"test_fold={fold!r}.*1\.\.5"):
        ESC50DataModule(str(esc50_root), test_fold=fold)


def test_us8k_fold_range(us8k_root):
    with pytest.raises(ValueError, match="val_fold=11"):
        UrbanSound8KDataModule(str(us8k_root), val_fold=11)


@pytest.mark.parametrize("rate", [0, 500, 16000.5, 400000])
def test_unsupported_sample_rate_is_named(esc50_root, rate):
    with pytest.raises(ValueError, match=f"sample_rate={rate!r}"):
        ESC50DataModule(str(esc50_root), sample_rate=rate)


def test_cache_is_built_once_and_shared_across_folds(esc50_root, tmp_path, monkeypatch):
    calls = []
    real = cache_mod.decode_audio

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "decode_audio", counting)
    make_dm(esc50_root, tmp_path, test_fold=1)
    assert len(calls) == 50  # every file decoded exactly once
    make_dm(esc50_root, tmp_path, test_fold=3)  # another fold, another run: served from the cache
    assert len(calls) == 50
    files = sorted(p.name for p in tmp_path.iterdir())  # one cache (array + index) per fold
    assert len(files) == 10 and not any(name.endswith(".tmp") for name in files)
    for fold in range(1, 6):
        assert sorted(n.split("-")[-1].split(".", 1)[1] for n in files if n.startswith(f"esc50-fold{fold}-")) \
            == ["f16.npy", "json"]


def test_cache_content_matches_decoded_audio(esc50_root, cache_dir):
    dm = make_dm(esc50_root, cache_dir)
    path = dm.metadata["path"][7]
    cached = dm.cache[dm.cache.position(path)].astype(np.float32)
    direct, sr = sf.read(path, dtype="float32")
    assert sr == 16000
    np.testing.assert_allclose(cached, direct, atol=1e-3)  # float16 storage


def test_cache_key_changes_with_sample_rate(esc50_root, tmp_path):
    make_dm(esc50_root, tmp_path, sample_rate=16000)
    dm = make_dm(esc50_root, tmp_path, sample_rate=8000)
    assert len(list(tmp_path.glob("*.json"))) == 2 * 5  # per fold and rate
    assert dm.cache.lengths[0] == 8000  # 1 s clips resampled to 8 kHz


def test_interrupted_cache_build_is_not_reused(esc50_root, tmp_path):
    make_dm(esc50_root, tmp_path)
    index = next(tmp_path.glob("*.json"))
    index.unlink()  # as if the build died before renaming the index into place
    dm = make_dm(esc50_root, tmp_path)
    assert index.exists() and len(dm.cache) == 50


def test_crop_or_pad_window():
    rng = np.random.default_rng(0)
    assert crop_or_pad_window(100, 40, random=False) == (30, 0)  # centre crop in evaluation
    assert crop_or_pad_window(30, 40, random=False) == (0, 0)  # pad at the end in evaluation
    starts = {crop_or_pad_window(100, 40, True, rng)[0] for _ in range(200)}
    assert min(starts) >= 0 and max(starts) <= 60 and len(starts) > 20
    offsets = {crop_or_pad_window(30, 40, True, rng)[1] for _ in range(200)}
    assert min(offsets) >= 0 and max(offsets) <= 10 and len(offsets) > 5


def test_items_are_crops_of_the_clip(esc50_root, cache_dir):
    dm = make_dm(esc50_root, cache_dir, clip_seconds=0.5)
    item = dm.train_set[3]
    clip = dm.train_set.cache[dm.train_set.positions[3]].astype(np.float32)
    audio = item["audio"].numpy()
    assert audio.shape == (8000,) and audio.dtype == np.float16  # shipped as stored; float32 on the device
    # the random crop is a contiguous window of the cached clip
    windows = np.lib.stride_tricks.sliding_window_view(clip, 8000)
    assert np.abs(windows - audio).max(axis=1).min() < 1e-6
    evaluation = dm.test_set[0]["audio"].numpy()
    np.testing.assert_array_equal(evaluation, dm.test_set[0]["audio"].numpy())  # deterministic
    first = dm.test_set.cache[dm.test_set.positions[0]].astype(np.float32)
    np.testing.assert_allclose(evaluation, first[4000:12000])  # centre crop


def test_short_clips_are_padded(esc50_root, cache_dir):
    dm = make_dm(esc50_root, cache_dir, clip_seconds=1.5)
    audio = dm.test_set[0]["audio"].numpy()
    assert audio.shape == (24000,)
    assert np.all(audio[16000:] == 0) and np.any(audio[:16000] != 0)


def test_batches_are_waveforms(esc50_root, cache_dir):
    dm = make_dm(esc50_root, cache_dir, clip_seconds=1.0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (4, 16000)
    assert batch["label"].dtype.is_floating_point is False
    assert batch["index"].shape == (4,)


# ---------------------------------------------------------------------------------- bad input
def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_metadata_says_what_to_download(tmp_path):
    dm = ESC50DataModule(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"esc50\.csv.*download https://github\.com/karoldvl/ESC-50"):
        dm.prepare_data()
    assert dm.num_classes == 50  # the official count before the data exists


def test_missing_column_is_named(esc50_root, tmp_path):
    root = copy_dataset(esc50_root, tmp_path / "esc")
    meta = pd.read_csv(root / "meta/esc50.csv").drop(columns=["target"])
    meta.to_csv(root / "meta/esc50.csv", index=False)
    with pytest.raises(ValueError, match=r"esc50\.csv: missing column\(s\) \['target'\]"):
        make_dm(root, tmp_path / "cache")


def test_fold_value_out_of_range_in_metadata(esc50_root, tmp_path):
    root = copy_dataset(esc50_root, tmp_path / "esc")
    meta = pd.read_csv(root / "meta/esc50.csv")
    meta.loc[0, "fold"] = 7
    meta.to_csv(root / "meta/esc50.csv", index=False)
    with pytest.raises(ValueError, match=r"fold values \[7\]"):
        make_dm(root, tmp_path / "cache")


def test_missing_audio_file_is_named(esc50_root, tmp_path):
    root = copy_dataset(esc50_root, tmp_path / "esc")
    victim = sorted((root / "audio").iterdir())[4]
    victim.unlink()
    with pytest.raises(AudioDecodeError, match=victim.name):
        make_dm(root, tmp_path / "cache")


def corrupt(root):
    files = sorted((root / "audio").iterdir())
    files[2].write_bytes(b"this is not audio")
    sf.write(files[9], np.full(1000, np.nan, dtype=np.float32), 16000, format="WAV", subtype="FLOAT")
    return [files[2], files[9]]


def test_bad_files_raise_by_default_naming_the_file(esc50_root, tmp_path):
    root = copy_dataset(esc50_root, tmp_path / "esc")
    bad = corrupt(root)
    with pytest.raises(AudioDecodeError, match=bad[0].name):
        make_dm(root, tmp_path / "cache", num_workers=0)


def test_skip_bad_files_logs_each_and_the_count(esc50_root, tmp_path, caplog):
    root = copy_dataset(esc50_root, tmp_path / "esc")
    bad = corrupt(root)
    with caplog.at_level(logging.WARNING):
        dm = make_dm(root, tmp_path / "cache", skip_bad_files=True, test_fold=1)
    text = caplog.text
    assert bad[0].name in text and bad[1].name in text
    assert "2 bad audio file(s) skipped" in text
    kept = len(dm.train_set) + len(dm.test_set)
    assert kept == 48
    assert not {str(b) for b in bad} & set(dm.train_set.files + dm.test_set.files)
    # a cache that leaves files out is never silently used by a run that did not ask to skip
    with pytest.raises(AudioDecodeError, match="skip_bad_files"):
        make_dm(root, tmp_path / "cache", skip_bad_files=False)


# ---------------------------------------------------------------------------------- UrbanSound8K
def test_urbansound8k_every_format_through_the_datamodule(us8k_root, tmp_path):
    dm = UrbanSound8KDataModule(str(us8k_root), cache_dir=str(tmp_path), num_workers=0, batch_size=2)
    assert dm.test_fold == 10 and dm.clip_seconds == 4.0
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    meta = pd.read_csv(us8k_root / "metadata/UrbanSound8K.csv")
    assert len(dm.cache) == len(meta)  # every file, whatever its format, is in the cache
    for i in range(len(dm.cache)):
        info = sf.info(dm.cache.files[i])
        expected = round(info.frames * 16000 / info.samplerate)
        assert abs(int(dm.cache.lengths[i]) - expected) <= 1, dm.cache.files[i]
    assert folds_of(dm, dm.test_set) == {10}
    assert folds_of(dm, dm.train_set) == set(range(1, 10))
    batch = next(iter(dm.test_dataloader()))
    assert batch["audio"].shape == (2, 64000)


def test_waveform_cache_rejects_bad_rate(tmp_path):
    with pytest.raises(ValueError, match="sample_rate must be a positive integer, got 0"):
        WaveformCache.build([], 0, cache_dir=tmp_path)


# ---------------------------------------------------------------------------------- the fold protocol
@pytest.mark.parametrize("val_fold, transductive", [(None, False), (4, False), (4, True), (None, True)])
def test_split_folds_is_the_fold_protocol(esc50_root, val_fold, transductive):
    dm = ESC50DataModule(str(esc50_root), test_fold=2, val_fold=val_fold, transductive=transductive)
    train = [1, 3, 5] if val_fold == 4 else [1, 3, 4, 5]
    assert dm.split_folds("train") == dm.train_folds == train  # labelled training folds: never transductive
    assert dm.split_folds("val") == [val_fold or 2]
    assert dm.split_folds("test") == [2]
    assert dm.split_folds("pretrain") == ([1, 2, 3, 4, 5] if transductive else train)
    other = [f for f in [1, 2, 3, 4, 5] if f not in {5, val_fold}]
    assert dm.split_folds("train", test_fold=5) == other and dm.split_folds("test", test_fold=5) == [5]
    with pytest.raises(ValueError, match=r"split='trian' is not one of \['train', 'val', 'test', 'pretrain'\]"):
        dm.split_folds("trian")
    with pytest.raises(ValueError, match=r"test_fold=9 is out of range"):
        dm.split_folds("train", test_fold=9)
    if val_fold is not None:
        with pytest.raises(ValueError, match="held-out fold 4 is the data module's val_fold"):
            dm.split_folds("train", test_fold=4)


def counting_decoder(monkeypatch):
    calls = []
    real = cache_mod.decode_audio
    monkeypatch.setattr(cache_mod, "decode_audio", lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1])
    return calls


@pytest.mark.parametrize("stage, built, folds", [
    ("fit", {"train_set", "val_set"}, {1, 2, 3, 4}),  # val_fold 4, test fold 5 left alone
    ("validate", {"val_set"}, {4}),
    ("test", {"test_set"}, {5}),
    ("predict", {"test_set"}, {5}),
])
def test_each_stage_builds_and_reads_only_its_splits(esc50_root, tmp_path, monkeypatch, stage, built, folds):
    calls = counting_decoder(monkeypatch)
    dm = ESC50DataModule(str(esc50_root), test_fold=5, val_fold=4, cache_dir=str(tmp_path), num_workers=0)
    dm.trainer = L.Trainer(logger=False, enable_progress_bar=False)  # prepare_data asks the trainer's stage
    dm.trainer.state.fn = stage
    dm.prepare_data()
    dm.setup(stage)
    assert {name for name in ("train_set", "val_set", "test_set") if getattr(dm, name) is not None} == built
    meta = dm.metadata.set_index("path")
    assert set(meta.loc[calls, "fold"]) == folds and len(calls) == 10 * len(folds)
    for name in built:
        assert folds_of(dm, getattr(dm, name)) <= folds
    with pytest.raises(ValueError, match="stage='tune' is not one of"):
        dm.setup("tune")


def keep_only_fold(root, fold, drop_rows):
    """Delete every other fold's audio; with ``drop_rows`` the csv lists only ``fold`` as well."""
    meta = pd.read_csv(root / "meta/esc50.csv")
    for name in meta.loc[meta["fold"] != fold, "filename"]:
        (root / "audio" / name).unlink()
    if drop_rows:
        meta[meta["fold"] == fold].to_csv(root / "meta/esc50.csv", index=False)
    return int((meta["fold"] != fold).sum())


@pytest.mark.parametrize("drop_rows", [True, False], ids=["csv-with-test-fold-only", "other-folds-not-on-disk"])
def test_testing_needs_only_the_test_fold(esc50_root, tmp_path, drop_rows):
    """`audio-ssl test` on a layout that holds only the test fold: trainer.test runs; fit names what is missing."""
    from audio_ssl.features.logmel import LogMelSpectrogram
    from audio_ssl.methods import SupervisedClassifier
    from audio_ssl.models import AudioResNet

    root = copy_dataset(esc50_root, tmp_path / "esc")
    missing = keep_only_fold(root, 3, drop_rows)
    dm = ESC50DataModule(str(root), test_fold=3, cache_dir=str(tmp_path / "cache"), num_workers=0,
                         batch_size=4, clip_seconds=1.0)
    model = SupervisedClassifier(encoder=AudioResNet(arch="resnet18", widths=(8, 8, 8, 8)), num_classes=5,
                                 frontend=LogMelSpectrogram(n_mels=16))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert 0 <= result["test/acc"] <= 1 and len(dm.test_set) == 10
    assert dm.train_set is None and dm.val_set is None
    fit_dm = ESC50DataModule(str(root), test_fold=3, cache_dir=str(tmp_path / "cache"), num_workers=0)
    if drop_rows:
        with pytest.raises(ValueError, match=r"train split \(folds \[1, 2, 4, 5\]\): .*esc50\.csv lists no clips "
                                             r"in these folds \(it has folds \[3\]\)"):
            fit_dm.setup("fit")
    else:
        with pytest.raises(AudioDecodeError, match=rf"{missing} of 40 file\(s\) listed in .*esc50\.csv \(folds "
                                                   r"\[1, 2, 4, 5\]\) do not exist: .* and 35 more"):
            fit_dm.setup("fit")


# ---------------------------------------------------------------------------------- missing files
def remove_files(root, dataset, count):
    """Delete ``count`` audio files of a generated layout (every other one, in csv order); returns their names."""
    if dataset == "esc50":
        meta = pd.read_csv(root / "meta/esc50.csv")
        paths = [root / "audio" / n for n in meta["filename"]]
    else:
        meta = pd.read_csv(root / "metadata/UrbanSound8K.csv")
        paths = [root / "audio" / f"fold{f}" / n for n, f in zip(meta["slice_file_name"], meta["fold"])]
    victims = paths[::2][:count]
    for p in victims:
        p.unlink()
    return victims, meta


def make_module(dataset, root, cache, **kwargs):
    cls = ESC50DataModule if dataset == "esc50" else UrbanSound8KDataModule
    return cls(str(root), cache_dir=str(cache), num_workers=0, batch_size=2, **kwargs)


@pytest.mark.parametrize("dataset", ["esc50", "us8k"])
def test_missing_files_error_gives_the_count_and_the_first_names(dataset, esc50_root, us8k_root, tmp_path):
    root = copy_dataset(esc50_root if dataset == "esc50" else us8k_root, tmp_path / "data")
    victims, meta = remove_files(root, dataset, 8)
    dm = make_module(dataset, root, tmp_path / "cache", test_fold=1)
    with pytest.raises(AudioDecodeError) as err:
        dm.prepare_data()
    message = str(err.value)  # every missing file of the folds to open is counted, before anything is decoded
    assert f"8 of {len(meta)} file(s) listed in {dm.metadata_path} (folds {list(range(1, dm.num_folds + 1))}) " \
           "do not exist" in message
    assert all(v.name in message for v in victims[:5]) and not any(v.name in message for v in victims[5:])
    assert message.count(" and 3 more") == 1 and "skip_bad_files=True" in message
    assert dm.cache is None
    # the cache on its own reports the same way
    with pytest.raises(AudioDecodeError) as err:
        WaveformCache.build(dm.metadata["path"].tolist(), 16000, cache_dir=tmp_path / "c2", progress=False)
    message = str(err.value)
    assert f"8 of {len(meta)} file(s) listed in the metadata do not exist" in message
    assert all(v.name in message for v in victims[:5]) and not any(v.name in message for v in victims[5:])
    assert message.count(" and 3 more") == 1
    assert not list((tmp_path / "c2").glob("*")) if (tmp_path / "c2").exists() else True  # nothing decoded


@pytest.mark.parametrize("dataset", ["esc50", "us8k"])
def test_skip_bad_files_skips_missing_files_and_reports_them_per_split(dataset, esc50_root, us8k_root, tmp_path,
                                                                       caplog):
    root = copy_dataset(esc50_root if dataset == "esc50" else us8k_root, tmp_path / "data")
    victims, meta = remove_files(root, dataset, 7)
    empty = sorted(set(p for p in (root / "audio").rglob("*") if p.is_file()) - set(victims))[-1]
    empty.write_bytes(b"")  # a 0-byte file: a bad file of another kind, in the same report
    dm = make_module(dataset, root, tmp_path / "cache", test_fold=1, skip_bad_files=True)
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
        dm.setup("fit")
        dm.setup("test")
    bad = {str(v.resolve()) for v in victims} | {str(empty.resolve())}
    assert set(dm.cache.skipped) == bad
    assert sum("does not exist" in r for r in dm.cache.skipped.values()) == 7
    used = set(dm.train_set.files) | set(dm.test_set.files)
    assert not used & bad and len(used) == len(meta) - 8  # every other clip is used, nothing else dropped
    per_fold = dm.metadata.assign(bad=dm.metadata["path"].isin(bad)).groupby("fold")["bad"].sum()
    text = caplog.text
    for split, dataset_ in (("train", dm.train_set), ("test", dm.test_set)):
        folds = dm.split_folds(split)
        n_bad = int(per_fold.loc[folds].sum())
        total = int(dm.metadata["fold"].isin(folds).sum())
        if n_bad:
            assert f"{split} split (folds {folds}): {n_bad} of {total} clip(s) left out as bad files" in text
        assert len(dataset_) == total - n_bad
    for fold, n_bad in per_fold.items():  # each fold cache's own summary, pointing at its full list
        if n_bad:
            assert re.search(rf"{n_bad} bad audio file\(s\) skipped in total [^\n]* is in \S*-fold{fold}-16000hz-", text)
    assert victims[0].name in text and empty.name in text
    # a rerun without the option never silently uses the caches that leave files out
    with pytest.raises(AudioDecodeError, match="do not exist"):
        make_module(dataset, root, tmp_path / "cache", test_fold=1).prepare_data()

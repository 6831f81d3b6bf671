"""Tests for audio_ssl.data.synthetic: official layouts, balance, determinism, formats, learnability."""

from __future__ import annotations

import re
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audio_ssl.data.synthetic import (
    ESC50_COLUMNS,
    FAMILIES,
    URBANSOUND8K_CLASSES,
    URBANSOUND8K_COLUMNS,
    URBANSOUND8K_FORMATS,
    WavFormat,
    esc50_class_specs,
    make_synthetic_esc50,
    make_synthetic_urbansound8k,
)

ESC50_HEADER = "filename,fold,target,category,esc10,src_file,take"
US8K_HEADER = "slice_file_name,fsID,start,end,salience,fold,classID,class"
ESC50_NAME = re.compile(r"^(\d+)-(\d+)-([A-Z])-(\d+)\.(flac|wav)$")
US8K_NAME = re.compile(r"^(\d+)-(\d)-(\d+)-(\d+)\.wav$")


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file's content; for audio, its format, rate, channels and samples (libsndfile stamps float WAVs
    with the wall-clock time in their PEAK chunk, so two identical writes a second apart differ in bytes)."""
    content = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if p.suffix.lower() in (".wav", ".flac", ".ogg", ".aiff"):
            info = sf.info(str(p))
            samples, _ = sf.read(str(p), dtype="float64", always_2d=True)
            content[str(p.relative_to(root))] = (f"{info.format}/{info.subtype}/{info.samplerate}/{info.channels}"
                                                 .encode() + samples.tobytes())
        else:
            content[str(p.relative_to(root))] = p.read_bytes()
    return content


# ----------------------------------------------------------------------------------------------
# ESC-50 layout.


@pytest.fixture(scope="module")
def esc50(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = make_synthetic_esc50(tmp_path_factory.mktemp("esc50"))  # 5 classes x 10 clips, 5 folds, 5 s
    return root, pd.read_csv(root / "meta" / "esc50.csv")


def test_esc50_csv_columns_are_official(esc50):
    root, meta = esc50
    assert ESC50_COLUMNS == tuple(ESC50_HEADER.split(","))
    assert (root / "meta" / "esc50.csv").read_text().splitlines()[0] == ESC50_HEADER
    assert len(meta) == 50 and meta.filename.is_unique
    assert meta.esc10.dtype == bool and list(meta.filename) == sorted(meta.filename)


def test_esc50_file_names_follow_the_official_scheme(esc50):
    root, meta = esc50
    for row in meta.itertuples():
        fold, src, take, target, ext = ESC50_NAME.match(row.filename).groups()
        assert (int(fold), int(src), take, int(target), ext) == (
            row.fold,
            row.src_file,
            row.take,
            row.target,
            "flac",
        )
    assert sorted(p.name for p in (root / "audio").iterdir()) == sorted(meta.filename)


def test_esc50_folds_are_balanced_and_hold_every_class(esc50):
    _, meta = esc50
    counts = pd.crosstab(meta.fold, meta.target)
    assert counts.shape == (5, 5) and (counts.to_numpy() == 2).all()
    assert meta.groupby("target").category.nunique().eq(1).all() and meta.category.nunique() == 5
    # takes of one source recording never straddle folds or classes
    assert meta.groupby("src_file")[["fold", "target"]].nunique().eq(1).all().all()


def test_esc50_audio_format(esc50):
    root, meta = esc50
    for name in meta.filename[:5]:
        info = sf.info(str(root / "audio" / name))
        assert (info.format, info.samplerate, info.channels, info.frames) == ("FLAC", 16000, 1, 80000)


def test_esc50_uneven_split_wav_and_bad_arguments(tmp_path):
    root = make_synthetic_esc50(
        tmp_path, num_classes=3, clips_per_class=7, num_folds=5, seconds=0.25, file_format="wav"
    )
    meta = pd.read_csv(root / "meta" / "esc50.csv")
    counts = pd.crosstab(meta.fold, meta.target).to_numpy()
    assert (
        counts.shape == (5, 3)
        and counts.min() >= 1
        and counts.max() - counts.min() <= 1
        and counts.sum() == 21
    )
    info = sf.info(str(root / "audio" / meta.filename[0]))
    assert meta.filename[0].endswith(".wav") and (info.format, info.frames) == ("WAV", 4000)
    with pytest.raises(ValueError, match="clips_per_class=4 < num_folds=5"):
        make_synthetic_esc50(tmp_path, clips_per_class=4)
    with pytest.raises(ValueError, match="file_format"):
        make_synthetic_esc50(tmp_path, file_format="mp3")
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_esc50(tmp_path, num_classes=51)


def test_esc50_is_deterministic_for_a_seed(tmp_path):
    kwargs = dict(num_classes=3, clips_per_class=2, num_folds=2, seconds=0.5)
    a = tree_bytes(make_synthetic_esc50(tmp_path / "a", seed=3, **kwargs))
    b = tree_bytes(make_synthetic_esc50(tmp_path / "b", seed=3, **kwargs))
    c = tree_bytes(make_synthetic_esc50(tmp_path / "c", seed=4, **kwargs))
    assert a == b
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in a)


def test_esc50_class_specs():
    specs = esc50_class_specs(50, 16000)
    names = [name for name, _, _ in specs]
    assert len(set(names)) == 50 and names[0] == "synth_tone_150" and specs[-1][2] == pytest.approx(4800.0)
    assert [family for _, family, _ in specs[:6]] == list(FAMILIES)
    assert max(f for _, _, f in esc50_class_specs(10, 8000)) == pytest.approx(2400.0)  # 0.3 * sample_rate


def test_esc50_clips_vary_within_a_class(esc50):
    root, meta = esc50
    names = meta[meta.target == 0].filename[:3]
    clips = [sf.read(str(root / "audio" / n))[0] for n in names]
    assert not np.allclose(clips[0], clips[1]) and not np.allclose(clips[1], clips[2])
    assert all(0.01 < np.abs(c).max() <= 0.95 for c in clips)


def test_esc50_classes_are_separable_by_a_simple_reference(esc50):
    """Leave-one-fold-out nearest centroid on gain-normalised mean log-mel beats chance (0.2) by far."""
    root, meta = esc50
    feats = []
    for name in meta.filename:
        x, sr = sf.read(str(root / "audio" / name), dtype="float32")
        mel = librosa.feature.melspectrogram(y=x, sr=sr, n_fft=1024, hop_length=512, n_mels=64)
        mean_logmel = librosa.power_to_db(mel, ref=1.0).mean(axis=1)
        feats.append(mean_logmel - mean_logmel.mean())  # remove the per-clip gain
    feats, labels, folds = np.stack(feats), meta.target.to_numpy(), meta.fold.to_numpy()
    correct = 0
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        centroids = np.stack([feats[train & (labels == c)].mean(axis=0) for c in range(5)])
        distances = ((feats[test][:, None] - centroids[None]) ** 2).sum(axis=-1)
        correct += int((distances.argmin(axis=1) == labels[test]).sum())
    assert correct / len(labels) >= 0.7


# ----------------------------------------------------------------------------------------------
# UrbanSound8K layout.


@pytest.fixture(scope="module")
def us8k(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = make_synthetic_urbansound8k(tmp_path_factory.mktemp("us8k"))  # 3 clips x 10 folds
    return root, pd.read_csv(root / "metadata" / "UrbanSound8K.csv")


def test_us8k_csv_columns_are_official(us8k):
    root, meta = us8k
    assert URBANSOUND8K_COLUMNS == tuple(US8K_HEADER.split(","))
    assert (root / "metadata" / "UrbanSound8K.csv").read_text().splitlines()[0] == US8K_HEADER
    assert len(meta) == 30 and meta.slice_file_name.is_unique
    assert set(meta.salience) <= {1, 2}
    assert (meta["class"] == [URBANSOUND8K_CLASSES[c] for c in meta.classID]).all()
    assert URBANSOUND8K_CLASSES[0] == "air_conditioner" and URBANSOUND8K_CLASSES[9] == "street_music"


def test_us8k_layout_and_file_names(us8k):
    root, meta = us8k
    assert sorted(p.name for p in (root / "audio").iterdir()) == sorted(f"fold{k}" for k in range(1, 11))
    for row in meta.itertuples():
        fs_id, class_id, _occurrence, _slice = US8K_NAME.match(row.slice_file_name).groups()
        assert (int(fs_id), int(class_id)) == (row.fsID, row.classID)
        assert (root / "audio" / f"fold{row.fold}" / row.slice_file_name).is_file()
    assert sum(1 for p in (root / "audio").rglob("*") if p.is_file()) == len(meta)


def test_us8k_folds_and_classes_are_balanced(us8k):
    _, meta = us8k
    assert (meta.fold.value_counts().sort_index() == 3).all() and meta.fold.nunique() == 10
    assert (meta.classID.value_counts() == 3).all() and meta.classID.nunique() == 10


def test_us8k_every_format_combination_is_present(us8k):
    root, meta = us8k
    found = []
    for row in meta.itertuples():
        info = sf.info(str(root / "audio" / f"fold{row.fold}" / row.slice_file_name))
        found.append(WavFormat(info.subtype, info.format, info.channels, info.samplerate))
    assert len(URBANSOUND8K_FORMATS) == 30 and sorted(found) == sorted(URBANSOUND8K_FORMATS)
    assert {"PCM_16", "PCM_24", "FLOAT"} == {f.subtype for f in found}
    assert {f.container for f in found if f.subtype == "PCM_24"} == {"WAVEX"}
    assert {f.sample_rate for f in found} == {22050, 24000, 44100, 48000, 96000} and {
        f.channels for f in found
    } == {1, 2}


def test_us8k_durations_in_range_and_match_start_end(us8k):
    root, meta = us8k
    durations = []
    for row in meta.itertuples():
        info = sf.info(str(root / "audio" / f"fold{row.fold}" / row.slice_file_name))
        seconds = info.frames / info.samplerate
        assert row.end - row.start == pytest.approx(seconds, abs=1e-5)
        durations.append(seconds)
    assert min(durations) == pytest.approx(0.1, abs=1e-4) and max(durations) == pytest.approx(4.0, abs=1e-4)
    assert all(0.1 - 1e-4 <= d <= 4.0 + 1e-4 for d in durations)
    assert len({round(d, 3) for d in durations}) > 3  # not all the same length


def test_us8k_is_deterministic_for_a_seed(tmp_path):
    kwargs = dict(clips_per_fold=1, num_folds=3, max_seconds=0.3)
    a = tree_bytes(make_synthetic_urbansound8k(tmp_path / "a", seed=7, **kwargs))
    b = tree_bytes(make_synthetic_urbansound8k(tmp_path / "b", seed=7, **kwargs))
    c = tree_bytes(make_synthetic_urbansound8k(tmp_path / "c", seed=8, **kwargs))
    assert a == b and a != c
    with pytest.raises(ValueError, match="min_seconds"):
        make_synthetic_urbansound8k(tmp_path / "d", min_seconds=2.0, max_seconds=1.0)

"""Classical baselines per fold on the synthetic ESC-50 layout: majority and random against hand-computed values,
MFCC + logistic regression above chance with its feature matrix computed once for all folds, and a CV run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from audio_ssl.data.cache import WaveformCache
from audio_ssl.evaluation import baselines
from audio_ssl.evaluation.baselines import (
    MFCCParams,
    build_datamodule,
    majority_scores,
    mfcc_feature_matrix,
    random_scores,
    run_baseline_fold,
)
from audio_ssl.evaluation.fold import FoldContext

ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES = 5


def config_for(name: str, data_dir, cache_dir, **extra) -> dict:
    return {"pipeline": "baseline", "baseline": name, **extra,
            "data": {"class_path": "audio_ssl.data.ESC50DataModule",
                     "init_args": {"data_dir": str(data_dir), "cache_dir": str(cache_dir), "num_workers": 0}}}


@pytest.fixture(scope="module")
def imbalanced_root(tmp_path_factory, esc50_root):
    """esc50_root with clips dropped so that class counts differ per fold: class 3 keeps 10 clips, class 0 only 3."""
    root = tmp_path_factory.mktemp("esc50-imbalanced")
    (root / "meta").mkdir()
    os.symlink(esc50_root / "audio", root / "audio")
    meta = pd.read_csv(esc50_root / "meta" / "esc50.csv")
    keep = {0: 3, 1: 5, 2: 7, 3: 10, 4: 6}
    meta = meta[meta.groupby("target").cumcount() < meta["target"].map(keep)]
    meta.to_csv(root / "meta" / "esc50.csv", index=False)
    return root


def test_majority_matches_hand_count(imbalanced_root, tmp_path):
    meta = pd.read_csv(imbalanced_root / "meta" / "esc50.csv")
    for fold in range(1, 6):
        train, test = meta[meta["fold"] != fold], meta[meta["fold"] == fold]
        counts = train["target"].value_counts()
        majority = int(min(counts[counts == counts.max()].index))  # ties -> lowest class index
        context = FoldContext(config_for("majority", imbalanced_root, tmp_path), fold, tmp_path)
        output = run_baseline_fold(context)["majority"]
        assert output.metrics["acc"] == pytest.approx((test["target"] == majority).mean())
        assert (output.predictions["pred"] == majority).all() and len(output.predictions) == len(test)
        assert output.description.details["majority_class"] == majority
        assert output.description.details["train_clips"] == len(train)


def test_majority_scores_are_the_training_prior_with_ties_to_the_lowest_index():
    probs = majority_scores(np.array([2, 2, 1, 1, 0]), 4, num_test=3)
    assert probs.shape == (3, 4) and probs.argmax(1).tolist() == [1, 1, 1]
    np.testing.assert_allclose(probs[0], [0.2, 0.4, 0.4, 0.0], atol=1e-8)
    assert np.argsort(-probs[0])[:2].tolist() == [1, 2]


def test_random_is_chance_and_seeded(esc50_root, tmp_path):
    probs = random_scores(200_000, NUM_CLASSES, seed=[0, 1])
    labels = np.random.default_rng(123).integers(0, NUM_CLASSES, len(probs))
    assert (probs.argmax(1) == labels).mean() == pytest.approx(1 / NUM_CLASSES, abs=0.005)  # ~5 sigma
    np.testing.assert_allclose(np.bincount(probs.argmax(1)) / len(probs), 1 / NUM_CLASSES, atol=0.005)
    np.testing.assert_allclose(probs.sum(1), 1.0)

    config = config_for("random", esc50_root, tmp_path, seed=7)
    first = run_baseline_fold(FoldContext(config, 2, tmp_path))["random"]
    again = run_baseline_fold(FoldContext(config, 2, tmp_path))["random"]
    pd.testing.assert_frame_equal(first.predictions, again.predictions)
    meta = pd.read_csv(esc50_root / "meta" / "esc50.csv")
    labels = meta[meta["fold"] == 2]["target"].to_numpy()  # the split keeps metadata order
    expected = np.random.default_rng([7, 2]).random((len(labels), NUM_CLASSES)).argmax(1)
    assert first.metrics["acc"] == pytest.approx((expected == labels).mean())
    other_fold = run_baseline_fold(FoldContext(config, 3, tmp_path))["random"]
    assert not np.array_equal(other_fold.predictions["top1_prob"], first.predictions["top1_prob"])


def test_mfcc_logreg_above_chance_and_features_computed_once(esc50_root, tmp_path, monkeypatch):
    calls = []
    compute = baselines._compute_mfcc_matrix
    monkeypatch.setattr(baselines, "_compute_mfcc_matrix",
                        lambda cache, params, n_jobs: calls.append(params) or compute(cache, params, n_jobs))
    config = config_for("mfcc_logreg", esc50_root, tmp_path / "cache", n_mfcc=20, C=1.0, n_jobs=1)
    outputs = [run_baseline_fold(FoldContext(config, fold, tmp_path))["mfcc_logreg"] for fold in range(1, 6)]
    assert len(calls) == 1
    assert [o.description.details["features_computed"] for o in outputs] == [True, False, False, False, False]
    accuracy = np.mean([o.metrics["acc"] for o in outputs])
    assert accuracy >= 0.7, accuracy  # chance is 0.2
    assert all(np.allclose(o.predictions[[f"top{i}_prob" for i in range(1, 6)]].sum(1), 1) for o in outputs)

    run_baseline_fold(FoldContext({**config, "n_mfcc": 13}, 1, tmp_path))  # other parameters: a new matrix
    assert len(calls) == 2 and calls[1].n_mfcc == 13
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 2


def test_feature_rows_follow_the_cache_and_chunks_reassemble(esc50_root, tmp_path, monkeypatch):
    import librosa

    datamodule = build_datamodule(config_for("mfcc_logreg", esc50_root, tmp_path)["data"], 1)
    datamodule.prepare_data()
    cache: WaveformCache = datamodule.cache
    params = MFCCParams(n_mfcc=13, n_mels=40, deltas=True)
    matrix, path, computed = mfcc_feature_matrix(cache, params, tmp_path / "f", n_jobs=1)
    assert computed and matrix.shape == (len(cache), 52) and path.exists()
    i = 17
    wave = np.asarray(cache[i], dtype=np.float32)
    mfcc = librosa.feature.mfcc(y=wave, sr=16000, n_mfcc=13, n_mels=40, n_fft=1024, hop_length=512)
    delta = librosa.feature.delta(mfcc, width=9)
    by_hand = np.concatenate([mfcc.mean(1), mfcc.std(1), delta.mean(1), delta.std(1)])
    np.testing.assert_allclose(matrix[i], by_hand, rtol=1e-4, atol=1e-4)

    monkeypatch.setattr(baselines, "MIN_CLIPS_FOR_PROCESSES", 0)
    monkeypatch.setattr(baselines, "PARALLEL_BACKEND", "threading")  # the chunking, without process start-up
    parallel, _, computed = mfcc_feature_matrix(cache, params, tmp_path / "g", n_jobs=3)
    assert computed
    np.testing.assert_allclose(parallel, matrix, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_feature_processes_agree(esc50_root, tmp_path, monkeypatch):
    datamodule = build_datamodule(config_for("mfcc_logreg", esc50_root, tmp_path)["data"], 1)
    datamodule.prepare_data()
    params = MFCCParams(n_mfcc=13, n_mels=40)
    matrix, _, _ = mfcc_feature_matrix(datamodule.cache, params, tmp_path / "f", n_jobs=1)
    monkeypatch.setattr(baselines, "MIN_CLIPS_FOR_PROCESSES", 0)
    parallel, _, _ = mfcc_feature_matrix(datamodule.cache, params, tmp_path / "g", n_jobs=2)
    np.testing.assert_allclose(parallel, matrix, rtol=1e-6, atol=1e-6)


def test_runner_summary_and_bad_configs(esc50_root, tmp_path):
    from audio_ssl.evaluation.runner import run_cv

    config = config_for("majority", esc50_root, tmp_path / "cache")
    path = tmp_path / "majority.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = run_cv(path, name="majority", out=tmp_path / "results", wandb=False, analyze=False)
    assert summary["bookkeeping_ok"] and summary["complete"]
    assert summary["variants"]["majority"]["bookkeeping"]["complete"]
    assert summary["variants"]["majority"]["metrics"]["acc"]["n"] == 5
    # every fold holds 2 clips of each class: the (tied) majority class 0 is right on 1 in 5
    assert summary["variants"]["majority"]["metrics"]["acc"]["mean"] == pytest.approx(0.2)

    with pytest.raises(ValueError, match="'baseline' must be one of"):
        run_baseline_fold(FoldContext({**config, "baseline": "svm"}, 1, tmp_path))
    with pytest.raises(ValueError, match="cannot be imported"):
        run_baseline_fold(FoldContext({**config, "data": {"class_path": "audio_ssl.data.Nope"}}, 1, tmp_path))
    with pytest.raises(ValueError, match="n_mfcc=50"):
        run_baseline_fold(FoldContext({**config, "baseline": "mfcc_logreg", "n_mfcc": 50, "n_mels": 40}, 1,
                                      tmp_path))


@pytest.mark.parametrize("name", ["majority", "random", "mfcc_logreg"])
def test_experiment_configs(name, esc50_root, tmp_path):
    config = yaml.safe_load((ROOT / "experiments" / f"baseline_{name}.yaml").read_text())
    assert config["pipeline"] == "baseline" and config["baseline"] == name
    MFCCParams.from_config(config)
    data = {**config["data"], "init_args": {**config["data"]["init_args"], "data_dir": str(esc50_root)}}
    datamodule = build_datamodule(data, 3)
    assert (datamodule.test_fold, datamodule.num_folds, datamodule.sample_rate) == (3, 5, 16000)

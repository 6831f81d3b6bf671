"""The one embedding cache of the frozen-encoder probes (audio_ssl.evaluation.embeddings) and the frozen_probe
pipeline end to end: each fold's clips are embedded once across the k held-out folds, a changed weight or clip
list misses the cache, and the probe of a model whose weights come from outside equals the probe of those
weights built by hand."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import tiny_cv_overrides
from torch.utils.data import Subset

from audio_ssl.evaluation import probe as P
from audio_ssl.evaluation.embeddings import EmbeddingCache, extract_embeddings, state_hash
from audio_ssl.evaluation.pipelines import limit_clips, probe_frozen

ROOT = Path(__file__).resolve().parents[2]
SUPERVISED = ROOT / "experiments" / "supervised_cpu.yaml"


@pytest.fixture(scope="module")
def tiny(esc50_root, cache_dir):
    from audio_ssl.data import ESC50DataModule
    from audio_ssl.features.logmel import LogMelSpectrogram
    from audio_ssl.methods import SupervisedClassifier
    from audio_ssl.models import AudioResNet

    torch.manual_seed(0)
    model = SupervisedClassifier(encoder=AudioResNet(arch="resnet18", widths=(8, 8, 16, 16)), num_classes=5,
                                 frontend=LogMelSpectrogram(n_mels=32))
    dm = ESC50DataModule(str(esc50_root), test_fold=1, clip_seconds=1.0, cache_dir=str(cache_dir), num_workers=0)
    return model, dm


def counting(monkeypatch, model) -> list[int]:
    """Patch ``type(model).embed`` to record the number of clips of every call."""
    clips: list[int] = []
    original = type(model).embed
    monkeypatch.setattr(type(model), "embed", lambda self, audio: (clips.append(len(audio)), original(self, audio))[1])
    return clips


def test_five_fold_probe_embeds_each_clip_once_per_model(tiny, tmp_path, monkeypatch):
    model, dm = tiny
    control = copy.deepcopy(model)
    with torch.no_grad():
        for p in control.encoder.parameters():
            p.normal_()
    clips = counting(monkeypatch, model)
    probe = P.ProbeConfig(C=[0.1, 1.0], max_iter=100, device="cpu", embed_batch_size=4)
    results = probe_frozen({"pretrained": model, "random_init": control}, dm, [1, 2, 3, 4, 5], probe, tmp_path,
                           method="test", pretraining_data="made in the test")
    assert sum(clips) == 2 * 50  # 50 clips, two models, five held-out folds: each clip through each model once
    assert len(list(tmp_path.glob("pretrained-*.npz"))) == len(list(tmp_path.glob("random_init-*.npz"))) == 5
    embedded = {f: sum(r[v].description.details["clips_embedded"] for v in r) for f, r in results.items()}
    assert embedded == {1: 100, 2: 0, 3: 0, 4: 0, 5: 0}
    # Every fold's result equals the probe on embeddings computed directly, with no cache.
    for fold, variants in results.items():
        train = dm.split_dataset("train", test_fold=fold)
        test = dm.split_dataset("test", test_fold=fold)
        groups = P.fold_groups(dm, train)
        for variant, module in (("pretrained", model), ("random_init", control)):
            x_train, y_train = extract_embeddings(module, train, device="cpu")
            x_test, y_test = extract_embeddings(module, test, device="cpu")
            direct = P.probe_embeddings(x_train, y_train, groups, x_test, y_test, test.files, 5, dm.class_names, probe)
            assert variants[variant].metrics == pytest.approx(direct.metrics, abs=1e-9)
            np.testing.assert_allclose(variants[variant].predictions["top1_prob"], direct.predictions["top1_prob"],
                                       rtol=1e-6, atol=1e-6)
            assert variants[variant].description.details["train_folds"] == [f for f in range(1, 6) if f != fold]
    # A second run with the same weights reads everything back.
    before = sum(clips)
    again = probe_frozen({"pretrained": model, "random_init": control}, dm, [3], probe, tmp_path, method="test",
                         pretraining_data="made in the test")
    assert sum(clips) == before and again[3]["pretrained"].metrics == results[3]["pretrained"].metrics
    with pytest.raises(ValueError, match="the random_init and pretrained models have the same weights"):
        probe_frozen({"pretrained": model, "random_init": copy.deepcopy(model)}, dm, [1], probe, tmp_path,
                     method="test", pretraining_data="x")


def test_changed_weights_or_clips_miss_the_cache(tiny, tmp_path, monkeypatch):
    model, dm = tiny
    fold = dm.split([2], random_crop=False)
    clips = counting(monkeypatch, model)
    first = EmbeddingCache(model, tmp_path, "v", batch_size=64).features(fold)
    assert first.computed and clips == [10]
    hit = EmbeddingCache(model, tmp_path, "v").features(fold)
    assert not hit.computed and clips == [10] and hit.path == first.path
    np.testing.assert_array_equal(hit.features, first.features)

    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.encoder.stem[0].weight[0, 0, 0, 0] += 1e-3  # one weight
    assert state_hash(changed) != state_hash(model)
    miss = EmbeddingCache(changed, tmp_path, "v").features(fold)
    assert miss.computed and miss.path != first.path and clips == [10, 10]
    assert not np.array_equal(miss.features, first.features)

    buffers = copy.deepcopy(model)  # BatchNorm statistics are part of the weights' hash
    buffers.encoder.stem[1].running_mean.add_(1.0)
    assert EmbeddingCache(buffers, tmp_path, "v").path(first.files, fold.clip_samples, 16000) != first.path

    fewer = EmbeddingCache(model, tmp_path, "v").features(Subset(fold, list(range(9))))  # one clip fewer
    assert fewer.computed and fewer.path != first.path and clips == [10, 10, 9]
    np.testing.assert_allclose(fewer.features, first.features[:9], rtol=1e-5, atol=1e-6)
    reordered = EmbeddingCache(model, tmp_path, "v").features(Subset(fold, list(range(9, -1, -1))))
    assert reordered.computed and reordered.path != first.path
    np.testing.assert_allclose(reordered.features, first.features[::-1], rtol=1e-5, atol=1e-6)
    shorter = dm.split([2], random_crop=False)
    shorter.clip_samples = 8000  # another clip length
    assert EmbeddingCache(model, tmp_path, "v").features(shorter).computed
    assert len(list(tmp_path.glob("v-*.npz"))) == 5

    # A file whose clip list does not match its name (e.g. copied over) is not trusted.
    np.savez(first.path, features=first.features, labels=first.labels, files=np.asarray(first.files[::-1]))
    assert EmbeddingCache(model, tmp_path, "v").features(fold).computed
    with pytest.raises(ValueError, match="random_crop=False"):
        EmbeddingCache(model, tmp_path, "v").features(dm.split([2], random_crop=True))


def test_limit_clips_is_class_balanced_per_fold():
    labels = np.array([0, 0, 0, 1, 1, 2, 0, 1, 2, 2])
    groups = np.array([1, 1, 1, 1, 1, 1, 2, 2, 2, 2])
    assert limit_clips(labels, groups).tolist() == list(range(10))
    assert limit_clips(labels, groups, max_clips=3).tolist() == [0, 3, 5, 6, 7, 8]  # one of each class per fold
    assert limit_clips(labels, groups, max_clips=4).tolist() == [0, 1, 3, 5, 6, 7, 8, 9]
    assert limit_clips(labels, groups, clips_per_class=1).tolist() == [0, 3, 5, 6, 7, 8]


def test_frozen_probe_pipeline_end_to_end(tiny, tmp_path, esc50_root, cache_dir, monkeypatch):
    """A Lightning YAML whose model holds outside weights (here: encoder weights named by init_encoder_from,
    loaded when the model is built), probed over all five folds against the same architecture untrained."""
    from audio_ssl.cli import build_cli
    from audio_ssl.evaluation.runner import run_cv

    model, dm = tiny
    monkeypatch.chdir(tmp_path)
    overrides = tiny_cv_overrides(esc50_root, cache_dir)
    # The outside weights: an encoder of the recipe's architecture with its own random draw (seed 7).
    donor = build_cli(["--config", str(SUPERVISED), *overrides, "--trainer.logger", "false",
                       "--seed_everything", "7"], run=False).model
    weights = tmp_path / "outside.ckpt"
    torch.save({"state_dict": donor.state_dict()}, weights)
    config = tmp_path / "frozen.yaml"
    config.write_text(yaml.safe_dump({
        "pipeline": "frozen_probe", "model": str(SUPERVISED),
        "model_overrides": ["--model.init_args.init_encoder_from", str(weights)],
        "random_init_overrides": ["--model.init_args.init_encoder_from", "null"],
        "probe": {"C": [0.1, 1.0], "max_iter": 200, "device": "cpu"}}))
    clips = counting(monkeypatch, donor)
    summary = run_cv(config, out=tmp_path / "results", overrides=overrides, wandb=False, analyze=False)
    assert sum(clips) == 2 * 50  # five held-out folds, two models: each clip embedded once per model
    run_dir = tmp_path / "results" / "frozen"
    assert len(list((run_dir / "embeddings").glob("*.npz"))) == 10
    pre, rnd = summary["variants"]["pretrained"], summary["variants"]["random_init"]
    assert pre["protocol"] == rnd["protocol"] == "linear probe (frozen encoder)" and pre["epochs"] == 0
    assert f"init_encoder_from={weights}" in pre["pretraining_data"] and rnd["pretraining_data"] == "none"
    assert rnd["method"] == "none (random init)" and pre["method"] == "SupervisedClassifier"
    assert not (run_dir / "fold1" / "checkpoints").exists()  # nothing was trained

    # The pretrained variant is the outside weights; the control is the seeded model before any training.
    untrained = build_cli(["--config", str(SUPERVISED), *overrides, "--trainer.logger", "false"], run=False).model
    probe = P.ProbeConfig(C=[0.1, 1.0], max_iter=200, device="cpu")
    for variant, module in (("pretrained", donor), ("random_init", untrained)):
        train, test = dm.split_dataset("train", test_fold=2), dm.split_dataset("test", test_fold=2)
        direct = P.probe_fold(module, train, test, 5, dm.class_names, probe, P.fold_groups(dm, train))
        assert summary["variants"][variant]["metrics"]["acc"]["per_fold"]["2"] == pytest.approx(direct.metrics["acc"])

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pipeline": "frozen_probe", "model": str(SUPERVISED)}))
    with pytest.raises(ValueError, match="bad.yaml: a frozen_probe config needs 'random_init_overrides'"):
        run_cv(bad, folds=[1], out=tmp_path / "results", overrides=overrides, wandb=False, analyze=False)
    same = tmp_path / "same.yaml"  # a control that is not one: both models get the same seeded weights
    same.write_text(yaml.safe_dump({"pipeline": "frozen_probe", "model": str(SUPERVISED),
                                    "random_init_overrides": ["--trainer.max_epochs", "1"]}))
    with pytest.raises(ValueError, match="same weights"):
        run_cv(same, folds=[1], out=tmp_path / "results", overrides=overrides, wandb=False, analyze=False)
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"pipeline": "frozen_probe", "model": str(SUPERVISED), "max_clip": 4,
                                    "random_init_overrides": ["--seed_everything", "1"]}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['max_clip'\]"):
        run_cv(typo, folds=[1], out=tmp_path / "results", overrides=overrides, wandb=False, analyze=False)


def test_frozen_probe_max_clips_is_recorded(tiny, tmp_path, monkeypatch):
    model, dm = tiny
    control = copy.deepcopy(model)
    with torch.no_grad():
        control.encoder.stem[0].weight.mul_(-1)
    clips = counting(monkeypatch, model)
    probe = P.ProbeConfig(C=1.0, max_iter=50, device="cpu")
    out = probe_frozen({"pretrained": model, "random_init": control}, dm, [1, 2], probe, None, method="m",
                       pretraining_data="p", max_clips=5)
    assert sum(clips) == 2 * 25  # 5 clips of each of the 5 folds, each once per model
    for variants in out.values():
        for result in variants.values():
            assert len(result.predictions) == 5 and result.description.details["max_clips"] == 5
            assert result.description.details["probe_train_clips"] == 20
            assert result.description.protocol.endswith("on part of every fold (pipeline check)")
            assert sorted(result.predictions["label"]) == [0, 1, 2, 3, 4]  # class-balanced

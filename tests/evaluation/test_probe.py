"""The linear probe: agreement with scikit-learn, C selection on training folds only, frozen encoder,
embedding cache, and the pretrain_probe pipeline end to end (SupervisedClassifier standing in as pretraining)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import tiny_cv_overrides

from audio_ssl.evaluation import probe as P

ROOT = Path(__file__).resolve().parents[2]
SUPERVISED = ROOT / "experiments" / "supervised_cpu.yaml"


def blobs(n=120, d=6, k=3, seed=0, spread=1.5):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.normal(size=(k, d))[y] * spread + rng.normal(size=(n, d)) * 1.0 + 3.0
    return x, y


@pytest.mark.parametrize("C", [0.05, 1.0])
def test_lbfgs_probe_matches_sklearn_logistic_regression(C):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = blobs()
    probe = P.LinearProbe(C=C, solver="lbfgs", max_iter=2000, tol=1e-10, device="cpu").fit(x, y, 3)
    scaled = StandardScaler().fit(x)
    reference = LogisticRegression(C=C, max_iter=5000, tol=1e-10).fit(scaled.transform(x), y)
    # scikit-learn's std has no epsilon; ours adds 1e-8, far below the tolerance
    np.testing.assert_allclose(probe.weight.numpy().T, reference.coef_, atol=2e-4)
    np.testing.assert_allclose(probe.bias.numpy(), reference.intercept_, atol=2e-4)
    np.testing.assert_allclose(probe.predict_proba(x), reference.predict_proba(scaled.transform(x)), atol=1e-4)
    sk = P.LinearProbe(C=C, solver="sklearn", max_iter=5000, tol=1e-10).fit(x, y, 4)  # class 3 never seen
    probs = sk.predict_proba(x)
    assert probs.shape == (120, 4) and np.all(probs[:, 3] == 0)
    np.testing.assert_allclose(probs[:, :3], probe.predict_proba(x), atol=1e-4)


def test_select_C_is_leave_one_training_fold_out():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = blobs(n=160, d=8, k=4, spread=0.6, seed=1)
    groups = np.repeat([1, 2, 3, 4], 40)
    config = P.ProbeConfig(C=[0.001, 0.1, 10.0], max_iter=2000, tol=1e-9, device="cpu")
    best, scores = P.select_C(x, y, groups, config.Cs, 4, config)
    for c in config.Cs:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, tol=1e-9))
        reference = cross_val_score(model, x, y, groups=groups, cv=LeaveOneGroupOut()).mean()
        assert scores[f"{c:g}"] == pytest.approx(reference, abs=1 / 40)
    assert scores[f"{best:g}"] == max(scores.values())
    assert P.select_C(x, y, np.ones(160), [0.1, 1.0], 4, config) == (0.1, {})  # one group: no selection


def test_probe_config_files_and_errors(tmp_path):
    shared = P.load_probe_config("linear_probe.yaml", ROOT / "experiments")
    assert shared.Cs == [0.01, 0.1, 1.0, 10.0] and shared.solver == "lbfgs" and shared.standardize
    assert P.load_probe_config({"C": 2.0}).Cs == [2.0]
    from audio_ssl.evaluation.pipelines import check_pipeline_config
    from audio_ssl.evaluation.run_config import load_config, resolve_path

    shipped_path = ROOT / "experiments" / "linear_probe.yaml"
    shipped = load_config(shipped_path)
    check_pipeline_config(shipped, "pretrain_probe", str(shipped_path))  # a valid pipeline config too
    assert resolve_path(shipped, "pretrain", shipped_path) == SUPERVISED
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['transductve'\]"):
        check_pipeline_config({**shipped, "transductve": True}, "pretrain_probe")
    with pytest.raises(ValueError, match=r"probe: unknown probe setting\(s\) \['lr'\]"):
        P.load_probe_config({"lr": 0.1})
    with pytest.raises(ValueError, match="positive number"):
        P.ProbeConfig(C=[0.1, -1])
    bad = tmp_path / "bad.yaml"
    bad.write_text("probe:\n  solver: adam\n")
    with pytest.raises(ValueError, match="solver must be 'lbfgs' or 'sklearn'"):
        P.load_probe_config(str(bad))


@pytest.fixture(scope="module")
def tiny_model_and_data(esc50_root, cache_dir):
    from audio_ssl.data import ESC50DataModule
    from audio_ssl.features.logmel import LogMelSpectrogram
    from audio_ssl.methods import SupervisedClassifier
    from audio_ssl.models import AudioResNet

    torch.manual_seed(0)
    model = SupervisedClassifier(encoder=AudioResNet(arch="resnet18", widths=(8, 8, 16, 16)), num_classes=5,
                                 frontend=LogMelSpectrogram(n_mels=32))
    with torch.no_grad():  # non-trivial BatchNorm statistics, to see that they do not move
        model.train()
        model.encoder(model.frontend(torch.randn(4, 16000)))
    dm = ESC50DataModule(str(esc50_root), test_fold=1, clip_seconds=1.0, cache_dir=str(cache_dir), num_workers=0)
    return model, dm


def test_probe_never_updates_the_encoder(tiny_model_and_data, tmp_path):
    model, dm = tiny_model_and_data
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    requires_grad = [p.requires_grad for p in model.parameters()]
    train_set = dm.split([2, 3, 4, 5], random_crop=False)
    test_set = dm.split([1], random_crop=False)
    config = P.ProbeConfig(C=[0.1, 1.0], max_iter=200, device="cpu")
    output = P.probe_fold(model, train_set, test_set, 5, dm.class_names, config, P.fold_groups(dm, train_set),
                          tmp_path, tag="t")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN buffers untouched
    assert model.training and [p.requires_grad for p in model.parameters()] == requires_grad
    assert len(output.predictions) == 10 and 0 <= output.metrics["acc"] <= 1
    details = output.description.details
    assert details["embedding_dim"] == 16 and details["probe_C"] in (0.1, 1.0)
    assert output.description.protocol == "linear probe (frozen encoder)"
    np.testing.assert_array_equal(P.fold_groups(dm, train_set), np.repeat([2, 3, 4, 5], 10))

    model.eval()
    with torch.no_grad():
        expected = model.embed(torch.stack([test_set[i]["audio"] for i in range(len(test_set))]))
    x, labels = P.extract_embeddings(model, test_set, batch_size=3, device="cpu")
    np.testing.assert_allclose(x, expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, test_set.labels)
    with pytest.raises(ValueError, match="random_crop=False"):
        P.extract_embeddings(model, dm.split([1], random_crop=True))


def test_embeddings_are_cached_per_weights(tiny_model_and_data, tmp_path, monkeypatch):
    model, dm = tiny_model_and_data
    train_set, test_set = dm.split([2, 3], random_crop=False), dm.split([1], random_crop=False)
    calls = []
    original = type(model).embed
    monkeypatch.setattr(type(model), "embed", lambda self, audio: (calls.append(1), original(self, audio))[1])
    config = P.ProbeConfig(C=1.0, max_iter=100, device="cpu", embed_batch_size=64)
    first = P.probe_fold(model, train_set, test_set, 5, dm.class_names, config, cache_dir=tmp_path, tag="v")
    assert len(calls) == 2 and len(list(tmp_path.glob("v-*.npz"))) == 2  # one file per dataset (no groups)
    second = P.probe_fold(model, train_set, test_set, 5, dm.class_names, config, cache_dir=tmp_path, tag="v")
    assert len(calls) == 2  # read from the cache
    np.testing.assert_allclose(first.predictions["top1_prob"], second.predictions["top1_prob"])
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.encoder.stem[0].weight.add_(1e-3)
    P.probe_fold(changed, train_set, test_set, 5, dm.class_names, config, cache_dir=tmp_path, tag="v")
    assert len(calls) == 4 and len(list(tmp_path.glob("v-*.npz"))) == 4  # new weights, new key


def test_pretrain_probe_pipeline_end_to_end(tmp_path, esc50_root, cache_dir, monkeypatch, capsys):
    """SupervisedClassifier stands in as the pretraining method (any BaseMethod with embed works)."""
    from audio_ssl.cli import build_cli
    from audio_ssl.evaluation.fold import FoldContext
    from audio_ssl.evaluation.pipelines import pretrain_stage
    from audio_ssl.evaluation.runner import run_cv
    from audio_ssl.evaluation.summary import results_table

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "probe_pipeline.yaml"
    config.write_text(yaml.safe_dump({"pipeline": "pretrain_probe", "pretrain": str(SUPERVISED),
                                      "transductive": True, "probe": {"C": [0.1, 1.0], "max_iter": 200}}))
    overrides = tiny_cv_overrides(esc50_root, cache_dir)
    import lightning as L

    fits = []
    real_fit = L.Trainer.fit
    monkeypatch.setattr(L.Trainer, "fit", lambda self, *a, **k: (fits.append(1), real_fit(self, *a, **k))[1])
    summary = run_cv(config, folds=[3, 4], out=tmp_path / "results", overrides=overrides, wandb=False,
                     analyze=False)
    assert len(fits) == 1  # transductive pretraining does not depend on the fold: trained once, shared
    pre, rnd = summary["variants"]["pretrained"], summary["variants"]["random_init"]
    assert pre["protocol"] == rnd["protocol"] == "linear probe (frozen encoder)"
    assert pre["transductive"] and "pretraining saw test-fold audio" in pre["pretraining_data"]
    assert pre["pretraining_data"].startswith("esc50 folds 1,2,3,4,5")
    assert not rnd["transductive"] and rnd["pretraining_data"] == "none" and rnd["epochs"] == 0
    assert pre["epochs"] == 1 and "transductive: true" in summary["configs"]["pretrained/pretrain"]
    assert summary["notes"] == ["pretrained: pretraining saw test-fold audio"]
    assert pre["details"]["3"]["probe_C"] in (0.1, 1.0) and set(pre["details"]["3"]["probe_C_scores"]) == {"0.1", "1"}
    run_dir = tmp_path / "results" / "probe_pipeline"
    assert (run_dir / "predictions" / "fold3_pretrained.csv").exists()
    assert (run_dir / "predictions" / "fold3_random_init.csv").exists()
    # One cache for the run, one file per fold and weights: the transductive weights and the seeded untrained
    # model are the same for folds 3 and 4, so fold 4 embedded nothing new.
    assert len(list((run_dir / "embeddings").glob("*.npz"))) == 10
    assert pre["details"]["4"]["clips_embedded"] == rnd["details"]["4"]["clips_embedded"] == 0
    assert pre["details"]["3"]["clips_embedded"] == rnd["details"]["3"]["clips_embedded"] == 50
    assert (run_dir / "pretrain_transductive" / "final.ckpt").exists() and not (run_dir / "fold3" / "pretrain").exists()
    table = results_table([summary])
    assert "probe_pipeline:random_init | none (random init)" in table and "(pretraining saw test-fold audio)" in table

    # The standalone probe on the saved pretraining weights reproduces the pipeline's numbers.
    settings = tmp_path / "probe.yaml"
    settings.write_text("probe:\n  C: [0.1, 1.0]\n  max_iter: 200\n")
    capsys.readouterr()
    from audio_ssl.tools.probe import main as probe_main

    probe_main(["--checkpoint", str(run_dir / "pretrain_transductive" / "final.ckpt"), "--config", str(SUPERVISED),
            "--test-fold", "3", "--probe", str(settings), "--out", str(tmp_path / "standalone"), *overrides])
    standalone = json.loads(capsys.readouterr().out)
    assert standalone["pretrained"]["acc"] == pytest.approx(pre["metrics"]["acc"]["per_fold"]["3"])
    assert (tmp_path / "standalone" / "fold3_pretrained.csv").exists()

    # The random_init variant is the config's model exactly as instantiated (seeded), before any training.
    context = FoldContext(yaml.safe_load(config.read_text()), 3, run_dir / "fold3", config_path=config,
                          overrides=tuple(overrides), run_name="probe_pipeline")
    stage = pretrain_stage(context)  # final.ckpt exists: loads, does not train
    fresh = build_cli(["--config", str(SUPERVISED), *overrides, "--trainer.logger", "false"], run=False).model
    untrained, trained = stage.untrained.state_dict(), stage.cli.model.state_dict()
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in untrained.items())
    assert not torch.equal(untrained["encoder.stem.0.weight"], trained["encoder.stem.0.weight"])


def _probe_worker(rank: int, world: int, model, dm, cache: str) -> dict:
    """Every rank calls probe_fold, as the pretrain_probe pipeline does after distributed pretraining."""
    calls = []
    original = type(model).embed
    type(model).embed = lambda self, audio: (calls.append(1), original(self, audio))[1]
    train_set, test_set = dm.split([2, 3, 4, 5], random_crop=False), dm.split([1], random_crop=False)
    config = P.ProbeConfig(C=[0.1, 1.0], max_iter=200, device="cpu")
    output = P.probe_fold(model, train_set, test_set, 5, dm.class_names, config, P.fold_groups(dm, train_set),
                          Path(cache), tag="ddp")
    return {"metrics": output.metrics, "predictions": output.predictions, "embed_calls": len(calls)}


@pytest.mark.ddp
def test_probe_under_two_ranks_equals_one_process_and_writes_the_cache_once(tiny_model_and_data, tmp_path):
    from ddp_utils import run_distributed

    model, dm = tiny_model_and_data
    train_set, test_set = dm.split([2, 3, 4, 5], random_crop=False), dm.split([1], random_crop=False)
    config = P.ProbeConfig(C=[0.1, 1.0], max_iter=200, device="cpu")
    single = P.probe_fold(model, train_set, test_set, 5, dm.class_names, config, P.fold_groups(dm, train_set))
    results = run_distributed(_probe_worker, world_size=2, args=(model, dm, str(tmp_path)), timeout_s=120)
    for result in results:
        assert result["metrics"] == single.metrics
        np.testing.assert_allclose(result["predictions"]["top1_prob"], single.predictions["top1_prob"], rtol=1e-6)
    assert [r["embed_calls"] for r in results][1] == 0  # rank 1 waits for rank 0's result
    assert len(list(tmp_path.glob("ddp-*.npz"))) == 5 and not list(tmp_path.glob("*tmp*"))  # one file per fold


def test_beats_probe_folds_accept_commas_and_spaces():
    from audio_ssl.tools.beats_probe import build_parser

    parser = build_parser()
    assert parser.parse_args(["--checkpoint", "x.pt", "--folds", "1,2", "4"]).folds == [[1, 2], [4]]
    with pytest.raises(SystemExit):
        parser.parse_args(["--checkpoint", "x.pt", "--folds", "one"])


def test_beats_probe_on_a_file_that_is_not_beats_is_one_line(tmp_path, esc50_root, capsys):
    from audio_ssl.tools.beats_probe import main as beats_probe_main

    bad = tmp_path / "not_beats.pt"
    bad.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        beats_probe_main(["--checkpoint", str(bad), "--data-dir", str(esc50_root), "--folds", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"{bad}: not a PyTorch BEATs checkpoint" in err and "Traceback" not in err

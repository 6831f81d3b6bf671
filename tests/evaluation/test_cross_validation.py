"""The cross-validation runner: fold bookkeeping, resume, config handling, W&B wiring, and the Lightning and
pretrain-finetune tasks end to end on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import tiny_cv_overrides

from audio_ssl.evaluation import run_config
from audio_ssl.evaluation.fold import (
    DatasetDescription,
    FoldContext,
    FoldOutput,
    ResultDescription,
    classification_metrics,
    predictions_frame,
)
from audio_ssl.evaluation.lightning_stage import lightning_args
from audio_ssl.evaluation.registry import get_pipeline, register_pipeline
from audio_ssl.evaluation.runner import run_cv
from audio_ssl.evaluation.tracking import logger_spec

ROOT = Path(__file__).resolve().parents[2]
SUPERVISED = ROOT / "experiments" / "supervised_cpu.yaml"


# ---------------------------------------------------------------------------------------------- a stand-in task
CALLS: list[int] = []


@register_pipeline("test_random_scores")
def random_scores_task(context: FoldContext) -> dict[str, FoldOutput]:
    """Tests each held-out fold of the configured data with random scores (variants 'a' and 'b')."""
    from audio_ssl.data import ESC50DataModule

    config, fold = context.config, context.fold
    assert context.work_dir.name == f"fold{fold}" and context.run_name == context.work_dir.parent.name
    CALLS.append(fold)
    dm = ESC50DataModule(**config["data"]["init_args"], test_fold=fold)
    test = dm.split([fold] + config.get("leak", []), random_crop=False)
    outputs = {}
    for seed, variant in enumerate(("a", "b")):
        probs = np.random.default_rng([seed, fold]).dirichlet(np.ones(dm.num_classes), len(test))
        outputs[variant] = FoldOutput(classification_metrics(test.labels, probs),
                                      predictions_frame(test.files, test.labels, probs, dm.class_names),
                                      ResultDescription(method=f"random-{variant}", epochs=0,
                                                        dataset=DatasetDescription.of(dm)))
    return outputs


def random_config(tmp_path, esc50_root, cache_dir, **extra) -> Path:
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump({
        "pipeline": "test_random_scores",
        "data": {"class_path": "audio_ssl.data.ESC50DataModule",
                 "init_args": {"data_dir": str(esc50_root), "cache_dir": str(cache_dir), "clip_seconds": 1.0}},
        **extra}))
    return path


def test_every_clip_tested_once_and_resume_skips_finished_folds(tmp_path, esc50_root, cache_dir):
    config = random_config(tmp_path, esc50_root, cache_dir)
    CALLS.clear()
    partial = run_cv(config, folds=[2, 4], out=tmp_path / "results", wandb=False, analyze=False)
    assert CALLS == [2, 4] and partial["folds"] == [2, 4] and not partial["complete"]
    assert partial["variants"]["a"]["bookkeeping"]["ok"] and not partial["variants"]["a"]["bookkeeping"]["complete"]

    full = run_cv(config, out=tmp_path / "results", wandb=False, analyze=False)
    assert CALLS == [2, 4, 1, 3, 5]  # finished folds are not run again
    assert full["complete"] and full["bookkeeping_ok"]
    assert "exactly once" in full["variants"]["b"]["bookkeeping"]["message"]

    run_dir = tmp_path / "results" / "random"
    meta = pd.read_csv(esc50_root / "meta" / "esc50.csv")
    tested = pd.concat([pd.read_csv(run_dir / f"predictions/fold{k}_a.csv").assign(fold=k) for k in range(1, 6)])
    assert sorted(Path(f).name for f in tested["file"]) == sorted(meta["filename"])  # each clip once
    by_name = meta.set_index("filename")["fold"]
    assert all(by_name[Path(f).name] == k for f, k in zip(tested["file"], tested["fold"]))  # in its own fold
    folds = pd.read_csv(run_dir / "folds.csv")
    assert len(folds) == 10 and set(folds["variant"]) == {"a", "b"}
    assert full["variants"]["a"]["metrics"]["acc"]["mean"] == pytest.approx(folds[folds.variant == "a"].acc.mean())

    run_cv(config, out=tmp_path / "results", wandb=False, analyze=False)
    assert len(CALLS) == 5  # a complete run only re-summarises


def test_bookkeeping_catches_a_clip_tested_twice(tmp_path, esc50_root, cache_dir):
    config = random_config(tmp_path, esc50_root, cache_dir, leak=[1])  # every fold also tests fold 1
    summary = run_cv(config, folds=[1, 2], out=tmp_path / "results", wandb=False, analyze=False)
    assert not summary["bookkeeping_ok"]
    message = summary["variants"]["a"]["bookkeeping"]["message"]
    assert message.startswith("FAILED") and "fold 1 and fold 2" in message


def test_changed_config_refuses_to_resume(tmp_path, esc50_root, cache_dir):
    config = random_config(tmp_path, esc50_root, cache_dir)
    run_cv(config, folds=[1], out=tmp_path / "results", wandb=False, analyze=False)
    with pytest.raises(ValueError, match=r"different setup: override trainer.max_epochs: <unset> there, '2' now\. "
                                         r"Use another run name \(cv --name\) or results folder "
                                         r"\(reproduce --out\), or delete .*random to start"):
        run_cv(config, folds=[1], out=tmp_path / "results", overrides=["--trainer.max_epochs", "2"],
                  wandb=False, analyze=False)
    # a run folder where nothing was trained yet (say a typo stopped it) is reused with the corrected command
    untrained = tmp_path / "results" / "typo"
    untrained.mkdir(parents=True)
    (untrained / "run.json").write_text('{"fingerprint": "of the typo", "overrides": ["--trainer.max_epochz"]}')
    run_cv(config, folds=[1], out=tmp_path / "results", name="typo", wandb=False, analyze=False)
    assert (untrained / "fold1" / "result.json").exists()
    with pytest.raises(ValueError, match=r"folds \[6\] are out of range"):
        run_cv(config, folds=[6], out=tmp_path / "results", name="other", wandb=False)


def test_pipeline_registry(tmp_path):
    with pytest.raises(KeyError, match="unknown pipeline 'nope'.*pretrain_probe"):
        get_pipeline("nope")
    assert get_pipeline("pretrain_probe").__name__ == "pretrain_probe"  # imported on first lookup
    from audio_ssl.evaluation.pipelines import lightning_task

    assert get_pipeline("lightning") is lightning_task
    with pytest.raises(ValueError, match="already registered"):
        register_pipeline("lightning")(random_scores_task)


def test_config_helpers(tmp_path):
    assert run_config.parse_set_overrides(["trainer.max_epochs=3", "--data.init_args.batch_size=4"]) == [
        "--trainer.max_epochs", "3", "--data.init_args.batch_size", "4"]
    with pytest.raises(ValueError, match="key=value"):
        run_config.parse_set_overrides(["trainer.max_epochs"])
    assert run_config.infer_num_folds(run_config.load_config(SUPERVISED), SUPERVISED) == 5
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"pipeline: pretrain_probe\npretrain: {SUPERVISED}\n")
    assert run_config.infer_num_folds(run_config.load_config(pipeline), pipeline) == 5
    assert run_config.config_fingerprint(pipeline, []) != run_config.config_fingerprint(pipeline, ["--x", "1"])
    pipeline.write_text(f"# a comment\npipeline: pretrain_probe\npretrain: {SUPERVISED}\n")
    first = run_config.config_fingerprint(pipeline, [])
    assert first == run_config.config_fingerprint(pipeline, [])  # comments do not change it
    bare = tmp_path / "bare.yaml"
    bare.write_text("pipeline: baseline\n")
    with pytest.raises(ValueError, match="cannot tell the number of folds"):
        run_config.infer_num_folds(run_config.load_config(bare), bare)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        run_config.resolve_path({"pretrain": "missing.yaml"}, "pretrain", pipeline)
    context = FoldContext({"pretrain": SUPERVISED.name}, 1, tmp_path, config_path=SUPERVISED)
    assert context.resolve_path("pretrain") == SUPERVISED


def test_wandb_logger_wiring(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    csv, wandb = logger_spec(tmp_path, "exp-fold2", "fit", group="exp", project="proj")
    assert csv["class_path"].endswith("CSVLogger")
    assert wandb["init_args"] == {"project": "proj", "name": "exp-fold2", "group": "exp", "job_type": "fit",
                                  "save_dir": str(tmp_path), "offline": True}
    monkeypatch.setenv("WANDB_MODE", "online")
    assert logger_spec(tmp_path, "x", "fit", group="exp")[1]["init_args"]["offline"] is False
    assert len(logger_spec(tmp_path, "x", "fit")) == 1
    context = FoldContext({}, 3, tmp_path, run_name="exp", wandb=True, wandb_project="proj")
    args = lightning_args(context, SUPERVISED, tmp_path, stage="pretrain")
    assert args[args.index("--data.init_args.test_fold") + 1] == "3"
    logger = json.loads(args[args.index("--trainer.logger") + 1])
    assert logger[1]["init_args"]["name"] == "exp-fold3-pretrain" and logger[1]["init_args"]["group"] == "exp"
    assert run_config.wandb_project(run_config.load_config(SUPERVISED)) == "audio-ssl"


def test_lightning_cv_end_to_end_with_resume(tmp_path, esc50_root, cache_dir, monkeypatch, capsys):
    """`audio-ssl cv` on a plain Lightning YAML: two folds, then the rest (finished folds are not refitted)."""
    import lightning as L

    from audio_ssl.cli import main

    monkeypatch.chdir(tmp_path)
    fits = []
    original_fit = L.Trainer.fit
    monkeypatch.setattr(L.Trainer, "fit", lambda self, *a, **k: (fits.append(1), original_fit(self, *a, **k))[1])
    base = ["cv", "--config", str(SUPERVISED), "--name", "sup", "--no-wandb", "--set", "trainer.max_epochs=1",
            *tiny_cv_overrides(esc50_root, cache_dir)]
    main(base + ["--folds", "1,2", "--no-analysis"])
    assert len(fits) == 2
    main(base)
    assert len(fits) == 5  # folds 1 and 2 were not run again
    out = capsys.readouterr().out
    assert "| sup | SupervisedClassifier |" in out and "| 5/5 | 1 |" in out
    assert "every one of the 50 clips was tested exactly once" in out

    run_dir = tmp_path / "results" / "sup"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["bookkeeping_ok"] and summary["num_folds"] == 5
    assert summary["variants"]["default"]["epochs"] == 1
    assert "test_fold: 1" in summary["configs"]["fit"] and "max_epochs: 1" in summary["configs"]["fit"]
    assert summary["git_commit"] and summary["device"]
    for fold, details in summary["variants"]["default"]["details"].items():  # DataStallMonitor, on in the CLI
        assert 0 <= details["data_stall_fraction"] < 1 and details["data_stall_epochs"] == 1, fold
    for k in range(1, 6):
        frame = pd.read_csv(run_dir / "predictions" / f"fold{k}.csv")
        assert len(frame) == 10 and {"file", "label", "pred", "top1_prob", "top5_prob"} <= set(frame.columns)
        assert (run_dir / f"fold{k}" / "checkpoints" / "last.ckpt").exists()
    for name in ("confusion_matrix.png", "per_class_accuracy.png", "confused_pairs.csv", "most_confident_wrong.png",
                 "least_confident_correct.png"):
        assert (run_dir / "analysis" / "default" / name).stat().st_size > 0


def test_pretrain_finetune_uses_the_pretrained_encoder(tmp_path, esc50_root, cache_dir, monkeypatch):
    from audio_ssl.methods.base import BaseMethod

    monkeypatch.chdir(tmp_path)
    loaded = []
    original = BaseMethod.load_encoder_weights
    monkeypatch.setattr(BaseMethod, "load_encoder_weights", lambda self, c: (loaded.append(c), original(self, c))[1])
    config = tmp_path / "finetune.yaml"
    config.write_text(yaml.safe_dump({"pipeline": "pretrain_finetune", "pretrain": str(SUPERVISED),
                                      "finetune": str(SUPERVISED)}))
    summary = run_cv(config, folds=[2], out=tmp_path / "results", overrides=tiny_cv_overrides(esc50_root, cache_dir),
                        wandb=False, analyze=False)
    assert set(summary["variants"]) == {"pretrained", "random_init"}
    fold = tmp_path / "results" / "finetune" / "fold2"
    ckpt = fold / "pretrain" / "final.ckpt"
    assert f"init_encoder_from: {ckpt}" in summary["configs"]["pretrained/finetune_pretrained"]
    assert "init_encoder_from" not in summary["configs"]["random_init/finetune_random_init"]  # None: not dumped
    assert loaded == [str(ckpt)]  # only the pretrained variant starts from the pretrained encoder
    assert summary["variants"]["pretrained"]["epochs"] == "1+1"
    assert summary["variants"]["random_init"]["pretraining_data"] == "none"
    assert summary["variants"]["pretrained"]["pretraining_data"] == "esc50 folds 1,3,4,5"
    assert (fold / "finetune_pretrained" / "final.ckpt").exists() and (fold / "finetune_random_init").is_dir()


def test_pretrain_finetune_with_a_probe_pretrains_once_then_probes_and_fine_tunes(tmp_path, esc50_root, cache_dir,
                                                                                   monkeypatch):
    """experiments/masked_cnn_finetune.yaml at size cpu, tiny: one pretraining of the fold, whose weights (and the
    untrained model) are linear-probed and fine-tuned (the fine-tune stage's encoder and front end match the
    pretraining's, so init_encoder_from accepts them; the first fine-tune epoch trains the head alone)."""
    from audio_ssl.evaluation import pipelines
    from audio_ssl.methods.base import BaseMethod

    monkeypatch.chdir(tmp_path)
    loaded, pretrainings = [], []
    original = BaseMethod.load_encoder_weights
    monkeypatch.setattr(BaseMethod, "load_encoder_weights", lambda self, c: (loaded.append(c), original(self, c))[1])
    stage = pipelines.pretrain_stage
    monkeypatch.setattr(pipelines, "pretrain_stage", lambda context: (pretrainings.append(context.fold), stage(context))[1])
    config = tmp_path / "masked_cnn_finetune.yaml"
    recipe = yaml.safe_load((ROOT / "experiments" / "masked_cnn_finetune.yaml").read_text())
    experiments = ROOT / "experiments"
    config.write_text(yaml.safe_dump({
        **recipe, "size": "cpu", "pretrain": str(experiments / recipe["pretrain"]),
        "finetune": str(experiments / recipe["finetune"]), "probe": {"C": [1.0], "max_iter": 50, "device": "cpu"},
        "pretrain_overrides": ["--model.init_args.num_tokens", "16", "--model.init_args.tokenizer_batches", "2",
                               "--model.init_args.max_fit_patches", "1000", "--model.init_args.kmeans_iters", "5",
                               "--trainer.max_epochs", "1"],
        "finetune_overrides": ["--trainer.max_epochs", "2", "--model.init_args.freeze_encoder_epochs", "1"]}))
    overrides = tiny_cv_overrides(esc50_root, cache_dir)
    at = overrides.index("--trainer.max_epochs")
    del overrides[at:at + 2]  # each stage states its own length
    summary = run_cv(config, folds=[2], out=tmp_path / "results", overrides=overrides, wandb=False, analyze=False)
    variants = summary["variants"]
    assert set(variants) == {"probe_pretrained", "probe_random_init", "finetune_pretrained", "finetune_random_init"}
    fold = tmp_path / "results" / "masked_cnn_finetune" / "fold2"
    ckpt = fold / "pretrain" / "final.ckpt"
    assert pretrainings == [2] and loaded == [str(ckpt)]  # one pretraining; only finetune_pretrained starts from it
    for kind in ("probe", "finetune"):
        assert variants[f"{kind}_pretrained"]["pretraining_data"] == "esc50 folds 1,3,4,5"
        assert variants[f"{kind}_random_init"]["pretraining_data"] == "none"
    assert variants["probe_pretrained"]["protocol"] == "linear probe (frozen encoder)"
    assert variants["finetune_pretrained"]["epochs"] == "1+2" and variants["finetune_pretrained"]["method"] == \
        "MaskedTokenPrediction"
    assert "freeze_encoder_epochs: 1" in summary["configs"]["finetune_pretrained/finetune_pretrained"]
    assert "stem_pool: false" in summary["configs"]["finetune_pretrained/finetune_pretrained"]
    assert (fold / "finetune_pretrained" / "final.ckpt").exists() and (fold / "finetune_random_init").is_dir()


# ---------------------------------------------------------------------------------------- composed configs
def write_recipe_with_size(tmp_path) -> tuple[Path, Path]:
    """A copy of supervised_cpu.yaml as ``exp/sup.yaml`` and a ``tiny`` size overlay ``exp/tiny/sup.yaml``."""
    recipe = tmp_path / "exp" / "sup.yaml"
    overlay = recipe.parent / "tiny" / "sup.yaml"
    overlay.parent.mkdir(parents=True)
    recipe.write_text(SUPERVISED.read_text())
    overlay.write_text("model:\n  init_args:\n    dropout: 0.125\n")
    return recipe, overlay


def test_stage_configs_and_pipeline_set(tmp_path):
    recipe, overlay = write_recipe_with_size(tmp_path)
    pipeline = recipe.parent / "p.yaml"
    source = {"pipeline": "pretrain_probe", "pretrain": "sup.yaml"}
    assert run_config.stage_configs(source, "pretrain", pipeline) == [recipe.resolve()]
    assert run_config.stage_configs({**source, "size": "tiny"}, "pretrain", pipeline) == [recipe.resolve(),
                                                                                         overlay.resolve()]
    listed = {"pretrain": ["sup.yaml", "tiny/sup.yaml"], "size": "tiny"}  # named once even when listed too
    assert run_config.stage_configs(listed, "pretrain", pipeline) == [recipe.resolve(), overlay.resolve()]
    assert run_config.stage_configs(source, "finetune", pipeline, required=False) == []
    with pytest.raises(FileNotFoundError, match=r"size: gpu needs the overlay .*gpu/sup.yaml for pretrain: sup.yaml"):
        run_config.stage_configs({**source, "size": "gpu"}, "pretrain", pipeline)
    with pytest.raises(ValueError, match=r"'pretrain' must be a path to a Lightning YAML or a list"):
        run_config.stage_configs({"pretrain": ["sup.yaml", 3]}, "pretrain", pipeline)
    with pytest.raises(FileNotFoundError, match="'pretrain: nope.yaml'"):
        run_config.stage_configs({"pretrain": ["sup.yaml", "nope.yaml"]}, "pretrain", pipeline)

    from audio_ssl.evaluation.pipelines import PIPELINE_KEYS

    allowed = PIPELINE_KEYS["pretrain_probe"]
    changed = run_config.apply_pipeline_set(source, ["size=tiny", "transductive=true", "pretrain=[a.yaml, b.yaml]"],
                                            allowed, "p.yaml")
    assert changed == {**source, "size": "tiny", "transductive": True, "pretrain": ["a.yaml", "b.yaml"]}
    assert source == {"pipeline": "pretrain_probe", "pretrain": "sup.yaml"}  # not modified in place
    with pytest.raises(ValueError, match=r"--pipeline-set 'transductiv=true': unknown key 'transductiv' for p.yaml"):
        run_config.apply_pipeline_set(source, ["transductiv=true"], allowed, "p.yaml")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        run_config.apply_pipeline_set(source, ["size"], allowed, "p.yaml")

    pipeline.write_text(yaml.safe_dump(source))
    assert run_config.referenced_configs({**source, "size": "tiny"}, pipeline) == {
        "pretrain": recipe.resolve(), "pretrain+size": overlay.resolve()}
    plain = run_config.config_fingerprint(pipeline, [])
    assert plain == run_config.config_fingerprint(pipeline, [], run_config.load_config(pipeline))
    sized = run_config.config_fingerprint(pipeline, [], {**source, "size": "tiny"})
    assert sized != plain
    overlay.write_text("model:\n  init_args:\n    dropout: 0.25\n")  # the overlay's content is part of the run
    assert run_config.config_fingerprint(pipeline, [], {**source, "size": "tiny"}) != sized
    args = lightning_args(FoldContext({}, 2, tmp_path), [recipe, overlay], tmp_path)
    assert args[:4] == ["--config", str(recipe), "--config", str(overlay)]


def test_cv_stacks_overlays_and_sets_pipeline_keys(tmp_path, esc50_root, cache_dir, monkeypatch, capsys):
    """`audio-ssl cv --config recipe --config overlay` and `--pipeline-set size=... transductive=true`: the stages
    run with the overlay's values, the runs are named after the stack, unknown keys are refused."""
    from audio_ssl.cli import main

    monkeypatch.chdir(tmp_path)
    recipe, overlay = write_recipe_with_size(tmp_path)
    common = ["--folds", "1", "--no-wandb", "--no-analysis", "--set", "trainer.max_epochs=1",
              *tiny_cv_overrides(esc50_root, cache_dir)]
    main(["cv", "--config", str(recipe), "--config", str(overlay), *common])
    summary = json.loads((tmp_path / "results" / "sup_tiny" / "summary.json").read_text())
    assert "dropout: 0.125" in summary["configs"]["fit"]
    assert f"# --config {overlay.resolve()}" in summary["configs"]["cv_config"]

    pipeline = recipe.parent / "sup_probe.yaml"
    pipeline.write_text("pipeline: pretrain_probe\npretrain: sup.yaml\nprobe: {C: [1.0], max_iter: 50, "
                        "device: cpu}\n")
    main(["cv", "--config", str(pipeline), "--pipeline-set", "size=tiny", "--pipeline-set", "transductive=true",
          *common])
    summary = json.loads((tmp_path / "results" / "sup_probe_tiny_transductive" / "summary.json").read_text())
    assert "dropout: 0.125" in summary["configs"]["pretrained/pretrain"]
    assert "# --pipeline-set size=tiny --pipeline-set transductive=true" in summary["configs"]["cv_config"]
    assert summary["variants"]["pretrained"]["transductive"] is True
    assert (tmp_path / "results" / "sup_probe_tiny_transductive" / "pretrain_transductive").is_dir()

    for argv, message in (
            (["--config", str(pipeline), "--pipeline-set", "sise=tiny"], "unknown key 'sise'"),
            (["--config", str(pipeline), "--config", str(overlay)], "stack on a Lightning YAML only"),
            (["--config", str(recipe), "--pipeline-set", "size=tiny"], "has no pipeline keys to set")):
        with pytest.raises(SystemExit) as exit_info:
            main(["cv", *argv, "--no-wandb"])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_shipped_probe_pipelines_take_every_size():
    """Each ``experiments/<method>_probe.yaml`` pretrains ``<method>.yaml``; ``--pipeline-set size=cpu`` stacks
    ``cpu/<method>.yaml`` on it (the files the former ``<method>_probe_cpu*.yaml`` pipelines named)."""
    from audio_ssl.evaluation.pipelines import PIPELINE_KEYS, check_pipeline_config

    experiments = ROOT / "experiments"
    probes = [p for p in sorted(experiments.glob("*_probe.yaml"))  # linear_probe.yaml pretrains supervised_cpu
              if p.stem != "linear_probe" and run_config.load_config(p).get("pipeline") == "pretrain_probe"]
    assert {p.stem for p in probes} >= {"simclr_probe", "byola_probe", "masked_cnn_probe", "masked_transformer_probe"}
    for path in probes:
        config = run_config.load_config(path)
        check_pipeline_config(config, "pretrain_probe", str(path))
        recipe = experiments / f"{path.stem.removesuffix('_probe')}.yaml"
        assert run_config.stage_configs(config, "pretrain", path) == [recipe]
        sized = run_config.apply_pipeline_set(config, ["size=cpu", "transductive=true"],
                                              PIPELINE_KEYS["pretrain_probe"], str(path))
        assert run_config.stage_configs(sized, "pretrain", path) == [recipe, experiments / "cpu" / recipe.name]


FINETUNE_PIPELINES = [p for p in sorted((ROOT / "experiments").glob("*_finetune.yaml"))
                      if (yaml.safe_load(p.read_text()) or {}).get("pipeline") == "pretrain_finetune"]


def test_every_pretraining_method_has_a_finetune_pipeline():
    assert {p.stem for p in FINETUNE_PIPELINES} >= {"simclr_finetune", "masked_cnn_finetune",
                                                    "masked_transformer_finetune"}


@pytest.mark.parametrize("path", FINETUNE_PIPELINES, ids=lambda p: p.stem)
def test_shipped_finetune_pipelines_fine_tune_the_encoder_they_pretrain(path, tmp_path, monkeypatch):
    """``experiments/<method>_finetune.yaml`` pretrains ``<method>.yaml``, probes with linear_probe.yaml and fine-tunes
    a FineTuneClassifier whose encoder structure and front end equal the pretraining's, at full size and at
    ``size=cpu`` (what init_encoder_from would otherwise refuse at the first fold)."""
    from audio_ssl.cli import build_cli
    from audio_ssl.evaluation.pipelines import PIPELINE_KEYS, check_pipeline_config
    from audio_ssl.utils.provenance import describe_architecture, describe_module

    monkeypatch.chdir(tmp_path)
    config = run_config.load_config(path)
    check_pipeline_config(config, "pretrain_finetune", str(path))
    assert config["probe"] == "linear_probe.yaml"
    for size in ([], ["size=cpu"]):
        sized = run_config.apply_pipeline_set(config, size, PIPELINE_KEYS["pretrain_finetune"], str(path))
        built = {}
        for stage in ("pretrain", "finetune"):
            paths = run_config.stage_configs(sized, stage, path)
            assert len(paths) == 1 + len(size) and (not size or paths[1].parent.name == "cpu")
            args = [a for p in paths for a in ("--config", str(p))] + ["--trainer.logger", "false"]
            built[stage] = build_cli(args, run=False).model
        pre, fine = built["pretrain"], built["finetune"]
        assert type(fine).__name__ == "FineTuneClassifier" and fine.freeze_encoder_epochs > 0
        assert describe_architecture(fine.encoder) == describe_architecture(pre.encoder), size
        assert describe_module(fine.frontend) == describe_module(pre.frontend), size


def test_a_self_supervised_recipe_alone_is_refused_before_training(tmp_path, esc50_root, cache_dir, capsys):
    from audio_ssl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["cv", "--config", str(ROOT / "experiments" / "simclr.yaml"), "--config",
              str(ROOT / "experiments" / "cpu" / "simclr.yaml"), "--folds", "1", "--out", str(tmp_path / "results"),
              "--no-wandb", "--set", f"data.init_args.data_dir={esc50_root}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "SimCLR does not classify" in err and "simclr_probe.yaml" in err
    assert not list((tmp_path / "results").rglob("*.ckpt"))  # nothing was trained


def test_resume_refusal_names_the_keys_and_values_that_differ(tmp_path, esc50_root, cache_dir):
    """A re-run that differs from the run in the folder says which pipeline keys and overrides differ, with both
    values, and how to go on."""
    config = random_config(tmp_path, esc50_root, cache_dir, leak=[])
    run_cv(config, folds=[1], out=tmp_path / "results", overrides=["--max_clips", "10"], wandb=False, analyze=False)
    random_config(tmp_path, esc50_root, cache_dir, leak=[2])
    with pytest.raises(ValueError) as info:
        run_cv(config, folds=[1], out=tmp_path / "results", overrides=["--max_clips=20"], wandb=False, analyze=False)
    message = str(info.value)
    assert "pipeline key leak: [] there, [2] now" in message
    assert "override max_clips: '10' there, '20' now" in message
    assert "Use another run name (cv --name) or results folder (reproduce --out), or delete" in message


def test_pipeline_set_is_checked_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """A --pipeline-set value that breaks the pipeline (a size without overlays, a bad max_clips) is refused before
    the run folder exists, naming the --pipeline-set item, not the file; a pipeline key given with --set is
    refused with a pointer to --pipeline-set."""
    from audio_ssl.cli import main

    monkeypatch.chdir(tmp_path)
    experiments = ROOT / "experiments"
    for argv, messages in (
            (["--config", str(experiments / "simclr_probe.yaml"), "--pipeline-set", "size=gpu"],
             ["--pipeline-set size=gpu (on simclr_probe.yaml): size: gpu needs the overlay"]),
            (["--config", str(experiments / "simclr_probe.yaml"), "--pipeline-set", "transductive=true",
              "--pipeline-set", "size=gpu"], ["error: --pipeline-set size=gpu (on simclr_probe.yaml)"]),
            (["--config", str(experiments / "zoo" / "hubert_probe.yaml"), "--pipeline-set", "max_clips=0"],
             ["--pipeline-set max_clips=0 (on hubert_probe.yaml): 'max_clips' must be a positive integer"]),
            (["--config", str(experiments / "zoo" / "hubert_probe.yaml"), "--set", "max_clips=20"],
             ["--set max_clips=20: max_clips is a key of the frozen_probe pipeline config hubert_probe.yaml",
              "use --pipeline-set max_clips=20"]),
            (["--config", str(experiments / "baseline_majority.yaml"), "--set", "C=2"],
             ["baseline_majority.yaml is a baseline pipeline, which runs no Lightning stage",
              "--pipeline-set KEY=VALUE"])):
        with pytest.raises(SystemExit) as exit_info:
            main(["cv", *argv, "--out", str(tmp_path / "results"), "--no-wandb"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert all(m in err for m in messages), err
        assert not (tmp_path / "results").exists(), argv


def test_a_lightning_argument_error_inside_cv_names_audio_ssl_cv(tmp_path, esc50_root, cache_dir, monkeypatch, capsys):
    from audio_ssl.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["cv", "--config", str(SUPERVISED), "--folds", "1", "--no-wandb", "--no-analysis",
              "--set", "trainer.max_epochz=1", *tiny_cv_overrides(esc50_root, cache_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "audio-ssl cv: error:" in err and "max_epochz" in err and "see audio-ssl cv --help" in err

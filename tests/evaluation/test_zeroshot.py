"""The ``clap_zeroshot`` pipeline of ``audio-ssl cv`` with ``experiments/zoo/clap_zeroshot.yaml``, run on the
synthetic ESC-50 of the fixtures with a tiny random CLAP model from an offline Hub cache: predictions against
the model applied by hand, mean/std and bookkeeping in summary.json, ``max_clips``, overrides and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("transformers")

from clap_utils import TINY_ID  # noqa: E402

from audio_ssl.cli import main as cli_main  # noqa: E402
from audio_ssl.data.audio import decode_audio  # noqa: E402
from audio_ssl.evaluation.run_config import apply_set_overrides, parse_set_overrides  # noqa: E402
from audio_ssl.evaluation.runner import run_cv  # noqa: E402
from audio_ssl.evaluation.summary import results_table  # noqa: E402
from audio_ssl.evaluation.zeroshot import round_robin_subset  # noqa: E402
from audio_ssl.models.clap import load_clap, prompts_for  # noqa: E402

pytestmark = pytest.mark.usefixtures("clap_offline")  # nothing here may reach the Hugging Face Hub

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "experiments" / "zoo" / "clap_zeroshot.yaml"


def sets(esc50_root, cache_dir, *extra) -> list[str]:
    """``--set`` items pointing the recipe at the tiny model and the synthetic data (1 s clips)."""
    items = [f"model={TINY_ID}", f"data.init_args.data_dir={esc50_root}", f"data.init_args.cache_dir={cache_dir}",
             "data.init_args.clip_seconds=1.0", "data.init_args.num_workers=0", "device=cpu", *extra]
    return [arg for item in items for arg in ("--set", item)]


def test_recipe_runs_every_fold_through_audio_ssl_cv(clap_hub, esc50_root, cache_dir, tmp_path, capsys):
    cli_main(["cv", "--config", str(CONFIG), "--out", str(tmp_path / "results"), "--no-wandb",
              *sets(esc50_root, cache_dir)])
    out = capsys.readouterr().out
    run_dir = tmp_path / "results" / "clap_zeroshot"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["pipeline"] == "clap_zeroshot" and summary["complete"] and summary["bookkeeping_ok"]
    variant = summary["variants"]["clap_zeroshot"]
    assert variant["bookkeeping"]["message"] == "every one of the 50 clips was tested exactly once across the 5 folds"
    acc = variant["metrics"]["acc"]
    per_fold = [acc["per_fold"][str(f)] for f in range(1, 6)]
    assert acc["mean"] == pytest.approx(np.mean(per_fold)) and acc["std"] == pytest.approx(np.std(per_fold, ddof=1))
    assert variant["method"] == "CLAP zero-shot" and variant["epochs"] == 0
    assert variant["protocol"] == "zero-shot (class-name prompts, no training)"
    details = variant["details"]["1"]
    assert details["max_clips"] is None and details["test_clips"] == 10 and details["model_sample_rate"] == 48000
    assert details["prompts"][0] == "This is a sound of synth tone 150."
    folds = pd.read_csv(run_dir / "folds.csv")
    assert sorted(folds["fold"]) == [1, 2, 3, 4, 5] and np.allclose(sorted(folds["acc"]), sorted(per_fold))
    assert "| clap_zeroshot | CLAP zero-shot |" in out and "| clap_zeroshot | CLAP zero-shot |" in results_table([summary])
    assert (run_dir / "analysis").is_dir()

    # fold 1's predictions: each file decoded at 16 kHz and scored by the model by hand
    predictions = pd.read_csv(next((run_dir / "predictions").glob("*fold1*")))
    clap = load_clap(TINY_ID)
    prompts = prompts_for([name.replace("_", " ") for name in summary["class_names"]])
    waves = np.stack([decode_audio(f, 16000) for f in predictions["file"]])
    expected = clap.zero_shot(waves, 16000, prompts).numpy()
    np.testing.assert_array_equal(predictions["pred"], expected.argmax(1))
    np.testing.assert_allclose(predictions["confidence"], expected.max(1), rtol=1e-4)
    assert predictions["label"].tolist() == [int(Path(f).stem.split("-")[-1]) for f in predictions["file"]]


def test_max_clips_scores_a_class_covering_subset_and_says_so(clap_hub, esc50_root, cache_dir, tmp_path):
    overrides = parse_set_overrides([item for item in sets(esc50_root, cache_dir, "max_clips=3") if item != "--set"])
    summary = run_cv(CONFIG, out=tmp_path / "results", name="check", overrides=overrides, wandb=False, analyze=False)
    variant = summary["variants"]["clap_zeroshot"]
    assert variant["protocol"].endswith("pipeline check: 3 clips per fold")
    assert variant["num_test_clips"] == 15 and summary["num_clips"] == 15
    assert variant["bookkeeping"]["ok"] and "every one of the 15 clips" in variant["bookkeeping"]["message"]
    for fold in range(1, 6):
        details = variant["details"][str(fold)]
        assert details["max_clips"] == 3 and details["test_clips"] == 3 and details["fold_clips"] == 10
    predictions = pd.read_csv(next((tmp_path / "results" / "check" / "predictions").glob("*fold2*")))
    assert sorted(predictions["label"]) == [0, 1, 2]  # round-robin over the classes
    assert "--max_clips" in json.loads((tmp_path / "results" / "check" / "summary.json").read_text())["overrides"]


def test_pipeline_set_sets_the_keys_of_clap_zeroshot(clap_hub, esc50_root, cache_dir, tmp_path):
    """clap_zeroshot's keys are set with --pipeline-set like every pipeline's (--set works too); a bad value is
    refused before the run folder is written, naming the --pipeline-set item."""
    base = parse_set_overrides([item for item in sets(esc50_root, cache_dir) if item != "--set"])
    summary = run_cv(CONFIG, folds=[1], out=tmp_path / "results", name="ps", overrides=base, wandb=False,
                     analyze=False, pipeline_set=["max_clips=2"])
    assert summary["variants"]["clap_zeroshot"]["details"]["1"]["test_clips"] == 2
    with pytest.raises(ValueError, match=r"--pipeline-set max_clips=0 \(on clap_zeroshot.yaml\): 'max_clips' must "):
        run_cv(CONFIG, folds=[1], out=tmp_path / "results", name="bad", overrides=base, wandb=False,
               analyze=False, pipeline_set=["max_clips=0"])
    assert not (tmp_path / "results" / "bad").exists()


def test_config_errors_name_the_file_and_key(clap_hub, esc50_root, cache_dir, tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    base = parse_set_overrides([item for item in sets(esc50_root, cache_dir) if item != "--set"])
    for extra, message in [({"max_clip": 3}, "unknown key(s) ['max_clip']"),
                           ({"max_clips": 0}, "'max_clips' must be a positive integer or null, got 0"),
                           ({"template": "sound"}, "'template': template 'sound' has no {label} field"),
                           ({"batch_size": "8"}, "'batch_size' must be a positive integer")]:
        path = tmp_path / f"bad{len(message)}.yaml"
        path.write_text(yaml.safe_dump({**config, **extra}))
        with pytest.raises(ValueError, match=None) as info:
            run_cv(path, folds=[1], out=tmp_path / "results", overrides=base, wandb=False, analyze=False)
        assert str(path) in str(info.value) and message in str(info.value)
    too_long = parse_set_overrides([item for item in sets(esc50_root, cache_dir, "data.init_args.clip_seconds=2.0")
                                    if item != "--set"])
    with pytest.raises(ValueError, match="clip_seconds=2 is longer than the 1 s"):
        run_cv(CONFIG, folds=[1], name="long", out=tmp_path / "results", overrides=too_long, wandb=False,
               analyze=False)


def test_round_robin_subset():
    labels = [2, 0, 0, 1, 2, 0, 1]
    assert round_robin_subset(labels, None) == list(range(7))
    assert round_robin_subset(labels, 3) == [0, 1, 3]  # the first clip of classes 0, 1, 2
    assert round_robin_subset(labels, 5) == [0, 1, 2, 3, 6]  # then the second clip of classes 0 and 1
    assert round_robin_subset(labels, 99) == list(range(7))


def test_apply_set_overrides():
    config = {"model": "a", "data": {"class_path": "X", "init_args": None}}
    out = apply_set_overrides(config, ["--model", "b", "--data.init_args.data_dir", "/d", "--max_clips=20",
                                       "--data.init_args.folds", "[1, 2]", "--revision", "null"])
    assert out == {"model": "b", "max_clips": 20, "revision": None,
                   "data": {"class_path": "X", "init_args": {"data_dir": "/d", "folds": [1, 2]}}}
    assert config["model"] == "a" and config["data"]["init_args"] is None  # the input is not changed
    with pytest.raises(ValueError, match="x.yaml: override --model has no value"):
        apply_set_overrides(config, ["--model"], "x.yaml")
    with pytest.raises(ValueError, match="cannot set model.name: model is not a mapping"):
        apply_set_overrides(config, ["--model.name", "c"])


def test_a_model_that_cannot_be_loaded_is_one_line_from_cv(esc50_root, cache_dir, tmp_path, capsys):
    """Offline, the recipe's hub id fails with what to fetch, as one line: no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["cv", "--config", str(CONFIG), "--folds", "1", "--out", str(tmp_path / "results"), "--no-wandb",
                  "--set", f"data.init_args.data_dir={esc50_root}", "--set", f"data.init_args.cache_dir={cache_dir}",
                  "--set", f"model={tmp_path / 'no-such-model'}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "audio-ssl cv: error:" in err and "no-such-model" in err

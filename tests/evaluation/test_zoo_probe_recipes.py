"""The zoo's frozen_probe configs (experiments/zoo/*_probe.yaml) in the agreed format, and the probe they describe run
through :func:`probe_fold` directly: the pretrained model (a tiny local folder in place of the hub id) and its
random-init control, built from the Lightning YAML with the config's overrides, embedded and probed on one fold."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_utils import ROOT, common_args, prepare_recipe, small_overrides

from audio_ssl.cli import build_cli
from audio_ssl.evaluation.probe import fold_groups, load_probe_config, probe_fold

PROBES = sorted((ROOT / "experiments" / "zoo").glob("*_probe.yaml"))
HF_PROBES = [p for p in PROBES if p.stem.split("_")[0] in ("ast", "wav2vec2", "hubert", "wavlm")]
FORMAT_KEYS = {"pipeline", "model", "model_overrides", "random_init_overrides", "probe", "max_clips"}


def _build(model_yaml: Path, overrides: list[str], esc50_root, cache_dir, tmp_path):
    args = ["--config", str(model_yaml), *common_args(esc50_root, cache_dir, tmp_path), *small_overrides(model_yaml),
            *overrides, "--trainer.logger", "false"]
    return build_cli(args, run=False)


@pytest.mark.parametrize("config", HF_PROBES, ids=lambda p: p.name)
def test_probe_config_has_the_agreed_format(config):
    spec = yaml.safe_load(config.read_text())
    assert set(spec) <= FORMAT_KEYS and spec["pipeline"] == "frozen_probe"
    model_yaml = config.parent / spec["model"]
    assert model_yaml.is_file() and not model_yaml.name.endswith("_probe.yaml")
    assert spec["random_init_overrides"] == ["--model.init_args.encoder.init_args.pretrained", "false"]
    assert isinstance(spec["model_overrides"], list)
    assert load_probe_config(spec["probe"], config.parent).Cs  # the shared probe settings resolve
    encoder = yaml.safe_load(model_yaml.read_text())["model"]["init_args"]["encoder"]
    assert encoder["class_path"].endswith("HFAudioEncoder") and encoder["init_args"]["pretrained"] is True


@pytest.mark.parametrize("config", [p for p in HF_PROBES if p.stem.startswith(("ast", "wavlm"))], ids=lambda p: p.name)
def test_probe_of_pretrained_and_random_init(config, esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = yaml.safe_load(config.read_text())
    model_yaml = config.parent / spec["model"]
    prepare_recipe(model_yaml)
    pretrained = _build(model_yaml, spec["model_overrides"], esc50_root, cache_dir, tmp_path)
    control = _build(model_yaml, [*spec["model_overrides"], *spec["random_init_overrides"]], esc50_root, cache_dir,
                     tmp_path)
    a, b = pretrained.model.encoder.state_dict(), control.model.encoder.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    matrices = [k for k, v in a.items() if ".layers." in k and k.endswith("weight") and v.ndim == 2]
    assert matrices and not any(torch.equal(a[k], b[k]) for k in matrices)  # the control's weights are new
    probe = dataclasses.replace(load_probe_config(spec["probe"], config.parent), C=1.0, device="cpu",
                                cache_embeddings=False)
    dm = pretrained.datamodule
    dm.setup("fit")
    train_set, test_set = dm.split_dataset("train"), dm.split_dataset("test")
    groups = fold_groups(dm, train_set)
    results = {}
    for variant, cli in (("pretrained", pretrained), ("random_init", control)):
        results[variant] = probe_fold(cli.model, train_set, test_set, dm.num_classes, dm.class_names, probe, groups)
    for output in results.values():
        assert 0.0 <= output.metrics["acc"] <= 1.0
        assert len(output.predictions) == len(test_set)
    probs = [np.asarray(results[v].predictions.filter(like="prob").to_numpy(), float) for v in results]
    assert probs[0].shape == probs[1].shape and not np.allclose(probs[0], probs[1])

"""benchmarks/zoo_embed.py on a tiny local model: the recipe is built through the Lightning config with random
weights, the parameter count is the encoder's, and clips/s is the batch over the median of the timed calls."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hf_utils import ensure_tiny_hf_models

from audio_ssl.models.hf_audio import HFAudioEncoder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import zoo_embed  # noqa: E402


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_zoo_embed_on_a_tiny_model(tmp_path, restore_threads):
    tiny = ensure_tiny_hf_models() / "ast"
    out = tmp_path / "zoo.json"
    payload = zoo_embed.main([str(ROOT / "experiments" / "zoo" / "ast_finetune.yaml"), "--set",
                              f"model.init_args.encoder.init_args.model={tiny}", "--batch", "2", "--seconds", "0.5",
                              "--repeats", "2", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(payload, default=float))
    (row,) = payload["results"]
    expected = sum(p.numel() for p in HFAudioEncoder(str(tiny), pretrained=False).parameters())
    assert row["encoder_params"] == expected and row["model_params"] > expected  # + the head
    assert row["input_shape"] == [2, 64, 16] and row["embedding_dim"] == 32
    assert len(row["embed_wall_s"]) == len(row["encoder_wall_s"]) == 2
    assert row["embed_clips_per_s"] == pytest.approx(2 / statistics.median(row["embed_wall_s"]))
    assert row["encoder_clips_per_s"] == pytest.approx(2 / statistics.median(row["encoder_wall_s"]))
    assert row["hub_id"] == "MIT/ast-finetuned-audioset-10-10-0.4593" and row["weights"].startswith("random")


def test_the_untrained_encoder_argument_follows_the_recipe(tmp_path):
    hf = ROOT / "experiments" / "zoo" / "wavlm_finetune.yaml"
    assert zoo_embed.random_init_args(hf) == ["--model.init_args.encoder.init_args.pretrained", "false"]
    named = tmp_path / "named.yaml"  # an encoder whose pretrained names weights (a path or hub id)
    named.write_text(yaml.safe_dump({"model": {"init_args": {"encoder": {"class_path": "x.TimmCNN", "init_args": {
        "pretrained": "timm/efficientnet_b0.ra_in1k"}}}}}))
    assert zoo_embed.random_init_args(named) == ["--model.init_args.encoder", '{"init_args": {"pretrained": null}}']
    silent = tmp_path / "silent.yaml"
    silent.write_text(yaml.safe_dump({"model": {"init_args": {"encoder": {"class_path": "x.Y", "init_args": {}}}}}))
    with pytest.raises(ValueError, match="pretrained is not stated"):
        zoo_embed.random_init_args(silent)


@pytest.mark.parametrize(("hub", "layers", "width"), [("facebook/wav2vec2-base", 12, 768),
                                                       ("MIT/ast-finetuned-audioset-10-10-0.4593", 12, 768),
                                                       ("microsoft/wavlm-base-plus", 12, 768)])
def test_default_architectures_are_the_base_models(hub, layers, width, tmp_path):
    zoo_embed.write_default_architecture(hub, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"]) == (layers, width)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["sampling_rate"] == 16000
    with pytest.raises(ValueError, match="cannot tell the model family"):
        zoo_embed.write_default_architecture("someone/bert-base", tmp_path / "x")

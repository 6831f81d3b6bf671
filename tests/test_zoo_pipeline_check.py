"""benchmarks/zoo_pipeline_check.py on tiny models and the generated ESC-50, offline: the probe, fine-tune and
zero-shot pipelines run end to end through ``audio-ssl cv`` in a subprocess (return code 0, results written), and
embed is measured through zoo_embed; the written timm weights load strictly and are not the random-init control."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

from clap_utils import hub_offline, save_tiny_clap  # noqa: E402
from hf_utils import save_tiny_hf_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import zoo_pipeline_check as check  # noqa: E402

TIMM_NAME = "mobilenetv3_small_050"  # a small stand-in for the recipes' CNNs


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    hub_offline(monkeypatch)


def tiny_weights(encoder: str, folder: Path) -> Path:
    """Tiny random weights of ``encoder`` in the form the script writes (seed 7, not the recipes' 0)."""
    if encoder == "clap":
        return save_tiny_clap(folder / "clap", seed=7)
    if encoder == "resnet18_imagenet":
        from safetensors.torch import save_file

        torch.manual_seed(7)
        path = folder / "timm.safetensors"
        save_file(timm.create_model(TIMM_NAME, pretrained=False).state_dict(), str(path))
        return path
    return save_tiny_hf_model(encoder, folder / encoder, seed=7)


@pytest.mark.parametrize("encoder", ["wav2vec2", "resnet18_imagenet", "clap"])
def test_pipelines_and_embed_on_tiny_models(encoder, tmp_path, esc50_root, cache_dir):
    weights = tiny_weights(encoder, tmp_path)
    sets = (f"data.init_args.cache_dir={cache_dir}", "data.init_args.clip_seconds=1.0")
    if encoder == "resnet18_imagenet":
        sets += (f"model.init_args.encoder.init_args.name={TIMM_NAME}",)
    records = check.check_pipelines(encoder, weights, esc50_root, tmp_path / "work", max_clips=5, steps=1,
                                    threads=1, sets=sets, timeout=120)
    assert set(records) == ({"zeroshot"} if encoder == "clap" else {"probe", "finetune", "finetune_test"})
    for name, record in records.items():
        assert record["returncode"] == 0, (name, record.get("error_tail"))
        run = Path(record["results"])
        if name == "finetune":  # fit: its last.ckpt is what finetune_test tests
            assert (run / "checkpoints" / "last.ckpt").is_file()
            continue
        if name != "finetune_test":
            assert (run / "summary.json").is_file() and (run / "folds.csv").is_file()
        assert 0.0 <= min(record["accuracy"].values()) <= max(record["accuracy"].values()) <= 1.0
    if encoder != "clap":
        assert set(records["probe"]["accuracy"]) == {"pretrained", "random_init"}
        details = json.loads((Path(records["probe"]["results"]) / "fold1" / "result.json").read_text())
        assert str(weights) in json.dumps(details)  # the probe's model read the written weights
        assert set(records["finetune_test"]["accuracy"]) == {"fine-tuned"}
    else:
        assert records["zeroshot"]["test_clips"]["clap_zeroshot"] == 5
    embed = check.measure_embed(encoder, weights, repeats=1, batch=2, seconds=1.0, warmup=0,
                                sets=sets[2:] if encoder == "resnet18_imagenet" else ())
    assert embed["encoder_params"] > 0 and embed["embed_clips_per_s"] > 0 and embed["batch"] == 2


def test_written_timm_weights_load_strictly_and_differ_from_the_control(tmp_path):
    from audio_ssl.models.timm_cnn import TimmCNN

    weights = check.write_weights("resnet18_imagenet", tmp_path, seed=3)
    assert weights.path.suffix == ".safetensors" and weights.parameters == 11_689_512  # with the 1000-class head
    loaded = TimmCNN("resnet18", pretrained=str(weights.path))
    torch.manual_seed(0)  # the recipes' seed_everything: the random-init control
    control = TimmCNN("resnet18", pretrained=None)
    key = "backbone.layer1.0.conv1.weight"
    assert not torch.equal(loaded.state_dict()[key], control.state_dict()[key])
    assert check.pipeline_commands("resnet18_imagenet", weights.path, tmp_path, tmp_path, 5, 1)["probe"][-1] == \
        f'model_overrides=["--model.init_args.encoder.init_args.pretrained", "{weights.path}"]'


def test_byte_level_tokenizer_works_offline():
    tokenizer = check.byte_level_tokenizer()
    ids = tokenizer("This is a sound of dog.")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 25

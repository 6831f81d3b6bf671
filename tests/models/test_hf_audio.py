"""HFAudioEncoder: tiny random AST / wav2vec 2.0 / HuBERT / WavLM models written with save_pretrained and loaded
back through the path a hub id takes; embeddings against a direct transformers call, the random-init control,
strict loading, the sample-rate check, the offline error and the layer ids of layer-wise lr decay."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hf_utils import HF_KINDS, save_tiny_hf_model, tiny_feature_extractor, tiny_hf_config

from audio_ssl.methods.finetune import FineTuneClassifier
from audio_ssl.models.hf_audio import HFAudioEncoder, HFFeatureFrontend, HFModelNotFoundError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {kind: save_tiny_hf_model(kind, root / kind, seed=i) for i, kind in enumerate(HF_KINDS)}


def _waves(batch: int = 3, samples: int = 16000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(batch, samples, generator=g)


def test_the_hub_is_offline_in_tests():
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE


@pytest.mark.parametrize("kind", HF_KINDS)
def test_folder_loads_the_saved_weights_and_embeds_like_transformers(kind, folders):
    encoder = HFAudioEncoder(str(folders[kind]))
    reference = transformers.AutoModel.from_pretrained(folders[kind]).eval()
    ours = encoder.model.state_dict()
    assert ours.keys() == reference.state_dict().keys()
    assert all(torch.equal(ours[k], v) for k, v in reference.state_dict().items())
    assert encoder.out_dim == 32 and encoder.num_layers == 2

    model = FineTuneClassifier(encoder, num_classes=5).eval()
    audio = _waves()
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folders[kind])
    inputs = extractor(list(audio.numpy()), sampling_rate=16000, return_tensors="pt")["input_values"]
    assert torch.equal(model.frontend(audio), inputs)
    expected_shape = (3, 64, 16) if kind == "ast" else (3, 16000)
    assert tuple(inputs.shape) == expected_shape
    with torch.no_grad():
        emb = model.embed(audio)
        direct = reference(input_values=inputs).last_hidden_state.mean(dim=1)
        logits = model(model.frontend(audio))
    assert emb.shape == (3, 32) and logits.shape == (3, 5)
    torch.testing.assert_close(emb, direct, rtol=1e-5, atol=1e-6)
    if kind != "ast":  # wav2vec 2.0's extractor: each clip to zero mean and unit variance
        torch.testing.assert_close(inputs.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(inputs.std(1, correction=0), torch.ones(3), atol=1e-3, rtol=0)


@pytest.mark.parametrize("kind", ["ast", "wavlm"])
def test_layer_selects_a_hidden_state(kind, folders):
    encoder = HFAudioEncoder(str(folders[kind]), layer=1).eval()
    inputs = encoder.build_frontend(16000)(_waves(2))
    with torch.no_grad():
        states = encoder.hidden_states(inputs)
        assert len(states) == 3
        torch.testing.assert_close(encoder(inputs), states[1].mean(dim=1))
        assert not torch.allclose(encoder(inputs), states[2].mean(dim=1))
    assert HFAudioEncoder(str(folders[kind]), layer=-1).layer == 2
    with pytest.raises(ValueError, match=r"layer=3 out of range: 2 layers"):
        HFAudioEncoder(str(folders[kind]), layer=3)


@pytest.mark.parametrize("kind", HF_KINDS)
def test_random_init_is_the_same_architecture_with_other_weights(kind, folders):
    pretrained = HFAudioEncoder(str(folders[kind])).model.state_dict()
    control = HFAudioEncoder(str(folders[kind]), pretrained=False).model.state_dict()
    assert {k: v.shape for k, v in control.items()} == {k: v.shape for k, v in pretrained.items()}
    # every weight matrix and kernel is drawn anew (transformers initialises AST's token and position tables to
    # zeros, so those are left out)
    weights = [k for k, v in pretrained.items() if v.ndim >= 2 and k.endswith(("weight", "original1"))]
    assert len(weights) >= 10 and not any(torch.equal(pretrained[k], control[k]) for k in weights)


def test_weights_that_do_not_match_the_config_fail_loudly(folders, tmp_path):
    # differently shaped weights: a 48-wide model's file under the 32-wide config
    wide = save_tiny_hf_model("hubert", tmp_path / "wide", hidden_size=48)
    (wide / "config.json").write_text((folders["hubert"] / "config.json").read_text())
    with pytest.raises(ValueError, match=r"weights do not match"):
        HFAudioEncoder(str(wide))
    # a weight missing from the file
    from safetensors.torch import load_file, save_file

    cut = save_tiny_hf_model("wav2vec2", tmp_path / "cut")
    state = load_file(cut / "model.safetensors")
    dropped = next(k for k in state if "layers.1.feed_forward.output_dense.weight" in k)
    save_file({k: v for k, v in state.items() if k != dropped}, cut / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \[.*layers\.1\.feed_forward\.output_dense\.weight"):
        HFAudioEncoder(str(cut))
    assert HFAudioEncoder(str(cut), pretrained=False).out_dim == 32  # the control needs no weights


def test_sample_rate_mismatch_names_both_rates(folders, tmp_path):
    encoder = HFAudioEncoder(str(folders["wav2vec2"]))
    with pytest.raises(ValueError, match=r"expects 16000 Hz .* sample_rate=22050 Hz"):
        FineTuneClassifier(encoder, sample_rate=22050)
    folder = save_tiny_hf_model("ast", tmp_path / "ast8k", sampling_rate=8000)
    with pytest.raises(ValueError, match=r"expects 8000 Hz .* sample_rate=16000 Hz"):
        HFFeatureFrontend(transformers.AutoFeatureExtractor.from_pretrained(folder), 16000, str(folder))
    assert FineTuneClassifier(HFAudioEncoder(str(folder)), sample_rate=8000).frontend.sample_rate == 8000


def test_offline_error_says_what_to_fetch_and_where(tmp_path):
    with pytest.raises(HFModelNotFoundError) as info:
        HFAudioEncoder("facebook/wav2vec2-base", cache_dir=str(tmp_path / "empty-cache"))
    message = str(info.value)
    assert "'facebook/wav2vec2-base'" in message
    assert "hf download facebook/wav2vec2-base --local-dir DIR" in message
    assert "huggingface-cli download facebook/wav2vec2-base --local-dir DIR" in message
    assert "--model.init_args.encoder.init_args.model DIR" in message and "HF_HOME" in message
    assert not list((tmp_path / "empty-cache").rglob("*.safetensors"))  # nothing was fetched
    with pytest.raises(HFModelNotFoundError, match=r"folder '/no/such/folder' does not exist"):
        HFAudioEncoder("/no/such/folder")


def test_unsupported_model_type_is_refused(tmp_path):
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type 'bert' is not one of the supported audio encoders"):
        HFAudioEncoder(str(tmp_path))


@pytest.mark.parametrize("kind", HF_KINDS)
def test_layer_ids_cover_every_parameter_in_depth_order(kind, folders):
    encoder = HFAudioEncoder(str(folders[kind]))
    ids = {name: encoder.layer_id(name) for name, _ in encoder.named_parameters()}
    assert set(ids.values()) == {0, 1, 2}
    for name, depth in ids.items():
        if ".layers.0." in name:
            assert depth == 1, name
        elif ".layers.1." in name:
            assert depth == 2, name
    stem = "model.embeddings.patch_embeddings.projection.weight" if kind == "ast" else \
        "model.feature_extractor.conv_layers.0.conv.weight"
    assert ids[stem] == 0
    if kind == "ast":
        assert ids["model.layernorm.weight"] == 2  # the final norm
        assert ids["model.embeddings.cls_token"] == 0
    else:  # post-norm: encoder.layer_norm is applied before the first layer
        assert ids["model.encoder.layer_norm.weight"] == 0
    with pytest.raises(ValueError, match="not a parameter"):
        encoder.layer_id("model.decoder.weight")


def test_prenorm_final_norm_is_the_top_layer(tmp_path):
    folder = save_tiny_hf_model("wav2vec2", tmp_path / "stable", do_stable_layer_norm=True,
                                feat_extract_norm="layer")
    encoder = HFAudioEncoder(str(folder))
    assert encoder.layer_id("model.encoder.layer_norm.weight") == 2
    assert json.loads((folder / "config.json").read_text())["do_stable_layer_norm"] is True


def test_feature_encoder_can_stay_frozen(folders):
    encoder = HFAudioEncoder(str(folders["hubert"]), freeze_feature_encoder=True)
    frozen = {n for n, p in encoder.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("model.feature_extractor.") for n in frozen)
    with pytest.raises(ValueError, match="wav2vec 2.0 family only"):
        HFAudioEncoder(str(folders["ast"]), freeze_feature_encoder=True)


def test_unused_weights_of_a_task_checkpoint_are_named(tmp_path, caplog):
    torch.manual_seed(0)
    classifier = transformers.ASTForAudioClassification(tiny_hf_config("ast", num_labels=3))
    classifier.save_pretrained(tmp_path)
    tiny_feature_extractor("ast").save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="audio_ssl.models.hf_audio"):
        encoder = HFAudioEncoder(str(tmp_path))
    assert "classifier" in caplog.text and "not used" in caplog.text
    base = classifier.audio_spectrogram_transformer.state_dict()
    assert all(torch.equal(encoder.model.state_dict()[k], v) for k, v in base.items())


def test_pickles_with_weights_modes_and_frozen_parameters(folders):
    import pickle

    encoder = HFAudioEncoder(str(folders["wavlm"]), freeze_feature_encoder=True).train()
    encoder.model.encoder.eval()
    with torch.no_grad():
        encoder.model.encoder.layers[0].feed_forward.output_dense.weight.add_(1.0)  # not the folder's weights
    copy = pickle.loads(pickle.dumps(encoder))
    assert all(torch.equal(v, copy.state_dict()[k]) for k, v in encoder.state_dict().items())
    assert {n: m.training for n, m in copy.named_modules()} == {n: m.training for n, m in encoder.named_modules()}
    assert {n for n, p in copy.named_parameters() if not p.requires_grad} == \
        {n for n, p in encoder.named_parameters() if not p.requires_grad} != set()


def test_names_its_model_and_the_source_of_its_weights(folders):
    from audio_ssl.evaluation.lightning_stage import describe_encoder
    from audio_ssl.evaluation.pipelines import weights_source

    folder = str(folders["hubert"])
    encoder = HFAudioEncoder(folder)
    assert encoder.describe() == f"HFAudioEncoder {folder} (hubert)"
    assert encoder.weights_source == folder
    assert re.fullmatch(rf"HFAudioEncoder {re.escape(folder)} \(hubert\), \d+\.\d\dM params",
                        describe_encoder(encoder))
    config = {"init_args": {"encoder": {"init_args": {"model": folder, "pretrained": True}}}}
    assert weights_source(config, encoder) == f"weights from outside: HFAudioEncoder weights {folder}"
    assert HFAudioEncoder(folder, pretrained=False).weights_source == f"random init (the architecture of {folder})"
    assert HFAudioEncoder(folder, revision="main").weights_source == f"{folder}@main"
    import pickle

    assert pickle.loads(pickle.dumps(encoder)).weights_source == folder

"""ONNX export of classifiers (supervised AudioResNet and BEATs, fitted for two steps): onnxruntime against
PyTorch (max abs difference of probabilities < 1e-4) for fixed-length (test-time augmentation) and dynamic-length
exports, the metadata, input checks, and the refusal of a non-classifier; the ``audio-ssl export`` command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from audio_ssl.cli import main as cli_main
from audio_ssl.export import hear
from audio_ssl.export.onnx import OnnxClassifier, export_onnx
from audio_ssl.export.source import load_trained_method
from audio_ssl.utils.provenance import CHECKPOINT_KEY

SR = 16000
TOLERANCE = 1e-4


def with_tta_views(checkpoint: Path, views: int, out: Path) -> Path:
    """A copy of a checkpoint whose recorded model config has ``tta_views = views`` (same weights)."""
    data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    data[CHECKPOINT_KEY]["model_config"]["init_args"]["tta_views"] = views
    torch.save(data, out)
    return out


def _clips(batch: int, samples: int, seed: int) -> torch.Tensor:
    return 0.3 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def _parity(onnx_path: Path, checkpoint: Path, lengths: list[int]) -> float:
    runtime = OnnxClassifier(onnx_path)
    method = load_trained_method(checkpoint).method
    worst = 0.0
    for i, samples in enumerate(lengths):
        for batch in (1, 5):
            clips = _clips(batch, samples, seed=10 * i + batch)
            with torch.no_grad():
                expected = method.predict_proba(clips).numpy()
            got = runtime.predict_proba(clips.numpy())
            assert got.shape == (batch, 5) and got.dtype == np.float32
            np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
            worst = max(worst, float(np.abs(got - expected).max()))
    assert worst < TOLERANCE
    return worst


@pytest.mark.parametrize("kind", ["supervised", "beats"])
def test_fixed_length_export_with_tta(kind, request, tmp_path):
    checkpoint = request.getfixturevalue(f"{kind}_ckpt")  # tta_views = 2: fixed at the 1 s clip length
    result = export_onnx(checkpoint, tmp_path / "model.onnx")
    assert not result.dynamic_length and result.input_samples == SR and result.max_abs_diff < TOLERANCE
    _parity(result.path, checkpoint, [SR])
    runtime = OnnxClassifier(result.path)
    with pytest.raises(ValueError, match=f"exactly {SR} samples .*got 12000"):
        runtime.predict_proba(np.zeros((1, 12000), np.float32))
    model = onnx.load(result.path)
    meta = {p.key: p.value for p in model.metadata_props}
    names = load_trained_method(checkpoint).class_names
    assert json.loads(meta["class_names"]) == names and len(names) == 5
    assert meta["sample_rate"] == "16000" and meta["input_samples"] == str(SR) and meta["num_classes"] == "5"
    inp, out = model.graph.input[0], model.graph.output[0]
    assert inp.name == "waveform" and out.name == "probabilities"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inp.type.tensor_type.shape.dim[0].dim_param and inp.type.tensor_type.shape.dim[1].dim_value == SR


@pytest.mark.parametrize("kind", ["supervised", "beats"])
def test_dynamic_length_export(kind, request, tmp_path):
    checkpoint = with_tta_views(request.getfixturevalue(f"{kind}_ckpt"), 1, tmp_path / "tta1.ckpt")
    result = export_onnx(checkpoint, tmp_path / "model.onnx", opset=18)
    assert result.dynamic_length and result.input_samples is None and not result.note
    runtime = OnnxClassifier(result.path)
    shortest = runtime.min_samples
    assert shortest == (400 + 15 * 160 if kind == "beats" else 2)  # one 16-frame patch for BEATs
    _parity(result.path, checkpoint, [SR, 5 * SR + 77, shortest])
    with pytest.raises(ValueError, match=f"at least {shortest} samples"):
        runtime.predict_proba(np.zeros((1, shortest - 1), np.float32))
    with pytest.raises(ValueError, match="must be float32"):
        runtime.predict_proba(np.zeros((1, SR)))


def test_non_classifier_is_refused(simclr_ckpt, tmp_path):
    with pytest.raises(ValueError, match="SimCLR does not classify.*HEAR API"):
        export_onnx(simclr_ckpt, tmp_path / "simclr.onnx")
    assert not (tmp_path / "simclr.onnx").exists()
    with pytest.raises(ValueError, match="opset must be an integer >= 18"):
        export_onnx(simclr_ckpt, tmp_path / "x.onnx", opset=13)


def test_export_command(supervised_ckpt, simclr_ckpt, tmp_path, capsys):
    out = tmp_path / "cli" / "sup.onnx"
    cli_main(["export", "--format", "onnx", str(supervised_ckpt), "--out", str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    _parity(out, supervised_ckpt, [SR])
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--format", "onnx", str(simclr_ckpt), "--out", str(tmp_path / "s.onnx")])
    assert exit_info.value.code == 2 and "does not classify" in capsys.readouterr().err
    for args, message in ((["--format", "onnx", str(tmp_path / "missing.ckpt")], "missing.ckpt: no such checkpoint"),
                          (["--format", "hear", str(simclr_ckpt)], "--format hear needs --out DIR")):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["export", *args])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_export_into_a_folder_and_bad_out_refused_before_loading(supervised_ckpt, tmp_path, capsys, monkeypatch):
    from audio_ssl.export import onnx as onnx_export

    folder = tmp_path / "exports"
    folder.mkdir()
    assert onnx_export.onnx_path(supervised_ckpt, folder) == folder / f"{supervised_ckpt.stem}.onnx"
    assert onnx_export.onnx_path(supervised_ckpt, f"{tmp_path}/new/") == tmp_path / "new" / f"{supervised_ckpt.stem}.onnx"
    (tmp_path / "afile").write_text("x")

    def not_loaded(path):
        raise AssertionError("the checkpoint was loaded before --out was checked")

    monkeypatch.setattr(onnx_export, "load_trained_method", not_loaded)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--format", "onnx", str(supervised_ckpt), "--out", str(tmp_path / "afile" / "m.onnx")])
    assert exit_info.value.code == 2 and "afile is a file, not a folder" in capsys.readouterr().err


def test_front_end_without_onnx_twin_names_checkpoint_and_hear(supervised_ckpt, tmp_path, monkeypatch):
    from audio_ssl.export import onnx as onnx_export

    trained = load_trained_method(supervised_ckpt)
    trained.method.frontend = torch.nn.Identity()
    monkeypatch.setattr(onnx_export, "load_trained_method", lambda path: trained)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(supervised_ckpt))}: cannot export to ONNX: no export-friendly "
                                         r"equivalent of the front end torch.nn.modules.linear.Identity.*"
                                         r"audio-ssl export --format hear .* --out DIR"):
        export_onnx(supervised_ckpt, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_hear_module_folder(simclr_ckpt, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "modules" / "my_simclr"
    cli_main(["export", "--format", "hear", str(simclr_ckpt), "--out", str(folder)])
    assert "HEAR module 'my_simclr'" in capsys.readouterr().out
    monkeypatch.syspath_prepend(str(folder.parent))
    import importlib

    module = importlib.import_module("my_simclr")
    model = module.load_model()
    audio = _clips(2, SR + 500, seed=3)
    reference = hear.load_model(str(simclr_ckpt), device="cpu")
    torch.testing.assert_close(module.get_scene_embeddings(audio, model), hear.get_scene_embeddings(audio, reference))
    emb, ts = module.get_timestamp_embeddings(audio, model)
    assert emb.shape == (2, (SR + 500) // 800 + 1, 8) and ts.shape == emb.shape[:2]
    with pytest.raises(SystemExit):
        cli_main(["export", "--format", "hear", str(simclr_ckpt), "--out", str(tmp_path / "bad-name")])
    assert "must be a Python identifier" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["export", "--format", "hear", str(simclr_ckpt), "--out", str(folder)])
    assert "not empty" in capsys.readouterr().err


def test_dynamic_length_bounded_by_learned_positions(tmp_path):
    """A Transformer classifier with learned time positions (max_frames 64, patches of 8 frames, hop 256): the
    export takes 7 * 256 = 1792 samples (8 frames) to 71 * 256 - 1 = 18175 samples (71 frames: 8 patches, the last
    7 frames cropped) and says so."""
    from audio_ssl.methods.base import BaseMethod

    block = {"class_path": "audio_ssl.methods.SupervisedClassifier", "init_args": {
        "tta_views": 1,
        "encoder": {"class_path": "audio_ssl.models.SpectrogramTransformer", "init_args": {
            "n_mels": 32, "max_frames": 64, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2,
            "drop_path": 0.0, "pos_embed": "learned"}},
        "frontend": {"class_path": "audio_ssl.features.LogMelSpectrogram",
                     "init_args": {"n_fft": 512, "hop_length": 256, "n_mels": 32, "normalize": "instance"}}}}
    meta = {"model_config": block, "num_classes": 5, "sample_rate": SR,
            "data": {"clip_seconds": 1.0, "class_names": list("abcde")}}
    torch.manual_seed(0)
    checkpoint = tmp_path / "vit.ckpt"
    torch.save({"state_dict": BaseMethod.from_metadata(meta).state_dict(), CHECKPOINT_KEY: meta}, checkpoint)
    result = export_onnx(checkpoint, tmp_path / "vit.onnx")
    assert result.dynamic_length and (result.min_samples, result.max_samples) == (1792, 18175)
    _parity(result.path, checkpoint, [1792, 8000, 18175])
    runtime = OnnxClassifier(result.path)
    with pytest.raises(ValueError, match="at most 18175 samples"):
        runtime.predict_proba(np.zeros((1, 18176), np.float32))
    method = load_trained_method(checkpoint).method
    with pytest.raises(ValueError, match="max_frames"):  # PyTorch refuses the same input
        method.predict_proba(torch.zeros(1, 18176))
    with pytest.raises(ValueError, match="at least 1792"):
        runtime.predict_proba(np.zeros((1, 1791), np.float32))

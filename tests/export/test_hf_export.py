"""Export of classifiers on Hugging Face encoders (:class:`~audio_ssl.models.hf_audio.HFAudioEncoder` in a
FineTuneClassifier): the export-friendly front ends equal the transformers feature extractors (AST's Kaldi fbank,
wav2vec 2.0's per-clip normalisation), and the ONNX export of tiny random AST / wav2vec 2.0 / HuBERT / WavLM
classifiers agrees with PyTorch (max abs difference of probabilities < 1e-4) on clips of several lengths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hf_utils import HF_KINDS, save_tiny_hf_model

from audio_ssl.export.frontends import ConvASTFeatures, WaveformNormalize, export_frontend
from audio_ssl.export.onnx import OnnxClassifier, export_onnx
from audio_ssl.models.hf_audio import HFFeatureFrontend
from audio_ssl.utils.provenance import CHECKPOINT_KEY

transformers = pytest.importorskip("transformers")

SR = 16000
TOLERANCE = 1e-4


def _waves(batch: int, samples: int, scale: float, seed: int = 0) -> torch.Tensor:
    return scale * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("extractor, tolerance", [
    (dict(num_mel_bins=16, max_length=64), 1e-5),  # the tiny test models'
    (dict(), 5e-4),  # AudioSet AST: 128 bins, 1024 frames (normalised units, ~2 * 4.57 nats each)
    (dict(num_mel_bins=32, max_length=50, do_normalize=False, mean=1.0, std=3.0), 1e-4),  # raw log fbank (nats)
])
@pytest.mark.parametrize("samples", [400, SR, 11 * SR + 77])  # one window, padded, cut to max_length
@pytest.mark.parametrize("scale", [0.3, 1e-3])
def test_ast_features_equal_extractor(extractor, tolerance, samples, scale):
    reference = HFFeatureFrontend(transformers.ASTFeatureExtractor(**extractor), SR)
    twin = export_frontend(reference)
    assert isinstance(twin, ConvASTFeatures) and twin.fbank.n_fft == 512 and twin.fbank.window_type == "hanning"
    wave = _waves(3, samples, scale)
    expected, got = reference(wave), twin(wave)
    assert got.shape == expected.shape == (3, twin.max_length, twin.fbank.num_mel_bins)
    assert (got - expected).abs().max() < tolerance


@pytest.mark.parametrize("do_normalize", [True, False])
@pytest.mark.parametrize("samples", [45, SR, 5 * SR + 3])
@pytest.mark.parametrize("scale", [0.3, 1e-3])
def test_waveform_normalize_equals_extractor(do_normalize, samples, scale):
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=do_normalize)
    reference = HFFeatureFrontend(extractor, SR)
    twin = export_frontend(reference)
    assert isinstance(twin, WaveformNormalize) and twin.do_normalize is do_normalize
    wave = _waves(4, samples, scale) + 0.05  # a DC offset, removed when normalising
    expected, got = reference(wave), twin(wave)
    assert got.shape == expected.shape == wave.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-5)  # unit-variance output, float32 means
    # with padding to the longest clip (all equal here) the extractor's attention mask is all ones: the same
    padded = extractor(list(wave.numpy()), sampling_rate=SR, padding=True, return_attention_mask=True,
                       return_tensors="pt")["input_values"]
    torch.testing.assert_close(got, padded, rtol=1e-4, atol=2e-5)


def test_unknown_hf_extractor_is_refused():
    extractor = transformers.WhisperFeatureExtractor()
    with pytest.raises(ValueError, match="no export-friendly equivalent of the Hugging Face feature extractor "
                                         "WhisperFeatureExtractor"):
        export_frontend(HFFeatureFrontend(extractor, SR))


def hf_classifier_checkpoint(kind: str, root: Path) -> Path:
    """A self-describing FineTuneClassifier checkpoint (5 classes, 1 s clips) on a tiny random ``kind`` model, with
    a head of unit-variance weights (so that the probabilities are far from uniform)."""
    from audio_ssl.methods.base import BaseMethod

    folder = save_tiny_hf_model(kind, root / kind)
    block = {"class_path": "audio_ssl.methods.FineTuneClassifier", "init_args": {
        "encoder": {"class_path": "audio_ssl.models.HFAudioEncoder", "init_args": {"model": str(folder)}}}}
    meta = {"model_config": block, "num_classes": 5, "sample_rate": SR,
            "data": {"clip_seconds": 1.0, "class_names": list("abcde")}}
    torch.manual_seed(0)
    model = BaseMethod.from_metadata(meta)
    for module in model.head.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=1.0)
    checkpoint = root / f"{kind}.ckpt"
    torch.save({"state_dict": model.state_dict(), CHECKPOINT_KEY: meta}, checkpoint)
    return checkpoint


@pytest.mark.parametrize("kind", HF_KINDS)
def test_hf_classifier_export(kind, tmp_path):
    from audio_ssl.export.source import load_trained_method

    checkpoint = hf_classifier_checkpoint(kind, tmp_path)
    result = export_onnx(checkpoint, tmp_path / f"{kind}.onnx")
    assert result.dynamic_length and not result.note and result.max_abs_diff < TOLERANCE
    # one fbank window for AST; the tiny feature encoder's receptive field (kernels 10, 8; strides 5, 4) otherwise
    assert result.min_samples == (400 if kind == "ast" else (8 - 1) * 5 + 10)
    runtime = OnnxClassifier(result.path)
    method = load_trained_method(checkpoint).method
    worst = 0.0
    for i, samples in enumerate([SR, 3 * SR + 77, result.min_samples]):
        for batch in (1, 4):
            clips = _waves(batch, samples, 0.3, seed=10 * i + batch)
            with torch.no_grad():
                expected = method.predict_proba(clips).numpy()
            got = runtime.predict_proba(clips.numpy())
            assert got.shape == (batch, 5)
            worst = max(worst, float(np.abs(got - expected).max()))
    assert expected.max() > 0.4  # not uniform: the check means something
    assert worst < TOLERANCE
    with pytest.raises(ValueError, match=f"at least {result.min_samples} samples"):
        runtime.predict_proba(np.zeros((1, result.min_samples - 1), np.float32))

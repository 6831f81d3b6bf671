"""Outside encoder weights go only into the network and features they were trained for: the encoder structure and
the front-end settings a checkpoint records are compared on load (init_encoder_from, the masked method's teacher,
``audio-ssl probe --encoder-only``), and a mismatch is an error naming both values and the file."""

from __future__ import annotations

import logging

import pytest
import torch

from audio_ssl.features.logmel import LogMelSpectrogram
from audio_ssl.methods.finetune import FineTuneClassifier
from audio_ssl.methods.masked import MaskedTokenPrediction
from audio_ssl.models.resnet import AudioResNet
from audio_ssl.models.vit import SpectrogramTransformer
from audio_ssl.utils.provenance import CHECKPOINT_KEY

WIDTHS = (4, 8, 8, 8)


def masked_cnn(stem_pool: bool = False, hop_length: int = 256) -> MaskedTokenPrediction:
    """The masked-CNN pretraining of experiments/masked_cnn.yaml + cpu/masked_cnn.yaml, narrow."""
    torch.manual_seed(0)
    return MaskedTokenPrediction(
        encoder=AudioResNet(arch="resnet10", widths=WIDTHS, stem_pool=stem_pool), num_classes=4,
        frontend=LogMelSpectrogram(n_fft=1024, hop_length=hop_length, n_mels=64, normalize="instance"), num_tokens=8)


def fine_tune(stem_pool: bool, hop_length: int, checkpoint, encoder=None) -> FineTuneClassifier:
    torch.manual_seed(1)
    return FineTuneClassifier(
        encoder if encoder is not None else AudioResNet(arch="resnet10", widths=WIDTHS, stem_pool=stem_pool),
        num_classes=4, frontend=LogMelSpectrogram(n_fft=1024, hop_length=hop_length, n_mels=64, normalize="instance"),
        init_encoder_from=str(checkpoint))


def save(model, path, metadata: bool = True):
    blob = {"state_dict": model.state_dict()}
    if metadata:
        blob[CHECKPOINT_KEY] = model.checkpoint_metadata()
    torch.save(blob, path)
    return path


def test_checkpoints_record_the_encoder_structure_and_the_front_end(tmp_path):
    meta = masked_cnn().checkpoint_metadata()
    assert meta["encoder"] == {"class_path": "audio_ssl.models.resnet.AudioResNet",
                               "init_args": {"layers": [1, 1, 1, 1], "widths": list(WIDTHS), "in_channels": 1,
                                             "stem_kernel": 7, "stem_stride": 2, "stem_pool": False}}
    assert meta["frontend"]["init_args"]["hop_length"] == 256 and meta["frontend"]["init_args"]["n_mels"] == 64


def test_same_settings_load_the_encoder_weights(tmp_path, caplog):
    source = masked_cnn()
    target = fine_tune(False, 256, save(source, tmp_path / "pre.ckpt"))
    assert not torch.equal(target.encoder.stem[0].weight, source.encoder.stem[0].weight)
    with caplog.at_level(logging.WARNING):
        target.setup("fit")
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(target.encoder.state_dict()[key], value), key
    assert "could not check" not in caplog.text  # everything was compared


@pytest.mark.parametrize("change, message", [
    (dict(stem_pool=True, hop_length=256), "encoder.stem_pool: checkpoint False, this model True"),
    (dict(stem_pool=False, hop_length=512), "frontend.hop_length: checkpoint 256, this model 512"),
])
def test_a_different_stem_pool_or_hop_is_refused_naming_both_values(tmp_path, change, message):
    """A max-pool has no weights and a hop changes none: every weight key matches, yet the filters would run at
    another scale. The load is refused, naming the file and both values."""
    checkpoint = save(masked_cnn(), tmp_path / "pre.ckpt")
    target = fine_tune(checkpoint=checkpoint, **change)
    before = {k: v.clone() for k, v in target.encoder.state_dict().items()}
    with pytest.raises(ValueError) as info:
        target.setup("fit")
    assert message in str(info.value) and str(checkpoint) in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in target.encoder.state_dict().items())  # nothing was loaded
    both = fine_tune(True, 512, checkpoint)
    with pytest.raises(ValueError, match="encoder.stem_pool: checkpoint False, this model True; "
                                         "frontend.hop_length: checkpoint 256, this model 512"):
        both.setup("fit")


def test_a_transformer_with_other_heads_is_refused_though_every_shape_matches(tmp_path):
    def vit(heads):
        return SpectrogramTransformer(n_mels=64, max_frames=128, patch_size=16, embed_dim=16, depth=1,
                                      num_heads=heads)

    torch.manual_seed(0)
    source = MaskedTokenPrediction(encoder=vit(4), num_classes=4, patch_size=16, num_tokens=8,
                                   frontend=LogMelSpectrogram(n_fft=1024, hop_length=256, n_mels=64, normalize="instance"))
    checkpoint = save(source, tmp_path / "vit.ckpt")
    assert {k: v.shape for k, v in vit(2).state_dict().items()} == {
        k.removeprefix("encoder."): v.shape for k, v in source.state_dict().items() if k.startswith("encoder.")}
    with pytest.raises(ValueError, match="encoder.num_heads: checkpoint 4, this model 2"):
        fine_tune(False, 256, checkpoint, encoder=vit(2)).setup("fit")
    fine_tune(False, 256, checkpoint, encoder=vit(4)).setup("fit")


def test_an_old_checkpoint_loads_with_a_warning_saying_what_was_not_checked(tmp_path, caplog):
    checkpoint = save(masked_cnn(), tmp_path / "old.ckpt", metadata=False)
    target = fine_tune(True, 512, checkpoint)  # differs, but nothing records it
    with caplog.at_level(logging.WARNING, logger="audio_ssl.methods.base"):
        target.setup("fit")
    assert f"{checkpoint}: could not check encoder (not recorded in the checkpoint), frontend (not recorded" \
           in caplog.text


def test_the_masked_teacher_checkpoint_is_checked(tmp_path):
    checkpoint = save(masked_cnn(), tmp_path / "iter1.ckpt")
    torch.manual_seed(0)
    student = MaskedTokenPrediction(
        encoder=AudioResNet(arch="resnet10", widths=WIDTHS, stem_pool=False), num_classes=4, num_tokens=8,
        frontend=LogMelSpectrogram(n_fft=1024, hop_length=160, n_mels=64, normalize="instance"), iteration=2,
        teacher_checkpoint=str(checkpoint))
    with pytest.raises(ValueError, match="frontend.hop_length: checkpoint 256, this model 160"):
        student.load_teacher(checkpoint)

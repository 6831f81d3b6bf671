"""Fixtures of the ``audio-ssl serve`` tests: tiny classifiers trained here on the generated ESC-50 (a ResNet and
a spectrogram transformer, two optimizer steps each through the Lightning CLI, so the checkpoints are real and
self-describing) and a self-supervised checkpoint without a classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import train_tiny_classifier
from serve_helpers import SR


@pytest.fixture(scope="session")
def resnet_checkpoint(tiny_classifier) -> Path:
    return tiny_classifier[1]


@pytest.fixture(scope="session")
def vit_checkpoint(tmp_path_factory, esc50_root, cache_dir) -> Path:
    return train_tiny_classifier(tmp_path_factory.mktemp("serve-vit"), esc50_root, cache_dir, "vit")[1]


@pytest.fixture(scope="session")
def ssl_checkpoint(tmp_path_factory, resnet_checkpoint) -> Path:
    """A SimCLR checkpoint (no classifier head), self-describing like one written by ``audio-ssl fit``."""
    import torch

    from audio_ssl.features import LogMelSpectrogram
    from audio_ssl.features.views import ViewAugmentation
    from audio_ssl.methods import SimCLR
    from audio_ssl.models.resnet import AudioResNet

    frontend = {"class_path": "audio_ssl.features.LogMelSpectrogram",
                "init_args": {"n_fft": 512, "hop_length": 256, "n_mels": 32}}
    encoder = {"class_path": "audio_ssl.models.AudioResNet", "init_args": {"layers": [1, 1], "widths": [4, 8]}}
    model = SimCLR(encoder=AudioResNet(layers=[1, 1], widths=[4, 8]), num_classes=5, sample_rate=SR,
                   frontend=LogMelSpectrogram(n_fft=512, hop_length=256, n_mels=32), proj_dim=8,
                   views=ViewAugmentation(crop_seconds=None))
    model.model_config = {"class_path": "audio_ssl.methods.SimCLR",
                          "init_args": {"encoder": encoder, "frontend": frontend, "proj_dim": 8,
                                        "views": {"class_path": "audio_ssl.features.views.ViewAugmentation",
                                                  "init_args": {"crop_seconds": None}}}}
    meta = model.checkpoint_metadata()
    meta["data"] = torch.load(resnet_checkpoint, map_location="cpu", weights_only=True)["audio_ssl"]["data"]
    path = tmp_path_factory.mktemp("serve-simclr") / "simclr.ckpt"
    torch.save({"state_dict": model.state_dict(), "audio_ssl": meta}, path)
    return path

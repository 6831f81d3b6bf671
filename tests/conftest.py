"""Shared fixtures: small generated datasets (never real data), offline W&B and Hugging Face hub, a per-session
cache."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Nothing is downloaded in tests: the Hugging Face hub is offline (read at huggingface_hub's import, hence here,
# before any test imports it); tests build their models in tmp folders.
os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_configure(config):
    """Stop the whole run at once, with the fix, when torch / torchaudio / libsndfile do not work."""
    from audio_ssl.utils.environment import AudioStackError, check_audio_stack

    try:
        check_audio_stack()
    except AudioStackError as err:
        pytest.exit(f"audio-ssl: {err}", returncode=3)


@pytest.fixture(scope="session")
def esc50_root(tmp_path_factory):
    """A synthetic dataset in the official ESC-50 layout: 5 classes x 10 clips of 1 s, 5 folds."""
    from audio_ssl.data.synthetic import make_synthetic_esc50

    root = tmp_path_factory.mktemp("esc50")
    make_synthetic_esc50(root, num_classes=5, clips_per_class=10, sample_rate=16000, seconds=1.0, seed=0)
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("waveform-cache")


@pytest.fixture(scope="session")
def us8k_root(tmp_path_factory):
    """A synthetic UrbanSound8K in the official layout with every format the real set has."""
    from audio_ssl.data.synthetic import make_synthetic_urbansound8k

    root = tmp_path_factory.mktemp("us8k")
    make_synthetic_urbansound8k(root, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, esc50_root, cache_dir):
    """``(config, last.ckpt)`` of a tiny SupervisedClassifier (ResNet, TTA with 2 views) fitted for two steps on
    ``esc50_root`` (``helpers.train_tiny_classifier``): one real, self-describing checkpoint for the classify and
    serve tests."""
    from helpers import train_tiny_classifier

    return train_tiny_classifier(tmp_path_factory.mktemp("tiny-classifier"), esc50_root, cache_dir, "resnet")


@pytest.fixture(scope="session")
def tiny_clap_folder(tmp_path_factory):
    """A tiny random CLAP model and processor written with ``save_pretrained`` (``clap_utils.save_tiny_clap``)."""
    from clap_utils import save_tiny_clap

    return save_tiny_clap(tmp_path_factory.mktemp("tiny-clap") / "model")


@pytest.fixture
def clap_offline(monkeypatch):
    """The Hugging Face Hub off for this test, in the environment and in huggingface_hub's constant."""
    from clap_utils import hub_offline

    hub_offline(monkeypatch)


@pytest.fixture
def clap_hub(clap_offline, tiny_clap_folder, monkeypatch, tmp_path):
    """A Hub cache in ``tmp_path`` holding the tiny CLAP model as ``clap_utils.TINY_ID``, the Hub off; the folder."""
    from clap_utils import offline_hub

    offline_hub(monkeypatch, tmp_path, tiny_clap_folder)
    return tiny_clap_folder


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny tensors that gain nothing from intra-op threads, and on a shared 2-core machine the
    threads' spin-waits cost seconds per test; spawned DDP workers set one thread themselves."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

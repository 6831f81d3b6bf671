"""Tiny checkpoints of several methods, each fitted for two steps through the Lightning CLI on the synthetic ESC-50
(1 s clips, 5 classes), so the exports are tested on real self-describing checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import train_tiny_model

FRONTEND = """
            frontend:
              class_path: audio_ssl.features.LogMelSpectrogram
              init_args: {n_fft: 512, hop_length: 256, n_mels: 32, normalize: instance}"""
RESNET = "{class_path: audio_ssl.models.AudioResNet, init_args: {layers: [1, 1], widths: [4, 8]}}"

MODELS = {
    "supervised": f"""
          class_path: audio_ssl.methods.SupervisedClassifier
          init_args:
            encoder: {RESNET}{FRONTEND}
            tta_views: 2
            optimizer: adamw
            scheduler: constant
            lr: 0.01""",
    "simclr": f"""
          class_path: audio_ssl.methods.SimCLR
          init_args:
            encoder: {RESNET}{FRONTEND}
            proj_hidden_dim: 16
            proj_dim: 8
            views: {{class_path: audio_ssl.features.ViewAugmentation, init_args: {{crop_seconds: 0.5}}}}
            optimizer: adamw
            scheduler: constant
            lr: 0.01""",
    "byola": f"""
          class_path: audio_ssl.methods.BYOLA
          init_args:
            encoder: {RESNET}{FRONTEND}
            views: {{class_path: audio_ssl.features.BYOLAViews, init_args: {{crop_seconds: 0.5}}}}
            proj_hidden_dim: 16
            proj_dim: 8
            pred_hidden_dim: 16
            optimizer: adamw
            scheduler: constant
            lr: 0.01""",
    "masked": f"""
          class_path: audio_ssl.methods.MaskedTokenPrediction
          init_args:
            encoder: {{class_path: audio_ssl.models.SpectrogramTransformer, init_args: {{max_frames: 64,
                       embed_dim: 16, depth: 1, num_heads: 2, drop_path: 0.0}}}}{FRONTEND}
            patch_size: 8
            num_tokens: 8
            tokenizer_batches: 2
            max_fit_patches: 500
            kmeans_iters: 5
            optimizer: adamw
            scheduler: constant
            lr: 0.01""",
    "beats": """
          class_path: audio_ssl.methods.BEATsClassifier
          init_args:
            checkpoint: {beats}
            tta_views: 2
            encoder_lr: 1.0e-4
            head_lr: 1.0e-3  # = BaseMethod.lr (which the CLI passes along)
            scheduler: constant""",
}


def train_tiny(root: Path, esc50_root: Path, cache_dir: Path, kind: str, **fmt) -> Path:
    """Fit the tiny ``kind`` model of :data:`MODELS` for two steps (``helpers.train_tiny_model``); its last.ckpt."""
    model = MODELS[kind].format(**fmt) if fmt else MODELS[kind]
    return train_tiny_model(root, esc50_root, cache_dir, kind, model)[1]


@pytest.fixture(scope="session")
def supervised_ckpt(tmp_path_factory, esc50_root, cache_dir) -> Path:
    return train_tiny(tmp_path_factory.mktemp("export-supervised"), esc50_root, cache_dir, "supervised")


@pytest.fixture(scope="session")
def simclr_ckpt(tmp_path_factory, esc50_root, cache_dir) -> Path:
    return train_tiny(tmp_path_factory.mktemp("export-simclr"), esc50_root, cache_dir, "simclr")


@pytest.fixture(scope="session")
def byola_ckpt(tmp_path_factory, esc50_root, cache_dir) -> Path:
    return train_tiny(tmp_path_factory.mktemp("export-byola"), esc50_root, cache_dir, "byola")


@pytest.fixture(scope="session")
def masked_ckpt(tmp_path_factory, esc50_root, cache_dir) -> Path:
    return train_tiny(tmp_path_factory.mktemp("export-masked"), esc50_root, cache_dir, "masked")


@pytest.fixture(scope="session")
def beats_ckpt(tmp_path_factory, esc50_root, cache_dir) -> Path:
    from audio_ssl.tools.make_beats_checkpoint import make_beats_checkpoint

    root = tmp_path_factory.mktemp("export-beats")
    beats = make_beats_checkpoint(root / "tiny_beats.pt", size="tiny")
    return train_tiny(root, esc50_root, cache_dir, "beats", beats=beats)

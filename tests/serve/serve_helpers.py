"""Helpers of the ``audio-ssl serve`` tests: a tiny classifier trained through the Lightning CLI, test recordings."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np
import soundfile as sf

from audio_ssl.cli import build_cli

SR = 16000
ENCODERS = {
    "resnet": "{class_path: audio_ssl.models.AudioResNet, init_args: {layers: [1, 1], widths: [4, 8]}}",
    "vit": "{class_path: audio_ssl.models.SpectrogramTransformer, init_args: {n_mels: 32, max_frames: 64, "
           "patch_size: 8, embed_dim: 16, depth: 2, num_heads: 2, drop_path: 0.0}}",
}


def train_tiny(root: Path, esc50_root: Path, cache_dir: Path, encoder: str) -> Path:
    """Fit a tiny SupervisedClassifier (1 s clips, 32 mels, TTA with 2 views) for two steps; its last.ckpt."""
    config = root / f"{encoder}.yaml"
    config.write_text(textwrap.dedent(f"""\
        seed_everything: 0
        trainer: {{max_epochs: 1, limit_train_batches: 2, limit_val_batches: 0, accelerator: cpu, devices: 1,
                   logger: false, enable_progress_bar: false, enable_model_summary: false}}
        checkpoint: {{dirpath: {root / encoder / "checkpoints"}, monitor: null}}
        model:
          class_path: audio_ssl.methods.SupervisedClassifier
          init_args:
            encoder: {ENCODERS[encoder]}
            frontend:
              class_path: audio_ssl.features.LogMelSpectrogram
              init_args: {{n_fft: 512, hop_length: 256, n_mels: 32, normalize: instance}}
            tta_views: 2
            optimizer: adamw
            scheduler: constant
            lr: 0.01
        data:
          class_path: audio_ssl.data.ESC50DataModule
          init_args: {{data_dir: {esc50_root}, cache_dir: {cache_dir}, clip_seconds: 1.0, batch_size: 8, num_workers: 0}}
        """))
    build_cli(["fit", "--config", str(config)])
    checkpoint = root / encoder / "checkpoints" / "last.ckpt"
    assert checkpoint.exists()
    return checkpoint


def tone(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A noisy chirp [T, channels] (channel c scaled by 0.5 + c)."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t * (1 + t)) + 0.05 * rng.standard_normal(len(t))
    return np.stack([mono * (0.5 + c) for c in range(channels)], axis=1).astype(np.float32)


def wav_bytes(seconds: float, rate: int = SR, channels: int = 1, fmt: str = "WAV", subtype: str | None = None,
              seed: int = 0) -> bytes:
    """A recording encoded in memory."""
    buffer = io.BytesIO()
    sf.write(buffer, tone(seconds, rate, channels, seed), rate, format=fmt, subtype=subtype)
    return buffer.getvalue()

"""Datasets: decoding, the waveform cache, fold-based datamodules and synthetic data."""

from audio_ssl.data.base import FoldAudioDataModule
from audio_ssl.data.esc50 import ESC50DataModule
from audio_ssl.data.urbansound8k import UrbanSound8KDataModule

__all__ = ["ESC50DataModule", "FoldAudioDataModule", "UrbanSound8KDataModule"]

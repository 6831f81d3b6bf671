"""On-accelerator feature front end and batch augmentations."""

from audio_ssl.features.augment import Mixup, RandomGain, RandomTimeShift, SpecAugment, mix_batch
from audio_ssl.features.logmel import LogMelSpectrogram

__all__ = [
    "LogMelSpectrogram",
    "Mixup",
    "RandomGain",
    "RandomTimeShift",
    "SpecAugment",
    "mix_batch",
]

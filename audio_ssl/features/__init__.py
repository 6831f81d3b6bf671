"""On-accelerator feature front end and batch augmentations."""

from audio_ssl.features.augment import Mixup, RandomGain, RandomTimeShift, SpecAugment, mix_batch
from audio_ssl.features.logmel import LogMelSpectrogram
from audio_ssl.features.views import BYOLAViews, ViewAugmentation

__all__ = [
    "LogMelSpectrogram",
    "Mixup",
    "RandomGain",
    "RandomTimeShift",
    "SpecAugment",
    "BYOLAViews",
    "ViewAugmentation",
    "mix_batch",
]

"""Methods: one LightningModule per training recipe, all on :class:`BaseMethod`."""

from audio_ssl.methods.base import BaseMethod
from audio_ssl.methods.supervised import SupervisedClassifier

__all__ = ["BaseMethod", "SupervisedClassifier"]

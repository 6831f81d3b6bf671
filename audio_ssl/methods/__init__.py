"""Methods: one LightningModule per training recipe, all on :class:`BaseMethod`."""

from audio_ssl.methods.base import BaseMethod
from audio_ssl.methods.supervised import SupervisedClassifier

__all__ = ["BaseMethod", "SupervisedClassifier"]
from audio_ssl.methods.beats import BEATsClassifier  # noqa: E402

__all__ += ["BEATsClassifier"]
from audio_ssl.methods.masked import MaskedTokenPrediction  # noqa: E402

__all__ += ["MaskedTokenPrediction"]
from audio_ssl.methods.simclr import SimCLR  # noqa: E402

__all__ += ["SimCLR"]

"""Methods: one LightningModule per training recipe, all on :class:`BaseMethod` (whose docstring states the
contract every method keeps)."""

from audio_ssl.methods.base import BaseMethod
from audio_ssl.methods.beats import BEATsClassifier
from audio_ssl.methods.byola import BYOLA
from audio_ssl.methods.finetune import FineTuneClassifier
from audio_ssl.methods.masked import MaskedTokenPrediction
from audio_ssl.methods.simclr import SimCLR
from audio_ssl.methods.supervised import SupervisedClassifier

__all__ = ["BEATsClassifier", "BYOLA", "BaseMethod", "FineTuneClassifier", "MaskedTokenPrediction", "SimCLR", "SupervisedClassifier"]

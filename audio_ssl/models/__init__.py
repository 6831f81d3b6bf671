"""Encoders and heads."""

from audio_ssl.models.heads import ClassificationHead, ProjectionHead
from audio_ssl.models.resnet import RESNET_PRESETS, AudioResNet, BasicBlock

__all__ = ["RESNET_PRESETS", "AudioResNet", "BasicBlock", "ClassificationHead", "ProjectionHead"]
from audio_ssl.models.vit import SpectrogramTransformer  # noqa: E402

__all__ += ["SpectrogramTransformer"]

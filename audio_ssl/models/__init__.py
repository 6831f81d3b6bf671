"""Encoders (AudioResNet, SpectrogramTransformer, TimmCNN for timm's ImageNet CNNs, BEATs in models.beats) and
heads; CLAP zero-shot classification through transformers in models.clap (imported on its own: it needs the zoo
extra)."""

from audio_ssl.models.heads import ClassificationHead, ProjectionHead
from audio_ssl.models.resnet import RESNET_PRESETS, AudioResNet, BasicBlock
from audio_ssl.models.timm_cnn import TimmCNN
from audio_ssl.models.vit import SpectrogramTransformer

__all__ = ["RESNET_PRESETS", "AudioResNet", "BasicBlock", "ClassificationHead", "ProjectionHead",
           "SpectrogramTransformer", "TimmCNN"]

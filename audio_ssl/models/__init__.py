"""Encoders (AudioResNet, SpectrogramTransformer, BEATs in models.beats, the Hugging Face audio encoders) and heads."""

from audio_ssl.models.heads import ClassificationHead, PooledLayersHead, ProjectionHead
from audio_ssl.models.hf_audio import HFAudioEncoder, HFFeatureFrontend
from audio_ssl.models.resnet import RESNET_PRESETS, AudioResNet, BasicBlock
from audio_ssl.models.vit import SpectrogramTransformer

__all__ = ["RESNET_PRESETS", "AudioResNet", "BasicBlock", "ClassificationHead", "HFAudioEncoder", "HFFeatureFrontend",
           "PooledLayersHead", "ProjectionHead", "SpectrogramTransformer"]

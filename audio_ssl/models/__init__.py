"""Encoders (AudioResNet, SpectrogramTransformer, TimmCNN for timm's ImageNet CNNs, the Hugging Face audio encoders
in models.hf_audio, BEATs in models.beats) and heads; CLAP zero-shot classification through transformers in
models.clap (imported on its own: it needs the zoo extra)."""

from audio_ssl.models.heads import ClassificationHead, PooledLayersHead, ProjectionHead
from audio_ssl.models.hf_audio import HFAudioEncoder, HFFeatureFrontend
from audio_ssl.models.resnet import RESNET_PRESETS, AudioResNet, BasicBlock
from audio_ssl.models.timm_cnn import TimmCNN
from audio_ssl.models.vit import SpectrogramTransformer

__all__ = ["RESNET_PRESETS", "AudioResNet", "BasicBlock", "ClassificationHead", "HFAudioEncoder", "HFFeatureFrontend",
           "PooledLayersHead", "ProjectionHead", "SpectrogramTransformer", "TimmCNN"]

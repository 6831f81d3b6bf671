"""Tiny random Hugging Face audio models (AST, wav2vec 2.0, HuBERT, WavLM) written with ``save_pretrained``: the
folders the tests load through the same ``from_pretrained`` path a hub id takes (nothing is downloaded).

    from hf_utils import HF_KINDS, save_tiny_hf_model  # tests/ is on sys.path
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

__all__ = ["FAST_DEV_RUN_DIR", "HF_KINDS", "ensure_tiny_hf_models", "save_tiny_hf_model", "tiny_hf_config"]

HF_KINDS = ("ast", "wav2vec2", "hubert", "wavlm")

#: Where ``tests/fast_dev_run/<kind>_*.json`` expect the tiny models (``ensure_tiny_hf_models`` writes them).
FAST_DEV_RUN_DIR = Path("/tmp/audio-ssl-test-hf")

_SPEECH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
               conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
               hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
               layerdrop=0.0, mask_time_prob=0.0)


def tiny_hf_config(kind: str, **overrides):
    """The transformers config of a 2-layer, 32-wide model of ``kind`` (AST: 16 mel bins, 64 frames)."""
    import transformers

    if kind == "ast":
        return transformers.ASTConfig(**{**dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                intermediate_size=64, num_mel_bins=16, max_length=64,
                                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                                         **overrides})
    cls = {"wav2vec2": transformers.Wav2Vec2Config, "hubert": transformers.HubertConfig,
           "wavlm": transformers.WavLMConfig}[kind]
    return cls(**{**_SPEECH, **overrides})


def tiny_feature_extractor(kind: str, sampling_rate: int = 16000):
    import transformers

    if kind == "ast":
        return transformers.ASTFeatureExtractor(num_mel_bins=16, max_length=64, sampling_rate=sampling_rate)
    return transformers.Wav2Vec2FeatureExtractor(sampling_rate=sampling_rate, do_normalize=True,
                                                 return_attention_mask=False)


def save_tiny_hf_model(kind: str, folder: Path, seed: int = 0, sampling_rate: int = 16000, **overrides) -> Path:
    """Write a tiny random model of ``kind`` and its feature extractor into ``folder`` (``save_pretrained``)."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(tiny_hf_config(kind, **overrides))
    model.save_pretrained(folder)
    tiny_feature_extractor(kind, sampling_rate).save_pretrained(folder)
    return Path(folder)


def ensure_tiny_hf_models(root: Path = FAST_DEV_RUN_DIR) -> Path:
    """``root/<kind>`` for every kind, written once (atomically: safe from concurrent test processes); a folder
    written by an older version of this function (other seed) is replaced."""
    for i, kind in enumerate(HF_KINDS):
        target = root / kind
        stamp = target / "audio_ssl_seed.txt"
        if stamp.is_file() and stamp.read_text() == str(1000 + i):
            continue
        shutil.rmtree(target, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{kind}-"))
        # not seed 0: the CLI seeds 0 before building a random-init control, which must differ from these weights
        save_tiny_hf_model(kind, staging, seed=1000 + i)
        (staging / "audio_ssl_seed.txt").write_text(str(1000 + i))
        try:
            os.rename(staging, target)
        except OSError:  # another process wrote it first
            shutil.rmtree(staging, ignore_errors=True)
    return root

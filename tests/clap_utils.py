"""A tiny randomly initialised CLAP model and processor for the tests (nothing is downloaded).

    from clap_utils import TINY_ID, offline_hub, save_tiny_clap  # tests/ is on sys.path

:func:`save_tiny_clap` writes a ``ClapModel`` with one-layer text and two-stage audio towers (~13k parameters)
and a ``ClapProcessor`` (a byte-level BPE ``RobertaTokenizer`` over a vocabulary written here, and a
``ClapFeatureExtractor`` at 48 kHz with 1 s clips and 16 mel bands) with ``save_pretrained``.
:func:`offline_hub` puts such a folder into a Hugging Face cache in ``tmp_path`` under a Hub id, turns the Hub
offline and points the cache there, so ``load_clap(TINY_ID)`` takes exactly the path of a real Hub id.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TINY_ID = "tiny-org/tiny-clap"
MAX_SECONDS = 1
SAMPLE_RATE = 48000


def tiny_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer

    tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *sorted(ByteLevel.alphabet())]
    merges = [("Ġ", "d"), ("o", "g"), ("Ġd", "og")]
    vocab = {t: i for i, t in enumerate(tokens + ["Ġd", "og", "Ġdog"])}
    return RobertaTokenizer(vocab=vocab, merges=merges)


def save_tiny_clap(folder: str | Path, seed: int = 0, fusion: bool = False) -> Path:
    """Write a tiny random CLAP model + processor to ``folder`` (``save_pretrained``) and return it."""
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    tokenizer = tiny_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=96)
    audio = dict(num_mel_bins=16, spec_size=64, window_size=4, patch_size=2, patch_stride=2, hidden_size=16,
                 patch_embeds_hidden_size=8, depths=[1, 1], num_attention_heads=[2, 2], num_hidden_layers=2,
                 enable_fusion=fusion, fusion_type="aff_2d" if fusion else None)
    config = ClapConfig(text_config=text, audio_config=audio, projection_dim=8)
    torch.manual_seed(seed)
    model = ClapModel(config).eval()
    with torch.no_grad():  # a scale other than the default, so a test can tell which one was used
        model.logit_scale_a.fill_(2.5)
        model.logit_scale_t.fill_(1.0)
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=SAMPLE_RATE, max_length_s=MAX_SECONDS,
                                     truncation="fusion" if fusion else "rand_trunc", padding="repeatpad")
    folder = Path(folder)
    model.save_pretrained(folder)
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def hub_offline(monkeypatch) -> None:
    """``HF_HUB_OFFLINE=1``, in the environment and in the constant huggingface_hub read from it at import."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def offline_hub(monkeypatch, tmp_path: Path, folder: Path, repo_id: str = TINY_ID) -> Path:
    """A Hugging Face cache in ``tmp_path`` that holds ``folder`` as ``repo_id`` at ``main``; the Hub offline.

    Sets ``HF_HUB_OFFLINE=1`` (and the constant huggingface_hub read from it at import) and points the cache
    (``HF_HUB_CACHE`` and its constant) at the new folder, so nothing can reach the network. Returns the cache."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    hub_offline(monkeypatch)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache

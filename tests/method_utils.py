"""What the method tests share: a batch of distinct tone clips as the data loaders deliver it.

    from method_utils import tone_clips  # tests/ is on sys.path
"""

from __future__ import annotations

import torch

__all__ = ["tone_clips"]


def tone_clips(batch: int = 8, samples: int = 16000, seed: int = 0, sample_rate: int = 16000,
               num_classes: int = 4) -> dict:
    """``{"audio" [B, T], "label" [B], "index" [B]}``: clip ``b`` is a tone at ``200 (b + 1)`` Hz plus noise, so
    every clip differs; labels cycle over ``num_classes``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / sample_rate
    freqs = 200.0 * (1 + torch.arange(batch).float())[:, None]
    audio = 0.5 * torch.sin(2 * torch.pi * freqs * t) + 0.05 * torch.randn(batch, samples, generator=g)
    return {"audio": audio, "label": torch.arange(batch) % num_classes, "index": torch.arange(batch)}

"""A trained method and what an export needs from its self-describing checkpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from audio_ssl.methods.base import BaseMethod

__all__ = ["TrainedMethod", "load_trained_method"]


@dataclass
class TrainedMethod:
    """A method rebuilt from an audio-ssl checkpoint (eval mode), with the facts stored beside its weights."""

    method: BaseMethod
    source: Path
    """The checkpoint file."""
    sample_rate: int
    """Hz of the waveforms the method takes."""
    clip_samples: int
    """Length of the training clips in samples (``data.clip_seconds * sample_rate``)."""
    class_names: list[str] | None
    """The checkpoint's class names (``None`` when it stores none)."""
    metadata: dict
    """``checkpoint["audio_ssl"]`` as stored."""


def load_trained_method(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedMethod:
    """Rebuild the method of an audio-ssl checkpoint (:meth:`BaseMethod.from_metadata`, weights loaded strictly
    with ``weights_only=True``) in eval mode on ``device``.

    Raises ValueError, naming the file, when it is missing, is not an audio-ssl checkpoint, does not describe
    its model or does not record its clip length (``checkpoint["audio_ssl"]["data"]["clip_seconds"]``).
    """
    from audio_ssl.utils.provenance import checkpoint_metadata, read_checkpoint

    path = Path(path)
    if not str(path) or not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file (pass the path of an audio-ssl .ckpt, e.g. "
                         "runs/<run>/checkpoints/last.ckpt)")
    checkpoint = read_checkpoint(path)
    meta = checkpoint_metadata(checkpoint)
    method = BaseMethod.from_metadata(meta, str(path))
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no state_dict in this checkpoint")
    try:
        method.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit the model it describes: {err}") from err
    clip_seconds = (meta.get("data") or {}).get("clip_seconds")
    if clip_seconds is None:
        raise ValueError(f"{path}: the checkpoint does not record its clip length (data.clip_seconds); it was saved "
                         "outside an audio-ssl data module")
    sample_rate = int(meta["sample_rate"])
    names = (meta.get("data") or {}).get("class_names")
    return TrainedMethod(method.eval().to(device), path, sample_rate, round(float(clip_seconds) * sample_rate),
                         list(names) if names else None, meta)

"""The HEAR 2021 common API over any audio-ssl checkpoint (https://hearbenchmark.com/hear-api.html).

Turner et al., *HEAR: Holistic Evaluation of Audio Representations* (PMLR 176, 2022). The evaluation kit
imports a module with three functions; this module is one (pass the checkpoint as ``--model``)::

    python -m heareval.embeddings.runner audio_ssl.export.hear --model runs/x/checkpoints/last.ckpt

or in Python::

    from audio_ssl.export import hear
    model = hear.load_model("runs/x/checkpoints/last.ckpt")
    scene = hear.get_scene_embeddings(audio, model)             # [n_sounds, model.scene_embedding_size]
    emb, ms = hear.get_timestamp_embeddings(audio, model)       # [n_sounds, n_ts, D], [n_sounds, n_ts] in ms

Any method works (supervised, SimCLR, BYOL-A, masked CNN/Transformer, BEATs classifier): both embeddings are the
method's ``embed`` (the clip embedding its probes use, without augmentation or projection head), so
``scene_embedding_size == timestamp_embedding_size == method.embedding_dim``.

Choices (the API leaves them to the model):

* **Scene embeddings** are computed on windows of the training clip length (``checkpoint["audio_ssl"]["data"]
  ["clip_seconds"]``): audio up to one clip long is zero-padded at the end to one clip (as the evaluation loaders pad
  short clips); longer audio is cut into clip-length windows every half clip, plus one window aligned to the
  end (:func:`audio_ssl.evaluation.windows.window_starts`), and the embedding is the mean of the windows'.
* **Timestamp embeddings** use sliding windows rather than an encoder's time axis (the CNN encoders pool time
  by 32x, i.e. about 0.5 s per column, and the window approach treats every method alike): one window of
  ``timestamp_window_seconds`` (default 1 s, at most the clip length) centred on every timestamp, timestamps every
  ``timestamp_hop_ms`` (default 50 ms, the HEAR limit) from 0 to the end of the sound; the sound is zero-padded by
  half a window at both ends. ``n_timestamps = n_samples // hop_samples + 1``; timestamps are the window centres
  in milliseconds. The cost is ``window / hop`` (20 with the defaults) times that of one pass over the audio.

Inputs: ``audio`` is a float tensor ``[n_sounds, n_samples]`` at ``model.sample_rate`` on the model's device (moved
there if not), any ``n_samples >= 1``. Outputs are float32 on the model's device. Every sound is embedded
independently (eval mode), so a batch gives what each sound alone gives.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from audio_ssl.evaluation.windows import window_starts
from audio_ssl.export.source import TrainedMethod, load_trained_method

__all__ = ["HEARModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model", "write_hear_module"]

MAX_TIMESTAMP_HOP_MS = 50.0
"""The HEAR rules' largest hop between timestamp embeddings."""


class HEARModel(nn.Module):
    """A trained method with the attributes the HEAR API asks for.

    Args:
        trained: the method and its checkpoint's facts (:func:`audio_ssl.export.source.load_trained_method`).
        timestamp_window_seconds: window centred on each timestamp (default ``min(1, clip length)`` seconds).
        timestamp_hop_ms: milliseconds between timestamps, in ``(0, 50]``.
        batch_size: windows per forward pass of the encoder.
    """

    def __init__(self, trained: TrainedMethod, timestamp_window_seconds: float | None = None,
                 timestamp_hop_ms: float = MAX_TIMESTAMP_HOP_MS, batch_size: int = 64) -> None:
        super().__init__()
        self.method = trained.method.eval()
        self.source = trained.source
        self.sample_rate: int = trained.sample_rate
        self.clip_samples: int = trained.clip_samples
        self.scene_embedding_size: int = int(self.method.embedding_dim)
        self.timestamp_embedding_size: int = int(self.method.embedding_dim)
        if not (isinstance(timestamp_hop_ms, int | float) and 0 < timestamp_hop_ms <= MAX_TIMESTAMP_HOP_MS):
            raise ValueError(f"timestamp_hop_ms must be in (0, {MAX_TIMESTAMP_HOP_MS:g}] ms (the HEAR rules), "
                             f"got {timestamp_hop_ms!r}")
        self.hop_samples = max(1, round(timestamp_hop_ms * self.sample_rate / 1000))
        clip_seconds = self.clip_samples / self.sample_rate
        seconds = min(1.0, clip_seconds) if timestamp_window_seconds is None else timestamp_window_seconds
        if not (isinstance(seconds, int | float) and 0 < seconds <= clip_seconds):
            raise ValueError(f"timestamp_window_seconds must be in (0, {clip_seconds:g}] s (the checkpoint's clip "
                             f"length), got {seconds!r}")
        self.window_samples = 2 * max(1, round(seconds * self.sample_rate / 2))  # even: centred on a sample
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.method.parameters()).device

    def embed_windows(self, windows: Tensor) -> Tensor:
        """``[n_sounds, N, W]`` waveform windows (a view is fine) -> ``[n_sounds, N, D]`` float32 embeddings.

        Each sound's windows go through ``embed`` ``batch_size`` at a time, so only one batch of windows is ever
        copied out of the view, and a sound's embeddings do not depend on the other sounds of the batch."""
        with torch.inference_mode():
            return torch.stack([
                torch.cat([self.method.embed(chunk.contiguous()).float() for chunk in sound.split(self.batch_size)])
                for sound in windows
            ])

    def check_audio(self, audio: Tensor) -> Tensor:
        """``audio`` as float32 on the model's device; ValueError for anything but a finite ``[n_sounds,
        n_samples]`` float tensor with ``n_samples >= 1``."""
        if not isinstance(audio, Tensor):
            raise ValueError(f"audio must be a torch.Tensor [n_sounds, n_samples], got {type(audio).__name__}")
        if audio.dim() != 2:
            raise ValueError(f"audio must have shape [n_sounds, n_samples], got shape {tuple(audio.shape)}")
        if not audio.is_floating_point():
            raise ValueError(f"audio must be floating point (waveforms in [-1, 1]), got {audio.dtype}")
        if audio.shape[1] < 1:
            raise ValueError("audio has no samples (n_samples = 0)")
        audio = audio.to(self.device, torch.float32)
        if not bool(torch.isfinite(audio).all()):
            bad = (~torch.isfinite(audio)).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"audio has NaN or Inf samples in sound(s) {bad[:10]}")
        return audio

    def scene_embeddings(self, audio: Tensor) -> Tensor:
        """``[n_sounds, n_samples]`` -> ``[n_sounds, scene_embedding_size]`` (see the module docstring)."""
        audio = self.check_audio(audio)
        n_sounds, length = audio.shape
        window = self.clip_samples
        if length < window:
            audio = nn.functional.pad(audio, (0, window - length))
        starts = window_starts(length, window, max(1, window // 2)).tolist()
        windows = torch.stack([audio[:, s : s + window] for s in starts], dim=1)  # [n_sounds, n_windows, W]
        return self.embed_windows(windows).mean(dim=1)

    def timestamp_embeddings(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """``[n_sounds, n_samples]`` -> (``[n_sounds, n_timestamps, D]``, timestamps ``[n_sounds, n_timestamps]``
        in ms, the centre of each window)."""
        audio = self.check_audio(audio)
        n_sounds, length = audio.shape
        half = self.window_samples // 2
        padded = nn.functional.pad(audio, (half, half))
        windows = padded.unfold(1, self.window_samples, self.hop_samples)  # [n_sounds, n_ts, W]
        n_ts = windows.shape[1]
        embeddings = self.embed_windows(windows)
        times = torch.arange(n_ts, device=self.device, dtype=torch.float64) * (self.hop_samples * 1000 / self.sample_rate)
        return embeddings, times.float().expand(n_sounds, n_ts).contiguous()

    def forward(self, audio: Tensor) -> Tensor:
        return self.scene_embeddings(audio)


def load_model(model_file_path: str = "", timestamp_window_seconds: float | None = None,
               timestamp_hop_ms: float = MAX_TIMESTAMP_HOP_MS, batch_size: int = 64,
               device: str | torch.device | None = None) -> HEARModel:
    """HEAR ``load_model``: the :class:`HEARModel` of an audio-ssl checkpoint (any method).

    ``model_file_path`` is required (there are no built-in weights and nothing is downloaded); the checkpoint is
    read with ``weights_only=True``. ``device`` defaults to CUDA when available. Raises ValueError naming the file
    when it is missing or not a self-describing audio-ssl checkpoint, and for out-of-range options.
    """
    if not model_file_path:
        raise ValueError("load_model needs model_file_path: the audio-ssl checkpoint (.ckpt) to embed with, e.g. "
                         "runs/<run>/checkpoints/last.ckpt (nothing is downloaded)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    trained = load_trained_method(os.fspath(model_file_path), device)
    return HEARModel(trained, timestamp_window_seconds, timestamp_hop_ms, batch_size)


def _check_model(model: nn.Module) -> HEARModel:
    if not isinstance(model, HEARModel):
        raise ValueError(f"model must come from audio_ssl.export.hear.load_model, got {type(model).__name__}")
    return model


def get_scene_embeddings(audio: Tensor, model: HEARModel) -> Tensor:
    """HEAR ``get_scene_embeddings``: ``audio [n_sounds, n_samples]`` -> float32 ``[n_sounds,
    model.scene_embedding_size]`` on the model's device."""
    return _check_model(model).scene_embeddings(audio)


def get_timestamp_embeddings(audio: Tensor, model: HEARModel) -> tuple[Tensor, Tensor]:
    """HEAR ``get_timestamp_embeddings``: ``audio [n_sounds, n_samples]`` -> (float32 ``[n_sounds, n_timestamps,
    model.timestamp_embedding_size]``, float32 timestamps ``[n_sounds, n_timestamps]`` in milliseconds, the centre
    of each window, every ``timestamp_hop_ms`` from 0)."""
    return _check_model(model).timestamp_embeddings(audio)


HEAR_MODULE_TEMPLATE = '''"""HEAR 2021 module for the audio-ssl checkpoint {name} (written by ``audio-ssl export --format hear``).

    python -m heareval.embeddings.runner {module}     # with this folder's parent on PYTHONPATH

``load_model()`` without a path loads ``model.ckpt`` next to this file; the functions are those of
:mod:`audio_ssl.export.hear` (audio-ssl must be installed).
"""

from pathlib import Path

from audio_ssl.export.hear import get_scene_embeddings, get_timestamp_embeddings
from audio_ssl.export.hear import load_model as _load_model

CHECKPOINT = Path(__file__).with_name("model.ckpt")

__all__ = ["get_scene_embeddings", "get_timestamp_embeddings", "load_model"]


def load_model(model_file_path: str = "", **kwargs):
    """HEAR ``load_model``: this folder's checkpoint unless another is given (options: audio_ssl.export.hear)."""
    return _load_model(model_file_path or str(CHECKPOINT), **kwargs)
'''


def write_hear_module(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write an importable HEAR module folder ``out_dir`` (``__init__.py`` + a copy of the checkpoint as
    ``model.ckpt``); its name is the module name, so it must be a Python identifier. The checkpoint is loaded once
    first, so a bad one fails here. Raises ValueError for a bad name, an existing non-empty folder or a bad
    checkpoint. Returns ``out_dir``."""
    import shutil

    out_dir = Path(out_dir)
    if not out_dir.name.isidentifier():
        raise ValueError(f"{out_dir}: the folder name is the module name the HEAR kit imports, so it must be a Python "
                         f"identifier (letters, digits, underscores), got {out_dir.name!r}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir}: exists and is not empty; choose a new folder")
    load_model(os.fspath(checkpoint), device="cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, out_dir / "model.ckpt")
    (out_dir / "__init__.py").write_text(HEAR_MODULE_TEMPLATE.format(name=Path(checkpoint).name, module=out_dir.name))
    return out_dir

"""The served model: a classifier rebuilt from its checkpoint alone, decoding of uploaded bytes, windowing and
what the web page draws (log-mel spectrogram, waveform envelope, the encoder's intermediate feature maps).

Everything here reuses ``audio-ssl classify``: :func:`audio_ssl.tools.classify.load_classifier` rebuilds the model
(class names, sample rate, clip length and front end travel in the checkpoint), :func:`audio_ssl.data.audio.decode_audio`
decodes (mixed to mono, resampled to the model's rate) and :func:`audio_ssl.evaluation.windows.window_starts`
places the windows, so a recording gets the same windows and, averaged, the same probabilities as from
``classify``. Nothing here is thread-safe on its own: the model runs on the batcher's single worker thread
(:mod:`audio_ssl.serve.batcher`).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from audio_ssl.data.audio import AudioDecodeError, audio_info, decode_audio
from audio_ssl.evaluation.windows import window_starts
from audio_ssl.tools.classify import class_names_for, load_classifier
from audio_ssl.utils.provenance import checkpoint_metadata, read_checkpoint

__all__ = ["AudioRejected", "DecodedAudio", "ModelNotServableError", "ServedModel", "Windows"]


class ModelNotServableError(ValueError):
    """The checkpoint cannot be served: unreadable, not self-describing, or a model without a classifier."""


class AudioRejected(Exception):
    """An upload that is refused, with the HTTP status, a short error code and a message naming the problem."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class DecodedAudio:
    """A decoded upload: the mono waveform at the model's rate plus what the file said about itself."""

    wave: np.ndarray
    """float32 [T] at the model's sample rate."""
    source_rate: int | None
    source_channels: int | None
    source_format: str | None


class Windows:
    """Windows [N, window] of a waveform, cut batch by batch: ``windows[i:j]`` is a float32 tensor [j - i, window]
    (zero-padded past the end of the waveform), so a long recording never sits in memory as N overlapping copies."""

    def __init__(self, wave: np.ndarray, starts: np.ndarray, window: int):
        self.wave, self.starts, self.window = torch.from_numpy(wave), starts, int(window)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: slice) -> torch.Tensor:
        starts = self.starts[index]
        out = torch.zeros(len(starts), self.window, dtype=torch.float32)
        for row, start in enumerate(starts.tolist()):
            piece = self.wave[start : start + self.window]
            out[row, : len(piece)] = piece
        return out

    def __iter__(self):
        raise TypeError("Windows are cut by slices: windows[i:j]")


_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


def _round(values: np.ndarray, decimals: int) -> list:
    """A numpy array as (nested) lists of floats rounded for a compact JSON body (NaN/Inf become 0)."""
    return np.round(np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0), decimals).tolist()


class ServedModel:
    """One classifier in memory, ready to score batches of windows and to describe what it hears.

    Args:
        checkpoint: a Lightning checkpoint written by audio-ssl (it stores the model config, class names,
            sample rate and clip length).
        config: the experiment YAML, only for checkpoints saved without that description (as ``classify``).
        device: torch device.
        name: the name reported to clients (default: the run folder of ``.../<run>/checkpoints/x.ckpt``, else the
            file name without suffix).
        hop_seconds: hop between windows of long recordings (default: half the clip length, as ``classify``).

    Raises:
        ModelNotServableError: the checkpoint cannot be read or rebuilt, or its model has no classifier (a
            self-supervised SimCLR / masked-prediction checkpoint): there is nothing to serve.
    """

    def __init__(self, checkpoint: str | os.PathLike, config: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", name: str | None = None, hop_seconds: float | None = None):
        checkpoint = Path(checkpoint)
        try:
            bundle = load_classifier(config, checkpoint, device)
            meta = checkpoint_metadata(read_checkpoint(checkpoint))
        except (ValueError, OSError) as err:
            raise ModelNotServableError(str(err)) from None
        model = bundle.model
        if not getattr(model, "classifies", callable(getattr(model, "predict_proba", None))):
            raise ModelNotServableError(
                f"{checkpoint}: {type(model).__name__} is a self-supervised model without a classifier head, so there "
                "are no classes to serve. Train a classifier on its encoder first (e.g. audio-ssl fit with "
                f"model.init_args.init_encoder_from={checkpoint} in a SupervisedClassifier recipe) and serve that "
                "checkpoint")
        self.bundle = bundle
        self.model = model
        self.checkpoint = checkpoint
        self.meta = meta
        self.class_names = class_names_for("dataset", None, bundle)
        self.sample_rate = bundle.sample_rate
        self.clip_seconds = bundle.clip_seconds
        self.window = max(1, round(self.clip_seconds * self.sample_rate))
        self.hop_seconds = float(hop_seconds) if hop_seconds else self.clip_seconds / 2
        self.hop = max(1, round(self.hop_seconds * self.sample_rate))
        self.device = bundle.device
        self.encoder = getattr(model, "encoder", None)
        if name is None:
            parent = checkpoint.resolve().parent
            name = parent.parent.name if parent.name == "checkpoints" and parent.parent.name else checkpoint.stem
        self.name = name

    # ------------------------------------------------------------------ description
    def describe(self) -> dict:
        """What ``GET /v1/model`` reports: classes, rates, clip length, method, encoder, front end, provenance."""
        data = self.meta.get("data") or {}
        cls = type(self.model)
        return {
            "name": self.name,
            "checkpoint": self.checkpoint.name,
            "classes": list(self.class_names),
            "num_classes": len(self.class_names),
            "class_names_stored": bool(self.bundle.class_names),
            "sample_rate": self.sample_rate,
            "clip_seconds": self.clip_seconds,
            "hop_seconds": self.hop_seconds,
            "method": self.meta.get("method") or f"{cls.__module__}.{cls.__qualname__}",
            "encoder": None if self.encoder is None else type(self.encoder).__name__,
            "frontend": self.meta.get("frontend"),
            "dataset": data.get("dataset") or data.get("name"),
            "commit": self.meta.get("git_commit"),
            "commit_dirty": self.meta.get("git_dirty"),
            "version": self.meta.get("audio_ssl_version"),
            "feature_maps": self.feature_map_kind(),
        }

    def feature_map_kind(self) -> str | None:
        """``"cnn_stages"``, ``"token_norms"`` or ``None`` (no intermediate maps for this encoder)."""
        from audio_ssl.models.resnet import AudioResNet
        from audio_ssl.models.vit import SpectrogramTransformer

        if isinstance(self.encoder, AudioResNet):
            return "cnn_stages"
        if isinstance(self.encoder, SpectrogramTransformer):
            return "token_norms"
        return None

    # ------------------------------------------------------------------ decoding
    def _decode_stream(self, path: str, label: str, max_seconds: float | None) -> np.ndarray:
        """Mono float32 at the model's rate through classify's streaming reader (PyAV/FFmpeg for compressed
        formats); the length limit is checked as the blocks arrive. Raises AudioDecodeError or AudioRejected."""
        from audio_ssl.data.stream import open_audio, stream_mono

        blocks, total = [], 0
        with open_audio(path) as stream:
            if max_seconds and stream.duration is not None:
                self._check_length(stream.duration, max_seconds, label)
            for block in stream_mono(stream, self.sample_rate):
                blocks.append(block)
                total += len(block)
                if max_seconds:
                    self._check_length(total / self.sample_rate, max_seconds, label)
        return np.concatenate(blocks).astype(np.float32, copy=False) if blocks else np.zeros(0, np.float32)

    def decode(self, data: bytes, filename: str | None = None, max_seconds: float | None = None) -> DecodedAudio:
        """Decode an upload (any format/rate/channels :func:`decode_audio` reads) to mono at the model's rate.

        The bytes go to a temporary file (named with the upload's suffix when it is a plain one), which is
        removed afterwards. Raises :class:`AudioRejected`: 422 ``empty_audio`` for no bytes, 415
        ``unsupported_audio`` when no decoder recognises the data, 422 ``corrupt_audio`` when it is recognised
        but cannot be decoded (truncated, NaN samples, empty, bad rate...), with the decoder's reason; 413
        ``audio_too_long`` for a recording longer than ``max_seconds`` (from the header, before decoding, when
        the header tells).
        """
        if not data:
            raise AudioRejected(422, "empty_audio", "the upload holds no bytes")
        suffix = Path(filename or "").suffix
        suffix = suffix if _SAFE_SUFFIX.match(suffix) else ".audio"
        label = Path(filename).name if filename else "upload"
        fd, tmp = tempfile.mkstemp(prefix="audio-ssl-serve-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            try:
                info = audio_info(tmp)
            except AudioDecodeError:
                info = None
            if info is not None and max_seconds and info.sample_rate > 0:
                self._check_length(info.frames / info.sample_rate, max_seconds, label)
            try:
                if info is None:  # not for libsndfile: the formats classify reads through FFmpeg (m4a, webm, ...)
                    wave = self._decode_stream(tmp, label, max_seconds)
                else:
                    wave = decode_audio(tmp, self.sample_rate, mono=True)
            except AudioDecodeError as err:
                reason = (err.reason or str(err)).replace(tmp, label)
                if info is None:
                    raise AudioRejected(415, "unsupported_audio",
                                        f"{label}: not audio in a format this server decodes ({reason})") from None
                raise AudioRejected(422, "corrupt_audio", f"{label}: the audio cannot be decoded ({reason})") from None
            except Exception as err:  # any other decoder failure is still the upload's problem, not the server's
                raise AudioRejected(422, "corrupt_audio", f"{label}: the audio cannot be decoded ({err})") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        if wave.ndim != 1 or len(wave) == 0:
            raise AudioRejected(422, "empty_audio", f"{label}: the audio holds no samples")
        if max_seconds:
            self._check_length(len(wave) / self.sample_rate, max_seconds, label)
        return DecodedAudio(np.ascontiguousarray(wave, dtype=np.float32),
                            None if info is None else info.sample_rate, None if info is None else info.channels,
                            None if info is None else info.subtype)

    @staticmethod
    def _check_length(duration: float, max_seconds: float, label: str) -> None:
        if duration > max_seconds:
            raise AudioRejected(413, "audio_too_long", f"{label}: the recording lasts {duration:.1f} s; this server "
                                f"takes at most {max_seconds:g} s (--max-seconds)")

    # ------------------------------------------------------------------ windows and scoring
    def window_starts(self, length: int) -> np.ndarray:
        """Start samples of the windows covering ``length`` samples (``classify``'s windows)."""
        return window_starts(length, self.window, self.hop)

    def windows(self, wave: np.ndarray, starts: np.ndarray) -> Windows:
        """The windows of ``wave`` starting at ``starts``, cut only when a batch takes them (see :class:`Windows`)."""
        return Windows(wave, starts, self.window)

    def score(self, batch: torch.Tensor) -> np.ndarray:
        """Class probabilities [B, C] (float32, numpy) of windows [B, window], as ``classify`` computes them."""
        with torch.inference_mode():
            probs = self.bundle.score(batch.to(self.device))
        return probs.detach().float().cpu().numpy()

    def top_k(self, probs: np.ndarray, k: int) -> list[dict]:
        """The ``k`` most probable classes as ``[{"class", "index", "confidence"}]``, most probable first."""
        order = np.argsort(-probs, kind="stable")[:k]
        return [{"class": self.class_names[i], "index": int(i), "confidence": float(probs[i])} for i in order]

    # ------------------------------------------------------------------ what the page draws
    def waveform(self, wave: np.ndarray, points: int = 1200) -> dict:
        """The waveform downsampled for display: min and max of each of ``points`` equal spans."""
        n = len(wave)
        points = max(1, min(points, n))
        edges = np.linspace(0, n, points + 1).astype(np.int64)
        mins = np.minimum.reduceat(wave, edges[:-1])
        maxs = np.maximum.reduceat(wave, edges[:-1])
        return {"points": points, "seconds_per_point": n / points / self.sample_rate,
                "min": _round(mins, 4), "max": _round(maxs, 4)}

    def _freq_time(self, spec: torch.Tensor) -> torch.Tensor:
        """A front end's output as [F, T] (frequency rows, time columns)."""
        spec = spec.detach().float().cpu()
        while spec.dim() > 2:
            spec = spec[0]
        n_mels = getattr(self.model.frontend, "n_mels", None) or getattr(self.model.frontend, "num_mel_bins", None)
        if n_mels and spec.shape[-1] == n_mels and spec.shape[0] != n_mels:  # [T, F] front ends (fbank)
            spec = spec.T
        return spec

    def spectrogram(self, wave: np.ndarray, max_columns: int = 600) -> dict:
        """The model's own front end (its log-mel) over the whole recording, averaged in time to at most
        ``max_columns`` columns: ``{"shape": [F, T], "values": [[...]] (row 0 = lowest band), "min", "max",
        "seconds_per_column"}``."""
        with torch.inference_mode():
            spec = self._freq_time(self.model.frontend(torch.from_numpy(wave)[None].to(self.device)))
        frames = spec.shape[1]
        if frames > max_columns:
            spec = F.adaptive_avg_pool1d(spec[None], max_columns)[0]
        values = spec.numpy()
        duration = len(wave) / self.sample_rate
        return {"shape": list(values.shape), "values": _round(values, 2), "min": float(values.min()),
                "max": float(values.max()), "frames": frames, "seconds_per_column": duration / values.shape[1]}

    def feature_maps(self, window: torch.Tensor) -> list[dict]:
        """What each stage of the encoder makes of one window [T]: for a ResNet (``cnn_stages``) the stem's and
        every residual stage's output averaged over channels ([F', T'] each); for a spectrogram transformer
        (``token_norms``) the L2 norm of every patch token after each block, on the patch grid [n_f, n_t] (there
        is no clip token: the clip embedding is the mean of the tokens, so a token's norm is its weight in it).
        Other encoders: ``[]``."""
        kind = self.feature_map_kind()
        if kind is None:
            return []
        maps: list[tuple[str, torch.Tensor, int, str]] = []
        with torch.inference_mode():
            spec = self.model.frontend(window[None].to(self.device))
            if kind == "cnn_stages":
                x = self.encoder.stem(spec)
                maps.append(("stem", x[0].mean(0), x.shape[1], "mean over channels"))
                for i, stage in enumerate(self.encoder.stages, 1):
                    x = stage(x)
                    maps.append((f"stage{i}", x[0].mean(0), x.shape[1], "mean over channels"))
            else:
                n_f, n_t = self.encoder.grid(spec)
                x = self.encoder.embed_patches(spec)
                for i, block in enumerate(self.encoder.blocks, 1):
                    x = block(x)
                    maps.append((f"block{i}", x[0].norm(dim=-1).reshape(n_f, n_t), x.shape[-1], "token L2 norm"))
                x = self.encoder.norm(x)
                maps.append(("output", x[0].norm(dim=-1).reshape(n_f, n_t), x.shape[-1], "token L2 norm"))
        out = []
        for name, value, channels, reduction in maps:
            value = value.detach().float().cpu().numpy()
            out.append({"name": name, "shape": list(value.shape), "channels": int(channels), "reduction": reduction,
                        "values": _round(value, 4), "min": float(value.min()), "max": float(value.max())})
        return out

    def focus_window(self, window_probs: np.ndarray, top_index: int) -> int:
        """The window that is most confident of the recording's top class (the one whose feature maps are shown)."""
        return int(np.argmax(window_probs[:, top_index])) if len(window_probs) else 0


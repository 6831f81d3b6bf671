"""Classifiers as ONNX graphs: waveform ``[batch, samples]`` (float32, the checkpoint's sample rate) in, class
probabilities ``[batch, num_classes]`` out, front end included.

Exported with ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript; default opset 18). The front
end is replaced by its export-friendly twin (:mod:`audio_ssl.export.frontends`: the STFT as a convolution with a
fixed DFT basis, equal to the FFT path to float32 rounding; the numpy Hugging Face feature extractors as batched
tensor code), since ``torch.stft`` and the per-clip Kaldi fbank do not export with a dynamic batch. Attention is
traced with PyTorch's math SDPA kernel (the fused CPU kernel's output layout breaks the exporter's decomposition
with a dynamic batch); the computation is the same.

Input length:

* **dynamic** (any ``samples >= min_samples``) for :class:`~audio_ssl.methods.supervised.SupervisedClassifier`
  and its subclasses (BEATs classifier) with ``tta_views = 1``: the graph is ``softmax(head(encoder(frontend(x))))``,
  what ``predict_proba`` computes for them, up to ``max_samples`` for encoders with learned time positions. If
  the exporter cannot make the length dynamic for an encoder (or the result fails the parity check), the export
  falls back to the fixed length and says so (:attr:`OnnxExport.note`).
* **fixed** at the checkpoint's clip length otherwise (test-time augmentation shifts the clip by fractions of its
  length, which the exporter cannot make symbolic): the graph computes ``predict_proba`` on clips of exactly
  ``clip_samples``. Score longer recordings in clip windows (as ``audio-ssl classify`` does).

``metadata_props`` of the model (all strings): ``class_names`` (a JSON list, ``[]`` when the checkpoint has none),
``sample_rate``, ``num_classes``, ``input_samples`` (``"dynamic"`` or the fixed count), ``min_samples``,
``max_samples`` (``"none"`` without a limit), ``clip_samples``, ``method``, ``source_checkpoint`` (file name), ``audio_ssl_version``, ``git_commit``.
:class:`OnnxClassifier` reads them and checks inputs against them.

After writing, :func:`export_onnx` runs the file with onnxruntime on random clips and compares it with the
PyTorch model (max absolute difference of probabilities below ``tolerance``, else ValueError).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from audio_ssl.export.frontends import ConvASTFeatures, ConvKaldiFbank, WaveformNormalize, export_frontend
from audio_ssl.export.source import TrainedMethod, load_trained_method
from audio_ssl.methods.base import BaseMethod
from audio_ssl.methods.supervised import SupervisedClassifier

__all__ = ["DEFAULT_OPSET", "ExportedClassifier", "OnnxClassifier", "OnnxExport", "export_onnx"]

DEFAULT_OPSET = 18
"""The lowest opset the dynamo exporter writes natively."""
INPUT_NAME, OUTPUT_NAME = "waveform", "probabilities"


class ExportedClassifier(nn.Module):
    """What is exported: ``waveform [B, T] -> probabilities [B, C]`` of a copy of ``method`` whose front end is
    the export-friendly twin (:func:`audio_ssl.export.frontends.export_frontend`).

    ``dynamic_length=True`` (only for :class:`SupervisedClassifier` with ``tta_views == 1``) computes
    ``softmax(method(frontend(x)))``; otherwise ``method.predict_proba(x)`` (with its test-time augmentation)."""

    def __init__(self, method: BaseMethod, dynamic_length: bool) -> None:
        super().__init__()
        if dynamic_length and not supports_dynamic_length(method):
            raise ValueError(f"{type(method).__name__} with tta_views={getattr(method, 'tta_views', None)} cannot "
                             "take inputs of any length: export it at its clip length")
        self.method = copy.deepcopy(method).eval()
        self.method.frontend = export_frontend(method.frontend)
        self.dynamic_length = dynamic_length
        self.eval()

    def forward(self, waveform: Tensor) -> Tensor:
        if self.dynamic_length:
            return torch.softmax(self.method(self.method.frontend(waveform)), dim=1)
        return self.method.predict_proba(waveform)


def supports_dynamic_length(method: BaseMethod) -> bool:
    """Whether ``predict_proba`` is ``softmax(method(frontend(x)))`` (no test-time shifts tied to the length)."""
    return isinstance(method, SupervisedClassifier) and int(method.tta_views) == 1


def min_samples(method: BaseMethod) -> int:
    """The shortest waveform the method accepts: one patch of frames for patch encoders (BEATs, the
    spectrogram Transformer), one fbank window for AST (its frames are padded to ``max_length``), one output
    frame of the convolutional feature encoder for the wav2vec 2.0 family, otherwise 2 samples."""
    frontend = export_frontend(method.frontend)
    if isinstance(frontend, ConvASTFeatures):
        return frontend.window
    if isinstance(frontend, WaveformNormalize):
        return max(2, _conv_receptive_field(getattr(method.encoder, "config", None)))
    patch = getattr(method.encoder, "patch_size", None)
    frames = int(patch[-1] if isinstance(patch, tuple | list) else patch) if patch is not None else 1
    if isinstance(frontend, ConvKaldiFbank):
        return frontend.window + (frames - 1) * frontend.shift
    return max(2, (frames - 1) * int(frontend.hop_length))


def _conv_receptive_field(config) -> int:
    """Samples of one output frame of a wav2vec 2.0-style convolutional feature encoder (``conv_kernel``,
    ``conv_stride`` of the config; 1 without them): 400 for wav2vec 2.0 base."""
    samples = 1
    for kernel, stride in reversed(list(zip(getattr(config, "conv_kernel", ()), getattr(config, "conv_stride", ()),
                                            strict=True))):
        samples = (samples - 1) * int(stride) + int(kernel)
    return samples


def max_samples(method: BaseMethod) -> int | None:
    """The longest waveform the method accepts (``None``: no limit): encoders with learned time positions
    (``max_frames``, e.g. the spectrogram Transformer) take ``max_time_patches`` patches of ``p`` frames, and
    frames past the last whole patch are cropped, so at most ``(max_time_patches + 1) * p - 1`` frames."""
    encoder = method.encoder
    if getattr(encoder, "pos_embed_type", None) != "learned" or not hasattr(encoder, "max_time_patches"):
        return None
    patch = encoder.patch_size
    p_t = int(patch[-1] if isinstance(patch, tuple | list) else patch)
    frames = (int(encoder.max_time_patches) + 1) * p_t - 1
    frontend = export_frontend(method.frontend)
    samples = (frames + 1) * int(getattr(frontend, "hop_length", getattr(frontend, "shift", 1)))
    while frontend.num_frames(samples) > frames:
        samples -= 1
    return samples


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    path: Path
    dynamic_length: bool
    input_samples: int | None
    """The fixed input length (``None`` when dynamic)."""
    min_samples: int
    max_samples: int | None
    """The longest input (``None``: no limit)."""
    max_abs_diff: float
    """Largest absolute difference between onnxruntime's and PyTorch's probabilities on the check clips."""
    note: str = ""
    """Why a dynamic length fell back to the fixed one (empty otherwise)."""


def _metadata(trained: TrainedMethod, dynamic: bool, shortest: int, longest: int | None) -> dict[str, str]:
    meta = trained.metadata
    method = trained.method
    return {
        "class_names": json.dumps(trained.class_names or []),
        "sample_rate": str(trained.sample_rate),
        "num_classes": str(int(method.num_classes)),
        "input_samples": "dynamic" if dynamic else str(trained.clip_samples),
        "min_samples": str(shortest if dynamic else trained.clip_samples),
        "max_samples": (str(longest) if longest is not None else "none") if dynamic else str(trained.clip_samples),
        "clip_samples": str(trained.clip_samples),
        "method": str(meta.get("method") or type(method).__name__),
        "source_checkpoint": trained.source.name,
        "audio_ssl_version": str(meta.get("audio_ssl_version") or ""),
        "git_commit": str(meta.get("git_commit") or ""),
    }


def _export(module: ExportedClassifier, example: Tensor, out: Path, opset: int, dynamic: bool,
            shortest: int, longest: int | None, metadata: dict[str, str]) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dims = {0: torch.export.Dim("batch")}
    if dynamic:
        dims[1] = torch.export.Dim("samples", min=shortest, max=longest if longest is not None else 2**31 - 1)
    with sdpa_kernel([SDPBackend.MATH]), torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes={"waveform": dims},
                                    opset_version=opset, verbose=False)
    program.model.metadata_props.update(metadata)
    program.save(out)


def onnx_path(checkpoint: Path, out: str | os.PathLike | None) -> Path:
    """The file to write: ``out``; the checkpoint's path with ``.onnx`` when None; ``<out>/<checkpoint stem>.onnx``
    when ``out`` is an existing folder or ends with a path separator. Raises ValueError for an ``out`` whose parent
    is a file."""
    if out is None:
        return checkpoint.with_suffix(".onnx")
    text = os.fspath(out)
    path = Path(text).expanduser()
    if path.is_dir() or text.endswith(("/", os.sep)):
        path = path / f"{checkpoint.stem}.onnx"
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"--out {text}: {parent} is a file, not a folder: pass a .onnx file in a folder")
    return path


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None, opset: int = DEFAULT_OPSET,
                tolerance: float = 1e-4, check_clips: int = 2) -> OnnxExport:
    """Export the classifier of an audio-ssl checkpoint to ONNX (see the module docstring); returns what was written.

    Args:
        checkpoint: a self-describing audio-ssl checkpoint of a method with ``classifies = True``.
        out: the ``.onnx`` file (default: the checkpoint's path with the suffix ``.onnx``); an existing folder (or a
            path ending in ``/``) gets ``<checkpoint stem>.onnx`` inside it.
        opset: ONNX opset, at least :data:`DEFAULT_OPSET`.
        tolerance: largest allowed absolute difference of probabilities between onnxruntime and PyTorch on
            ``check_clips`` random clips (of the clip length; when the length is dynamic also of 1.5 clips, or the
            longest allowed, and of the shortest allowed).

    Raises ValueError (naming the checkpoint) for a method that does not classify (use the HEAR export for its
    embeddings), a front end without an export-friendly equivalent (use the HEAR export), a bad opset, a checkpoint that cannot be read, or a failed parity check.
    """
    checkpoint = Path(checkpoint)
    out = onnx_path(checkpoint, out)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < DEFAULT_OPSET:
        raise ValueError(f"opset must be an integer >= {DEFAULT_OPSET} (the dynamo exporter's), got {opset!r}")
    trained = load_trained_method(checkpoint)
    method = trained.method
    if not method.classifies:
        raise ValueError(f"{checkpoint}: {type(method).__name__} does not classify (no classifier head), so there are "
                         "no class probabilities to export; export its embeddings with the HEAR API instead "
                         "(audio-ssl export --format hear CHECKPOINT --out DIR, or audio_ssl.export.hear.load_model)")
    try:  # before any tracing: a front end without an ONNX twin is known at once
        export_frontend(method.frontend)
    except ValueError as err:
        raise ValueError(f"{checkpoint}: cannot export to ONNX: {err}. The HEAR export runs any front end in "
                         f"PyTorch: audio-ssl export --format hear {checkpoint} --out DIR") from err
    out.parent.mkdir(parents=True, exist_ok=True)
    shortest, longest = min_samples(method), max_samples(method)
    gen = torch.Generator().manual_seed(0)
    example = 0.1 * torch.randn(2, trained.clip_samples, generator=gen)
    note = ""
    for dynamic in ([True, False] if supports_dynamic_length(method) else [False]):
        lengths = [trained.clip_samples]
        if dynamic:
            lengths += sorted({min(trained.clip_samples * 3 // 2, longest or 2**31), shortest} - {trained.clip_samples})
        try:
            _export(ExportedClassifier(method, dynamic), example, out, opset, dynamic, shortest, longest,
                    _metadata(trained, dynamic, shortest, longest))
            worst = _compare(method, OnnxClassifier(out), lengths, check_clips, gen)
            if not worst < tolerance:
                raise ValueError(f"{checkpoint}: the ONNX model's probabilities differ from PyTorch's by {worst:.3g} "
                                 f"(allowed {tolerance:g}) on clips of {lengths} samples")
            break
        except BaseException as err:
            with contextlib.suppress(FileNotFoundError):
                out.unlink()
            if dynamic and isinstance(err, Exception):  # the exporter's many error types: try the fixed length
                note = (f"the length could not be made dynamic ({type(err).__name__}: "
                        f"{(str(err).splitlines() or [''])[0][:200]}); exported for clips of {trained.clip_samples} samples")
                continue
            if isinstance(err, Exception) and not isinstance(err, ValueError | OSError):
                raise ValueError(f"{checkpoint}: torch.onnx.export failed ({type(err).__name__}: "
                                 f"{(str(err).splitlines() or [''])[0][:300]})") from err
            raise
    return OnnxExport(out, dynamic, None if dynamic else trained.clip_samples,
                      shortest if dynamic else trained.clip_samples, longest if dynamic else trained.clip_samples,
                      worst, note)


def _compare(method: BaseMethod, runtime: OnnxClassifier, lengths: list[int], clips: int,
             gen: torch.Generator) -> float:
    """Largest absolute difference of probabilities between onnxruntime and PyTorch on random clips."""
    worst = 0.0
    for length in lengths:
        wave = 0.3 * torch.randn(clips, length, generator=gen)
        with torch.no_grad():
            expected = method.predict_proba(wave).numpy()
        worst = max(worst, float(np.abs(runtime.predict_proba(wave.numpy()) - expected).max()))
    return worst


class OnnxClassifier:
    """An exported classifier run with onnxruntime: ``predict_proba(waveform [B, T] float32) -> [B, C]``.

    Reads the model's ``metadata_props`` (``class_names``, ``sample_rate``, ``input_samples``, ``min_samples``, ``max_samples``) and
    checks every input against them. ``threads`` sets onnxruntime's intra-op threads (``None``: its default).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in ("class_names", "sample_rate", "input_samples", "min_samples") if k not in meta]
        if missing:
            raise ValueError(f"{self.path}: not an audio-ssl export (metadata_props lacks {missing})")
        self.class_names: list[str] = json.loads(meta["class_names"])
        self.sample_rate = int(meta["sample_rate"])
        self.input_samples = None if meta["input_samples"] == "dynamic" else int(meta["input_samples"])
        self.min_samples = int(meta["min_samples"])
        self.max_samples = None if meta.get("max_samples", "none") == "none" else int(meta["max_samples"])
        self.metadata = dict(meta)

    def predict_proba(self, waveform: np.ndarray) -> np.ndarray:
        """Class probabilities ``[B, C]`` of float32 waveforms ``[B, T]`` at :attr:`sample_rate`."""
        waveform = np.asarray(waveform)
        if waveform.ndim != 2:
            raise ValueError(f"{self.path.name}: waveform must have shape [batch, samples], got {waveform.shape}")
        if waveform.dtype != np.float32:
            raise ValueError(f"{self.path.name}: waveform must be float32, got {waveform.dtype}")
        samples = waveform.shape[1]
        if self.input_samples is not None and samples != self.input_samples:
            raise ValueError(f"{self.path.name}: this export takes clips of exactly {self.input_samples} samples "
                             f"({self.input_samples / self.sample_rate:g} s at {self.sample_rate} Hz), got {samples}")
        if samples < self.min_samples:
            raise ValueError(f"{self.path.name}: clips need at least {self.min_samples} samples, got {samples}")
        if self.max_samples is not None and samples > self.max_samples:
            raise ValueError(f"{self.path.name}: clips may have at most {self.max_samples} samples (the encoder's "
                             f"max_frames), got {samples}")
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: waveform})[0]

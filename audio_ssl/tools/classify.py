"""``audio-ssl classify``: class predictions for audio files and folders of any length, rate, channel count and format.

    audio-ssl classify --checkpoint runs/x/checkpoints/last.ckpt \\
        recordings/ street.flac --timeline --format json --out predictions.json

The checkpoint is enough: audio-ssl checkpoints store the resolved model config, the class names, the
sample rate and the clip length (``checkpoint["audio_ssl"]``), and the model is rebuilt from them. With
``--config`` (needed only for checkpoints saved without that description) the model is rebuilt from the
experiment YAML's ``model`` block instead (its ``sample_rate`` and the clip length from the ``data`` block).
Either way the weights are loaded from the Lightning checkpoint with ``weights_only=True``.

Every file is streamed (:mod:`audio_ssl.data.stream`): decoded block by block (libsndfile for WAV/FLAC/OGG/MP3/
AIFF/...; FFmpeg through PyAV, ``pip install 'audio-ssl[formats]'``, for m4a/AAC, webm/Opus, wma and the other
:data:`~audio_ssl.data.stream.FFMPEG_SUFFIXES`), mixed to mono, resampled to the model's rate with a streaming
soxr resampler and cut into windows that are scored batch by batch, so memory stays bounded whatever the
length of the recording; the result is that of scoring the whole decoded waveform at once. Files at least
:data:`PROGRESS_MIN_SECONDS` long get a progress bar on stderr (``--progress``).

Folders are searched recursively. Every file found is accounted for: audio files (:data:`AUDIO_EXTENSIONS`)
are classified or get an error row; other files are named on stderr as skipped with the reason, hidden
files are counted, and a last stderr line gives the counts. A recording is scored in windows of the model's clip length
(``--window-seconds``, default ``data.clip_seconds``) every ``--hop-seconds`` (default half a window),
and its prediction is the mean of the windows' probabilities (see :mod:`audio_ssl.evaluation.windows`);
recordings shorter than a window are zero-padded to one. ``--timeline`` adds each window's top-k.

Probabilities come from the module's ``predict_proba(audio)`` when it has one (the supervised classifier,
with its test-time augmentation), else from the softmax of ``forward(frontend(audio))``.

A file that cannot be read is reported on stderr with the reason and gets an ``error`` value in the
output; the other files are still classified, and the command exits with status 1.

Output (``--format``, default from the ``--out`` suffix, else csv): CSV has one row per file
(``segment=clip``) followed, with ``--timeline``, by one row per window (``segment=window``), with the
columns ``file, segment, start, end, duration, windows, pred, pred_name, confidence, top{i}, top{i}_name,
top{i}_prob, error`` (times in seconds). JSON is a list of objects per file: ``file, duration, windows,
pred, pred_name, confidence, top_k: [{index, name, prob}], timeline: [{start, end, top_k}], error``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
import yaml

from audio_ssl.data.audio import AudioDecodeError
from audio_ssl.data.stream import FFMPEG_SUFFIXES, open_audio, stream_mono
from audio_ssl.evaluation.windows import score_stream

__all__ = [
    "AUDIO_EXTENSIONS",
    "PROGRESS_MIN_SECONDS",
    "ClassifierBundle",
    "FileScan",
    "classify_file",
    "find_audio_files",
    "scan_paths",
    "load_classifier",
    "main",
    "read_label_file",
    "write_predictions",
]

AUDIO_EXTENSIONS = frozenset(
    {fmt.lower() for fmt in sf.available_formats()} | {"wave", "aif", "aifc", "oga", "opus", "snd", "sf"}
    | FFMPEG_SUFFIXES
) - {"raw"}
"""File suffixes (lower case, no dot) classified when searching folders: what libsndfile reads (minus
header-less RAW) and the compressed formats people record in, decoded by FFmpeg (PyAV) when it is installed
(else those files get an error row saying what to install). Files named explicitly on the command line are
tried whatever their suffix."""

PROGRESS_MIN_SECONDS = 600.0
"""Recordings at least this long (seconds, from the header) get a progress bar with ``--progress auto``."""

AUDIOSET_LABELS_ENV = "AUDIO_SSL_AUDIOSET_LABELS"
AUDIOSET_LABELS_URL = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/class_labels_indices.csv"


def _fail(message: str) -> SystemExit:
    print(f"audio-ssl classify: error: {message}", file=sys.stderr)
    return SystemExit(2)


# ---------------------------------------------------------------------------------------------- the model
class ClassifierBundle:
    """A model ready to score waveforms: ``score(audio [B, T]) -> probs [B, C]`` plus what it expects."""

    def __init__(self, model: torch.nn.Module, datamodule, device: torch.device,
                 class_names: Sequence[str] | None = None, clip_seconds: float | None = None):
        self.model, self.datamodule, self.device = model, datamodule, device
        self.sample_rate: int = int(model.sample_rate)
        self.num_classes: int = int(model.num_classes)
        self.clip_seconds: float = float(clip_seconds if clip_seconds is not None else datamodule.clip_seconds)
        self.class_names: list[str] | None = list(class_names) if class_names else None
        """Class names stored in the checkpoint (``None`` if it has none)."""

    def score(self, audio: torch.Tensor) -> torch.Tensor:
        from audio_ssl.methods.base import BaseMethod

        if isinstance(self.model, BaseMethod):  # the method contract: only a classifying method has classes
            if not self.model.classifies:
                raise ValueError(f"{type(self.model).__name__} does not classify (no classifier head): probe or "
                                 "fine-tune its encoder first")
            return self.model.predict_proba(audio)
        predict_proba: Callable | None = getattr(self.model, "predict_proba", None)
        if callable(predict_proba):  # a plain module that offers class probabilities
            return predict_proba(audio)
        return torch.softmax(self.model(self.model.frontend(audio)), dim=1)


def load_classifier(config_path: str | os.PathLike | None, checkpoint_path: str | os.PathLike,
                    device: str | torch.device = "cpu") -> ClassifierBundle:
    """Rebuild a model and load a Lightning checkpoint's weights (``weights_only``).

    ``config_path=None``: the model comes from the checkpoint's own description (``checkpoint["audio_ssl"]``:
    resolved model config, number of classes, sample rate, clip length, class names). With an experiment YAML,
    from its ``model`` block; the number of classes then comes from the checkpoint (description or
    hyper-parameters) when saved there, else from the config's data module.
    """
    from jsonargparse import ArgumentParser

    from audio_ssl.data.base import FoldAudioDataModule
    from audio_ssl.methods.base import BaseMethod
    from audio_ssl.utils.provenance import checkpoint_metadata, read_checkpoint

    checkpoint_path = Path(checkpoint_path)
    checkpoint = read_checkpoint(checkpoint_path)
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{checkpoint_path}: no state_dict of tensors in this checkpoint")
    meta = checkpoint_metadata(checkpoint)
    data_meta = meta.get("data") or {}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(FoldAudioDataModule, "data")
    parser.add_subclass_arguments(BaseMethod, "model")

    if config_path is None:
        if not meta.get("model_config"):
            raise ValueError(f"{checkpoint_path}: this checkpoint does not describe its model (saved before audio-ssl "
                             "stored one, or outside the audio-ssl CLI): pass --config EXPERIMENT.yaml")
        source, datamodule, model_block = str(checkpoint_path), None, dict(meta["model_config"])
        num_classes, sample_rate = int(meta["num_classes"]), int(meta["sample_rate"])
        clip_seconds = data_meta.get("clip_seconds")
        if clip_seconds is None:
            raise ValueError(f"{checkpoint_path}: the checkpoint does not record its clip length: pass "
                             "--config EXPERIMENT.yaml")
    else:
        config_path = Path(config_path)
        source = str(config_path)
        try:
            config = yaml.safe_load(config_path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{config_path}: cannot read the experiment config ({err})") from err
        if not isinstance(config, dict) or "model" not in config or "data" not in config:
            raise ValueError(f"{config_path}: not a Lightning experiment config (needs 'model' and 'data' blocks)")
        data_block, model_block = dict(config["data"]), dict(config["model"])
        try:
            datamodule = parser.instantiate_classes(parser.parse_object({"data": data_block})).data
        except Exception as err:
            raise ValueError(f"{config_path}: the 'data' block cannot be instantiated ({err})") from err
        hparams = checkpoint.get("hyper_parameters") or {}
        num_classes = int(meta.get("num_classes") or hparams.get("num_classes") or datamodule.num_classes)
        sample_rate, clip_seconds = int(datamodule.sample_rate), float(datamodule.clip_seconds)
    model_block["init_args"] = {**(model_block.get("init_args") or {}), "num_classes": num_classes,
                                "sample_rate": sample_rate}
    try:
        model = parser.instantiate_classes(parser.parse_object({"model": model_block})).model
    except Exception as err:
        raise ValueError(f"{source}: the model cannot be instantiated ({err})") from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{checkpoint_path}: the weights do not fit the model of {source} "
                         f"(built with num_classes={num_classes}): {err}") from err
    device = torch.device(device)
    return ClassifierBundle(model.eval().to(device), datamodule, device, class_names=data_meta.get("class_names"),
                            clip_seconds=clip_seconds)


# ---------------------------------------------------------------------------------------------- labels
def read_label_file(path: str | os.PathLike) -> list[str]:
    """Class names from a CSV with a ``display_name``, ``name`` or ``category`` column (AudioSet's
    ``class_labels_indices.csv`` works as is; rows in index order), from per-clip dataset metadata (ESC-50's
    ``esc50.csv``: ``target`` + ``category``; UrbanSound8K's: ``classID`` + ``class``; one name per index), or from a
    text file, one name a line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: label file does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        for index, column in (("target", "category"), ("classID", "class")):  # ESC-50 / UrbanSound8K metadata
            if rows and index in rows[0] and column in rows[0]:
                return _names_by_index(rows, index, column, path)
        for column in ("display_name", "name", "category"):
            if rows and column in rows[0]:
                return [row[column] for row in rows]
        columns = list(rows[0]) if rows else []
        raise ValueError(f"{path}: no display_name/name/category column (found {columns})")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _names_by_index(rows: list[dict], index: str, column: str, path: Path) -> list[str]:
    """Class names in index order from per-clip metadata (one row per clip: ``index`` = class id, ``column`` = its
    name). Raises ValueError naming the file when an id has two names or the ids are not 0..K-1."""
    names: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        try:
            key = int(row[index])
        except (TypeError, ValueError):
            raise ValueError(f"{path}:{line}: {index} {row[index]!r} is not a class index") from None
        if names.setdefault(key, row[column]) != row[column]:
            raise ValueError(f"{path}:{line}: {index} {key} is named both {names[key]!r} and {row[column]!r}")
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: the {index} values are not 0..{len(names) - 1} (found {sorted(names)[:10]}...)")
    return [names[k] for k in range(len(names))]


def class_names_for(labels: str, label_file: str | None, bundle: ClassifierBundle) -> list[str]:
    """Names for the model's outputs per ``--labels``/``--label-file``; indices when none are available."""
    names: list[str] | None = None
    source = ""
    if label_file:
        names, source = read_label_file(label_file), label_file
    elif labels == "audioset":
        path = os.environ.get(AUDIOSET_LABELS_ENV)
        if not path:
            raise ValueError(f"--labels audioset needs AudioSet's class_labels_indices.csv ({AUDIOSET_LABELS_URL}): "
                             f"pass --label-file or set ${AUDIOSET_LABELS_ENV}")
        names, source = read_label_file(path), path
    elif labels == "dataset":
        dm = bundle.datamodule
        if bundle.class_names:
            names, source = bundle.class_names, "the checkpoint's class names"
        elif dm is not None and dm.metadata_path.exists():
            names, source = list(dm.class_names), str(dm.metadata_path)
        else:
            where = f" and no dataset metadata at {dm.metadata_path}" if dm is not None else ""
            print(f"audio-ssl classify: the checkpoint has no class names{where}: classes are shown as indices "
                  "(pass --label-file NAMES.txt for names)", file=sys.stderr)
    if names is None:
        return [str(i) for i in range(bundle.num_classes)]
    if len(names) != bundle.num_classes:
        raise ValueError(f"{source} names {len(names)} classes but the model has {bundle.num_classes} outputs")
    return names


# ---------------------------------------------------------------------------------------------- files
class FileScan(NamedTuple):
    """What :func:`scan_paths` found: every file, in one of three lists."""

    audio: list[Path]
    """Files to classify: named directly (whatever their suffix, even missing) or found with an audio suffix."""
    skipped: list[tuple[Path, str]]
    """Non-hidden files found in folders that are not audio, with the reason."""
    hidden: list[Path]
    """Files found in folders whose name, or a folder's name below the searched one, starts with a dot."""


def scan_paths(paths: Sequence[str | os.PathLike]) -> FileScan:
    """Sort every file under ``paths`` into audio / skipped / hidden (see :class:`FileScan`), sorted per folder."""
    scan = FileScan([], [], [])
    for p in map(Path, paths):
        if not p.is_dir():
            scan.audio.append(p)
            continue
        for f in sorted(f for f in p.rglob("*") if f.is_file()):
            suffix = f.suffix.lower().lstrip(".")
            if any(part.startswith(".") for part in f.relative_to(p).parts):
                scan.hidden.append(f)
            elif suffix in AUDIO_EXTENSIONS:
                scan.audio.append(f)
            else:
                what = f"suffix .{suffix}" if suffix else "no suffix"
                scan.skipped.append((f, f"not an audio file ({what}; name it explicitly to try to decode it)"))
    # a file named twice (directly and inside a named folder, or two overlapping folders) is scored once
    seen: set[Path] = set()
    scan.audio[:] = [f for f in scan.audio if not (f.resolve() in seen or seen.add(f.resolve()))]
    return scan


def find_audio_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named directly (kept whatever their suffix, and kept if missing so they are reported) plus
    the audio files (:data:`AUDIO_EXTENSIONS`, not hidden) found recursively in folders, in sorted order."""
    return scan_paths(paths).audio


def _top_k(probs: np.ndarray, names: Sequence[str], k: int) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"index": int(i), "name": names[i], "prob": float(probs[i])} for i in order]


def classify_file(path: Path, bundle: ClassifierBundle, names: Sequence[str], window_seconds: float,
                  hop_seconds: float, top_k: int, batch_size: int = 16, timeline: bool = True,
                  progress: str = "never") -> dict:
    """One file's record (see the module docstring), streamed block by block in bounded memory.

    ``timeline=False`` leaves the per-window list out (``"timeline": None``; it is the only part that grows
    with the length). ``progress``: ``"auto"`` (a tqdm bar on stderr for a recording at least
    :data:`PROGRESS_MIN_SECONDS` long when stderr is a terminal), ``"always"`` or ``"never"``.
    Raises :class:`AudioDecodeError` (naming the file and the reason) if it cannot be read.
    """
    from tqdm.auto import tqdm

    if progress not in ("auto", "always", "never"):
        raise ValueError(f"progress must be auto, always or never, got {progress!r}")
    rate = bundle.sample_rate
    window = max(1, round(window_seconds * rate))
    hop = max(1, round(hop_seconds * rate))
    with open_audio(path) as stream:
        long = stream.duration is None or stream.duration >= PROGRESS_MIN_SECONDS
        show = progress == "always" or (progress == "auto" and long and sys.stderr.isatty())
        total = None if stream.duration is None else round(stream.duration, 1)
        with tqdm(total=total, unit="s", desc=path.name, file=sys.stderr, disable=not show, leave=False,
                  bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} s of audio "
                             "[{elapsed}<{remaining}]") as bar:
            scores = score_stream(bundle.score, stream_mono(stream, rate), window, hop, batch_size, bundle.device,
                                  keep_windows=timeline, on_block=lambda n: bar.update(n / rate))
    top = _top_k(scores.mean_probs, names, top_k)
    length = scores.length
    record = {"file": str(path), "duration": length / rate, "windows": len(scores.starts), "pred": top[0]["index"],
              "pred_name": top[0]["name"], "confidence": top[0]["prob"], "top_k": top, "timeline": None,
              "error": None, "probs": scores.mean_probs}
    if timeline:
        record["timeline"] = [{"start": s / rate, "end": min(s + window, length) / rate, "top_k": _top_k(p, names, top_k)}
                              for s, p in zip(scores.starts.tolist(), scores.window_probs)]
    return record


# ---------------------------------------------------------------------------------------------- output
def _csv_row(file: str, segment: str, start, end, duration, windows, top: list[dict], k: int, error=None) -> list:
    row = [file, segment, start, end, duration, windows]
    row += [top[0]["index"], top[0]["name"], top[0]["prob"]] if top else ["", "", ""]
    for i in range(k):
        row += [top[i]["index"], top[i]["name"], top[i]["prob"]] if i < len(top) else ["", "", ""]
    return row + ["" if error is None else error]


def write_predictions(records: list[dict], stream, fmt: str, top_k: int, timeline: bool) -> None:
    """Write the records of :func:`classify_file` (or ``{"file", "error"}`` for failures) as csv or json."""
    if fmt == "json":
        out = []
        for r in records:
            item = {key: r.get(key) for key in ("file", "duration", "windows", "pred", "pred_name", "confidence",
                                                 "top_k", "error")}
            if timeline:
                item["timeline"] = r.get("timeline")
            out.append(item)
        json.dump(out, stream, indent=2)
        stream.write("\n")
        return
    k = max([len(r["top_k"]) for r in records if r.get("top_k")], default=top_k)
    writer = csv.writer(stream, lineterminator="\n")
    header = ["file", "segment", "start", "end", "duration", "windows", "pred", "pred_name", "confidence"]
    for i in range(1, k + 1):
        header += [f"top{i}", f"top{i}_name", f"top{i}_prob"]
    writer.writerow(header + ["error"])
    for r in records:
        if r.get("error"):
            writer.writerow(_csv_row(r["file"], "clip", "", "", "", "", [], k, r["error"]))
            continue
        writer.writerow(_csv_row(r["file"], "clip", 0.0, r["duration"], r["duration"], r["windows"], r["top_k"], k))
        if timeline:
            for w in r["timeline"]:
                writer.writerow(_csv_row(r["file"], "window", w["start"], w["end"], r["duration"], 1, w["top_k"], k))


# ---------------------------------------------------------------------------------------------- command
def positive_seconds(value: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audio-ssl classify", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="audio files and folders (searched recursively)")
    parser.add_argument("--checkpoint", required=True, help="Lightning checkpoint (.ckpt) of the trained model")
    parser.add_argument("--config", default=None,
                        help="the experiment YAML the checkpoint was trained with (only for checkpoints that do "
                             "not describe their model)")
    parser.add_argument("--labels", choices=("dataset", "audioset", "index"), default="dataset",
                        help="class names: the checkpoint's (else the config's dataset metadata), AudioSet's 527 names (from --label-file "
                             f"or ${AUDIOSET_LABELS_ENV}), or plain indices (default: %(default)s)")
    parser.add_argument("--label-file", default=None,
                        help="class names from a CSV (display_name/name/category column) or a text file")
    parser.add_argument("--window-seconds", type=positive_seconds, default=None,
                        help="window length (default: the model's clip length)")
    parser.add_argument("--hop-seconds", type=positive_seconds, default=None, help="hop between windows (default: half a window)")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per file/window (default: %(default)s)")
    parser.add_argument("--timeline", action="store_true", help="also list every window's top-k")
    parser.add_argument("--format", choices=("csv", "json"), default=None,
                        help="output format (default: from the --out suffix, else csv)")
    parser.add_argument("--out", default="-", help="output file (default: stdout)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default: %(default)s)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress bar on stderr: auto = for recordings of at least "
                             f"{PROGRESS_MIN_SECONDS:.0f} s when stderr is a terminal (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        raise _fail(f"--top-k ({args.top_k}) and --batch-size ({args.batch_size}) must be >= 1")
    if args.format is None and args.out != "-" and Path(args.out).suffix.lower() not in (".csv", ".json"):
        raise _fail(f"--out {args.out}: name a .csv or .json file, or give --format csv|json")
    fmt = args.format or ("json" if args.out.lower().endswith(".json") else "csv")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        bundle = load_classifier(args.config, args.checkpoint, device)
        if not getattr(bundle.model, "classifies", True):  # the method contract: no head, no classes
            raise ValueError(f"{args.checkpoint}: {type(bundle.model).__name__} does not classify (no classifier "
                             "head): probe it (audio-ssl probe) or fine-tune its encoder, then classify with that")
        names = class_names_for(args.labels, args.label_file, bundle)
    except (ValueError, OSError) as err:
        raise _fail(str(err)) from None
    window_seconds = args.window_seconds or bundle.clip_seconds
    hop_seconds = args.hop_seconds or window_seconds / 2
    if hop_seconds > window_seconds:
        raise _fail(f"--hop-seconds {hop_seconds:g} is longer than the {window_seconds:g} s window: the audio between "
                    "windows would never be classified")
    top_k = min(args.top_k, bundle.num_classes)
    scan = scan_paths(args.paths)
    for path, reason in scan.skipped:
        print(f"audio-ssl classify: skipped {path}: {reason}", file=sys.stderr)
    files = scan.audio
    if not files:
        raise _fail(f"no audio files found in {' '.join(args.paths)} ({file_counts(0, 0, scan)})")

    records, failed = [], 0
    for path in files:
        try:
            records.append(classify_file(path, bundle, names, window_seconds, hop_seconds, top_k, args.batch_size,
                                         timeline=args.timeline, progress=args.progress))
        except AudioDecodeError as err:
            failed += 1
            records.append(unreadable("audio-ssl classify", path, err))

    save_predictions(records, args.out, fmt, top_k, args.timeline)
    print(f"audio-ssl classify: {file_counts(len(files) - failed, failed, scan)}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


def unreadable(program: str, path: Path, err: Exception) -> dict:
    """Name an unreadable file on stderr; its error row for the predictions file."""
    reason = str(err) if str(path) in str(err) else f"{path}: {err}"
    print(f"{program}: cannot read {reason}", file=sys.stderr)
    return {"file": str(path), "error": reason}


def save_predictions(records: list[dict], out: str, fmt: str, top_k: int, timeline: bool) -> None:
    """:func:`write_predictions` to ``out`` (``-``: standard output), its folder created."""
    if out == "-":
        write_predictions(records, sys.stdout, fmt, top_k, timeline)
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as stream:
        write_predictions(records, stream, fmt, top_k, timeline)


def file_counts(classified: int, failed: int, scan: FileScan) -> str:
    """``"7 files: 5 classified, 2 could not be read, 1 skipped (not audio), 3 hidden (ignored)"``."""
    found = len(scan.audio) + len(scan.skipped) + len(scan.hidden)
    parts = [f"{classified} classified", f"{failed} could not be read", f"{len(scan.skipped)} skipped (not audio)"]
    if scan.hidden:
        parts.append(f"{len(scan.hidden)} hidden (ignored)")
    return f"{found} file(s): " + ", ".join(parts)

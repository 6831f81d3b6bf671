"""``audio-ssl zeroshot``: CLAP zero-shot classification of audio files and folders against labels you name.

    audio-ssl zeroshot --model laion/clap-htsat-unfused --labels "dog barking,siren,rain" street.flac recordings/
    audio-ssl zeroshot --model ~/models/clap-htsat-unfused --labels-file labels.txt --out predictions.csv *.wav

No training: each label becomes a prompt (``--template``, default ``"This is a sound of {label}."``) and a
recording's probabilities are the softmax over labels of CLAP's scaled cosine similarity between the audio and
the prompts (:mod:`audio_ssl.models.clap`: Wu et al. 2023, LAION-CLAP; Elizalde et al. 2023).

Files are read as ``audio-ssl classify`` reads them (:mod:`audio_ssl.tools.classify`, whose functions this
reuses): any format the project's readers decode (libsndfile, or FFmpeg through PyAV), folders searched
recursively, every file streamed block by block, mixed to mono and resampled to the model's rate (48 kHz) with
the streaming soxr resampler of :mod:`audio_ssl.data.stream`. A recording is scored in windows of the model's
clip length (``max_length_s``, 10 s for LAION-CLAP; ``--window-seconds`` to shorten) every ``--hop-seconds``
(default half a window), and its probabilities are the mean over the windows (:mod:`audio_ssl.evaluation.windows`);
a recording shorter than a window is one window of its own length, which CLAP's processor repeats to its clip
length. A file that cannot be read gets an error on stderr and in the output, the others are still scored, and
the command exits with status 1.

Output: one line per file on stdout (``file: label prob, label prob, ...``, the ``--top-k`` best); ``--out
FILE.csv`` (or ``.json``) also writes them in ``audio-ssl classify``'s format (``pred_name``, ``top{i}_name``,
``top{i}_prob``, ...; ``--timeline`` adds one row per window). Label indices follow the order given.

Bad input stops the command with status 2 and a message that names it: no labels or both ``--labels`` and
``--labels-file``, an empty or duplicated label, a template without ``{label}``, a model that cannot be loaded
(offline: what to fetch and where to pass it), no audio files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from audio_ssl.data.audio import AudioDecodeError
from audio_ssl.data.stream import open_audio
from audio_ssl.models.clap import (
    DEFAULT_TEMPLATE,
    ClapLoadError,
    ClapZeroShot,
    check_labels,
    load_clap,
    prompts_for,
)
from audio_ssl.tools.classify import (
    classify_file,
    file_counts,
    positive_seconds,
    read_label_file,
    save_predictions,
    scan_paths,
    unreadable,
)

__all__ = ["ZeroShotScorer", "build_parser", "main", "parse_labels"]


def _fail(message: str) -> SystemExit:
    print(f"audio-ssl zeroshot: error: {message}", file=sys.stderr)
    return SystemExit(2)


def parse_labels(labels: str | None, labels_file: str | None) -> list[str]:
    """The labels of ``--labels "a,b,c"`` (comma-separated) or ``--labels-file`` (one a line, or a CSV with a
    ``display_name``/``name``/``category`` column), checked by :func:`~audio_ssl.models.clap.check_labels`.

    Raises ``ValueError`` naming the option or file: neither or both given, an empty list, an empty or repeated
    label."""
    if (labels is None) == (labels_file is None):
        raise ValueError("give the labels with exactly one of --labels \"dog barking,siren,...\" and --labels-file FILE")
    if labels_file is not None:
        return check_labels(read_label_file(labels_file), str(labels_file))
    items = [] if not labels.strip() else labels.split(",")
    return check_labels(items, f"--labels {labels!r}")


class ZeroShotScorer:
    """What :func:`audio_ssl.tools.classify.classify_file` needs from a model: ``score(windows [B, T] at
    ``sample_rate``) -> probs [B, L]``, ``sample_rate``, ``device``; the prompts are embedded once."""

    def __init__(self, clap: ClapZeroShot, prompts: Sequence[str]):
        self.clap = clap
        self.sample_rate = clap.sample_rate
        self.device = clap.device
        self.text_embeds = clap.text_embeddings(prompts)

    def score(self, audio: torch.Tensor) -> torch.Tensor:
        return self.clap.probabilities(self.clap.audio_embeddings(audio, self.sample_rate), self.text_embeds)


def _window_for(path: Path, rate: int, window_seconds: float) -> float:
    """The window (seconds) for one file: ``window_seconds``, or the file's own length at ``rate`` when it is
    shorter and its header says how long it is (so CLAP repeats the recording instead of hearing padding)."""
    try:
        with open_audio(path) as stream:
            frames, file_rate = stream.frames, stream.sample_rate
    except AudioDecodeError:
        return window_seconds  # classify_file reports it
    if frames is None or frames <= 0:
        return window_seconds
    samples = -(-frames * rate // file_rate)  # the resampled length (rounded up, as the resampler does)
    return min(window_seconds, samples / rate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audio-ssl zeroshot", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="audio files and folders (searched recursively)")
    parser.add_argument("--model", required=True,
                        help="CLAP model: a Hugging Face Hub id (e.g. laion/clap-htsat-unfused) or a local folder")
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit (default: main)")
    parser.add_argument("--labels", default=None, help='comma-separated labels, e.g. "dog barking,siren,rain"')
    parser.add_argument("--labels-file", default=None,
                        help="labels one a line, or a CSV with a display_name/name/category column")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE,
                        help="prompt per label; must contain {label} (default: %(default)r)")
    parser.add_argument("--top-k", type=int, default=5, help="labels listed per file (default: %(default)s)")
    parser.add_argument("--window-seconds", type=positive_seconds, default=None,
                        help="window length (default and maximum: the model's clip length, 10 s for LAION-CLAP)")
    parser.add_argument("--hop-seconds", type=positive_seconds, default=None, help="hop between windows (default: half a window)")
    parser.add_argument("--timeline", action="store_true", help="--out also lists every window's top-k")
    parser.add_argument("--out", default=None, help="also write the predictions to FILE.csv or FILE.json")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: %(default)s)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        raise _fail(f"--top-k ({args.top_k}) and --batch-size ({args.batch_size}) must be >= 1")
    try:
        labels = parse_labels(args.labels, args.labels_file)
        prompts = prompts_for(labels, args.template)
    except ValueError as err:
        raise _fail(str(err)) from None
    scan = scan_paths(args.paths)
    for path, reason in scan.skipped:
        print(f"audio-ssl zeroshot: skipped {path}: {reason}", file=sys.stderr)
    if not scan.audio:
        raise _fail(f"no audio files found in {' '.join(args.paths)} ({file_counts(0, 0, scan)})")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise _fail(f"--device {device}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise _fail(f"--device {device}: this machine has no CUDA device; use --device cpu")
    try:
        scorer = ZeroShotScorer(load_clap(args.model, revision=args.revision, device=device), prompts)
    except (ClapLoadError, ImportError) as err:
        raise _fail(str(err)) from None
    longest = scorer.clap.max_seconds
    if args.window_seconds is not None and args.window_seconds > longest:
        raise _fail(f"--window-seconds {args.window_seconds:g} is longer than the {longest:g} s {args.model} "
                    "sees at once")
    window_seconds = args.window_seconds or longest
    if args.out is not None and Path(args.out).suffix.lower() not in (".csv", ".json"):
        raise _fail(f"--out {args.out}: name a .csv or .json file")
    if args.hop_seconds is not None and args.hop_seconds > window_seconds:
        raise _fail(f"--hop-seconds {args.hop_seconds:g} is longer than the {window_seconds:g} s window: the audio "
                    "between windows would never be scored")
    top_k = min(args.top_k, len(labels))

    records, failed = [], 0
    for path in scan.audio:
        window = _window_for(path, scorer.sample_rate, window_seconds)
        hop = args.hop_seconds or window / 2
        try:
            record = classify_file(path, scorer, labels, window, hop, top_k, args.batch_size, timeline=args.timeline)
        except AudioDecodeError as err:
            failed += 1
            records.append(unreadable("audio-ssl zeroshot", path, err))
            continue
        records.append(record)
        best = ", ".join(f"{t['name']} {t['prob']:.3f}" for t in record["top_k"])
        print(f"{path}: {best}")

    if args.out is not None:
        save_predictions(records, args.out, "json" if args.out.lower().endswith(".json") else "csv", top_k,
                         args.timeline)
    print(f"audio-ssl zeroshot: {file_counts(len(scan.audio) - failed, failed, scan)}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


"""``audio-ssl make-beats-checkpoint``: write a BEATs checkpoint with RANDOM weights in the official format.

No official checkpoint can be downloaded on an offline machine, so the BEATs pipelines (probe, fine-tuning,
the AudioSet predictor) are exercised with random weights saved exactly as the released files are
(``{"cfg", "model"[, "label_dict"]}``, read with ``torch.load(weights_only=True)``). Results obtained with
these files are pipeline checks, never results.

Sizes: ``full`` is the released ``BEATs_iter3*`` architecture (12 x 768, ~90M parameters); ``tiny`` keeps
every architectural feature (post-norm DeepNorm, gated relative positions, patch projection) at 3 x 64, for
tests. ``--finetuned`` adds an AudioSet-style predictor and a ``label_dict`` (index -> made-up label id).

    audio-ssl make-beats-checkpoint /tmp/beats_random_full.pt --size full
    audio-ssl make-beats-checkpoint /tmp/beats_tiny_ft.pt --size tiny --finetuned --num-classes 527
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from audio_ssl.models.beats import BEATs, BEATsCheckpointError, BEATsConfig, save_beats_checkpoint

__all__ = [
    "DEFAULT_TINY_PATH",
    "SIZES",
    "beats_config",
    "ensure_tiny_checkpoint",
    "main",
    "make_beats_checkpoint",
]

#: Where the CLI fast_dev_run tests expect the tiny checkpoint (see ``tests/fast_dev_run/beats_*.json``).
DEFAULT_TINY_PATH = Path("/tmp/audio-ssl-test-beats-tiny.pt")

#: The tiny test architecture: the released design at 3 layers x 64 wide, no dropout or layer drop.
TINY_OVERRIDES: dict[str, Any] = dict(
    embed_dim=32, encoder_layers=3, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=4,
    conv_pos=16, conv_pos_groups=4, num_buckets=32, max_distance=64, encoder_layerdrop=0.0,
)
SIZES = ("tiny", "full")


def beats_config(size: str = "tiny", finetuned: bool = False, num_classes: int = 527) -> BEATsConfig:
    """The :class:`BEATsConfig` of a named size; ``finetuned`` adds a ``num_classes``-way predictor."""
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not one of {SIZES}")
    overrides: dict[str, Any] = dict(TINY_OVERRIDES) if size == "tiny" else {}
    if finetuned:
        overrides.update(finetuned_model=True, predictor_class=num_classes, predictor_dropout=0.0)
    return BEATsConfig.iter3(**overrides)


def make_beats_checkpoint(
    path: str | os.PathLike,
    size: str = "tiny",
    finetuned: bool = False,
    num_classes: int = 527,
    seed: int = 0,
) -> Path:
    """Write a random-weight BEATs checkpoint of ``size`` to ``path`` (atomically) and return the path.

    Weights are the model's own initialisation under ``torch.manual_seed(seed)``, so equal arguments give
    bit-identical files' tensors. ``finetuned`` checkpoints also carry ``label_dict = {i: "/m/random_i"}``.
    """
    cfg = beats_config(size, finetuned, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BEATs(cfg)
    if finetuned:
        model.label_dict = {i: f"/m/random_{i}" for i in range(num_classes)}
    return save_beats_checkpoint(model, path)


def ensure_tiny_checkpoint(path: str | os.PathLike = DEFAULT_TINY_PATH) -> Path:
    """Return ``path`` holding the tiny random checkpoint, writing it if it is missing or not the tiny one.

    Safe to call from concurrent processes: the write is atomic and the content is deterministic.
    """
    path = Path(path)
    if path.is_file():
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(ckpt, dict) and ckpt.get("cfg") == beats_config("tiny").to_dict():
                return path
        except Exception as err:  # noqa: BLE001 - any unreadable file is simply rewritten
            print(f"{path} is not a readable tiny BEATs checkpoint ({err}); writing a new one")
    return make_beats_checkpoint(path, size="tiny")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="audio-ssl make-beats-checkpoint",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("path", type=Path, help="output .pt file")
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--finetuned", action="store_true", help="add an AudioSet-style predictor + label_dict")
    parser.add_argument("--num-classes", type=int, default=527, help="predictor classes (with --finetuned)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path = make_beats_checkpoint(args.path, args.size, args.finetuned, args.num_classes, args.seed)
    except (ValueError, BEATsCheckpointError, OSError) as err:
        parser.error(str(err))
    size_mb = path.stat().st_size / 2**20
    print(f"wrote {path} ({args.size}{', fine-tuned' if args.finetuned else ''}, RANDOM weights, "
          f"{size_mb:.1f} MiB)")


if __name__ == "__main__":
    main()

"""Re-test the final weights of a finished ``audio-ssl cv`` run with test-time augmentation, into a second run folder
(the command-line face of :func:`audio_ssl.evaluation.tta.retest_with_tta`, which ``audio-ssl reproduce`` uses for
its TTA row).

    python benchmarks/gpu/tta_eval.py --run-dir results/NAME [--name NAME_tta10] [--tta-views 10] [--tta augment]
                                      [--tta-seed 0] [--folds 1,2]

Writes ``<out>/<name>/`` in the cv runner's format, so ``audio-ssl results`` reads it like any CV run; folds already
in the output are skipped. Exit status 1 when a requested fold has no final weights to re-test.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from audio_ssl.evaluation.tta import TTA_MODES, retest_with_tta, tta_run_name
from audio_ssl.tools.cv import parse_folds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="a finished CV run folder (results/NAME)")
    parser.add_argument("--name", default=None, help="output run name (default: <NAME>_tta<N>[_shift][_seed<S>])")
    parser.add_argument("--out", default=None, help="results root for the output (default: the run's parent)")
    parser.add_argument("--tta-views", type=int, default=10, help="views per clip (default %(default)s)")
    parser.add_argument("--tta", choices=TTA_MODES, default="augment",
                        help="augmented views (the clean clip + seeded training augmentations) or evenly spaced "
                             "circular shifts (default %(default)s)")
    parser.add_argument("--tta-seed", type=int, default=0, help="seed of the augmented views (default %(default)s)")
    parser.add_argument("--folds", type=parse_folds, default=None, help="default: every finished fold")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    src = Path(args.run_dir)
    name = args.name or tta_run_name(src, args.tta_views, args.tta, args.tta_seed)
    dst = (Path(args.out) if args.out else src.parent) / name
    try:
        summary, missing = retest_with_tta(src, args.tta_views, dst, folds=args.folds, tta=args.tta,
                                           tta_seed=args.tta_seed)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if summary is not None:
        acc = summary["variants"]["default"]["metrics"]["acc"]
        print(f"{dst}: acc {100 * acc['mean']:.1f} ± {100 * (acc['std'] or 0):.1f} over {acc['n']} folds")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())

"""``audio-ssl results [RUN_DIR ...] [--out FILE]``: the Markdown results table of CV runs.

Each argument is a CV run folder (or its ``summary.json``); default: every ``results/*`` folder with a
summary. One row per variant: method, encoder, pretraining data (marked when pretraining saw test-fold
audio), protocol, accuracy mean ± sample std over folds, folds run, epochs, wall time.
"""

from __future__ import annotations

import argparse
import glob

from audio_ssl.evaluation.summary import load_summaries, results_table
from audio_ssl.utils.io import atomic_write


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="audio-ssl results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="CV run folders or summary.json files (default: results/*)")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    parser.add_argument("--metric", default="acc", help="metric column (default: %(default)s)")
    args = parser.parse_args(argv)
    runs = args.runs or sorted(glob.glob("results/*"))
    summaries = load_summaries(runs)
    if not summaries:
        raise SystemExit(f"no summary.json found in {runs or 'results/*'}: run `audio-ssl cv` first")
    table = results_table(summaries, metric=args.metric)
    print(table, end="")
    if args.out:
        with atomic_write(args.out, "w") as fh:
            fh.write(table)

"""``audio-ssl results [RUN_DIR ...] [--out FILE]``: the Markdown results table of CV runs.

Each argument is a CV run folder (or its ``summary.json``); default: every ``results/*`` folder with a
summary. One row per variant: method, encoder, pretraining data (marked when pretraining saw test-fold
audio), protocol, accuracy mean ± sample std over folds, folds run, epochs, wall time.

``--readme README.md --section NAME`` writes the table into that file between the lines
``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` (the README's tables are generated this way from the
committed result files, never typed by hand); a missing marker is an error naming the file and the section.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from audio_ssl.evaluation.summary import load_summaries, results_table
from audio_ssl.utils.io import atomic_write


def replace_section(text: str, section: str, table: str, source: str = "<text>") -> str:
    """``text`` with the lines between ``<!-- results:SECTION -->`` and ``<!-- /results:SECTION -->`` replaced
    by ``table``. Raises ValueError naming ``source`` and the section when either marker is missing or twice."""
    start, end = f"<!-- results:{section} -->", f"<!-- /results:{section} -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{source}: needs exactly one '{start}' line followed by one '{end}' line")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table.rstrip()}\n{end}{tail}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="audio-ssl results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="CV run folders or summary.json files (default: results/*)")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    parser.add_argument("--metric", default="acc", help="metric column (default: %(default)s)")
    parser.add_argument("--readme", default=None, help="Markdown file whose results section to rewrite")
    parser.add_argument("--section", default=None, help="the section name in --readme's markers")
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
    if args.readme:
        if not args.section:
            raise SystemExit("--readme needs --section NAME (the name in its <!-- results:NAME --> markers)")
        try:
            text = replace_section(Path(args.readme).read_text(), args.section, table, args.readme)
        except (OSError, ValueError) as err:
            raise SystemExit(f"audio-ssl results: error: {err}") from None
        with atomic_write(args.readme, "w") as fh:
            fh.write(text)

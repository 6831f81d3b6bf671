"""Write the README's benchmark tables from committed result files (never typed by hand).

    python benchmarks/readme_tables.py serve_load results/cpu-2026-11-30/bench/serve_load.json --readme README.md

Each kind renders one JSON written by its benchmark (``serve_load.py --out``) into a Markdown table and puts it
between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in the README (the same markers
``audio-ssl results --readme`` uses; NAME is the kind). Without ``--readme`` the table is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def serve_load_table(data: dict) -> str:
    """One row per scenario of ``serve_load.py --out``: answers, errors by status, throughput, latency, memory."""
    header = ["scenario", "max batch", "queue", "clients", "answered 200", "other answers", "requests/s", "p50",
              "p99", "mean batch", "server RSS idle / peak"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for r in data["results"]:
        other = ", ".join(f"{n} x {code}" for code, n in sorted(r["statuses"].items()) if code != "200") or "none"
        lines.append(f"| {r['scenario'].replace('_', ' ')} | {r['max_batch']} | {r['max_queue']} | {r['clients']} | "
                     f"{r['ok']} | {other} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | "
                     f"{r['mean_batch']:.2f} | {r['rss_idle_mb']:.0f} / {r['rss_peak_mb']:.0f} MB |")
    return "\n".join(lines) + "\n"


RENDERERS = {"serve_load": serve_load_table}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(RENDERERS))
    parser.add_argument("result", type=Path, help="the benchmark's JSON output")
    parser.add_argument("--readme", type=Path, default=None)
    args = parser.parse_args(argv)
    table = RENDERERS[args.kind](json.loads(args.result.read_text()))
    if args.readme is None:
        print(table, end="")
        return
    from audio_ssl.tools.results import replace_section
    from audio_ssl.utils.io import atomic_write

    text = replace_section(args.readme.read_text(), args.kind, table, str(args.readme))
    with atomic_write(args.readme, "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()

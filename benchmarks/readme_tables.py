"""Write the README's benchmark tables from committed result files (never typed by hand).

    python benchmarks/readme_tables.py serve_load results/cpu-2026-11-30/bench/serve_load.json --readme README.md
    python benchmarks/readme_tables.py onnx_parity results/cpu-2026-11-30/bench/onnx_parity.json --readme README.md
    python benchmarks/readme_tables.py zoo_pipeline_check results/cpu-2026-11-30/bench/zoo_pipeline_check.json --readme README.md
    python benchmarks/readme_tables.py device_resident results/cpu-2026-11-30/bench/device_resident.json --readme README.md
    python benchmarks/readme_tables.py seed results/reproduce/reproduce_summary.json --readme README.md

Each kind renders one JSON written by its benchmark (``serve_load.py --out``) into a Markdown table and puts it
between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in the README (the same markers
``audio-ssl results --readme`` uses; NAME is the kind). Without ``--readme`` the table is printed. ``seed`` is
the seed table of ``audio-ssl reproduce`` (which writes it itself after a run; rendered by
:func:`audio_ssl.tools.reproduce.seed_table`).
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


def onnx_parity_table(data: dict) -> str:
    """One row per exported classifier of ``onnx_parity.py --out``: parity and throughput, ONNX against PyTorch."""
    header = ["classifier", "encoder", "parameters", "dynamic length", "clips x repeats",
              "max abs diff of probabilities", "PyTorch clips/s", "onnxruntime clips/s", "onnxruntime / PyTorch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    args = data.get("args", {})
    for r in data["runs"]:
        lines.append(f"| {r['kind']} ({r['method']}) | {r['encoder']} | {r['parameters'] / 1e6:.2f}M | "
                     f"{'yes' if r['dynamic_length'] else 'no'} | {args.get('clips', '?')} x {args.get('repeats', '?')} | "
                     f"{r['max_abs_diff']:.1e} | {r['torch_clips_per_s']:.1f} | {r['onnx_clips_per_s']:.1f} | "
                     f"{r['onnx_speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def zoo_pipeline_check_table(data: dict) -> str:
    """One row per encoder of ``zoo_pipeline_check.py --out``: size, CPU embedding throughput, and whether the
    probe / fine-tune / zero-shot pipelines ran end to end (random weights: accuracies are chance, not results)."""

    def run(record: dict | None) -> str:
        if not record:
            return "-"
        if record["returncode"] != 0:
            return f"failed (rc {record['returncode']})"
        accs = " / ".join(f"{100 * a:.1f}" for a in (record.get("accuracy") or {}).values())
        return f"ran, {record['wall_s']:.0f} s (acc {accs} %)"

    def finetune(pipes: dict) -> str:
        fit, test = pipes.get("finetune"), pipes.get("finetune_test")
        if not fit or fit["returncode"] != 0 or not test:
            return run(fit)
        return f"fit {fit['wall_s']:.0f} s, then test: " + run(test)

    header = ["encoder", "encoder parameters", "embed clips/s (5 s clips, batch 8)", "probe or zero-shot",
              "fine-tune (fit, then test)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for r in data["results"]:
        embed, pipes = r.get("embed") or {}, r.get("pipelines") or {}
        params = embed.get("encoder_params")
        speed = embed.get("embed_clips_per_s")
        lines.append(f"| {r['encoder']} | {f'{params / 1e6:.1f}M' if params else '-'} | "
                     f"{f'{speed:.2f}' if speed is not None else '-'} | "
                     f"{run(pipes.get('probe') or pipes.get('zeroshot'))} | {finetune(pipes)} |")
    return "\n".join(lines) + "\n"


def device_resident_table(data: dict) -> str:
    """One row per ``device_resident.py --out``: the worker DataLoader path against the device-resident path on the
    same (checked equal) batches of one fold."""
    header = ["device", "load average", "clips x timed epochs per path", "batch", "DataLoader workers", "DataLoader s/epoch", "resident s/epoch",
              "DataLoader / resident", "in CPU time", "upload (once)", "on the device"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    c = data["config"]
    epochs = len(data["pair_ratios"]) * c.get("epochs_per_pass", 1)
    cpu_ratio = data["cpu_ratio_dataloader_over_resident"]
    lines.append(f"| {c['device']} | {data['environment']['loadavg_at_start'][0]:.1f} | {data['clips_per_epoch']} x "
                 f"{epochs} | {c['batch_size']} | "
                 f"{c['num_workers']} | {data['dataloader_s']:.3f} | {data['resident_s']:.3f} | "
                 f"{data['ratio_dataloader_over_resident']:.2f}x | {'-' if cpu_ratio is None else f'{cpu_ratio:.2f}x'} | "
                 f"{data['upload_s']:.2f} s | "
                 f"{data['resident_mb']:.0f} MB |")
    return "\n".join(lines) + "\n"


def seed_table(data: dict) -> str:
    """The seed table of ``audio-ssl reproduce`` (its ``reproduce_summary.json``)."""
    from audio_ssl.tools.reproduce import seed_table as render

    return render(data)


RENDERERS = {"serve_load": serve_load_table, "onnx_parity": onnx_parity_table,
             "zoo_pipeline_check": zoo_pipeline_check_table, "device_resident": device_resident_table,
             "seed": seed_table}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(RENDERERS))
    parser.add_argument("result", type=Path, nargs="+", help="the benchmark's JSON output (several: rows in order)")
    parser.add_argument("--readme", type=Path, default=None)
    args = parser.parse_args(argv)
    tables = [RENDERERS[args.kind](json.loads(path.read_text())) for path in args.result]
    table = tables[0] + "".join(t.split("\n", 2)[2] for t in tables[1:])  # one header, every file's rows
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

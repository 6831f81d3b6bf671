"""Do the numbers of one CV run agree everywhere they are written? ``folds.csv`` against each fold's CSV log
(``fold{k}/csv/version_*/metrics.csv``, the last ``test/*`` row) and against the metrics logged to each fold's
W&B run (offline ``.wandb`` files under ``fold{k}/wandb``, read record by record).

    python benchmarks/metrics_agreement.py results/supervised_cpu [--metrics acc f1_macro acc_top5]

Prints a table, one row per fold and metric with the three values, and exits 1 if any two differ by more than 1e-6
(W&B and CSV receive the same float; ``folds.csv`` is computed with scikit-learn from the per-clip predictions).

The ``.wandb`` file is W&B's append-only log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of
records, each with a 7-byte header (CRC-32C, little-endian length, type: full/first/middle/last) whose payloads
are ``wandb_internal_pb2.Record`` protobufs; ``history`` records carry the logged values as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, format_table, write_json  # noqa: E402

BLOCK = 32 * 1024
FILE_HEADER = 7
RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path):
    """Yield the protobuf ``Record`` of every complete record of an offline ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (no ':W&B' header)")
    pos, pending = FILE_HEADER, b""
    while pos + RECORD_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < RECORD_HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + RECORD_HEADER])
        payload = data[pos + RECORD_HEADER:pos + RECORD_HEADER + length]
        pos += RECORD_HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if kind in (FULL, FIRST):
            pending = payload
        elif kind in (MIDDLE, LAST):
            pending += payload
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def wandb_logged(run_dir: Path, prefix: str = "test/") -> dict[str, float]:
    """The last value of every ``prefix*`` key logged to the W&B runs under ``run_dir`` (history records)."""
    values: dict[str, float] = {}
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            if record.WhichOneof("record_type") != "history":
                continue
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                value = json.loads(item.value_json)
                if key.startswith(prefix) and isinstance(value, (int, float)):  # not images or tables
                    values[key] = float(value)
    return values


def csv_logged(fold_dir: Path, prefix: str = "test/") -> dict[str, float]:
    """The last non-empty value of every ``prefix*`` column of the fold's CSV logs."""
    values: dict[str, float] = {}
    for path in sorted(fold_dir.glob("csv/version_*/metrics.csv")):
        for row in csv.DictReader(open(path)):
            values.update({k: float(v) for k, v in row.items() if k.startswith(prefix) and v not in ("", None)})
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--metrics", nargs="+", default=["acc", "f1_macro", "acc_top5"])
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--out", type=Path, default=None, help="also write the report (the printed text) to this file")
    parser.add_argument("--json", type=Path, default=None, help="also write the values as JSON to this file")
    args = parser.parse_args(argv)
    table: list[list] = []
    rows = list(csv.DictReader(open(args.run_dir / "folds.csv")))
    worst, bad = 0.0, []
    for row in rows:
        fold_dir = args.run_dir / f"fold{row['fold']}"
        logged_csv, logged_wandb = csv_logged(fold_dir), wandb_logged(fold_dir)
        for metric in args.metrics:
            values = {"folds.csv": float(row[metric]), "csv log": logged_csv.get(f"test/{metric}"),
                      "W&B": logged_wandb.get(f"test/{metric}")}
            missing = [k for k, v in values.items() if v is None]
            spread = 0.0 if missing else max(values.values()) - min(values.values())
            worst = max(worst, spread)
            if missing or spread > args.tolerance:
                bad.append((row["fold"], metric, values))
            table.append([row["fold"], metric, *("missing" if v is None else f"{v:.6f}" for v in values.values()),
                          "missing" if missing else f"{spread:.1e}"])
    verdict = (f"{len(rows)} folds x {len(args.metrics)} metrics: largest difference {worst:.2e}; "
               f"{'all agree' if not bad else f'{len(bad)} disagree'}")
    lines = [format_table(table, ["fold", "metric", "folds.csv", "csv log", "W&B", "difference"]), verdict]
    print("\n".join(lines))
    write_json(args.json, {"run_dir": str(args.run_dir), "tolerance": args.tolerance, "largest_difference": worst,
                           "rows": [dict(zip(["fold", "metric", "folds.csv", "csv log", "W&B", "difference"], r))
                                    for r in table], "agree": not bad, "environment": environment()})
    if args.out is not None:
        from audio_ssl.utils.io import atomic_write

        with atomic_write(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

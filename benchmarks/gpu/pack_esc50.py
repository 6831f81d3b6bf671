"""Split an ESC-50 folder into part folders small enough to carry to the GPU machine one call at a time.

    python benchmarks/gpu/pack_esc50.py --data-dir /work/shared/data/esc50-16k --out .gpu/esc50 [--max-mib 34]

Writes ``OUT/part1 .. OUT/partN``; each keeps the dataset's relative layout (``meta/...``, ``audio/<file>``), so
moving every part's contents into one folder rebuilds the dataset. ``part1`` holds ``meta/`` (and
``PARTS.json``: the number of parts and the audio file count of each, which ``run_reproduce.sh`` checks before
it trains) plus audio; the other parts hold audio only. Files are hard-linked when possible, else copied.
``OUT`` is emptied first. Prints each part's size in MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

MIB = 1024 * 1024


def place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def plan_parts(meta_files: list[Path], audio_files: list[Path], budget: int) -> list[list[Path]]:
    """Files (relative paths) per part, in name order: part 1 starts with the metadata; a part is closed when the
    next file would take it over ``budget`` bytes."""
    parts: list[list[Path]] = [list(meta_files)]
    sizes = [sum(f.stat().st_size for f in meta_files)]
    for f in audio_files:
        size = f.stat().st_size
        if size > budget:
            raise ValueError(f"{f} alone ({size / MIB:.1f} MiB) is over the part budget")
        if sizes[-1] + size > budget:
            parts.append([])
            sizes.append(0)
        parts[-1].append(f)
        sizes[-1] += size
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="ESC-50 folder with meta/esc50.csv and audio/")
    parser.add_argument("--out", default=".gpu/esc50", help="where the part folders go (emptied first)")
    parser.add_argument("--max-mib", type=float, default=34.0, help="size limit of one part (default %(default)s)")
    args = parser.parse_args(argv)

    data_dir = Path(args.data_dir).resolve()
    csv = data_dir / "meta" / "esc50.csv"
    if not csv.is_file():
        parser.error(f"{csv} not found: --data-dir must hold meta/esc50.csv and audio/")
    meta_files = sorted(p for p in (data_dir / "meta").rglob("*") if p.is_file())
    audio_files = sorted(p for p in (data_dir / "audio").rglob("*") if p.is_file())
    if not audio_files:
        parser.error(f"no files under {data_dir / 'audio'}")
    budget = int(args.max_mib * MIB) - 64 * 1024  # headroom for PARTS.json and directory entries
    parts = plan_parts(meta_files, audio_files, budget)

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    counts = [sum(1 for f in files if f.is_relative_to(data_dir / "audio")) for files in parts]
    for i, files in enumerate(parts, start=1):
        for f in files:
            place(f, out / f"part{i}" / f.relative_to(data_dir))
    manifest = {"num_parts": len(parts), "audio_files": counts, "total_audio_files": sum(counts),
                "source": str(data_dir)}
    (out / "part1" / "PARTS.json").write_text(json.dumps(manifest, indent=2) + "\n")

    total = 0
    for i in range(1, len(parts) + 1):
        size = sum(p.stat().st_size for p in (out / f"part{i}").rglob("*") if p.is_file())
        total += size
        print(f"{out / f'part{i}'}: {size / MIB:6.2f} MiB, {counts[i - 1]} audio files"
              + (" + meta/ + PARTS.json" if i == 1 else ""))
    print(f"total {total / MIB:.2f} MiB in {len(parts)} parts, {sum(counts)} audio files")
    return 0


if __name__ == "__main__":
    sys.exit(main())

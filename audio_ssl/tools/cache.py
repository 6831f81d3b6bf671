"""``audio-ssl cache``: list and clean the waveform cache folder (shared by every run; see :mod:`audio_ssl.data.cache`).

    audio-ssl cache list [--cache-dir DIR] [--verify]
    audio-ssl cache clean [--cache-dir DIR] (--unused-days N | --stale | --all) [--dry-run]

``list`` prints one line per cache: status, sample rate, clips (and skipped bad files), size, last use, name;
``--verify`` also checks every array's SHA-256 against its index (about 1.7 s per GB). ``clean`` deletes caches not
opened for N days (``--unused-days``), damaged, incomplete or old-version caches and leftovers of interrupted
writes (``--stale``), or everything (``--all``); a build in progress (files younger than an hour) is never touched.
The folder is ``--cache-dir``, else ``$AUDIO_SSL_CACHE``, else ``~/.cache/audio-ssl/waveforms``. Deleted caches
are rebuilt from the audio the next time a run needs them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from audio_ssl.data.cache import CacheEntry, clean_caches, default_cache_dir, list_caches


def _size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return ""


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def format_entries(entries: list[CacheEntry], now: float | None = None) -> str:
    """The ``cache list`` table of ``entries`` (one line each, reasons indented below)."""
    now = time.time() if now is None else now
    lines = [f"{'status':<12}{'rate':>8}{'clips':>8}{'skipped':>9}{'size':>10}  {'last used':<12}name"]
    for e in entries:
        rate = f"{e.sample_rate}" if e.sample_rate else "-"
        clips = f"{e.clips}" if e.clips is not None else "-"
        skipped = f"{e.skipped}" if e.skipped is not None else "-"
        lines.append(f"{e.status:<12}{rate:>8}{clips:>8}{skipped:>9}{_size(e.nbytes):>10}  "
                     f"{_age(now - e.last_used):<12}{e.stem}")
        if e.reason and e.status != "ok":
            lines.append(f"{'':12}{e.reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="audio-ssl cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True, metavar="{list,clean}")
    listing = sub.add_parser("list", help="the caches in the folder, their state, size and last use")
    cleaning = sub.add_parser("clean", help="delete unused, stale or all caches")
    for p in (listing, cleaning):
        p.add_argument("--cache-dir", default=None,
                       help="the cache folder (default $AUDIO_SSL_CACHE or ~/.cache/audio-ssl/waveforms)")
    listing.add_argument("--verify", action="store_true", help="also check every array's SHA-256 (reads it all)")
    cleaning.add_argument("--unused-days", type=float, default=None, metavar="N",
                          help="delete caches not opened for N days")
    cleaning.add_argument("--stale", action="store_true",
                          help="delete damaged, incomplete and old-version caches and leftover temporary files")
    cleaning.add_argument("--all", action="store_true", help="delete every cache")
    cleaning.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    args = parser.parse_args(argv)
    folder = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if args.cache_dir and not folder.is_dir():
        parser.error(f"--cache-dir {folder} is not a folder")

    if args.action == "list":
        entries = list_caches(folder, checksum=args.verify)
        if not entries:
            print(f"no waveform caches in {folder}")
            return
        print(f"waveform caches in {folder}:")
        print(format_entries(entries))
        total = sum(e.nbytes for e in entries)
        print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {_size(total)}")
        return

    if args.unused_days is None and not args.stale and not args.all:
        parser.error("say what to clean: --unused-days N, --stale or --all")
    if args.unused_days is not None and args.unused_days < 0:
        parser.error(f"--unused-days must be >= 0, got {args.unused_days}")
    try:
        removed = clean_caches(folder, unused_days=args.unused_days, stale=args.stale, everything=args.all,
                               dry_run=args.dry_run)
    except OSError as err:
        sys.stderr.write(f"audio-ssl cache: error: {err}\n")
        raise SystemExit(1) from None
    verb = "would delete" if args.dry_run else "deleted"
    for e in removed:
        print(f"{verb} {e.stem} ({e.status}, {_size(e.nbytes)})")
    print(f"{verb} {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, "
          f"{_size(sum(e.nbytes for e in removed))} in {folder}")


if __name__ == "__main__":
    main()

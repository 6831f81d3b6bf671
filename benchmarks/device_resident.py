"""The device-resident data path against the worker DataLoader path, on the same batches.

    python benchmarks/device_resident.py --data-dir ../shared/data/esc50-16k \
        --out results/bench/device_resident.json                      # CPU
    python benchmarks/device_resident.py --data-dir ../shared/data/esc50-16k --device cuda \
        --out results/bench/device_resident_cuda.json                 # a GPU

One fold's clips (``--fold``) as a training set (shuffled, random crops of ``--clip-seconds``), loaded by
``ESC50DataModule``'s two paths for the same loader seed: the DataLoader over the waveform cache
(``--num-workers`` persistent workers, pinned memory on CUDA, each batch moved to ``--device`` with
``non_blocking=True`` as Lightning does) and the clips uploaded once to ``--device``
(:class:`~audio_ssl.data.datasets.ResidentClips`), batches gathered there. First one pass of each in lockstep
checks that every batch is equal (rows, labels, audio bit for bit); then ``--repeats`` pairs of timed passes
(``--epochs`` epochs each, the order within a pair alternating, the device synchronised at each epoch's end),
after an untimed warm-up epoch of each (worker start-up). Reported: seconds per epoch of each (median), clips/s, the
median of the per-pair ratios DataLoader / resident (> 1: the resident path is faster), the same ratio of the CPU
seconds per epoch of the process and its workers (``/proc``; less sensitive to other load on a shared machine),
the one-off upload time and the device memory the clips take.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, format_table, median, ratio, sync, tree_cpu_seconds, write_json  # noqa: E402

from audio_ssl.data import ESC50DataModule  # noqa: E402
from audio_ssl.data.datasets import ResidentClips  # noqa: E402

LOADER_SEED = 0


def as_trainer(device: torch.device) -> SimpleNamespace:
    """What the data module reads of a trainer to place its loaders: the device (one process, no shards)."""
    return SimpleNamespace(strategy=SimpleNamespace(root_device=device), distributed_sampler_kwargs=None,
                           state=SimpleNamespace(fn=None))


def build_loader(dm: ESC50DataModule, dataset, resident: bool):
    """The data module's training loader of ``dataset`` on one of the two paths, seeded alike."""
    dm.device_resident = resident
    torch.manual_seed(LOADER_SEED)  # the loader's private generators are seeded from the global one
    return dm._loader(dataset, train=True)


def one_pass(loader, device: torch.device) -> int:
    """One epoch: every batch on ``device`` (as Lightning's transfer); the clip count."""
    clips = 0
    for batch in loader:
        audio = batch["audio"].to(device, non_blocking=True)
        batch["label"].to(device, non_blocking=True)
        clips += len(audio)
    sync(device)
    return clips


def check_equal(plain, resident, device: torch.device) -> int:
    """One pass of both loaders in lockstep: every batch equal (on ``device``); the number of batches."""
    count = 0
    for a, b in zip(plain, resident, strict=True):
        for key in ("audio", "label", "index"):
            if not torch.equal(a[key].to(device), b[key]):
                raise AssertionError(f"batch {count}: {key} differs between the two paths")
        count += 1
    return count


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    dm = ESC50DataModule(args.data_dir, cache_dir=args.cache_dir, test_fold=args.fold, batch_size=args.batch_size,
                         num_workers=args.num_workers, clip_seconds=args.clip_seconds,
                         pin_memory=device.type == "cuda")
    dm.trainer = as_trainer(device)
    dataset = dm.split([args.fold], random_crop=True)
    sync(device)
    start = time.perf_counter()
    resident_clips = dm._resident_clips(dataset, device)
    sync(device)
    upload_s = time.perf_counter() - start

    plain, resident = build_loader(dm, dataset, False), build_loader(dm, dataset, True)
    assert resident.dataset is resident_clips
    batches = check_equal(plain, resident, device)
    one_pass(plain, device), one_pass(resident, device)  # warm-up: worker start-up, first-touch of pages
    times: dict[str, list[float]] = {"dataloader": [], "resident": []}
    cpu: dict[str, list[float]] = {"dataloader": [], "resident": []}
    clips = 0
    for r in range(args.repeats):
        order = [("dataloader", plain), ("resident", resident)]
        for name, loader in order if r % 2 == 0 else order[::-1]:
            c0, t0 = tree_cpu_seconds(), time.perf_counter()
            for _ in range(args.epochs):
                clips = one_pass(loader, device)
            times[name].append((time.perf_counter() - t0) / args.epochs)
            cpu[name].append((tree_cpu_seconds() - c0) / args.epochs)
    pair_ratios = [ratio(a, b) for a, b in zip(times["dataloader"], times["resident"])]
    return {
        "environment": environment(),
        "config": {"data_dir": str(args.data_dir), "fold": args.fold, "device": str(device),
                   "batch_size": args.batch_size, "num_workers": args.num_workers, "clip_seconds": args.clip_seconds,
                   "repeats": args.repeats, "epochs_per_pass": args.epochs, "threads": args.threads},
        "clips": len(dataset),
        "clips_per_epoch": clips,
        "batches_per_epoch": batches,
        "batches_equal": True,
        "upload_s": upload_s,
        "resident_mb": ResidentClips.nbytes(dataset) / 1e6,
        "seconds_per_epoch": times,
        "dataloader_s": median(times["dataloader"]),
        "resident_s": median(times["resident"]),
        "dataloader_clips_per_s": clips / median(times["dataloader"]),
        "resident_clips_per_s": clips / median(times["resident"]),
        "pair_ratios": pair_ratios,
        "ratio_dataloader_over_resident": median(pair_ratios),
        "cpu_seconds_per_epoch": cpu,
        # None when the resident path's CPU time is below the clock's resolution (a tiny set): JSON has no inf
        "cpu_ratio_dataloader_over_resident": (ratio(median(cpu["dataloader"]), median(cpu["resident"]))
                                               if median(cpu["resident"]) > 0 else None),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="an ESC-50 folder (meta/esc50.csv, audio/)")
    parser.add_argument("--cache-dir", default=None, help="waveform cache folder (default: the shared default)")
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2, help="workers of the DataLoader path")
    parser.add_argument("--clip-seconds", type=float, default=4.0, help="crop length (ESC-50 clips are 5 s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs of passes")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per timed pass (the time is per epoch)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default=None, help="JSON result file")
    args = parser.parse_args(argv)
    if not 1 <= args.fold <= ESC50DataModule.num_folds:
        parser.error(f"--fold {args.fold}: ESC-50 has folds 1..{ESC50DataModule.num_folds}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    rows = [["DataLoader", args.num_workers, result["dataloader_s"], result["dataloader_clips_per_s"],
             median(result["cpu_seconds_per_epoch"]["dataloader"])],
            ["resident", 0, result["resident_s"], result["resident_clips_per_s"],
             median(result["cpu_seconds_per_epoch"]["resident"])]]
    print(format_table(rows, ["path", "workers", "s/epoch", "clips/s", "CPU s/epoch"]))
    cpu_ratio = result["cpu_ratio_dataloader_over_resident"]
    print(f"{result['clips']} clips, {result['batches_per_epoch']} batches per epoch, every batch equal; "
          f"DataLoader / resident = {result['ratio_dataloader_over_resident']:.2f} (median of "
          f"{len(result['pair_ratios'])} pairs), in CPU time "
          f"{'not measurable (below the clock resolution)' if cpu_ratio is None else f'{cpu_ratio:.2f}'}; "
          f"upload {result['upload_s']:.2f} s, {result['resident_mb']:.0f} MB on {args.device}")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

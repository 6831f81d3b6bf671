"""Data-path benchmark: loading, the log-mel front end and the data stall of a training epoch, in one run.

    python benchmarks/data_pipeline.py --data-dir ../shared/data/esc50-16k \
        --out results/bench/data_pipeline.json
    python benchmarks/data_pipeline.py --data-dir ../shared/data/esc50-16k --quick  # smaller sizes

(a) loading: clips/s from the warm waveform cache to a waveform batch (``ESC50DataModule.train_dataloader``)
    against a naive Dataset that calls ``librosa.load(path, sr=16000)`` in ``__getitem__`` (the same
    DataLoader settings: batch size, shuffling, workers, persistent workers), on the given 16 kHz files
    and on a 44.1 kHz WAV copy of a subset that this script writes to a temporary folder (the official
    ESC-50 format, which has to be resampled). The one-off cache build of the copy is timed separately.
    Targets: >= 5x the naive loader at 16 kHz, >= 15x at 44.1 kHz.
(b) front end: the batched ``LogMelSpectrogram`` on CPU against per-clip ``librosa.feature.melspectrogram``
    + ``power_to_db`` on the same waveforms, plus a side table on the STFT power (``abs()**2`` vs
    ``real**2 + imag**2``).
(c) data stall: the share of a training epoch of an experiment config (default the CPU-sized supervised
    recipe, test fold 5) spent waiting for the next batch, from Lightning's SimpleProfiler
    (``[_TrainingEpochLoop].train_dataloader_next``); target < 5 %. Two epochs run, the second is reported
    (the first also pays for starting the workers). Peak memory of the process tree (main + workers).

Throughputs are steady-state: each loader first delivers ``num_workers * prefetch_factor + 2`` untimed
batches (worker start-up, filling the prefetch queue), then ``--batches`` batches are timed (more until at
least ``--min-seconds`` have passed), running over epoch ends when the training set is smaller.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.profilers import SimpleProfiler
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO_ROOT,
    TreeMemorySampler,
    environment,
    format_table,
    load_experiment,
    median,
    peak_rss_mb,
    quiet_lightning,
    ratio,
    time_repeats,
    tree_cpu_seconds,
    write_json,
)

from audio_ssl.data import ESC50DataModule  # noqa: E402
from audio_ssl.data.datasets import crop_or_pad_window  # noqa: E402
from audio_ssl.features import LogMelSpectrogram  # noqa: E402

TARGETS = {"load_16k": 5.0, "load_44k": 15.0, "stall_share": 0.05}
COPY_RATE = 44100
STALL_ACTION = "[_TrainingEpochLoop].train_dataloader_next"


# ============================================================================ (a) loading
class NaiveLibrosaDataset(Dataset):
    """The baseline: decode (and resample) the file in ``__getitem__`` with ``librosa.load``.

    Items match :class:`audio_ssl.data.datasets.ClipDataset`'s (same crop/pad rule, same dict), so both
    loaders hand the training step the same thing.
    """

    def __init__(
        self,
        files: list[str],
        labels: list[int],
        sample_rate: int,
        clip_samples: int,
        random_crop: bool,
        seed: int = 0,
    ):
        self.files, self.labels = list(files), np.asarray(labels, dtype=np.int64)
        self.sample_rate, self.clip_samples, self.random_crop = sample_rate, clip_samples, random_crop
        self.seed = seed
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, torch.initial_seed() % 2**32])
        wave, _ = librosa.load(self.files[i], sr=self.sample_rate, mono=True)
        read, write = crop_or_pad_window(len(wave), self.clip_samples, self.random_crop, self._rng)
        segment = wave[read : read + self.clip_samples]
        audio = np.zeros(self.clip_samples, dtype=np.float32)
        audio[write : write + len(segment)] = segment
        return {
            "audio": torch.from_numpy(audio),
            "label": torch.tensor(self.labels[i]),
            "index": torch.tensor(i),
        }


def _endless(loader: DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


def loader_throughput(loader: DataLoader, timed_batches: int, min_seconds: float = 0.0) -> dict[str, Any]:
    """Steady-state clips/s of ``loader`` over at least ``timed_batches`` batches and ``min_seconds`` (see the
    module docstring), and the peak memory of the process tree."""
    warmup = loader.num_workers * (loader.prefetch_factor or 0) + 2
    with TreeMemorySampler() as mem:
        batches = _endless(loader)
        start = time.perf_counter()
        for _ in range(warmup):
            next(batches)
        cpu0, t0 = tree_cpu_seconds(), time.perf_counter()
        t1 = t0
        clips = count = 0
        while count < timed_batches or t1 - t0 < min_seconds:
            clips += len(next(batches)["audio"])
            count += 1
            t1 = time.perf_counter()
        cpu1 = tree_cpu_seconds()
        batches.close()
        del batches
        gc.collect()  # the last reference to the loader's (persistent) worker pool goes with the caller's loader
    return {
        "clips_per_s": clips / (t1 - t0),
        "cpu_ms_per_clip": 1e3 * (cpu1 - cpu0) / clips,
        "clips": clips,
        "batches": count,
        "seconds": t1 - t0,
        "warmup_batches": warmup,
        "warmup_s": t0 - start,
        **mem.as_dict(),
    }


def cache_is_warm(dm: ESC50DataModule) -> bool:
    """Whether the waveform cache of ``dm``'s files already exists (so ``prepare_data`` only opens it)."""
    return dm.cache_is_built()


def make_resampled_copy(src_root: Path, dst_root: Path, num_clips: int, sample_rate: int = COPY_RATE) -> int:
    """Write ``num_clips`` clips of the ESC-50 at ``src_root`` (the same number from each fold, first by file
    name) to ``dst_root`` as ``sample_rate`` Hz 16-bit WAV with a matching ``meta/esc50.csv``; returns the
    number written."""
    meta = pd.read_csv(src_root / "meta" / "esc50.csv")
    per_fold = math.ceil(num_clips / meta["fold"].nunique())
    rows = meta.sort_values("filename").groupby("fold", sort=True).head(per_fold).head(num_clips)
    (dst_root / "audio").mkdir(parents=True, exist_ok=True)
    (dst_root / "meta").mkdir(parents=True, exist_ok=True)
    resamplers: dict[int, torchaudio.transforms.Resample] = {}
    names = []
    for name in rows["filename"]:
        data, rate = sf.read(str(src_root / "audio" / name), dtype="float32", always_2d=True)
        if rate not in resamplers:
            resamplers[rate] = torchaudio.transforms.Resample(rate, sample_rate)
        wave = resamplers[rate](torch.from_numpy(np.ascontiguousarray(data.T))).numpy().T
        out = Path(name).with_suffix(".wav").name
        sf.write(str(dst_root / "audio" / out), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")
        names.append(out)
    rows = rows.assign(filename=names)
    rows.to_csv(dst_root / "meta" / "esc50.csv", index=False)
    return len(rows)


def bench_loading(dm: ESC50DataModule, timed_batches: int, min_seconds: float) -> dict[str, Any]:
    """Cache open/build time, then our train loader vs the naive librosa loader with the same settings."""
    warm = cache_is_warm(dm)
    start = time.perf_counter()
    dm.prepare_data()
    cache_s = time.perf_counter() - start
    dm.setup("fit")
    train = dm.train_set
    ours = loader_throughput(dm.train_dataloader(), timed_batches, min_seconds)
    gc.collect()  # shut our loader's persistent workers down before the naive loader runs
    naive_set = NaiveLibrosaDataset(
        train.files, train.labels.tolist(), dm.sample_rate, dm.clip_samples, random_crop=True
    )
    naive = loader_throughput(dm._loader(naive_set, train=True), timed_batches, min_seconds)
    gc.collect()
    return {
        "train_clips": len(train),
        "cache_was_warm": warm,
        "cache_prepare_s": cache_s,
        "ours": ours,
        "naive_librosa": naive,
        "speedup": ratio(ours["clips_per_s"], naive["clips_per_s"]),
        "cpu_speedup": ratio(naive["cpu_ms_per_clip"], ours["cpu_ms_per_clip"]),
    }


# ============================================================================ (b) front end
def librosa_logmel(wave: np.ndarray, sample_rate: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=wave, sr=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    return librosa.power_to_db(mel)


def bench_frontend(waves: torch.Tensor, sample_rate: int, batch_size: int, repeats: int) -> dict[str, Any]:
    """Batched LogMelSpectrogram (default threads and 1 thread) vs per-clip librosa; STFT power variants."""
    n_fft, hop, n_mels = 1024, 512, 128
    frontend = LogMelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    chunks = waves.split(batch_size)
    numpy_waves = [w.numpy() for w in waves]

    def ours() -> None:
        with torch.inference_mode():
            for chunk in chunks:
                frontend(chunk)

    def per_clip_librosa() -> None:
        for w in numpy_waves:
            librosa_logmel(w, sample_rate, n_fft, hop, n_mels)

    threads = torch.get_num_threads()
    ours_t = time_repeats(ours, repeats)
    torch.set_num_threads(1)
    try:
        ours_1t = time_repeats(ours, repeats)
    finally:
        torch.set_num_threads(threads)
    librosa_logmel(numpy_waves[0], sample_rate, n_fft, hop, n_mels)  # warm-up outside the timing
    librosa_t = time_repeats(per_clip_librosa, max(1, repeats - 1), warmup=0)
    ours_s, ours_1t_s, librosa_s = median(ours_t.wall), median(ours_1t.wall), median(librosa_t.wall)

    check = min(4, len(waves))
    with torch.inference_mode():
        ours_db = frontend(waves[:check])[:, 0].numpy()
    reference = np.stack([librosa_logmel(w, sample_rate, n_fft, hop, n_mels) for w in numpy_waves[:check]])
    n = len(waves)
    return {
        "clips": n,
        "clip_samples": waves.shape[1],
        "batch_size": batch_size,
        "torch_threads": threads,
        "ours_ms_per_clip": 1e3 * ours_s / n,
        "ours_1thread_ms_per_clip": 1e3 * ours_1t_s / n,
        "librosa_ms_per_clip": 1e3 * librosa_s / n,
        "speedup": ratio(librosa_s, ours_s),
        "speedup_1thread": ratio(librosa_s, ours_1t_s),
        "ours_cpu_ms_per_clip": 1e3 * median(ours_t.cpu) / n,
        "ours_1thread_cpu_ms_per_clip": 1e3 * median(ours_1t.cpu) / n,
        "librosa_cpu_ms_per_clip": 1e3 * median(librosa_t.cpu) / n,
        "cpu_speedup_1thread": ratio(median(librosa_t.cpu), median(ours_1t.cpu)),
        "max_abs_diff_db_vs_librosa": float(np.abs(ours_db - reference).max()),
        "power": bench_power(waves, frontend, batch_size, repeats),
    }


def bench_power(
    waves: torch.Tensor, frontend: LogMelSpectrogram, batch_size: int, repeats: int
) -> dict[str, Any]:
    """|STFT|^2 computed three ways on batches of ``batch_size`` (as in training): wall and CPU ms per clip
    and the float32 error against float64, next to the STFT itself and the whole front end."""
    chunks = waves.split(batch_size)
    n = len(waves)

    def stft(chunk: torch.Tensor) -> torch.Tensor:
        return torch.stft(
            chunk,
            frontend.n_fft,
            frontend.hop_length,
            window=frontend.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )

    variants = {
        "abs()**2": lambda z: z.abs() ** 2,
        "real**2 + imag**2": lambda z: z.real**2 + z.imag**2,
        "view_as_real(z).pow(2).sum(-1)": lambda z: torch.view_as_real(z).pow(2).sum(-1),
    }
    with torch.inference_mode():
        specs = [stft(chunk) for chunk in chunks]
        exact = specs[0].real.double() ** 2 + specs[0].imag.double() ** 2
        significant = exact > exact.amax() * 1e-12
        rows = {}
        for name, fn in variants.items():
            timing = time_repeats(lambda fn=fn: [fn(z) for z in specs], repeats + 2)
            err = ((fn(specs[0]).double() - exact).abs() / exact.clamp_min(1e-30))[significant].max()
            rows[name] = {
                "ms_per_clip": 1e3 * median(timing.wall) / n,
                "cpu_ms_per_clip": 1e3 * median(timing.cpu) / n,
                "max_rel_err": float(err),
            }
        stft_t = time_repeats(lambda: [stft(chunk) for chunk in chunks], repeats)
        full_t = time_repeats(lambda: [frontend(chunk) for chunk in chunks], repeats)
    return {
        "variants": rows,
        "stft_ms_per_clip": 1e3 * median(stft_t.wall) / n,
        "stft_cpu_ms_per_clip": 1e3 * median(stft_t.cpu) / n,
        "frontend_ms_per_clip": 1e3 * median(full_t.wall) / n,
        "frontend_cpu_ms_per_clip": 1e3 * median(full_t.cpu) / n,
    }


def frontend_waves(dm: ESC50DataModule, num_clips: int) -> torch.Tensor:
    """``num_clips`` evaluation-cropped clips from the cache (cycling if there are fewer), ``[N, T]``."""
    everything = dm.split(list(range(1, dm.num_folds + 1)), random_crop=False)
    return torch.stack([everything[i % len(everything)]["audio"].float() for i in range(num_clips)])


# ============================================================================ (c) data stall
class StallMeter(Callback):
    """Per-epoch wall time, step times, gaps between steps, and the SimpleProfiler's data-wait total."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []

    def _waits(self, trainer: Trainer) -> list[float]:
        return list(trainer.profiler.recorded_durations.get(STALL_ACTION, []))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch = {
            "start": time.perf_counter(),
            "steps": [],
            "gaps": [],
            "waits_before": len(self._waits(trainer)),
        }
        self._last_end: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last_end is None:
            self._epoch["first_batch_s"] = now - self._epoch["start"]
        else:
            self._epoch["gaps"].append(now - self._last_end)
        self._batch_start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last_end = time.perf_counter()
        self._epoch["steps"].append(self._last_end - self._batch_start)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = self._epoch
        seconds = time.perf_counter() - epoch["start"]
        waits = self._waits(trainer)[epoch["waits_before"] :]
        self.epochs.append(
            {
                "steps": len(epoch["steps"]),
                "epoch_s": seconds,
                "data_wait_s": sum(waits),
                "data_wait_share": sum(waits) / seconds,
                "max_data_wait_s": max(waits, default=0.0),
                "first_batch_s": epoch.get("first_batch_s", 0.0),
                "median_step_s": median(epoch["steps"]) if epoch["steps"] else 0.0,
                "median_gap_s": median(epoch["gaps"]) if epoch["gaps"] else 0.0,
                "gap_share": (sum(epoch["gaps"]) + epoch.get("first_batch_s", 0.0)) / seconds,
            }
        )


def bench_stall(config: Path, overrides: list[str], steps: int, epochs: int) -> dict[str, Any]:
    """Run ``epochs`` epochs of ``config`` (``steps`` batches each, 0 = the whole training set) without
    validation."""
    model, dm, cfg = load_experiment(config, overrides)
    meter = StallMeter()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=epochs,
            limit_train_batches=steps or 1.0,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            precision=cfg.trainer.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            profiler=SimpleProfiler(dirpath=tmp, filename="profile"),
            callbacks=[meter],
        )
        with TreeMemorySampler(pss_interval_s=2.0) as mem:
            trainer.fit(model, datamodule=dm)
    rusage = peak_rss_mb()
    return {
        "config": str(config),
        "batch_size": dm.batch_size,
        "num_workers": dm.num_workers,
        "test_fold": dm.test_fold,
        "train_clips": len(dm.train_set),
        "epochs": meter.epochs,
        "measured": meter.epochs[-1],
        **mem.as_dict(),
        "ru_maxrss_self_mb": rusage["self"],
        "ru_maxrss_children_mb": rusage["children"],
    }


# ============================================================================ driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", required=True, type=Path, help="ESC-50 folder (meta/esc50.csv, audio/)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="about a third of the work (smaller defaults)")
    parser.add_argument(
        "--config",
        type=Path,
        default=REPO_ROOT / "experiments" / "supervised_cpu.yaml",
        help="experiment YAML for the data-stall epoch",
    )
    parser.add_argument(
        "--parts", default="abc", help="which parts to run: a (loading), b (front end), c (stall)"
    )
    parser.add_argument("--test-fold", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--clip-seconds", type=float, default=5.0, help="clip length the loaders deliver")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads of the main process (default: torch's, one per core)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="waveform cache of --data-dir (default: the shared one, ~/.cache/audio-ssl/waveforms)",
    )
    parser.add_argument("--batches", type=int, default=None, help="timed batches per loader (40; quick 15)")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=3.0,
        help="time each loader for at least this long (more batches if needed)",
    )
    parser.add_argument(
        "--subset", type=int, default=None, help="clips in the 44.1 kHz copy (200; quick 100)"
    )
    parser.add_argument(
        "--frontend-clips", type=int, default=None, help="clips for the front end (256; quick 64)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of the front-end runs")
    parser.add_argument(
        "--stall-steps",
        type=int,
        default=None,
        help="training steps per stall epoch (0 = whole epoch; quick 15)",
    )
    parser.add_argument(
        "--stall-epochs", type=int, default=2, help="epochs in the stall run; the last is reported"
    )
    args = parser.parse_args(argv)
    defaults = {
        "batches": (40, 15),
        "subset": (200, 100),
        "frontend_clips": (256, 64),
        "stall_steps": (0, 15),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if not args.parts or set(args.parts) - set("abc"):
        parser.error(f"--parts {args.parts!r}: use a non-empty combination of a, b and c")
    if not (args.data_dir / "meta" / "esc50.csv").is_file():
        parser.error(f"--data-dir {args.data_dir}: no meta/esc50.csv there")
    return args


def summary_rows(results: dict[str, Any]) -> list[list[Any]]:
    """One row per headline number of the parts that ran (see ``SUMMARY_HEADER``)."""

    def verdict(ok: bool) -> str:
        return "yes" if ok else "NO"

    rows = []
    for key, label, target in (
        ("loading_16k", "load 16 kHz (clips/s)", "load_16k"),
        ("loading_44k", "load 44.1 kHz (clips/s)", "load_44k"),
    ):
        if key in results:
            r = results[key]
            rows.append(
                [
                    label,
                    r["ours"]["clips_per_s"],
                    r["naive_librosa"]["clips_per_s"],
                    r["speedup"],
                    r["cpu_speedup"],
                    f">= {TARGETS[target]:g}x",
                    verdict(r["speedup"] >= TARGETS[target]),
                ]
            )
    if "frontend" in results:
        front = results["frontend"]
        rows.append(
            [
                "log-mel (ms/clip)",
                front["ours_ms_per_clip"],
                front["librosa_ms_per_clip"],
                front["speedup"],
                None,
                "-",
                "-",
            ]
        )
        rows.append(
            [
                "log-mel, 1 thread (ms/clip)",
                front["ours_1thread_ms_per_clip"],
                front["librosa_ms_per_clip"],
                front["speedup_1thread"],
                front["cpu_speedup_1thread"],
                "-",
                "-",
            ]
        )
    if "stall" in results:
        share = results["stall"]["measured"]["data_wait_share"]
        rows.append(
            [
                "data wait (% of epoch)",
                100 * share,
                None,
                None,
                None,
                f"< {100 * TARGETS['stall_share']:g}%",
                verdict(share < TARGETS["stall_share"]),
            ]
        )
    return rows


SUMMARY_HEADER = ["measurement", "ours", "baseline", "ratio", "CPU-time ratio", "target", "met"]


def print_report(results: dict[str, Any]) -> None:
    print()
    print(format_table(summary_rows(results), SUMMARY_HEADER))
    print(
        "ratio: wall clock, what the targets are set on; CPU-time ratio: CPU seconds of the process tree per "
        "clip, baseline / ours (less sensitive to other load on the machine)"
    )
    loads = [
        (name, results[key])
        for name, key in (("16 kHz", "loading_16k"), ("44.1 kHz", "loading_44k"))
        if key in results
    ]
    if loads:
        print()
        for name, r in loads:
            state = "opened (warm)" if r["cache_was_warm"] else "built"
            copy = (
                f"copy of {r['clips']} clips written in {r['copy_write_s']:.1f} s, "
                if "copy_write_s" in r
                else ""
            )
            print(
                f"{name}: {copy}cache {state} in {r['cache_prepare_s']:.2f} s "
                f"({r['train_clips']} training clips)"
            )
        rows = [
            [
                name,
                r["ours"]["cpu_ms_per_clip"],
                r["naive_librosa"]["cpu_ms_per_clip"],
                r["ours"]["peak_tree_anon_mb"],
                r["naive_librosa"]["peak_tree_anon_mb"],
            ]
            for name, r in loads
        ]
        print(
            format_table(
                rows,
                [
                    "loader",
                    "ours CPU ms/clip",
                    "naive CPU ms/clip",
                    "ours peak anon MB",
                    "naive peak anon MB",
                ],
            )
        )
    if "frontend" in results:
        front = results["frontend"]
        power = front["power"]
        rows = [
            [name, v["ms_per_clip"], v["cpu_ms_per_clip"], v["max_rel_err"]]
            for name, v in power["variants"].items()
        ]
        rows += [
            ["(the STFT itself)", power["stft_ms_per_clip"], power["stft_cpu_ms_per_clip"], None],
            ["(whole front end)", power["frontend_ms_per_clip"], power["frontend_cpu_ms_per_clip"], None],
        ]
        print()
        print(
            format_table(
                rows,
                [f"STFT power (batches of {front['batch_size']})", "ms/clip", "CPU ms/clip", "max rel err"],
            )
        )
        print(f"front end vs librosa: max |diff| {front['max_abs_diff_db_vs_librosa']:.2e} dB")
    if "stall" in results:
        stall = results["stall"]
        rows = [
            [
                i + 1,
                e["steps"],
                e["epoch_s"],
                100 * e["data_wait_share"],
                e["first_batch_s"],
                e["median_step_s"],
                e["median_gap_s"],
            ]
            for i, e in enumerate(stall["epochs"])
        ]
        print()
        print(
            format_table(
                rows,
                [
                    "epoch",
                    "steps",
                    "seconds",
                    "data wait %",
                    "first batch s",
                    "median step s",
                    "median gap s",
                ],
            )
        )
        print(
            f"stall run peak memory: process tree PSS {stall['peak_tree_pss_mb']:.0f} MB "
            f"(RSS sum {stall['peak_tree_rss_mb']:.0f} MB, anonymous {stall['peak_tree_anon_mb']:.0f} MB, "
            f"{stall['max_processes']} processes); ru_maxrss self {stall['ru_maxrss_self_mb']:.0f} MB, "
            f"largest child {stall['ru_maxrss_children_mb']:.0f} MB"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet_lightning()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.data_dir.resolve()
    results: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "environment": environment(),
    }
    dm_kwargs = {
        "test_fold": args.test_fold,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "sample_rate": 16000,
        "clip_seconds": args.clip_seconds,
    }
    cache_dir = str(args.cache_dir) if args.cache_dir is not None else None
    dm16 = ESC50DataModule(str(data_dir), cache_dir=cache_dir, **dm_kwargs)

    if "a" in args.parts:
        print(f"(a) loading, 16 kHz: {data_dir}", flush=True)
        results["loading_16k"] = bench_loading(dm16, args.batches, args.min_seconds)
        with tempfile.TemporaryDirectory(prefix="esc50-44k-") as tmp:
            copy_root = Path(tmp)
            print(f"(a) loading, 44.1 kHz: writing {args.subset} clips to {copy_root}", flush=True)
            start = time.perf_counter()
            clips = make_resampled_copy(data_dir, copy_root, args.subset)
            copy_s = time.perf_counter() - start
            dm44 = ESC50DataModule(str(copy_root), cache_dir=str(copy_root / "cache"), **dm_kwargs)
            results["loading_44k"] = {
                "clips": clips,
                "copy_write_s": copy_s,
                **bench_loading(dm44, args.batches, args.min_seconds),
            }

    if "b" in args.parts:
        print(f"(b) front end: {args.frontend_clips} clips", flush=True)
        dm16.prepare_data()
        waves = frontend_waves(dm16, args.frontend_clips)
        results["frontend"] = bench_frontend(waves, 16000, args.batch_size, args.repeats)
        del waves

    if "c" in args.parts:
        print(f"(c) data stall: {args.config.name}, {args.stall_epochs} epoch(s)", flush=True)
        overrides = [
            "--data.init_args.data_dir",
            str(data_dir),
            "--data.init_args.test_fold",
            str(args.test_fold),
            "--data.init_args.batch_size",
            str(args.batch_size),
            "--data.init_args.num_workers",
            str(args.num_workers),
            "--data.init_args.clip_seconds",
            str(args.clip_seconds),
        ]
        if cache_dir is not None:
            overrides += ["--data.init_args.cache_dir", cache_dir]
        results["stall"] = bench_stall(args.config, overrides, args.stall_steps, args.stall_epochs)

    results["targets"] = TARGETS
    results["summary"] = [dict(zip(SUMMARY_HEADER, row)) for row in summary_rows(results)]
    print_report(results)
    write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()

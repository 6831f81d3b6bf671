"""ONNX export of classifiers: onnxruntime against PyTorch, agreement and speed, on the CPU.

    python benchmarks/onnx_parity.py --data-dir ../shared/data/esc50-16k --threads 1 --out results/bench/onnx_parity.json

For each classifier kind, a self-describing checkpoint with freshly initialised weights (the agreement and the cost
do not depend on the weights) is exported with :func:`audio_ssl.export.onnx.export_onnx`:

- ``supervised``: the model block of ``--config`` (default ``experiments/supervised_cpu.yaml``: AudioResNet-10 at a
  quarter width, 64-mel log-mel front end), 50 classes;
- ``beats``: a :class:`~audio_ssl.methods.beats.BEATsClassifier` on a random BEATs checkpoint of ``--beats-size``
  (``tiny``: 3 layers x 64 wide; ``full``: the released 12 x 768 architecture), 50 classes;
- ``efficientnet_b0``, ``resnet18_imagenet``: the model blocks of ``experiments/zoo/*_finetune.yaml`` (timm's
  ImageNet CNNs on 128-mel log-mels) with ``pretrained: null`` (the architecture, randomly initialised);
- ``wav2vec2``, ``ast``: the model blocks of ``experiments/zoo/{wav2vec2,ast}_finetune.yaml`` (a FineTuneClassifier
  on an :class:`~audio_ssl.models.hf_audio.HFAudioEncoder`) whose ``model`` is a folder holding transformers'
  default config and feature extractor of the family (``Wav2Vec2Config``: wav2vec 2.0 base; ``ASTConfig``: the
  AudioSet AST, 1024 frames of 128-bin fbank), with ``pretrained: false`` (real size, random weights); their front
  ends export as the per-clip normalisation and the convolutional Kaldi fbank. Only with ``--kinds`` (slow: about
  1 clip/s at 1 thread).

All have ``tta_views = 1``, so the exports take any length. Clips: ``--clips`` (32) clips of ``--clip-seconds`` (5)
at 16 kHz, the first files of ``--data-dir``'s ``meta/esc50.csv`` (real ESC-50, cropped or zero-padded), or
Gaussian noise (std 0.1) without ``--data-dir``. Measured per kind: the largest absolute difference between
onnxruntime's and PyTorch's class probabilities over all clips, and clips/s of each runtime on batches of
``--batch`` (8) with ``--threads`` (1) intra-op threads each (torch.set_num_threads; onnxruntime's
intra_op_num_threads), the median of ``--repeats`` passes over all clips after one untimed pass; also per CPU
second of this process (less sensitive to other load on the machine).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO_ROOT,
    environment,
    format_table,
    median,
    quiet_lightning,
    ratio,
    time_repeats,
    write_json,
)

SR = 16000
NUM_CLASSES = 50
ZOO_RECIPES = {"efficientnet_b0": "efficientnet_b0_finetune.yaml", "resnet18_imagenet": "resnet18_imagenet_finetune.yaml"}
HF_RECIPES = {"wav2vec2": "wav2vec2_finetune.yaml", "ast": "ast_finetune.yaml"}


def write_checkpoint(model_block: dict, out: Path, clip_seconds: float) -> Path:
    """A self-describing checkpoint of ``model_block`` (``{"class_path", "init_args"}``) with initial weights."""
    from audio_ssl.methods.base import BaseMethod
    from audio_ssl.utils.provenance import CHECKPOINT_KEY

    meta = {"model_config": model_block, "num_classes": NUM_CLASSES, "sample_rate": SR,
            "data": {"clip_seconds": clip_seconds, "class_names": [f"class{i}" for i in range(NUM_CLASSES)]}}
    torch.manual_seed(0)
    model = BaseMethod.from_metadata(meta, str(out))
    torch.save({"state_dict": model.state_dict(), CHECKPOINT_KEY: meta}, out)
    return out


def model_blocks(config: Path, beats_checkpoint: Path, hf_dir: Path | None = None,
                 kinds: list[str] | None = None) -> dict[str, dict]:
    """Model blocks by kind (see the module docstring); the Hugging Face kinds (those of ``kinds``, default all)
    get their default-architecture folders written under ``hf_dir`` (skipped without one)."""
    import yaml
    from zoo_embed import write_default_architecture

    block = dict(yaml.safe_load(config.read_text())["model"])
    block["init_args"] = {**(block.get("init_args") or {}), "tta_views": 1}
    beats = {"class_path": "audio_ssl.methods.BEATsClassifier",
             "init_args": {"checkpoint": str(beats_checkpoint), "tta_views": 1}}
    blocks = {"supervised": block, "beats": beats}
    for kind, recipe in ZOO_RECIPES.items():  # timm's ImageNet CNNs, architecture only (random init)
        zoo = dict(yaml.safe_load((REPO_ROOT / "experiments" / "zoo" / recipe).read_text())["model"])
        encoder = dict(zoo["init_args"]["encoder"])
        encoder["init_args"] = {**encoder.get("init_args", {}), "pretrained": None}
        zoo["init_args"] = {**zoo["init_args"], "encoder": encoder, "tta_views": 1}
        blocks[kind] = zoo
    for kind, recipe in HF_RECIPES.items():  # transformers' default architecture, random init
        if hf_dir is None or (kinds is not None and kind not in kinds):
            continue
        zoo = dict(yaml.safe_load((REPO_ROOT / "experiments" / "zoo" / recipe).read_text())["model"])
        encoder = dict(zoo["init_args"]["encoder"])
        folder = hf_dir / f"{kind}-default"
        write_default_architecture(str(encoder["init_args"]["model"]), folder)
        encoder["init_args"] = {**encoder.get("init_args", {}), "model": str(folder), "pretrained": False}
        zoo["init_args"] = {**zoo["init_args"], "encoder": encoder, "tta_views": 1}
        blocks[kind] = zoo
    return blocks


def load_clips(data_dir: str | None, count: int, samples: int) -> tuple[np.ndarray, str]:
    """``[count, samples]`` float32 clips: the first ESC-50 files (cropped / zero-padded) or seeded noise."""
    if data_dir is None:
        rng = np.random.default_rng(0)
        return (0.1 * rng.standard_normal((count, samples))).astype(np.float32), "gaussian noise (std 0.1)"
    import pandas as pd

    from audio_ssl.data.audio import decode_audio

    root = Path(data_dir)
    names = pd.read_csv(root / "meta" / "esc50.csv")["filename"].tolist()[:count]
    if len(names) < count:
        raise ValueError(f"{root}: only {len(names)} clips listed, {count} asked for")
    clips = np.zeros((count, samples), np.float32)
    for i, name in enumerate(names):
        wave = np.asarray(decode_audio(root / "audio" / name, SR, mono=True), dtype=np.float32)[:samples]
        clips[i, : len(wave)] = wave
    return clips, f"ESC-50 {names[0]}..{names[-1]} ({count} files of {root})"


def measure(kind: str, checkpoint: Path, onnx_path: Path, clips: np.ndarray, batch: int, threads: int,
            repeats: int) -> dict:
    from audio_ssl.export.onnx import OnnxClassifier, export_onnx
    from audio_ssl.export.source import load_trained_method

    export = export_onnx(checkpoint, onnx_path)
    runtime = OnnxClassifier(onnx_path, threads=threads)
    method = load_trained_method(checkpoint).method
    torch.set_num_threads(threads)
    batches = [clips[i : i + batch] for i in range(0, len(clips), batch)]

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([method.predict_proba(torch.from_numpy(b)).numpy() for b in batches])

    def run_onnx() -> np.ndarray:
        return np.concatenate([runtime.predict_proba(b) for b in batches])

    diff = float(np.abs(run_onnx() - run_torch()).max())
    t_torch, t_onnx = time_repeats(run_torch, repeats), time_repeats(run_onnx, repeats)
    torch_cps, onnx_cps = len(clips) / median(t_torch.wall), len(clips) / median(t_onnx.wall)
    torch_cpu_cps, onnx_cpu_cps = len(clips) / median(t_torch.cpu), len(clips) / median(t_onnx.cpu)
    return {"kind": kind, "method": type(method).__name__, "encoder": type(method.encoder).__name__,
            "parameters": sum(p.numel() for p in method.parameters()), "dynamic_length": export.dynamic_length,
            "onnx_mb": onnx_path.stat().st_size / 2**20, "max_abs_diff": diff,
            "export_check_max_abs_diff": export.max_abs_diff, "torch_clips_per_s": torch_cps,
            "onnx_clips_per_s": onnx_cps, "onnx_speedup": ratio(onnx_cps, torch_cps),
            "torch_clips_per_cpu_s": torch_cpu_cps, "onnx_clips_per_cpu_s": onnx_cpu_cps,
            "onnx_cpu_speedup": ratio(onnx_cpu_cps, torch_cpu_cps),
            "torch_wall_s": t_torch.wall, "onnx_wall_s": t_onnx.wall, "torch_cpu_s": t_torch.cpu, "onnx_cpu_s": t_onnx.cpu}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "experiments" / "supervised_cpu.yaml")
    parser.add_argument("--beats-size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--data-dir", default=None, help="ESC-50 folder (meta/esc50.csv, audio/); default: noise")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    kinds = ("supervised", "beats", *ZOO_RECIPES)
    parser.add_argument("--kinds", nargs="+", choices=(*kinds, *HF_RECIPES), default=list(kinds),
                        help="default: all but the real-size Hugging Face kinds (wav2vec2, ast), which are slow")
    parser.add_argument("--out", default=None, help="JSON file")
    args = parser.parse_args(argv)
    quiet_lightning()
    from audio_ssl.tools.make_beats_checkpoint import make_beats_checkpoint

    samples = round(args.clip_seconds * SR)
    clips, source = load_clips(args.data_dir, args.clips, samples)
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnx-parity-") as tmp:
        tmp = Path(tmp)
        beats = make_beats_checkpoint(tmp / f"beats_{args.beats_size}.pt", size=args.beats_size)
        blocks = model_blocks(args.config, beats, tmp, args.kinds)
        for kind in args.kinds:
            checkpoint = write_checkpoint(blocks[kind], tmp / f"{kind}.ckpt", args.clip_seconds)
            rows.append(measure(kind, checkpoint, tmp / f"{kind}.onnx", clips, args.batch, args.threads,
                                args.repeats))
    header = ["kind", "encoder", "params", "max |p_onnx - p_torch|", "torch clips/s", "onnx clips/s", "onnx/torch",
              "onnx/torch (CPU time)"]
    print(f"clips: {source}; batch {args.batch}, {args.threads} thread(s), median of {args.repeats}")
    print(format_table([[r["kind"], r["encoder"], r["parameters"], f"{r['max_abs_diff']:.2e}",
                         f"{r['torch_clips_per_s']:.1f}", f"{r['onnx_clips_per_s']:.1f}", f"{r['onnx_speedup']:.2f}",
                         f"{r['onnx_cpu_speedup']:.2f}"]
                        for r in rows], header))
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "clips": source, "runs": rows,
              "environment": environment()}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

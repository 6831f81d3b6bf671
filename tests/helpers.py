"""Helpers several test files share (``tests/`` is on ``sys.path``)::

    from helpers import TINY_ENCODERS, exit_code_and_output, tiny_cv_overrides, train_tiny_classifier

- :func:`train_tiny_classifier`: a tiny SupervisedClassifier fitted for two optimizer steps through the Lightning
  CLI on the generated ESC-50, so its checkpoint is real and self-describing (classify, serve, metadata tests);
- :func:`tiny_cv_overrides`: Lightning CLI arguments that make ``experiments/supervised_cpu.yaml`` a seconds-long
  run on the generated ESC-50 (cross-validation, probe and pipeline tests);
- :func:`exit_code_and_output`: a command's ``main`` run in-process: ``(exit code, stdout, stderr)``;
  :func:`exit_code`: the same, the exit code alone;
- :func:`tiny_reproduce_rows`: a three-row table for ``audio-ssl reproduce --smoke`` (and the GPU script's smoke).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

__all__ = ["TINY_ENCODERS", "exit_code", "exit_code_and_output", "tiny_cv_overrides", "tiny_reproduce_rows", "train_tiny_classifier",
           "train_tiny_model"]

ROOT = Path(__file__).resolve().parents[1]

TINY_ENCODERS = {
    "resnet": "{class_path: audio_ssl.models.AudioResNet, init_args: {layers: [1, 1], widths: [4, 8]}}",
    "vit": "{class_path: audio_ssl.models.SpectrogramTransformer, init_args: {max_frames: 64, patch_size: 8, "
           " embed_dim: 16, depth: 2, num_heads: 2, drop_path: 0.0}}",
}
"""Encoders of :func:`train_tiny_classifier` (a YAML flow mapping each)."""


def train_tiny_model(root: Path, esc50_root: Path, cache_dir: Path, name: str, model: str) -> tuple[Path, Path]:
    """Fit ``model`` (the YAML of a ``model:`` block, unindented) for two steps on the generated ESC-50 (1 s clips,
    batches of 8, seed 0, no logger); returns ``(config, last.ckpt)``: ``root/{name}.yaml`` and
    ``root/{name}/checkpoints/last.ckpt``."""
    from audio_ssl.cli import build_cli

    config = root / f"{name}.yaml"
    config.write_text(textwrap.dedent(f"""\
        seed_everything: 0
        trainer: {{max_epochs: 1, limit_train_batches: 2, limit_val_batches: 0, accelerator: cpu, devices: 1,
                   logger: false, enable_progress_bar: false, enable_model_summary: false}}
        checkpoint: {{dirpath: {root / name / "checkpoints"}, monitor: null}}
        data:
          class_path: audio_ssl.data.ESC50DataModule
          init_args: {{data_dir: {esc50_root}, cache_dir: {cache_dir}, clip_seconds: 1.0, batch_size: 8, num_workers: 0}}
        model:
        """) + textwrap.indent(textwrap.dedent(model).strip("\n"), "  ") + "\n")
    build_cli(["fit", "--config", str(config)])
    checkpoint = root / name / "checkpoints" / "last.ckpt"
    assert checkpoint.exists()
    return config, checkpoint


def train_tiny_classifier(root: Path, esc50_root: Path, cache_dir: Path, encoder: str = "resnet") -> tuple[Path, Path]:
    """Fit a tiny SupervisedClassifier (``TINY_ENCODERS[encoder]``, 1 s clips, 32 mels, TTA with 2 views, seed 0)
    for two steps (:func:`train_tiny_model`); returns ``(config, last.ckpt)``."""
    return train_tiny_model(root, esc50_root, cache_dir, encoder, f"""
        class_path: audio_ssl.methods.SupervisedClassifier
        init_args:
          encoder: {TINY_ENCODERS[encoder]}
          frontend:
            class_path: audio_ssl.features.LogMelSpectrogram
            init_args: {{n_fft: 512, hop_length: 256, n_mels: 32, normalize: instance}}
          tta_views: 2
          optimizer: adamw
          scheduler: constant
          lr: 0.01""")


def tiny_cv_overrides(esc50_root, cache_dir) -> list[str]:
    """``supervised_cpu.yaml`` on the generated ESC-50: 1 s clips, batches of 8, one epoch, a narrow ResNet, no
    workers, no progress bar or model summary."""
    return ["--data.init_args.data_dir", str(esc50_root), "--data.init_args.cache_dir", str(cache_dir),
            "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8",
            "--data.init_args.clip_seconds", "1.0", "--trainer.max_epochs", "1",
            "--model.init_args.encoder.init_args.widths", "[8, 16, 16, 32]",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def exit_code(main: Callable[[list[str]], object], argv: list[str]) -> int:
    """Run ``main(argv)`` in-process; its exit status (0 unless it raised SystemExit), output left to capsys."""
    try:
        main(argv)
    except SystemExit as exit_info:
        return int(exit_info.code or 0)
    return 0


def exit_code_and_output(main: Callable[[list[str]], object], argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``main(argv)``; ``(exit code (0 unless it raised SystemExit), stdout, stderr)``."""
    code = 0
    try:
        main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


SMOKE_BLOCK = """\
smoke:
  data: {num_classes: 4, clips_per_class: 5, seconds: 1.0}
  set: {trainer.max_epochs: 1, trainer.accelerator: cpu, trainer.devices: 1, trainer.precision: 32-true,
        trainer.enable_progress_bar: false, trainer.enable_model_summary: false, data.init_args.clip_seconds: 1.0,
        data.init_args.batch_size: 8, data.init_args.num_workers: 0}
"""


def tiny_reproduce_rows(folder: Path) -> Path:
    """A row table of ``audio-ssl reproduce`` with three rows in the shapes of the seed table (a supervised row
    with a TTA re-test, a pretrain-then-probe row, the MFCC baseline: ``gpu: false``), with toy smoke sizes;
    written to ``folder/rows.yaml``."""
    path = folder / "rows.yaml"
    path.write_text(SMOKE_BLOCK + textwrap.dedent(f"""\
        rows:
          - name: sup
            config: {ROOT / "experiments" / "supervised_resnet34.yaml"}
            tta_views: 10
            smoke:
              tta_views: 2
              set: {{model.init_args.encoder.init_args.widths: "[8, 8, 16, 16]",
                     model.init_args.frontend.init_args.n_mels: 32, model.init_args.freq_mask: 8,
                     model.init_args.time_mask: 8}}
          - name: simclr_probe
            config: {ROOT / "experiments" / "simclr_probe.yaml"}
            smoke:
              pipeline_set:
                probe: {{C: [1.0], max_iter: 50, device: cpu}}
                pretrain_overrides: [--model.init_args.encoder.init_args.widths, "[8, 8, 16, 16]",
                                     --model.init_args.views.init_args.crop_seconds, "0.5",
                                     --model.init_args.proj_hidden_dim, "32"]
          - name: mfcc
            config: {ROOT / "experiments" / "baseline_mfcc_logreg.yaml"}
            gpu: false
            smoke: {{pipeline_set: {{n_jobs: 1}}}}
        """))
    return path

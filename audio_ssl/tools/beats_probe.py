"""``python -m audio_ssl.tools.beats_probe``: the frozen-BEATs linear probe over held-out folds, from the
command line (the library is :mod:`audio_ssl.evaluation.beats_probe`; ``audio-ssl cv`` runs it with
``pipeline: beats_probe`` configs).

    python -m audio_ssl.tools.beats_probe --config experiments/beats_probe.yaml \\
        --checkpoint BEATs_iter3_plus_AS2M.pt --probe experiments/linear_probe.yaml --out results/beats_probe.json

It prints one line per held-out fold and variant (``pretrained``, ``random_init``) and the mean accuracies.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from audio_ssl.evaluation.beats_probe import build_datamodule, missing_checkpoint, run_beats_probe
from audio_ssl.evaluation.embeddings import default_feature_dir
from audio_ssl.evaluation.fold import FoldOutput
from audio_ssl.evaluation.probe import ProbeConfig, load_probe_config
from audio_ssl.models.beats import BEATsCheckpointError
from audio_ssl.utils.io import atomic_write


def _folds(value: str) -> list[int]:
    """argparse type: ``1,2`` or ``3`` -> fold numbers."""
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"folds are integers such as 1,2 or 1 2, got {value!r}") from None


def from_lightning_yaml(path: Path) -> tuple[dict, dict]:
    """``(model init_args, data block)`` of a Lightning experiment YAML; ``ValueError`` naming the file otherwise."""
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict) or "model" not in config or "data" not in config:
        raise ValueError(f"{path}: not a Lightning experiment config (needs 'model' and 'data' blocks)")
    return dict(config["model"].get("init_args") or {}), dict(config["data"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m audio_ssl.tools.beats_probe",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None,
                        help="a Lightning YAML (e.g. experiments/beats_probe.yaml): its model.init_args "
                             "checkpoint/layers and its data block are the defaults")
    parser.add_argument("--checkpoint", default=None, help="official-format BEATs checkpoint (path or URL)")
    parser.add_argument("--data-dir", default=None, help="dataset folder (overrides the config's data_dir)")
    parser.add_argument("--dataset", default="audio_ssl.data.ESC50DataModule",
                        help="data module class path when no --config is given")
    parser.add_argument("--folds", type=_folds, nargs="+", default=None,
                        help="held-out folds, e.g. 1,2 or 1 2 (default: all)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="hidden states to concatenate")
    parser.add_argument("--probe", default=None,
                        help="probe settings YAML, e.g. experiments/linear_probe.yaml (default: ProbeConfig())")
    parser.add_argument("--C", type=float, nargs="+", default=None, help="override the probe's C (list: select)")
    parser.add_argument("--bf16", action="store_true", help="extract under bfloat16 autocast")
    parser.add_argument("--clips-per-class", type=int, default=None,
                        help="keep only the first N clips of each class in every fold (pipeline checks)")
    parser.add_argument("--no-random-init", action="store_true", help="skip the random-init control")
    parser.add_argument("--feature-cache-dir", default=None, help=f"default: {default_feature_dir()}")
    parser.add_argument("--cache-dir", default=None, help="waveform cache directory")
    parser.add_argument("--out", type=Path, default=None, help="write metrics and descriptions as JSON here")
    return parser


def main(argv: list[str] | None = None) -> dict[int, dict[str, FoldOutput]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model_args, data = ({}, {"class_path": args.dataset, "init_args": {}})
    if args.config is not None:
        try:
            model_args, data = from_lightning_yaml(args.config)
        except (OSError, ValueError, yaml.YAMLError) as err:
            parser.error(str(err))
    checkpoint = args.checkpoint or model_args.get("checkpoint")
    if not checkpoint:
        parser.error(missing_checkpoint("--checkpoint"))
    init_args = dict(data.get("init_args") or {})
    if args.data_dir is not None:
        init_args["data_dir"] = args.data_dir
    if args.cache_dir is not None:
        init_args["cache_dir"] = args.cache_dir
    data["init_args"] = init_args
    probe = load_probe_config(args.probe)
    if args.C is not None:
        probe = ProbeConfig(**{**asdict(probe), "C": args.C if len(args.C) > 1 else args.C[0]})
    if args.folds is not None:
        args.folds = [fold for group in args.folds for fold in group]
    datamodule = build_datamodule(data, (args.folds or [1])[0])
    layers = args.layers if args.layers is not None else model_args.get("layers")
    try:
        outputs = run_beats_probe(checkpoint, datamodule, args.folds, layers=layers, probe=probe,
                                  feature_cache_dir=args.feature_cache_dir, bf16=args.bf16,
                                  clips_per_class=args.clips_per_class, random_init=not args.no_random_init)
    except BEATsCheckpointError as err:  # not an official-format BEATs checkpoint: one line, not a traceback
        parser.error(str(err))
    for fold, variants in outputs.items():
        for variant, out in variants.items():
            metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted(out.metrics.items()))
            d = out.description.details
            print(f"fold {fold} {variant}: {metrics} (C={d['probe_C']:g}; train {d['probe_train_clips']}, test "
                  f"{d['test_clips']} clips; embedded {d['clips_embedded']} clips in {d['embed_time_s']:.1f} s; "
                  f"probe fit {d['probe_time_s']:.1f} s)")
    for variant in next(iter(outputs.values())):
        accs = [v[variant].metrics["acc"] for v in outputs.values()]
        print(f"{variant}: mean acc over {len(accs)} fold(s): {np.mean(accs):.4f}")
    if args.out is not None:
        report = {str(k): {v: {"metrics": o.metrics, "description": asdict(o.description)} for v, o in vs.items()}
                  for k, vs in outputs.items()}
        with atomic_write(args.out, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
        print(f"wrote {args.out}")
    return outputs


if __name__ == "__main__":
    main()

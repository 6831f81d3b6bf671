"""``audio-ssl probe``: the linear probe of one checkpoint's encoder on one held-out fold, printed as JSON.

    audio-ssl probe --checkpoint CKPT [--test-fold K] [--data-dir DIR] [--random-init] [--out DIR]

The checkpoint describes its model, data and folds (``checkpoint["audio_ssl"]``); ``--config PRETRAIN_YAML`` (which
also takes Lightning CLI arguments) is only needed for checkpoints that do not. The probe itself is
:func:`audio_ssl.evaluation.probe.probe_fold`; with ``--out`` the embeddings are cached per fold in ``OUT/embeddings``
(:mod:`audio_ssl.evaluation.embeddings`) and the predictions written as ``OUT/fold{k}_{variant}.csv``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from audio_ssl.evaluation.probe import fold_groups, load_probe_config, probe_fold
from audio_ssl.utils.io import atomic_write


def saw_test_fold(data_meta: dict, test_fold: int) -> str | None:
    """Why a checkpoint's training data included ``test_fold`` (transductive, or the fold in its train folds),
    ``None`` if it did not, from the checkpoint's ``audio_ssl.data`` description."""
    if data_meta.get("transductive"):
        return "it was trained transductively (every fold's audio)"
    if test_fold in (data_meta.get("train_folds") or []):
        return f"its train folds {data_meta['train_folds']} include fold {test_fold}"
    return None


def check_test_fold(test_fold: int, data_meta: dict, checkpoint: Path) -> None:
    """Raise ValueError naming ``--test-fold`` when ``test_fold`` is not a fold of the checkpoint's dataset (its
    recorded ``num_folds``, else its data module class's); nothing to check when neither is known."""
    import pkgutil

    num_folds = data_meta.get("num_folds")
    if not num_folds and isinstance(data_meta.get("class_path"), str):
        try:
            num_folds = getattr(pkgutil.resolve_name(data_meta["class_path"]), "num_folds", None)
        except (ImportError, AttributeError, ValueError):
            num_folds = None
    if num_folds and not 1 <= test_fold <= int(num_folds):
        dataset = data_meta.get("dataset") or "the dataset"
        raise ValueError(f"--test-fold {test_fold} is out of range: {checkpoint} was trained on {dataset}, which has "
                         f"folds 1..{int(num_folds)}; pass one of them")


def _model_and_data_from_checkpoint(path: Path, meta: dict, test_fold: int, data_dir: str | None,
                                    cache_dir: str | None):
    """The model and data module described by a checkpoint (no YAML): the resolved model config, the dataset
    class, sample rate and clip length it was trained with; the data from ``data_dir``, else the recorded folder,
    else the default location (``$AUDIO_SSL_DATA/<dataset>``)."""
    from jsonargparse import ArgumentParser

    from audio_ssl.data.base import FoldAudioDataModule
    from audio_ssl.methods.base import BaseMethod

    data_meta = meta.get("data") or {}
    if not meta.get("model_config") or not data_meta.get("class_path"):
        raise ValueError(f"{path}: this checkpoint does not describe its model and data (saved before audio-ssl "
                         "stored them, or outside the audio-ssl CLI): pass --config PRETRAIN.yaml")
    recorded = data_meta.get("data_dir")
    if data_dir is None and recorded and Path(recorded).is_dir():
        data_dir = recorded
    init = {"data_dir": data_dir, "test_fold": test_fold, "sample_rate": data_meta["sample_rate"],
            "clip_seconds": data_meta["clip_seconds"], "cache_dir": cache_dir}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(FoldAudioDataModule, "data")
    try:
        dm = parser.instantiate_classes(parser.parse_object(
            {"data": {"class_path": data_meta["class_path"], "init_args": init}})).data
    except Exception as err:
        raise ValueError(f"{path}: cannot rebuild the model and data it describes ({err})") from err
    return BaseMethod.from_metadata(meta, str(path)), dm


def run_probe_command(args: argparse.Namespace, extra: list[str]) -> dict:
    from audio_ssl.data.paths import DATA_ENV
    from audio_ssl.utils.provenance import checkpoint_metadata, read_checkpoint

    checkpoint = Path(args.checkpoint)
    loaded = read_checkpoint(checkpoint)
    meta = checkpoint_metadata(loaded)
    data_meta = meta.get("data") or {}
    test_fold = args.test_fold if args.test_fold is not None else data_meta.get("test_fold")
    if test_fold is None:
        raise ValueError(f"{checkpoint} does not record a test fold: pass --test-fold K")
    if args.test_fold is not None:
        check_test_fold(args.test_fold, data_meta, checkpoint)
    if args.config:
        from audio_ssl.cli import build_cli

        cli_args = ["--config", args.config, "--data.init_args.test_fold", str(test_fold), "--trainer.logger", "false"]
        cli_args += ["--data.init_args.data_dir", args.data_dir] if args.data_dir else []
        cli_args += ["--data.init_args.cache_dir", args.cache_dir] if args.cache_dir else []
        cli = build_cli([*cli_args, *extra], run=False)
        model, dm, source = cli.model, cli.datamodule, args.config
    else:
        if extra:
            raise ValueError(f"unrecognised argument(s) {extra} (Lightning overrides need --config)")
        model, dm = _model_and_data_from_checkpoint(checkpoint, meta, test_fold, args.data_dir, args.cache_dir)
        source = str(checkpoint)
    if not dm.metadata_path.exists():
        raise ValueError(f"the probe needs the {dm.dataset_name} audio: {dm.metadata_path} does not exist; pass "
                         f"--data-dir DIR (or set ${DATA_ENV} to the folder holding '{dm.dataset_name}/')")
    reason = saw_test_fold(data_meta, test_fold)
    if reason:
        print(f"audio-ssl probe: warning: the checkpoint's training saw test fold {test_fold} ({reason}): "
              "the probe's accuracy on it is not a held-out estimate", file=sys.stderr)
    untrained = {k: v.clone() for k, v in model.state_dict().items()} if args.random_init else None
    state = loaded.get("state_dict", loaded)
    if args.encoder_only:
        from audio_ssl.methods.base import check_encoder_matches, load_prefixed_weights

        check_encoder_matches(meta, model.encoder, model.frontend, str(checkpoint))
        load_prefixed_weights(model.encoder, state, str(checkpoint))
    else:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            method = meta.get("method")
            this = f"{type(model).__module__}.{type(model).__qualname__}"
            hint = (f"; it is a {method.rsplit('.', 1)[-1]} checkpoint: pass --encoder-only to probe its encoder "
                    "with this model" if method and method != this else "")
            raise ValueError(f"{checkpoint} does not match the model of {source}{hint}: "
                             f"{str(err).splitlines()[0]}") from err
    config = load_probe_config(args.probe)
    train_set, test_set = dm.split_dataset("train"), dm.split_dataset("test")
    out = Path(args.out) if args.out else None
    results: dict = {}
    variants = [("pretrained", None)] + ([("random_init", untrained)] if untrained is not None else [])
    for variant, weights in variants:
        if weights is not None:
            model.load_state_dict(weights)
        output = probe_fold(model, train_set, test_set, dm.num_classes, dm.class_names, config,
                            fold_groups(dm, train_set), out / "embeddings" if out else None, tag=variant)
        results[variant] = {**output.metrics, "C": output.description.details["probe_C"]}
        if out is not None:
            with atomic_write(out / f"fold{test_fold}_{variant}.csv", "w") as fh:
                output.predictions.to_csv(fh, index=False)
    results["test_fold"] = test_fold
    results["pretraining_saw_test_fold"] = None if not data_meta else reason is not None
    return results


def main(argv: list[str] | None = None) -> None:
    """Probe an existing checkpoint on one held-out fold; prints the metrics as JSON."""
    parser = argparse.ArgumentParser(
        prog="audio-ssl probe", allow_abbrev=False,
        description="Linear probe of a trained encoder on one fold. The checkpoint describes its model, data and "
                    "folds; --config (for checkpoints that do not) also takes Lightning CLI arguments "
                    "(e.g. --data.init_args.cache_dir DIR).")
    parser.add_argument("--checkpoint", required=True, help="a Lightning checkpoint (or final.ckpt)")
    parser.add_argument("--config", default=None, help="the Lightning YAML the checkpoint was trained with "
                                                       "(default: the model and data recorded in the checkpoint)")
    parser.add_argument("--test-fold", type=int, default=None, help="held-out fold (default: the checkpoint's)")
    parser.add_argument("--data-dir", default=None,
                        help="dataset folder (default: the checkpoint's, else $AUDIO_SSL_DATA/<dataset>)")
    parser.add_argument("--cache-dir", default=None, help="waveform cache folder")
    parser.add_argument("--probe", default=None, help="probe settings YAML (default: built-in defaults)")
    parser.add_argument("--encoder-only", action="store_true",
                        help="load only encoder.* weights (checkpoint from a different method)")
    parser.add_argument("--random-init", action="store_true", help="also probe the untrained encoder")
    parser.add_argument("--out", default=None, help="folder for predictions CSVs and the embedding cache")
    args, extra = parser.parse_known_args(argv)
    try:
        results = run_probe_command(args, extra)
    except (ValueError, FileNotFoundError) as err:
        from audio_ssl.cli import short_error

        print(f"audio-ssl probe: error: {short_error(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

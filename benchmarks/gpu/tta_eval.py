"""Re-test the final weights of a finished ``audio-ssl cv`` run with test-time augmentation, into a second run folder.

    python benchmarks/gpu/tta_eval.py --run-dir results/NAME [--name NAME_tta10] [--tta-views 10] [--tta augment]
                                      [--tta-seed 0] [--folds 1,2]

For every finished fold of ``--run-dir`` (its ``fold{k}/result.json`` and ``fold{k}/final.ckpt``), the fold's
Lightning config is rebuilt exactly as the run trained it (same YAML, same overrides, from ``run.json``) plus
``--model.init_args.tta_views N --model.init_args.tta MODE``; the final weights are loaded (never a checkpoint chosen
on the test fold) and the model is tested on the held-out fold. ``SupervisedClassifier.tta_views`` only changes the
test step (the softmax averaged over N views of each clip: ``augment``, the clean clip and N - 1 seeded draws of
the training augmentations, time shift and SpecAugment masks; ``shift``, N evenly spaced circular shifts), so this
is the recipe's TTA row without retraining.
Writes ``<out>/<name>/`` in the cv runner's format (``fold{k}/result.json``, ``predictions/``, ``folds.csv``,
``summary.json``), so ``audio-ssl results`` reads it like any CV run. Folds already in the output are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("tta_eval")


def main(argv: list[str] | None = None) -> int:
    from audio_ssl.evaluation import run_store
    from audio_ssl.evaluation.fold import FoldContext
    from audio_ssl.evaluation.lightning_stage import (
        FINAL_WEIGHTS,
        evaluate_stage,
        fit_stage,
        lightning_args,
        resolved_config_text,
    )
    from audio_ssl.evaluation.registry import DEFAULT_VARIANT
    from audio_ssl.evaluation.run_config import config_fingerprint
    from audio_ssl.evaluation.runner import device_description, git_state
    from audio_ssl.evaluation.summary import build_summary, folds_frame
    from audio_ssl.tools.cv import parse_folds

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a finished CV run folder (results/NAME)")
    parser.add_argument("--name", default=None, help="output run name (default: <NAME>_tta<N>)")
    parser.add_argument("--out", default=None, help="results root for the output (default: the run's parent)")
    parser.add_argument("--tta-views", type=int, default=10, help="views per clip (default %(default)s)")
    parser.add_argument("--tta", choices=("augment", "shift"), default="augment",
                        help="augmented views (the clean clip + seeded training augmentations) or evenly spaced "
                             "circular shifts (default %(default)s)")
    parser.add_argument("--tta-seed", type=int, default=0, help="seed of the augmented views (default %(default)s)")
    parser.add_argument("--folds", type=parse_folds, default=None, help="default: every finished fold")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    src = Path(args.run_dir)
    run_meta = json.loads((src / run_store.RUN_FILE).read_text())
    if run_meta.get("pipeline", "lightning") != "lightning":
        parser.error(f"{src} is a {run_meta['pipeline']!r} run: only plain Lightning YAML runs are supported")
    if args.tta_views < 2:
        parser.error("--tta-views must be >= 2 (1 is the run itself)")
    config_path = Path(run_meta["config_file"])
    overrides = list(run_meta["overrides"]) + ["--model.init_args.tta_views", str(args.tta_views),
                                               "--model.init_args.tta", args.tta,
                                               "--model.init_args.tta_seed", str(args.tta_seed)]
    name = args.name or (f"{src.name}_tta{args.tta_views}{'' if args.tta == 'augment' else '_shift'}"
                         f"{f'_seed{args.tta_seed}' if args.tta_seed else ''}")
    dst = Path(args.out) / name if args.out else src.parent / name
    record = run_store.RunRecord(name=name, config_file=str(config_path), pipeline="lightning", overrides=overrides,
                                 fingerprint=config_fingerprint(config_path, overrides),
                                 num_folds=run_meta.get("num_folds"))
    run_store.open_run(dst, record)

    done = run_store.finished_folds(src)
    folds = args.folds or sorted(done)
    failed = []
    for fold in folds:
        final = run_store.fold_dir(src, fold) / FINAL_WEIGHTS
        if fold not in done or not final.exists():
            log.warning("fold %d: not finished in %s (no result.json or %s): skipped", fold, src, final.name)
            failed.append(fold)
            continue
        if run_store.load_fold_result(dst, fold) is not None:
            log.info("fold %d: already in %s", fold, dst)
            continue
        start = time.perf_counter()
        context = FoldContext({}, fold, run_store.fold_dir(dst, fold), config_path=config_path, run_name=name)
        args_f = lightning_args(context, config_path, context.work_dir, stage="tta") + overrides
        # fit_stage loads final.ckpt when it exists (checked above) and never trains then
        cli, epochs = fit_stage(args_f, run_store.fold_dir(src, fold))
        if (cli.model.tta_views, cli.model.tta) != (args.tta_views, args.tta):
            raise RuntimeError(f"the model has tta_views={cli.model.tta_views}, tta={cli.model.tta!r}; expected "
                               f"{args.tta_views}, {args.tta!r}")
        source = done[fold].variants[DEFAULT_VARIANT]
        description = dataclasses.replace(
            source.description, epochs=epochs, wall_time_s=None, device=None,
            protocol=f"{source.description.protocol or 'supervised from scratch'}; final weights re-tested "
                     f"with {args.tta_views}-view {'augmented' if args.tta == 'augment' else 'circular-shift'} TTA",
            configs={"tta": resolved_config_text(cli)},
            details={**source.description.details, "tta_views": args.tta_views, "tta": args.tta, "tta_seed": args.tta_seed,
                     "source_run": str(src)})
        output = evaluate_stage(cli, description)
        output.description.wall_time_s = time.perf_counter() - start
        result = run_store.save_fold_result(dst, fold, {DEFAULT_VARIANT: output}, output.description.wall_time_s,
                                            record.fingerprint)
        log.info("fold %d: acc %.4f (no TTA %.4f)", fold, result.variants[DEFAULT_VARIANT].metrics["acc"],
                 source.metrics["acc"])

    results = run_store.finished_folds(dst)
    if not results:
        log.error("no fold could be re-tested")
        return 1
    summary = build_summary(dst, results, {**dataclasses.asdict(record), **git_state(), "device": device_description(),
                                           "cv_config_text": config_path.read_text()})
    run_store.write_summary(dst, summary, folds_frame(results))
    acc = summary["variants"][DEFAULT_VARIANT]["metrics"]["acc"]
    print(f"{name}: acc {acc['mean']:.4f} (std {acc['std']}) over folds {summary['folds']}; summary in {dst}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Re-test the final weights of a finished ``audio-ssl cv`` run with test-time augmentation, into a second run folder.

    python benchmarks/gpu/tta_eval.py --run-dir results/NAME [--name NAME_tta10] [--tta-views 10] [--folds 1,2]

For every finished fold of ``--run-dir`` (its ``fold{k}/result.json`` and ``fold{k}/final.ckpt``), the fold's
Lightning config is rebuilt exactly as the run trained it (same YAML, same overrides, from ``run.json``) plus
``--model.init_args.tta_views N``; the final weights are loaded (never a checkpoint chosen on the test fold) and
the model is tested on the held-out fold. ``SupervisedClassifier.tta_views`` only changes the test step (softmax
averaged over N evenly spaced circular shifts of each clip), so this is the recipe's TTA row without retraining.
Writes ``<out>/<name>/`` in the cv runner's format (``fold{k}/result.json``, ``predictions/``, ``folds.csv``,
``summary.json``), so ``audio-ssl results`` reads it like any CV run. Folds already in the output are skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("tta_eval")


def main(argv: list[str] | None = None) -> int:
    from audio_ssl.evaluation import cross_validation as cv
    from audio_ssl.evaluation.summary import build_summary, write_summary
    from audio_ssl.tools.cv import parse_folds

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a finished CV run folder (results/NAME)")
    parser.add_argument("--name", default=None, help="output run name (default: <NAME>_tta<N>)")
    parser.add_argument("--out", default=None, help="results root for the output (default: the run's parent)")
    parser.add_argument("--tta-views", type=int, default=10, help="circular-shift views per clip (default %(default)s)")
    parser.add_argument("--folds", type=parse_folds, default=None, help="default: every finished fold")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    src = Path(args.run_dir)
    run_meta = json.loads((src / cv.RUN_FILE).read_text())
    if run_meta.get("pipeline", "lightning") != "lightning":
        parser.error(f"{src} is a {run_meta['pipeline']!r} run: only plain Lightning YAML runs are supported")
    if args.tta_views < 2:
        parser.error("--tta-views must be >= 2 (1 is the run itself)")
    config_path = Path(run_meta["config_file"])
    overrides = list(run_meta["overrides"]) + ["--model.init_args.tta_views", str(args.tta_views)]
    name = args.name or f"{src.name}_tta{args.tta_views}"
    dst = Path(args.out) / name if args.out else src.parent / name
    fingerprint = cv.config_fingerprint(config_path, overrides)
    meta = {"name": name, "config_file": str(config_path), "pipeline": "lightning", "overrides": overrides,
            "fingerprint": fingerprint, "num_folds": run_meta.get("num_folds"),
            "source_run": str(src), "tta_views": args.tta_views}
    cv._atomic_write(dst / cv.RUN_FILE, json.dumps(meta, indent=2))

    done = cv.finished_folds(src)
    folds = args.folds or sorted(done)
    run = {"name": name, "out": str(dst), "wandb": False, "project": "audio-ssl"}
    failed = []
    for fold in folds:
        final = src / f"fold{fold}" / cv.FINAL_WEIGHTS
        if fold not in done or not final.exists():
            log.warning("fold %d: not finished in %s (no result.json or %s): skipped", fold, src, final.name)
            failed.append(fold)
            continue
        if cv.load_fold_result(dst, fold) is not None:
            log.info("fold %d: already in %s", fold, dst)
            continue
        start = time.perf_counter()
        stage_dir = dst / f"fold{fold}"
        args_f = cv.lightning_args(config_path, fold, stage_dir, run, stage="tta") + overrides
        # fit_stage loads final.ckpt when it exists (checked above) and never trains then
        cli, epochs = cv.fit_stage(args_f, src / f"fold{fold}")
        if cli.model.tta_views != args.tta_views:
            raise RuntimeError(f"the model has tta_views={cli.model.tta_views}, expected {args.tta_views}")
        source = done[fold]["variants"][cv.DEFAULT_VARIANT]
        info = {**{k: v for k, v in source["info"].items() if k not in ("wall_time_s", "configs", "device")},
                "epochs": epochs, "tta_views": args.tta_views,
                "protocol": f"{source['info'].get('protocol', 'supervised from scratch')}; final weights re-tested "
                            f"with {args.tta_views}-view circular-shift TTA",
                "configs": {"tta": cv.resolved_config_text(cli)}, "source_run": str(src)}
        output = cv.evaluate_stage(cli, info)
        output.info["wall_time_s"] = time.perf_counter() - start
        result = cv.save_fold_result(dst, fold, {cv.DEFAULT_VARIANT: output}, output.info["wall_time_s"], fingerprint)
        log.info("fold %d: acc %.4f (no TTA %.4f)", fold, result["variants"][cv.DEFAULT_VARIANT]["metrics"]["acc"],
                 source["metrics"]["acc"])

    results = cv.finished_folds(dst)
    if not results:
        log.error("no fold could be re-tested")
        return 1
    summary = build_summary(dst, results, {**meta, **cv.git_state(), "device": cv.device_description(),
                                           "cv_config_text": config_path.read_text()})
    write_summary(dst, summary)
    acc = summary["variants"][cv.DEFAULT_VARIANT]["metrics"]["acc"]
    print(f"{name}: acc {acc['mean']:.4f} (std {acc['std']}) over folds {summary['folds']}; summary in {dst}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

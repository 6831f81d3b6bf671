"""Re-test the final weights of a finished cross-validation run with test-time augmentation, into a second run
folder, without retraining (the TTA row of the seed table, ``audio-ssl reproduce``).

For every finished fold of ``src`` (its ``fold{k}/result.json`` and ``fold{k}/final.ckpt``), the fold's
Lightning config is rebuilt exactly as the run trained it (same YAML, same overrides, from ``run.json``) plus
``--model.init_args.tta_views N --model.init_args.tta MODE --model.init_args.tta_seed S``; the final weights are
loaded (never a checkpoint chosen on the test fold) and the model is tested on the held-out fold.
``SupervisedClassifier.tta_views`` only changes the test step (the softmax averaged over N views of each clip:
``augment``, the clean clip and N - 1 seeded draws of the training augmentations, time shift and SpecAugment masks;
``shift``, N evenly spaced circular shifts), so the weights and the test clips are the run's.
The output folder is in the cv runner's format (``fold{k}/result.json``, ``predictions/``, ``folds.csv``,
``summary.json``), so ``audio-ssl results`` reads it like any CV run. Folds already in the output are skipped,
so a re-test interrupted part way continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

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

log = logging.getLogger(__name__)


TTA_MODES = ("augment", "shift")
"""``SupervisedClassifier.tta`` modes: augmented views (the default) or circular shifts."""


def tta_run_name(source: str | Path, tta_views: int, tta: str = "augment", tta_seed: int = 0) -> str:
    """The default name of the re-tested run: ``<source run>_tta<N>`` (``supervised_resnet34_tta10``), then
    ``_shift`` for circular shifts and ``_seed<S>`` for a seed other than 0."""
    return f"{Path(source).name}_tta{tta_views}{'' if tta == 'augment' else '_' + tta}" + (
        f"_seed{tta_seed}" if tta_seed else "")


def retest_with_tta(src: str | Path, tta_views: int, dst: str | Path | None = None,
                    folds: Sequence[int] | None = None, tta: str = "augment",
                    tta_seed: int = 0) -> tuple[dict | None, list[int]]:
    """Re-test the final weights of the finished folds of the CV run folder ``src`` with ``tta_views`` views
    (``tta``: ``augment`` or ``shift``; ``tta_seed``: the seed of the augmented views).

    ``dst`` is the output run folder (default: ``<src parent>/<src name>_tta<N>``); ``folds`` default to every
    finished fold of ``src``. Returns ``(summary, missing)``: the output's summary over every fold it holds
    (``None`` when it holds none) and the requested folds that ``src`` has not finished (no ``result.json`` or no
    ``final.ckpt``; they are not re-tested). Raises ValueError when ``src`` is not a plain Lightning run
    (``pipeline: lightning``), ``tta_views < 2``, an unknown ``tta``, a negative ``tta_seed`` or a fold outside the run's; FileNotFoundError when ``src`` has no ``run.json``.
    """
    src = Path(src)
    if tta_views < 2:
        raise ValueError(f"tta_views={tta_views}: must be >= 2 (1 is the run itself)")
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r}: must be one of {', '.join(TTA_MODES)}")
    if tta_seed < 0:
        raise ValueError(f"tta_seed={tta_seed}: must be >= 0")
    run_file = src / run_store.RUN_FILE
    if not run_file.is_file():
        raise FileNotFoundError(f"{run_file} not found: {src} is not a cross-validation run folder")
    run_meta = json.loads(run_file.read_text())
    if run_meta.get("pipeline", "lightning") != "lightning":
        raise ValueError(f"{src} is a {run_meta['pipeline']!r} run: only plain Lightning YAML runs can be "
                         "re-tested with TTA")
    config_path = Path(run_meta["config_file"])
    overrides = list(run_meta["overrides"]) + ["--model.init_args.tta_views", str(tta_views),
                                               "--model.init_args.tta", tta, "--model.init_args.tta_seed", str(tta_seed)]
    dst = Path(dst) if dst is not None else src.parent / tta_run_name(src, tta_views, tta, tta_seed)
    name = dst.name
    record = run_store.RunRecord(name=name, config_file=str(config_path), pipeline="lightning", overrides=overrides,
                                 fingerprint=config_fingerprint(config_path, overrides),
                                 num_folds=run_meta.get("num_folds"))
    run_store.open_run(dst, record)

    done = run_store.finished_folds(src)
    num_folds = run_meta.get("num_folds")
    bad = [f for f in (folds or []) if num_folds and not 1 <= f <= num_folds]
    if bad:
        raise ValueError(f"folds {bad}: {src} is a run over folds 1..{num_folds}")
    missing = []
    for fold in (sorted(folds) if folds else sorted(done)):
        final = run_store.fold_dir(src, fold) / FINAL_WEIGHTS
        if fold not in done or not final.exists():
            log.warning("fold %d: not finished in %s (no result.json or %s): not re-tested", fold, src, final.name)
            missing.append(fold)
            continue
        if run_store.load_fold_result(dst, fold) is not None:
            log.info("fold %d: already re-tested in %s", fold, dst)
            continue
        start = time.perf_counter()
        context = FoldContext({}, fold, run_store.fold_dir(dst, fold), config_path=config_path, run_name=name)
        args = lightning_args(context, config_path, context.work_dir, stage="tta") + overrides
        # fit_stage loads final.ckpt when it exists (checked above) and never trains then
        cli, epochs = fit_stage(args, run_store.fold_dir(src, fold))
        if (cli.model.tta_views, cli.model.tta) != (tta_views, tta):
            raise RuntimeError(f"the model has tta_views={cli.model.tta_views}, tta={cli.model.tta!r}; expected "
                               f"{tta_views}, {tta!r}")
        source = done[fold].variants[DEFAULT_VARIANT]
        description = dataclasses.replace(
            source.description, epochs=epochs, wall_time_s=None, device=None,
            protocol=f"{source.description.protocol or 'supervised from scratch'}; final weights re-tested "
                     f"with {tta_views}-view {'augmented' if tta == 'augment' else 'circular-shift'} TTA",
            configs={"tta": resolved_config_text(cli)},
            details={**source.description.details, "tta_views": tta_views, "tta": tta, "tta_seed": tta_seed,
                     "source_run": str(src)})
        output = evaluate_stage(cli, description)
        output.description.wall_time_s = time.perf_counter() - start
        result = run_store.save_fold_result(dst, fold, {DEFAULT_VARIANT: output}, output.description.wall_time_s,
                                            record.fingerprint)
        log.info("fold %d: acc %.4f with %d-view TTA (%.4f without)", fold,
                 result.variants[DEFAULT_VARIANT].metrics["acc"], tta_views, source.metrics["acc"])

    results = run_store.finished_folds(dst)
    if not results:
        return None, missing
    summary = build_summary(dst, results, {**dataclasses.asdict(record), **git_state(), "device": device_description(),
                                           "cv_config_text": config_path.read_text()})
    run_store.write_summary(dst, summary, folds_frame(results))
    return summary, missing

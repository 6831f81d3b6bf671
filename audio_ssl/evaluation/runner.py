"""The cross-validation runner: one fold task per held-out fold of the dataset's official folds, everything
else identical, then the summary and the error analysis.

:func:`run_cv` reads the config (:mod:`~audio_ssl.evaluation.run_config`), looks its pipeline up in the
registry (:mod:`~audio_ssl.evaluation.registry`; a plain Lightning YAML runs as ``"lightning"``), and for each
fold that has not finished yet calls the task with a :class:`~audio_ssl.evaluation.fold.FoldContext` and keeps
what it returns in the run folder (:mod:`~audio_ssl.evaluation.run_store`, which also describes the layout of
``<out>/<NAME>/``). Finished folds are skipped on a re-run; a run folder made by another config or other
overrides is refused. At the end it writes ``folds.csv`` and ``summary.json``
(:mod:`~audio_ssl.evaluation.summary`), the analysis (:mod:`~audio_ssl.evaluation.analysis`), and logs to W&B
(:mod:`~audio_ssl.evaluation.tracking`) when enabled.

Folds at once: given a ``launcher`` (:mod:`~audio_ssl.evaluation.launchers`: N local processes, or jobs through
submitit, SLURM or local), the folds still to run become :class:`FoldJob` s, each run by :func:`run_fold` in its
own process (``run_cv`` of that one fold, no summary, output in ``<run>/logs/fold{k}.log``); the runner waits,
then summarises the run folder exactly as the sequential loop does. A fold's results do not depend on which
process runs it (every Lightning stage seeds itself), so they equal the sequential run's. Folds that share a
stage (transductive pretraining, trained once in ``<run>/pretrain_transductive/``) are launched after the first
pending fold has finished, so that the shared stage is trained once and never by two processes at the same time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from audio_ssl.evaluation import run_store
from audio_ssl.evaluation.analysis import analyze_run
from audio_ssl.evaluation.fold import FoldContext
from audio_ssl.evaluation.registry import DEFAULT_PIPELINE, get_pipeline
from audio_ssl.evaluation.run_config import (
    apply_pipeline_set,
    config_fingerprint,
    infer_num_folds,
    load_config,
    project_for,
)
from audio_ssl.evaluation.summary import build_summary, folds_frame
from audio_ssl.evaluation.tracking import finish_wandb, log_fold, log_summary
from audio_ssl.utils.distributed import barrier, broadcast_from_rank_zero, is_rank_zero, process_rank

log = logging.getLogger(__name__)


def git_state(repo: Path | None = None) -> dict:
    """The commit the code runs from and whether the working tree has uncommitted changes."""
    import subprocess

    repo = repo or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return {"git_commit": commit, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": None}


def device_description() -> str:
    """The accelerator (or CPU and threads) the run uses, for the summary."""
    import platform

    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def cv_config_text(config_path: Path, overlays: Sequence[Path] = (), pipeline_set: Sequence[str] = ()) -> str:
    """The run's config as written: the file, then each stacked overlay and the ``--pipeline-set`` items."""
    text = config_path.read_text()
    for path in overlays:
        text += f"\n# --config {path}\n" + Path(path).read_text()
    if pipeline_set:
        text += "\n# --pipeline-set " + " --pipeline-set ".join(pipeline_set) + "\n"
    return text


OWN_CONFIG_PIPELINES = frozenset({"clap_zeroshot"})
"""Pipelines without a Lightning stage that apply ``--set KEY=VALUE`` to their own config (as ``--pipeline-set``)."""

NO_OVERRIDE_PIPELINES = frozenset({"baseline", "beats_probe"})
"""Pipelines without a Lightning stage that read no overrides: ``--set`` (or a trailing Lightning argument) is
refused rather than dropped."""


def pipeline_keys(pipeline: str) -> set[str] | None:
    """The keys of a ``pipeline`` config, which ``audio-ssl cv --pipeline-set KEY=VALUE`` may set; ``None`` for a
    plain Lightning YAML (``--set`` overrides its values) or a pipeline registered without a key list."""
    from audio_ssl.evaluation.pipelines import PIPELINE_KEYS

    if pipeline in PIPELINE_KEYS:
        return set(PIPELINE_KEYS[pipeline])
    if pipeline == "clap_zeroshot":
        from audio_ssl.evaluation.zeroshot import CONFIG_KEYS

        return set(CONFIG_KEYS)
    if pipeline == "beats_probe":
        from audio_ssl.evaluation.beats_probe import BEATS_PROBE_KEYS

        return set(BEATS_PROBE_KEYS)
    if pipeline == "baseline":
        import dataclasses

        from audio_ssl.evaluation.baselines import MFCCParams

        return {"pipeline", "baseline", "data", "seed", "seed_everything", "n_jobs", "feature_cache_dir", "C",
                "max_iter", *(f.name for f in dataclasses.fields(MFCCParams))}
    return None


def check_set_names_no_pipeline_key(overrides: Sequence[str], keys: set[str] | None, pipeline: str,
                                    config_path: Path) -> None:
    """Refuse a ``--set KEY=VALUE`` (a Lightning argument of the stages) whose KEY is a key of the pipeline config
    itself, saying to use ``--pipeline-set``; pipelines that read their own config accept both."""
    if pipeline in NO_OVERRIDE_PIPELINES and overrides:
        raise ValueError(f"--set/Lightning arguments {list(overrides)}: {config_path.name} is a {pipeline} pipeline, "
                         "which runs no Lightning stage: set its keys with --pipeline-set KEY=VALUE")
    if not keys or pipeline in OWN_CONFIG_PIPELINES:
        return
    from audio_ssl.evaluation.run_store import override_values

    lightning_sections = {"model", "data", "trainer", "optimizer", "lr_scheduler", "checkpoint"}
    for key, value in override_values(overrides).items():
        if key in keys - {"pipeline"} - lightning_sections:
            raise ValueError(f"--set {key}={value}: {key} is a key of the {pipeline} pipeline config "
                             f"{config_path.name}, not a Lightning argument of its stages: use --pipeline-set "
                             f"{key}={value}")


def _check_config(config: dict, pipeline: str, config_path: Path, overrides: Sequence[str], source: str) -> None:
    """The checks a fold task makes first, made before anything is written: keys and values, stage files."""
    from audio_ssl.evaluation.pipelines import PIPELINE_KEYS, check_pipeline_config
    from audio_ssl.evaluation.run_config import resolve_path, stage_configs

    if pipeline in PIPELINE_KEYS:
        check_pipeline_config(config, pipeline, source)
        for key in ("pretrain", "finetune"):
            if key in PIPELINE_KEYS[pipeline]:
                stage_configs(config, key, config_path, source=source)
        if "model" in PIPELINE_KEYS[pipeline]:
            resolve_path(config, "model", config_path, source=source)
    elif pipeline == "clap_zeroshot":
        from audio_ssl.evaluation import zeroshot
        from audio_ssl.evaluation.run_config import apply_set_overrides

        zeroshot._check_config(apply_set_overrides(config, overrides, source), source)


def check_run_config(config: dict, pipeline: str, config_path: Path, overrides: Sequence[str],
                     pipeline_set: Sequence[str]) -> None:
    """Check a pipeline config as it will run (after ``--pipeline-set``) before any file of the run is written.
    An error the file alone does not have names the ``--pipeline-set`` items that cause it, not the file."""
    try:
        _check_config(config, pipeline, config_path, overrides, str(config_path))
    except (ValueError, FileNotFoundError):
        if not pipeline_set:
            raise
        file_config = load_config(config_path)
        keys = pipeline_keys(pipeline) or set()
        try:
            _check_config(file_config, pipeline, config_path, overrides, str(config_path))
        except (ValueError, FileNotFoundError):
            raise  # the file itself is wrong (or both are): the first error stands
        culprits = []
        for item in pipeline_set:
            try:
                _check_config(apply_pipeline_set(file_config, [item], keys, str(config_path)), pipeline, config_path,
                              overrides, str(config_path))
            except (ValueError, FileNotFoundError):
                culprits.append(item)
        source = " ".join(f"--pipeline-set {item}" for item in culprits or pipeline_set)
        _check_config(config, pipeline, config_path, overrides, f"{source} (on {config_path.name})")
        raise


@dataclass(frozen=True)
class FoldJob:
    """One held-out fold of a CV run, as a job for another process: the :func:`run_cv` arguments of the run (all
    plain values, so the job pickles and travels as JSON) and the fold. ``threads``: torch/OpenMP threads for the
    fold's process (``None``: torch's default). ``log_file``: where the fold's output goes."""

    config_path: str
    fold: int
    name: str
    out: str
    log_file: str
    overrides: tuple[str, ...] = ()
    overlays: tuple[str, ...] = ()
    pipeline_set: tuple[str, ...] = ()
    wandb: bool = True
    threads: int | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> FoldJob:
        tuples = {"overrides", "overlays", "pipeline_set"}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in data.items()})


class FoldLauncher(Protocol):
    """Runs fold jobs somewhere else (:mod:`~audio_ssl.evaluation.launchers`) and waits for them all."""

    def launch(self, jobs: Sequence[FoldJob]) -> dict[int, str]:
        """Run every job (each through :func:`run_fold`); return ``{fold: why it failed}`` for the failed ones."""
        ...


class FoldsFailed(RuntimeError):
    """Folds run by a launcher that failed (the others finished and are kept); the message names each fold, why,
    and the end of its log."""


def log_tail(path: str | os.PathLike, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file (``"(no log)"`` when it does not exist)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def run_fold(job: FoldJob) -> dict:
    """Run one fold of a CV run in this process: :func:`run_cv` of ``job.fold`` alone, without the summary.
    Its output (Python's and the libraries' own, file descriptors 1 and 2) is appended to ``job.log_file``
    (``.rank{r}.log`` for ranks > 0 of a multi-task job). The function every launcher runs. Returns
    ``{"fold", "wall_time_s", "metrics": {variant: metrics}}``; raises what the fold raised."""
    import torch

    from audio_ssl.evaluation.run_store import load_fold_result

    rank = process_rank()  # > 0: another task of a multi-task job (Lightning DDP over its GPUs or nodes)
    log_file = Path(job.log_file)
    if rank:
        log_file = log_file.with_suffix(f".rank{rank}.log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "ab", buffering=0) as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    try:
        if not logging.getLogger().handlers:  # a bare job process (submitit): the runner's INFO lines
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        if job.threads:
            torch.set_num_threads(job.threads)
        log.info("fold %d of %s (%s), %d torch threads", job.fold, job.name, job.config_path,
                 torch.get_num_threads())
        try:
            run_cv(job.config_path, folds=[job.fold], name=job.name, out=job.out, overrides=job.overrides,
                   wandb=job.wandb, analyze=False, overlays=job.overlays, pipeline_set=job.pipeline_set,
                   summarize=False)
        except BaseException:
            log.exception("fold %d of %s failed", job.fold, job.name)  # into the fold's log, whoever launched it
            raise
        result = load_fold_result(Path(job.out) / job.name, job.fold)
        return {"fold": job.fold, "wall_time_s": result.wall_time_s if result else None,
                "metrics": {v: r.metrics for v, r in result.variants.items()} if result else {}}
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def shares_a_stage(config: dict, pipeline: str) -> bool:
    """Whether the folds of this config share a stage that the first fold to run trains and the others load:
    transductive pretraining (``transductive: true`` of ``pretrain_probe`` / ``pretrain_finetune``)."""
    from audio_ssl.evaluation.pipelines import PIPELINE_KEYS

    return "transductive" in PIPELINE_KEYS.get(pipeline, ()) and config.get("transductive") is True


def launch_folds(launcher: FoldLauncher, jobs: list[FoldJob], shared_stage: bool) -> None:
    """Run ``jobs`` through ``launcher``: with a ``shared_stage``, the first job alone, then the others (so the
    shared stage is trained once, by the first); raise :class:`FoldsFailed` naming every failed fold."""
    waves = [jobs[:1], jobs[1:]] if shared_stage else [jobs]
    failures: dict[int, str] = {}
    for wave in waves:
        if not wave:
            continue
        if failures:  # the shared stage failed: the others would train it again, each on its own
            failures.update({job.fold: f"not run: fold {jobs[0].fold}, which trains the stage the folds share, "
                             "failed" for job in wave})
            break
        failures.update(launcher.launch(wave))
    if failures:
        raise FoldsFailed("; ".join(f"fold {fold} failed: {why}" for fold, why in sorted(failures.items()))
                          + " (the finished folds are kept: run the same command again to run the failed ones)")


def run_cv(
    config_path: str | os.PathLike,
    folds: Sequence[int] | None = None,
    name: str | None = None,
    out: str | os.PathLike = "results",
    overrides: Sequence[str] = (),
    wandb: bool = True,
    analyze: bool = True,
    examples: int = 8,
    overlays: Sequence[str | os.PathLike] = (),
    pipeline_set: Sequence[str] = (),
    launcher: FoldLauncher | None = None,
    threads_per_fold: int | None = None,
    summarize: bool = True,
) -> dict | None:
    """Run a config once per held-out fold and summarise; returns the summary (also in ``<out>/<name>/``).

    ``folds`` defaults to every fold of the dataset. ``overrides`` are Lightning CLI arguments added to every
    Lightning run (after the config's own). ``overlays``: Lightning YAMLs stacked on a plain Lightning config
    (``cpu/simclr.yaml`` after ``simclr.yaml``). ``pipeline_set``: ``KEY=VALUE`` items setting keys of a pipeline
    config (``size=cpu``, ``transductive=true``; an unknown key is refused). The default ``name`` is the config's
    stem, ``_<folder>`` per size overlay of the same stem, then ``_<size>`` and ``_transductive`` when the
    pipeline-set items ask for them (``simclr_probe_cpu_transductive``). Folds whose results are on disk are not
    run again; a run folder made from a different config or overrides is refused.
    """
    config_path = Path(config_path).resolve()
    config = load_config(config_path)
    pipeline = config.get("pipeline", DEFAULT_PIPELINE)
    if not isinstance(pipeline, str):
        raise ValueError(f"{config_path}: 'pipeline' must be a name, got {pipeline!r}")
    task = get_pipeline(pipeline)
    overlays = tuple(Path(p).resolve() for p in overlays)
    if overlays and pipeline != DEFAULT_PIPELINE:
        raise ValueError(f"{config_path} is a {pipeline} pipeline: more --config files stack on a Lightning YAML "
                         "only; give the pipeline's stages a size with --pipeline-set size=cpu")
    for path in overlays:
        load_config(path)  # a missing or malformed overlay, named before any fold runs
    keys = pipeline_keys(pipeline)
    overrides = tuple(overrides)
    if pipeline_set:
        if keys is None:
            raise ValueError(f"--pipeline-set: {config_path} is a {pipeline} config, which has no pipeline keys to "
                             "set; its values are Lightning arguments: set them with --set KEY=VALUE")
        config = apply_pipeline_set(config, pipeline_set, keys, str(config_path))
    check_set_names_no_pipeline_key(overrides, keys, pipeline, config_path)
    check_run_config(config, pipeline, config_path, overrides, pipeline_set)
    if not name:
        from audio_ssl.cli import stacked_name

        name = stacked_name([str(config_path), *map(str, overlays)])
        keys = {item.partition("=")[0].strip() for item in pipeline_set}
        if "size" in keys and config.get("size"):
            name += f"_{config['size']}"
        if "transductive" in keys and config.get("transductive") is True:
            name += "_transductive"
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"--name {name!r}: use a plain folder name")
    num_folds = infer_num_folds(config, config_path)
    folds = sorted(set(folds)) if folds else list(range(1, num_folds + 1))
    bad = [f for f in folds if not 1 <= f <= num_folds]
    if bad:
        raise ValueError(f"folds {bad} are out of range: {config_path.name} uses a dataset with folds 1..{num_folds}")
    run_dir = Path(out) / name
    fingerprint = config_fingerprint(config_path, overrides, config, overlays)
    record = run_store.RunRecord(name=name, config_file=str(config_path), pipeline=pipeline,
                                 overrides=list(overrides), fingerprint=fingerprint, num_folds=num_folds,
                                 config=config if pipeline != DEFAULT_PIPELINE else None,
                                 pipeline_set=list(pipeline_set))
    if is_rank_zero():  # DDP: the other ranks start later, from rank 0's first Trainer call
        run_store.open_run(run_dir, record)

    if wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
    project = project_for(config, config_path)

    pending = []
    for fold in folds:
        if run_store.load_fold_result(run_dir, fold) is not None:
            log.info("fold %d already finished in %s: skipped", fold, run_dir)
        else:
            pending.append(fold)
    if launcher is not None:
        jobs = [FoldJob(config_path=str(config_path), fold=fold, name=name, out=str(Path(out).resolve()),
                        log_file=str((run_dir / "logs" / f"fold{fold}.log").resolve()), overrides=overrides,
                        overlays=tuple(map(str, overlays)), pipeline_set=tuple(pipeline_set), wandb=wandb,
                        threads=threads_per_fold) for fold in pending]
        launch_folds(launcher, jobs, shares_a_stage(config, pipeline))
        pending = []

    for fold in pending:
        context = FoldContext(config=config, fold=fold, work_dir=run_store.fold_dir(run_dir, fold),
                              config_path=config_path, overrides=overrides, run_name=name, wandb=wandb,
                              wandb_project=project, overlays=overlays)
        context.work_dir.mkdir(parents=True, exist_ok=True)
        log.info("fold %d/%d: running %s", fold, num_folds, pipeline)
        start = time.perf_counter()
        outputs = task(context)
        # DDP (every rank runs this loop): rank 0 writes and logs the fold, the others wait for the files.
        if is_rank_zero():
            result = run_store.save_fold_result(run_dir, fold, outputs, time.perf_counter() - start,
                                                record.fingerprint)
            if wandb:
                log_fold(name, project, fold, {v: r.metrics for v, r in result.variants.items()},
                         result.wall_time_s, context.work_dir)
        barrier()
        finish_wandb()

    if not summarize:
        return None
    if not is_rank_zero():  # DDP: rank 0 summarises and writes; the others return its summary
        return broadcast_from_rank_zero(None)
    fold_results = run_store.finished_folds(run_dir)
    summary = build_summary(run_dir, fold_results,
                            {**vars(record), **git_state(), "device": device_description(),
                             "cv_config_text": cv_config_text(config_path, overlays, pipeline_set)})
    folds_table = folds_frame(fold_results)
    run_store.write_summary(run_dir, summary, folds_table)
    analysis_files = analyze_run(run_dir, examples=examples) if analyze else {}
    if wandb:
        log_summary(name, project, summary, folds_table, run_dir, analysis_files)
    return broadcast_from_rank_zero(summary)

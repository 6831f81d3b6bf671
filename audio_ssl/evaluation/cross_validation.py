"""Cross-validation over a dataset's official folds: one task per held-out fold, everything else identical.

The per-fold task interface
---------------------------
A *fold task* takes the parsed config, the held-out fold and a work directory, and returns one
:class:`~audio_ssl.evaluation.fold.FoldOutput` per *variant* (e.g. ``"pretrained"`` and ``"random_init"``)::

    FoldTask = Callable[[dict, int, Path], dict[str, FoldOutput]]

Tasks live in the :data:`PIPELINES` registry under a name and are added with :func:`register_pipeline`.
A config with no top-level ``pipeline:`` key is a plain Lightning CLI YAML and runs as ``"lightning"``;
``pipeline: <name>`` dispatches to ``PIPELINES[name]`` (``"pretrain_probe"``, ``"pretrain_finetune"``,
``"baseline"``, ...).

The config dict a task receives is the YAML as parsed, plus keys the runner adds (constants below):

- ``"_config_path"``: absolute path of the YAML file (resolve relative paths in the config against its folder);
- ``"_overrides"``: extra Lightning CLI arguments (``--set``/trailing args) to pass to every Lightning run;
- ``"_run"``: ``{"name": NAME, "out": results/NAME, "wandb": bool, "project": str}``.

What a task should put into ``FoldOutput.info`` (all optional, used by the summary and the results table):
``method``, ``encoder``, ``pretraining_data``, ``transductive`` (bool), ``protocol``, ``epochs``,
``device``, ``configs`` (``{label: resolved config text}``), ``wall_time_s`` (of that variant), and the
dataset description from :func:`dataset_info` (``dataset``, ``num_folds``, ``num_clips``, ``clips_digest``,
``class_names``, ``sample_rate``), which the fold bookkeeping check needs to prove that every clip was
tested exactly once. Helpers for tasks that run Lightning: :func:`lightning_args`, :func:`finish_wandb`.

The runner (:func:`run_cv`) writes ``<out>/<NAME>/``: ``fold{k}/`` (each fold's Lightning runs and
checkpoints, and ``result.json`` once the fold is finished: finished folds are skipped on a re-run),
``predictions/fold{k}[_{variant}].csv``, ``folds.csv``, ``summary.json`` and ``analysis/``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import yaml

from audio_ssl.evaluation.fold import (
    FoldOutput,
    classification_metrics,
    gather_clip_outputs,
    predictions_frame,
)
from audio_ssl.utils.distributed import barrier, broadcast_from_rank_zero, is_rank_zero
from audio_ssl.utils.io import atomic_write

log = logging.getLogger(__name__)

FoldTask = Callable[[dict, int, Path], dict[str, FoldOutput]]
"""A per-fold task: ``(config, held-out fold, work dir) -> {variant: FoldOutput}``."""

PIPELINES: dict[str, FoldTask] = {}
"""Registered fold tasks by name (see :func:`get_pipeline`, which imports the modules that register them)."""

# Modules imported on first lookup so their ``@register_pipeline`` decorators run.
PIPELINE_MODULES: dict[str, str] = {
    "pretrain_probe": "audio_ssl.evaluation.pipelines",
    "pretrain_finetune": "audio_ssl.evaluation.pipelines",
    "baseline": "audio_ssl.evaluation.baselines",
    "beats_probe": "audio_ssl.evaluation.beats_probe",
}

CONFIG_PATH_KEY = "_config_path"
OVERRIDES_KEY = "_overrides"
RUN_KEY = "_run"
DEFAULT_VARIANT = "default"
STD_NOTE = "std is the sample standard deviation over folds (ddof=1); null with a single fold"
TRANSDUCTIVE_NOTE = "pretraining saw test-fold audio"


def register_pipeline(name: str) -> Callable[[FoldTask], FoldTask]:
    """Decorator: ``@register_pipeline("my_pipeline")`` makes ``pipeline: my_pipeline`` configs run the task."""

    def decorator(task: FoldTask) -> FoldTask:
        if name in PIPELINES and PIPELINES[name] is not task:
            raise ValueError(f"a pipeline named {name!r} is already registered ({PIPELINES[name]!r})")
        PIPELINES[name] = task
        return task

    return decorator


def get_pipeline(name: str) -> FoldTask:
    """The registered task ``name``, importing the module that defines it on first use."""
    if name not in PIPELINES and name in PIPELINE_MODULES:
        importlib.import_module(PIPELINE_MODULES[name])
    if name not in PIPELINES:
        known = sorted(set(PIPELINES) | set(PIPELINE_MODULES))
        raise KeyError(f"unknown pipeline {name!r}: registered pipelines are {known}")
    return PIPELINES[name]


# ---------------------------------------------------------------------------------------------- configs
def load_config(path: str | os.PathLike) -> dict:
    """Parse a YAML config; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(config).__name__}")
    return config


def resolve_path(config: dict, key: str, required: bool = True) -> Path | None:
    """``config[key]`` as a path, relative to the folder of the config file it came from."""
    value = config.get(key)
    source = config.get(CONFIG_PATH_KEY, "<config>")
    if value is None:
        if required:
            raise ValueError(f"{source}: the pipeline needs a '{key}:' entry (a path to a Lightning YAML)")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{source}: '{key}' must be a path string, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(source).parent / path
    if not path.is_file():
        raise FileNotFoundError(f"{source}: '{key}: {value}' points to {path}, which does not exist")
    return path.resolve()


def referenced_configs(config: dict, base: Path) -> dict[str, Path]:
    """Top-level entries of a pipeline config that name an existing YAML file (``pretrain``, ``probe``, ...)."""
    found = {}
    for key, value in config.items():
        if isinstance(value, str) and value.endswith((".yaml", ".yml")):
            path = Path(value).expanduser()
            path = path if path.is_absolute() else base.parent / path
            if path.is_file():
                found[key] = path.resolve()
    return found


def config_fingerprint(config_path: Path, overrides: Sequence[str]) -> str:
    """Hash of the parsed config, every YAML it references and the overrides (comments do not count)."""
    config = load_config(config_path)
    parts = {"config": config, "overrides": list(overrides)}
    for key, path in sorted(referenced_configs(config, config_path).items()):
        parts[f"ref:{key}"] = load_config(path)
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def infer_num_folds(config: dict, config_path: Path) -> int:
    """Folds of the data module a config (or a YAML it references) names by ``data.class_path``."""
    data = config.get("data")
    if isinstance(data, dict) and isinstance(data.get("class_path"), str):
        module_name, _, class_name = data["class_path"].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"{config_path}: data.class_path {data['class_path']!r} cannot be imported: {err}") from err
        if getattr(cls, "num_folds", 0):
            return int(cls.num_folds)
    for path in referenced_configs(config, config_path).values():
        try:
            return infer_num_folds(load_config(path), path)
        except ValueError:
            continue
    raise ValueError(f"{config_path}: cannot tell the number of folds (no data.class_path here or in the YAMLs it "
                     "references); pass --folds")


def parse_set_overrides(items: Sequence[str]) -> list[str]:
    """``["trainer.max_epochs=3"]`` -> ``["--trainer.max_epochs", "3"]``."""
    args = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected key=value, e.g. --set trainer.max_epochs=3")
        args += [f"--{key.strip().lstrip('-')}", value]
    return args


# ---------------------------------------------------------------------------------------------- dataset description
def clips_digest(files: Sequence[str]) -> str:
    """Order-independent hash of a set of clip paths (to prove the test folds cover the dataset)."""
    digest = hashlib.sha256()
    for f in sorted(str(f) for f in files):
        digest.update(f.encode() + b"\n")
    return digest.hexdigest()[:16]


def dataset_info(datamodule) -> dict:
    """What the summary needs to know about a :class:`FoldAudioDataModule` (put it into ``FoldOutput.info``)."""
    meta = datamodule._metadata()
    cache = datamodule._open_cache()
    paths = [p for p in meta["path"] if p not in cache.skipped]
    return {
        "dataset": datamodule.dataset_name,
        "num_folds": int(datamodule.num_folds),
        "num_clips": len(paths),
        "clips_digest": clips_digest(paths),
        "class_names": list(datamodule.class_names),
        "sample_rate": int(datamodule.sample_rate),
        "clip_seconds": float(datamodule.clip_seconds),
    }


def describe_encoder(module) -> str:
    """``AudioResNet layers=(2, 2, 2, 2) widths=(16, 32, 64, 128), 0.70M params``-style description."""
    encoder = getattr(module, "encoder", module)
    parts = [type(encoder).__name__]
    for attr in ("layers", "widths"):
        if hasattr(encoder, attr):
            parts.append(f"{attr}={tuple(getattr(encoder, attr))}")
    params = sum(p.numel() for p in encoder.parameters())
    return " ".join(parts) + f", {params / 1e6:.2f}M params"


def device_description() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------------------------------------- W&B and Lightning
def wandb_enabled(run: dict) -> bool:
    return bool(run.get("wandb", False))


def finish_wandb() -> None:
    """End the active W&B run (if any), so the next Lightning stage starts its own run in the group."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def logger_spec(run: dict, stage_dir: Path, run_name: str, job_type: str) -> list[dict]:
    """Loggers for one Lightning stage: CSV always; W&B (offline unless ``WANDB_MODE`` says otherwise) in the
    CV run's group, named after the fold and stage."""
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(stage_dir), "name": "csv"}}]
    if wandb_enabled(run):
        loggers.append({"class_path": "lightning.pytorch.loggers.WandbLogger",
                        "init_args": {"project": run.get("project", "audio-ssl"), "name": run_name,
                                      "group": run["name"], "job_type": job_type, "save_dir": str(stage_dir),
                                      "offline": os.environ.get("WANDB_MODE", "offline") in ("offline", "dryrun")}})
    return loggers


def lightning_args(config_path: Path, fold: int, stage_dir: Path, run: dict, stage: str = "fit") -> list[str]:
    """Lightning CLI arguments that put one stage of one fold in place: the held-out fold, the stage's folder for
    checkpoints and logs, and its loggers. Append the stage's own overrides and then the run's ``_overrides``."""
    run_name = f"{run['name']}-fold{fold}" + ("" if stage == "fit" else f"-{stage}")
    return [
        "--config", str(config_path),
        "--data.init_args.test_fold", str(fold),
        "--trainer.default_root_dir", str(stage_dir),
        "--checkpoint.dirpath", str(stage_dir / "checkpoints"),
        "--trainer.logger", json.dumps(logger_spec(run, stage_dir, run_name, stage)),
    ]


def wandb_project(config: dict) -> str:
    """The W&B project named by a Lightning YAML's WandbLogger, else ``audio-ssl``."""
    loggers = (config.get("trainer") or {}).get("logger")
    for spec in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(spec, dict) and str(spec.get("class_path", "")).endswith("WandbLogger"):
            project = (spec.get("init_args") or {}).get("project")
            if project:
                return str(project)
    return "audio-ssl"


def resolved_config_text(cli) -> str:
    """The fully resolved Lightning config of a CLI object, as YAML text."""
    try:
        return cli.parser.dump(cli.config, skip_check=True)
    except Exception as err:  # a config that cannot be dumped must not lose a finished run
        log.warning("could not dump the resolved config: %s", err)
        return ""


FINAL_WEIGHTS = "final.ckpt"


def fit_stage(args: list[str], stage_dir: Path, before_fit: Callable[[object], None] | None = None):
    """Build a Lightning CLI from ``args`` and fit it, resumably: a stage whose ``final.ckpt`` exists is not
    trained again (its weights are loaded); an interrupted one continues from ``checkpoints/last.ckpt``.
    ``before_fit(cli)`` sees the freshly instantiated (untrained) model. Returns ``(cli, epochs trained)``.
    ``final.ckpt`` holds ``{"state_dict", "epoch", "global_step"}``: what ``init_encoder_from`` takes."""
    import torch

    from audio_ssl.cli import build_cli

    with warnings.catch_warnings():  # `audio-ssl cv ...` has its own argv; the CLI gets `args` on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = build_cli(args, run=False)
    if before_fit is not None:
        before_fit(cli)
    final = stage_dir / FINAL_WEIGHTS
    if final.exists():
        state = torch.load(final, map_location="cpu", weights_only=True)
        cli.model.load_state_dict(state["state_dict"])
        log.info("%s: already trained, loaded %s", stage_dir, final)
        return cli, int(state.get("epoch", 0))
    last = stage_dir / "checkpoints" / "last.ckpt"
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(last) if last.exists() else None)
    epochs = int(cli.trainer.current_epoch)
    # DDP: every rank holds the same weights; rank 0 writes, the others wait until the file is there.
    if is_rank_zero():
        with atomic_write(final) as fh:
            torch.save({"state_dict": cli.model.state_dict(), "epoch": epochs,
                        "global_step": int(cli.trainer.global_step)}, fh)
    barrier()
    return cli, epochs


def evaluate_stage(cli, info: dict | None = None) -> FoldOutput:
    """Test the CLI's model on its held-out fold with its current (final) weights; per-clip predictions from
    ``model.test_outputs`` (SupervisedClassifier) or ``predict_step`` outputs ``{"index", "probs"}``."""
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    datamodule.setup("test")
    test_set = datamodule.test_set
    if hasattr(model, "test_outputs"):
        trainer.test(model, datamodule=datamodule, verbose=False)
        outputs = model.test_outputs
    else:
        outputs = trainer.predict(model, datamodule=datamodule)
    if not outputs or "probs" not in outputs[0]:
        raise ValueError(f"{type(model).__name__} produces no class probabilities on the test fold (neither "
                         "test_outputs nor predict_step's 'probs'): evaluate it with pipeline: pretrain_probe")
    index, probs = gather_clip_outputs(outputs)  # DDP: every rank's shard (a collective); repeats dropped
    if index.tolist() != list(range(len(test_set))):
        raise RuntimeError(f"the test loop saw {len(index)} clips, not each of the {len(test_set)} test clips once")
    files = [test_set.files[i] for i in index]
    labels = test_set.labels[index]
    frame = predictions_frame(files, labels, probs, datamodule.class_names)
    base = {**dataset_info(datamodule), "device": str(trainer.strategy.root_device)}
    return FoldOutput(classification_metrics(labels, probs), frame, {**base, **(info or {})})


def fit_and_test(args: list[str], stage_dir: Path, label: str = "fit",
                 info: dict | None = None) -> tuple[object, FoldOutput]:
    """One supervised Lightning stage: fit (resumably) then test with the final weights. ``info`` overrides the
    description the output gets (method, protocol, ...); the resolved config is kept under ``configs[label]``."""
    start = time.perf_counter()
    cli, epochs = fit_stage(args, stage_dir)
    model = cli.model
    init = getattr(model, "init_encoder_from", None)
    described = {
        "method": type(model).__name__,
        "encoder": describe_encoder(model),
        "pretraining_data": "see the encoder checkpoint" if init else "none",
        "transductive": False,
        "protocol": "fine-tune from a pretrained encoder" if init else "supervised from scratch",
        "epochs": epochs,
        "configs": {label: resolved_config_text(cli)},
    }
    output = evaluate_stage(cli, {**described, **(info or {})})
    output.info.setdefault("wall_time_s", time.perf_counter() - start)
    return cli, output


@register_pipeline("lightning")
def lightning_task(config: dict, fold: int, work_dir: Path) -> dict[str, FoldOutput]:
    """A plain Lightning YAML: fit on the training folds, test the final weights on the held-out fold."""
    args = lightning_args(Path(config[CONFIG_PATH_KEY]), fold, work_dir, config[RUN_KEY], stage="fit")
    _, output = fit_and_test(args + list(config.get(OVERRIDES_KEY, [])), work_dir, label="fit")
    return {DEFAULT_VARIANT: output}


# ---------------------------------------------------------------------------------------------- fold bookkeeping on disk
RESULT_FILE = "result.json"
RUN_FILE = "run.json"


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prediction_path(fold: int, variant: str, single: bool) -> str:
    """``predictions/fold{k}.csv`` for a task with one variant, ``predictions/fold{k}_{variant}.csv`` otherwise."""
    return f"predictions/fold{fold}.csv" if single else f"predictions/fold{fold}_{variant}.csv"


def save_fold_result(run_dir: Path, fold: int, outputs: dict[str, FoldOutput], wall_time_s: float,
                     fingerprint: str) -> dict:
    """Write a finished fold: predictions first, then ``fold{k}/result.json`` (its presence marks the fold done)."""
    if not outputs:
        raise ValueError(f"fold {fold}: the task returned no outputs")
    variants = {}
    for variant, output in outputs.items():
        if not isinstance(output, FoldOutput):
            raise TypeError(f"fold {fold}, variant {variant!r}: expected a FoldOutput, got {type(output).__name__}")
        if "acc" not in output.metrics:
            raise ValueError(f"fold {fold}, variant {variant!r}: metrics must include 'acc', got {list(output.metrics)}")
        rel = prediction_path(fold, variant, single=len(outputs) == 1)
        path = run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        output.predictions.to_csv(path.with_name(path.name + ".tmp"), index=False)
        os.replace(path.with_name(path.name + ".tmp"), path)
        variants[variant] = {"metrics": {k: float(v) for k, v in output.metrics.items()},
                             "info": _jsonable(output.info), "predictions": rel}
    result = {"fold": fold, "wall_time_s": float(wall_time_s), "fingerprint": fingerprint, "variants": variants}
    _atomic_write(run_dir / f"fold{fold}" / RESULT_FILE, json.dumps(result, indent=2))
    return result


def load_fold_result(run_dir: Path, fold: int) -> dict | None:
    """A finished fold's result, or ``None`` when the fold has not finished (or a prediction file is missing)."""
    path = run_dir / f"fold{fold}" / RESULT_FILE
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if not all((run_dir / v["predictions"]).exists() for v in result["variants"].values()):
        return None
    return result


def finished_folds(run_dir: Path) -> dict[int, dict]:
    """Every finished fold in a CV run folder, by fold number."""
    results = {}
    for path in sorted(Path(run_dir).glob(f"fold*/{RESULT_FILE}")):
        fold = int(path.parent.name.removeprefix("fold"))
        result = load_fold_result(Path(run_dir), fold)
        if result is not None:
            results[fold] = result
    return dict(sorted(results.items()))


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


# ---------------------------------------------------------------------------------------------- W&B for the runner
def _log_to_wandb(run: dict, job_name: str, job_type: str, directory: Path, payload: Callable[[object], None]) -> None:
    """Log into the active W&B run (or a new one in the CV group), then finish it. Never fatal."""
    if not wandb_enabled(run):
        return
    try:
        import wandb

        active = wandb.run or wandb.init(project=run.get("project", "audio-ssl"), group=run["name"], name=job_name,
                                         job_type=job_type, dir=str(directory))
        payload(active)
        wandb.finish()
    except Exception as err:  # W&B is never required
        log.warning("W&B logging for %s failed (%s); results on disk are unaffected", job_name, err)


def _log_fold(run: dict, fold: int, result: dict, directory: Path) -> None:
    def payload(active):
        values = {f"cv/{variant}/{metric}": value for variant, v in result["variants"].items()
                  for metric, value in v["metrics"].items()}
        values["cv/fold"] = fold
        values["cv/wall_time_s"] = result["wall_time_s"]
        active.log(values)
        active.summary.update(values)

    _log_to_wandb(run, f"{run['name']}-fold{fold}", "fold", directory, payload)


def _log_summary(run: dict, summary: dict, run_dir: Path, analysis_files: dict) -> None:
    def payload(active):
        import wandb

        values = {}
        for variant, entry in summary["variants"].items():
            for metric, stats in entry["metrics"].items():
                for stat in ("mean", "std", "min", "max"):
                    if stats[stat] is not None:
                        values[f"summary/{variant}/{metric}_{stat}"] = stats[stat]
        active.summary.update(values)
        active.log({"folds": wandb.Table(dataframe=pd.read_csv(run_dir / "folds.csv"))})
        for variant, files in analysis_files.items():
            for key, path in files.items():
                if str(path).endswith(".png"):
                    active.log({f"analysis/{variant}/{key}": wandb.Image(str(path))})
                elif str(path).endswith(".csv"):
                    active.log({f"analysis/{variant}/{key}": wandb.Table(dataframe=pd.read_csv(path))})

    _log_to_wandb(run, f"{run['name']}-summary", "cv-summary", run_dir, payload)


# ---------------------------------------------------------------------------------------------- the runner
def _project_for(config: dict, config_path: Path) -> str:
    """W&B project: from the config's trainer section, else from the first referenced YAML that has one."""
    if "trainer" in config:
        return wandb_project(config)
    for path in referenced_configs(config, config_path).values():
        sub = load_config(path)
        if "trainer" in sub:
            return wandb_project(sub)
    return "audio-ssl"


def run_cv(
    config_path: str | os.PathLike,
    folds: Sequence[int] | None = None,
    name: str | None = None,
    out: str | os.PathLike = "results",
    overrides: Sequence[str] = (),
    wandb: bool = True,
    analyze: bool = True,
    examples: int = 8,
) -> dict:
    """Run a config once per held-out fold and summarise; returns the summary (also in ``<out>/<name>/``).

    ``folds`` defaults to every fold of the dataset. ``overrides`` are Lightning CLI arguments added to every
    Lightning run (after the config's own). Folds whose results are on disk are not run again; a run folder
    made from a different config or overrides is refused.
    """
    from audio_ssl.evaluation.summary import build_summary, write_summary

    config_path = Path(config_path).resolve()
    config = load_config(config_path)
    pipeline = config.get("pipeline", "lightning")
    if not isinstance(pipeline, str):
        raise ValueError(f"{config_path}: 'pipeline' must be a name, got {pipeline!r}")
    task = get_pipeline(pipeline)
    name = name or config_path.stem
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"--name {name!r}: use a plain folder name")
    num_folds = infer_num_folds(config, config_path)
    folds = sorted(set(folds)) if folds else list(range(1, num_folds + 1))
    bad = [f for f in folds if not 1 <= f <= num_folds]
    if bad:
        raise ValueError(f"folds {bad} are out of range: {config_path.name} uses a dataset with folds 1..{num_folds}")
    overrides = list(overrides)
    run_dir = Path(out) / name
    fingerprint = config_fingerprint(config_path, overrides)
    run_file = run_dir / RUN_FILE
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{run_dir} holds a CV run of a different config or overrides ({previous.get('config_file')}, "
                f"{previous.get('overrides')}); use another --name or delete that folder")
    run_meta = {"name": name, "config_file": str(config_path), "pipeline": pipeline, "overrides": overrides,
                "fingerprint": fingerprint, "num_folds": num_folds}
    if is_rank_zero():  # DDP: the other ranks start later, from rank 0's first Trainer call
        _atomic_write(run_file, json.dumps(run_meta, indent=2))

    if wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
    run = {"name": name, "out": str(run_dir), "wandb": wandb, "project": _project_for(config, config_path)}

    for fold in folds:
        if load_fold_result(run_dir, fold) is not None:
            log.info("fold %d already finished in %s: skipped", fold, run_dir)
            continue
        task_config = {**config, CONFIG_PATH_KEY: str(config_path), OVERRIDES_KEY: list(overrides), RUN_KEY: run}
        fold_dir = run_dir / f"fold{fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        log.info("fold %d/%d: running %s", fold, num_folds, pipeline)
        start = time.perf_counter()
        outputs = task(task_config, fold, fold_dir)
        # DDP (every rank runs this loop): rank 0 writes and logs the fold, the others wait for the files.
        if is_rank_zero():
            result = save_fold_result(run_dir, fold, outputs, time.perf_counter() - start, fingerprint)
            _log_fold(run, fold, result, fold_dir)
        barrier()
        finish_wandb()

    if not is_rank_zero():  # DDP: rank 0 summarises and writes; the others return its summary
        return broadcast_from_rank_zero(None)
    summary = build_summary(run_dir, finished_folds(run_dir),
                            {**run_meta, **git_state(), "device": device_description(),
                             "cv_config_text": config_path.read_text()})
    write_summary(run_dir, summary)
    analysis_files = {}
    if analyze:
        from audio_ssl.evaluation.analysis import analyze_run

        analysis_files = analyze_run(run_dir, examples=examples)
    _log_summary(run, summary, run_dir, analysis_files)
    return broadcast_from_rank_zero(summary)

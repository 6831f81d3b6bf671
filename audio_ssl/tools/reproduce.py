"""``audio-ssl reproduce``: the seed table on ESC-50 in one command, resumable, within a time budget.

    audio-ssl reproduce [--data-dir DIR] [--out results/reproduce] [--rows supervised_resnet34,simclr]
                        [--budget-minutes 8] [--parallel 5] [--gpu-rows] [--set trainer.precision=bf16-mixed]
                        [--readme README.md | --no-readme]
    audio-ssl reproduce --smoke [--out DIR]          # the same code paths at toy size on a CPU, generated data
    make reproduce DATA_DIR=/path/to/esc50

The rows and their order come from a row table (default ``experiments/reproduce.yaml``; ``--rows-file``): per
row a name, a config (a Lightning YAML or a pipeline YAML of ``audio-ssl cv``; a list stacks a recipe and its
overlays), ``set`` (Lightning overrides, ``audio-ssl cv --set``), ``pipeline_set`` (pipeline keys,
``audio-ssl cv --pipeline-set``), ``tta_views`` (a Lightning row only: each fold's final weights re-tested with
N augmented views, the clean clip and seeded training augmentations, into ``<name>_tta<N>``,
:mod:`audio_ssl.evaluation.tta`), ``parallel`` (folds at once on one device, each in its own process:
:class:`~audio_ssl.evaluation.launchers.ProcessLauncher`, as ``audio-ssl cv --parallel N``),
``gpu`` (``false``: the row needs no accelerator, ``--gpu-rows`` leaves it out) and ``smoke`` (``set``,
``pipeline_set``, ``tta_views``, ``parallel`` for ``--smoke``). A top-level ``smoke:`` block gives the generated dataset
(:func:`~audio_ssl.data.synthetic.make_synthetic_esc50` arguments) and the overrides of every Lightning row.

Each row is ``audio-ssl cv`` over the 5 official folds, inductive (a pipeline's pretraining sees the training
folds only; a row asking for ``transductive: true`` is refused), in ``<out>/<name>/``, ``parallel`` folds at a time:

- resumable: a fold whose ``result.json`` exists is skipped (the cv runner's bookkeeping), an interrupted
  Lightning stage continues from its ``checkpoints/last.ckpt``, a finished stage's ``final.ckpt`` is loaded;
- budget (``--budget-minutes``, wall time from the start of the command): a fold (or TTA re-test) starts only
  while time is left, and the running one is stopped when the budget runs out (a ``SIGALRM`` raises
  :class:`BudgetExhausted` inside it; every file the runner writes is written atomically, so nothing is left
  half-written). The next invocation continues from there.

After the rows, ``<out>/reproduce_summary.json`` and ``<out>/reproduce_summary.md`` describe every row of the table
(the selected ones and the others, ``not started`` when they have no result yet) from the result files on disk
(also rows finished by earlier invocations): per variant the 5-fold accuracy mean ± sample
std, every fold, the random-init control next to each pretrained probe or fine-tune (variant ``X_random_init``
beside ``X_pretrained``, or ``random_init`` beside ``pretrained``), the data-stall fraction per fold when the
folds recorded ``data_stall_fraction``, wall time, the inductive flag and the device; the invocation (budget,
elapsed time, whether the budget stopped it) is in ``invocation``. The same table (:func:`seed_table`) goes
between ``<!-- results:seed -->`` and ``<!-- /results:seed -->`` in ``--readme`` (default ``README.md``), never in
``--smoke``, whose table stays in its own output folder (``<out>/reproduce_summary.md``).

``--smoke`` generates an ESC-50-like dataset in ``<out>/data`` (unless ``--data-dir``), keeps waveform caches in
``<out>/cache`` and adds the table's smoke overrides; the rows, stages and files are those of the real run.
Exit status: 0 when every selected row (and TTA re-test) has all folds, 3 when the budget stopped the run
(invoke again to continue), 2 for a bad row table or option (one line naming the file, row and field).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from audio_ssl.utils.io import atomic_write

log = logging.getLogger(__name__)

DEFAULT_ROWS_FILE = Path(__file__).resolve().parents[2] / "experiments" / "reproduce.yaml"
SUMMARY_JSON = "reproduce_summary.json"
SUMMARY_MD = "reproduce_summary.md"
README_SECTION = "seed"
ROW_KEYS = {"name", "config", "set", "pipeline_set", "tta_views", "parallel", "gpu", "smoke"}
SMOKE_ROW_KEYS = {"set", "pipeline_set", "tta_views", "parallel"}
SMOKE_KEYS = {"data", "set"}
EXIT_BUDGET = 3


class BudgetExhausted(BaseException):
    """Raised inside the running fold when ``--budget-minutes`` runs out. A ``BaseException`` so that no
    ``except Exception`` on the way swallows it; Lightning tears the trainer down and re-raises it."""


@dataclasses.dataclass
class Row:
    """One row of the seed table (see the module docstring for the fields)."""

    name: str
    config: list[Path]
    set: dict
    pipeline_set: dict
    tta_views: int | None = None
    parallel: int = 1
    gpu: bool = True
    smoke: dict = dataclasses.field(default_factory=dict)

    def effective(self, smoke: bool) -> Row:
        """The row as it runs: with ``smoke``, its smoke ``set``/``pipeline_set`` added, its smoke ``tta_views``
        (if any) instead of the real one, and its smoke ``parallel`` (default 1: on a small CPU, fold processes
        cost more in start-up than they save)."""
        if not smoke:
            return self
        return dataclasses.replace(self, set={**self.set, **self.smoke.get("set", {})},
                                   pipeline_set={**self.pipeline_set, **self.smoke.get("pipeline_set", {})},
                                   tta_views=self.smoke.get("tta_views", self.tta_views),
                                   parallel=self.smoke.get("parallel", 1), smoke={})


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{where} must be a mapping of KEY: VALUE, got {value!r}")
    return dict(value)


def _positive_int(value, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def load_rows(path: str | os.PathLike) -> tuple[list[Row], dict]:
    """Read a row table: ``(rows in order, the top-level smoke block)``. Config paths are resolved against the
    table's folder. Raises ValueError naming the file, the row and the field for an unknown key, a missing or
    malformed value, a duplicate name or a config file that does not exist; FileNotFoundError for no table."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"row table {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not data["rows"]:
        raise ValueError(f"{path}: needs a non-empty 'rows:' list")
    unknown = sorted(set(data) - {"rows", "smoke"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {unknown}; allowed: rows, smoke")
    smoke = _mapping(data.get("smoke"), f"{path}: smoke")
    if set(smoke) - SMOKE_KEYS:
        raise ValueError(f"{path}: smoke: unknown key(s) {sorted(set(smoke) - SMOKE_KEYS)}; allowed: "
                         f"{sorted(SMOKE_KEYS)}")
    smoke = {"data": _mapping(smoke.get("data"), f"{path}: smoke.data"),
             "set": _mapping(smoke.get("set"), f"{path}: smoke.set")}
    rows, names = [], set()
    for i, entry in enumerate(data["rows"], start=1):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: row {i} must be a mapping, got {entry!r}")
        where = f"{path}: row {i} ({entry.get('name', 'no name')})"
        unknown = sorted(set(entry) - ROW_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(ROW_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"{where}: 'name' must be a plain folder name, got {name!r}")
        if name in names:
            raise ValueError(f"{where}: the name {name!r} is used by an earlier row")
        names.add(name)
        config = entry.get("config")
        config = [config] if isinstance(config, str) else config
        if not config or not isinstance(config, list) or not all(isinstance(c, str) for c in config):
            raise ValueError(f"{where}: 'config' must be a YAML path or a list of them, got {entry.get('config')!r}")
        configs = [(path.parent / c).resolve() for c in config]
        row_smoke = _mapping(entry.get("smoke"), f"{where}: smoke")
        if set(row_smoke) - SMOKE_ROW_KEYS:
            raise ValueError(f"{where}: smoke: unknown key(s) {sorted(set(row_smoke) - SMOKE_ROW_KEYS)}; allowed: "
                             f"{sorted(SMOKE_ROW_KEYS)}")
        for key in ("set", "pipeline_set"):
            if key in row_smoke:
                row_smoke[key] = _mapping(row_smoke[key], f"{where}: smoke.{key}")
        tta = entry.get("tta_views")
        for value, field in ((tta, "tta_views"), (row_smoke.get("tta_views"), "smoke.tta_views")):
            if value is not None:
                _positive_int(value, f"{where}: '{field}'", minimum=2)
        if "parallel" in row_smoke:
            _positive_int(row_smoke["parallel"], f"{where}: 'smoke.parallel'")
        gpu = entry.get("gpu", True)
        if not isinstance(gpu, bool):
            raise ValueError(f"{where}: 'gpu' must be true or false, got {gpu!r}")
        rows.append(Row(name=name, config=configs, set=_mapping(entry.get("set"), f"{where}: set"),
                        pipeline_set=_mapping(entry.get("pipeline_set"), f"{where}: pipeline_set"), tta_views=tta,
                        parallel=_positive_int(entry.get("parallel", 1), f"{where}: 'parallel'"), gpu=gpu,
                        smoke=row_smoke))
    return rows, smoke


def _yaml_value(value) -> str:
    """A ``--set``/``--pipeline-set`` value as text: strings as written, anything else as one-line JSON (which
    YAML and the Lightning CLI read back)."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclasses.dataclass
class CVCall:
    """The :func:`~audio_ssl.evaluation.runner.run_cv` arguments of one row."""

    config: Path
    overlays: list[Path]
    overrides: list[str]
    pipeline_set: list[str]
    pipeline: str
    num_folds: int


def cv_call(row: Row, data_args: dict, common_set: dict, cli_set: dict | None = None) -> CVCall:
    """How ``row`` runs through the cv runner: ``data_args`` (``data_dir``, ``cache_dir``) go to the data module
    of every stage (``--set data.init_args.KEY`` for a Lightning or pretrain pipeline row, the ``data`` block of a
    ``baseline`` config), ``common_set`` (the smoke block's ``set``) to every Lightning stage, then the row's own
    ``set``, then ``cli_set`` (``audio-ssl reproduce --set``), later values winning. Raises ValueError
    for a missing config file, a transductive row, or ``tta_views`` on a pipeline row."""
    from audio_ssl.evaluation.registry import DEFAULT_PIPELINE
    from audio_ssl.evaluation.run_config import load_config

    missing = [str(p) for p in row.config if not p.is_file()]
    if missing:
        raise ValueError(f"row {row.name}: config file(s) {missing} not found")
    config = load_config(row.config[0])
    pipeline = config.get("pipeline", DEFAULT_PIPELINE)
    if config.get("transductive") is True or row.pipeline_set.get("transductive") is True:
        raise ValueError(f"row {row.name}: transductive pretraining is not part of the seed table (inductive only)")
    if row.tta_views and pipeline != DEFAULT_PIPELINE:
        raise ValueError(f"row {row.name}: tta_views re-tests a Lightning run; {row.config[0].name} is a {pipeline} "
                         "pipeline")
    sets = dict(row.set)
    pipeline_set = dict(row.pipeline_set)
    if pipeline == "baseline":
        if sets:
            raise ValueError(f"row {row.name}: 'set' {sets}: a baseline row runs no Lightning stage; use "
                             "'pipeline_set'")
        data = pipeline_set.get("data", config.get("data"))
        if data_args:
            if not isinstance(data, dict):
                raise ValueError(f"row {row.name}: {row.config[0].name} has no 'data' block to give data_dir to")
            data = {**data, "init_args": {**(data.get("init_args") or {}), **data_args}}
            pipeline_set["data"] = data
    elif pipeline == DEFAULT_PIPELINE or pipeline.startswith("pretrain_"):
        sets = {**common_set, **{f"data.init_args.{k}": v for k, v in data_args.items()}, **sets, **(cli_set or {})}
    elif data_args or common_set or cli_set:
        raise ValueError(f"row {row.name}: a {pipeline} pipeline row is not supported by reproduce (data_dir "
                         "cannot be given to it)")
    from audio_ssl.evaluation.run_config import infer_num_folds, parse_set_overrides

    overrides = parse_set_overrides([f"{k}={_yaml_value(v)}" for k, v in sets.items()])
    return CVCall(config=row.config[0], overlays=row.config[1:], overrides=overrides,
                  pipeline_set=[f"{k}={_yaml_value(v)}" for k, v in pipeline_set.items()], pipeline=pipeline,
                  num_folds=infer_num_folds(config, row.config[0]))


class Clock:
    """The wall-time budget of one invocation: ``left()`` seconds (``math.inf`` without a budget)."""

    def __init__(self, budget_s: float | None):
        self.start = time.monotonic()
        self.budget_s = budget_s

    def left(self) -> float:
        return math.inf if self.budget_s is None else self.budget_s - (time.monotonic() - self.start)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


@contextmanager
def deadline(seconds: float):
    """Raise :class:`BudgetExhausted` in the main thread after ``seconds`` (no limit for ``math.inf``)."""
    if math.isinf(seconds):
        yield
        return

    def expire(signum, frame):
        raise BudgetExhausted(f"the time budget ran out ({seconds:.0f} s left when this step started)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_row(row: Row, call: CVCall, out: Path, clock: Clock, parallel: int) -> None:
    """Run the unfinished folds of ``row`` (every fold of its dataset, ``call.num_folds``), its summary and error
    analysis, then its TTA re-test, while the budget lasts. Raises :class:`BudgetExhausted` when the budget stops
    it; a fold the TTA re-test cannot find (no ``final.ckpt``) is logged and left out, and the re-test's run is
    then incomplete in the summary."""
    from audio_ssl.evaluation import run_store
    from audio_ssl.evaluation.runner import run_cv

    run_dir = out / row.name
    kwargs = dict(name=row.name, out=out, overrides=call.overrides, wandb=False, overlays=call.overlays,
                  pipeline_set=call.pipeline_set)
    pending = [k for k in range(1, call.num_folds + 1) if run_store.load_fold_result(run_dir, k) is None]
    batches = [[k] for k in pending]
    if parallel > 1 and len(pending) > 1:
        from audio_ssl.evaluation.launchers import ProcessLauncher

        # the folds at once, each in its own process (`audio-ssl cv --parallel N`); a budget stop ends them all
        kwargs["launcher"] = ProcessLauncher(parallel)
        batches = [pending]
    for folds in batches:
        if clock.left() <= 0:
            raise BudgetExhausted(f"row {row.name}: no time left before fold(s) {folds}")
        log.info("row %s: fold(s) %s (%.0f s of budget left)", row.name, folds, clock.left())
        with deadline(clock.left()):
            run_cv(call.config, folds=folds, analyze=False, **kwargs)
    if clock.left() <= 0 and pending:
        raise BudgetExhausted(f"row {row.name}: no time left for its summary")
    with deadline(clock.left()):  # every fold is on disk: summary and error analysis only, nothing trained
        run_cv(call.config, analyze=True, **{k: v for k, v in kwargs.items() if k != "launcher"})
    if row.tta_views:
        from audio_ssl.evaluation.tta import retest_with_tta, tta_run_name

        dst = out / tta_run_name(row.name, row.tta_views)
        for fold in range(1, call.num_folds + 1):
            if run_store.load_fold_result(dst, fold) is not None:
                continue
            if clock.left() <= 0:
                raise BudgetExhausted(f"row {row.name}: no time left before the TTA re-test of fold {fold}")
            with deadline(clock.left()):
                _, missing = retest_with_tta(run_dir, row.tta_views, dst, folds=[fold])
            if missing:
                log.error("row %s: fold %d has no final weights in %s to re-test with TTA", row.name, fold, run_dir)


def row_runs(row: Row) -> list[str]:
    """The run folders a row writes: its own, then its TTA re-test's."""
    from audio_ssl.evaluation.tta import tta_run_name

    return [row.name] + ([tta_run_name(row.name, row.tta_views)] if row.tta_views else [])


def control_of(variant: str, variants: dict) -> str | None:
    """The random-init control of a pretrained variant: ``X_random_init`` beside ``X_pretrained`` (and
    ``random_init`` beside ``pretrained``) when the run has it; ``None`` for any other variant."""
    if "pretrained" not in variant.split("_"):
        return None
    name = "_".join("random_init" if part == "pretrained" else part for part in variant.split("_"))
    return name if name in variants else None


def _stats(metric: dict | None) -> dict | None:
    if not metric:
        return None
    return {"mean": metric["mean"], "std": metric["std"], "per_fold": metric["per_fold"]}


def row_summary(row: Row, out: Path) -> list[dict]:
    """One entry per run folder of ``row`` (its own, its TTA re-test) from the ``summary.json`` on disk: status,
    folds, and per variant the accuracy statistics with the random-init control beside a pretrained variant."""
    from audio_ssl.evaluation.run_store import read_summary

    entries = []
    for name in row_runs(row):
        summary = read_summary(out / name) if (out / name / "summary.json").is_file() else None
        entry = {"row": row.name, "run": name, "config": [str(p) for p in row.config]}
        if summary is None:
            entries.append({**entry, "status": "not started", "folds": [], "variants": {}})
            continue
        variants = {}
        for variant, data in summary["variants"].items():
            stall = {f: d["data_stall_fraction"] for f, d in (data.get("details") or {}).items()
                     if isinstance(d, dict) and "data_stall_fraction" in d}
            item = {"method": data.get("method"), "protocol": data.get("protocol"), "encoder": data.get("encoder"),
                    "acc": _stats(data["metrics"].get("acc")), "inductive": not data.get("transductive", False),
                    "epochs": data.get("epochs"), "device": data.get("device"),
                    "wall_time_s": data["wall_time_s"]["total"]}
            control = control_of(variant, summary["variants"])
            if control:
                item["random_init_control"] = {"variant": control,
                                               "acc": _stats(summary["variants"][control]["metrics"].get("acc"))}
            if stall:
                item["data_stall_fraction"] = stall
            variants[variant] = item
        entries.append({**entry, "status": "complete" if summary.get("complete") else "partial",
                        "folds": summary["folds"], "num_folds": summary.get("num_folds"),
                        "device": summary.get("device"), "git_commit": summary.get("git_commit"),
                        "wall_time_s": summary["wall_time_s"]["total"], "variants": variants})
    return entries


def _pct(stats: dict | None) -> str:
    if not stats:
        return "-"
    std = f" ± {100 * stats['std']:.1f}" if stats.get("std") is not None else ""
    return f"{100 * stats['mean']:.1f}{std}"


def seed_table(summary: dict) -> str:
    """The Markdown seed table of a ``reproduce_summary.json``: one line per run and variant (random-init controls
    appear next to their pretrained variant, not as lines of their own): accuracy mean ± sample std over folds
    (%), the control's, every fold's accuracy, folds done, inductive, wall time, device."""
    header = ["row", "variant", "protocol", "accuracy % (mean ± std)", "random-init control %",
              "per fold %", "folds", "inductive", "wall time", "device"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for entry in summary["rows"]:
        if not entry["variants"]:
            lines.append(f"| {entry['run']} | - | - | {entry['status']} | - | - | 0 | - | - | - |")
            continue
        controls = {v["random_init_control"]["variant"] for v in entry["variants"].values()
                    if "random_init_control" in v}
        for variant, item in entry["variants"].items():
            if variant in controls:
                continue
            control = item.get("random_init_control")
            per_fold = ", ".join(f"{100 * a:.1f}" for a in (item["acc"] or {}).get("per_fold", {}).values())
            lines.append(
                f"| {entry['run']} | {variant} | {item['protocol'] or item['method'] or '-'} | {_pct(item['acc'])} | "
                f"{_pct(control['acc']) if control else '-'} | {per_fold or '-'} | "
                f"{len(entry['folds'])}/{entry.get('num_folds') or '?'} | {'yes' if item['inductive'] else 'no'} | "
                f"{item['wall_time_s'] / 60:.1f} min | {item['device'] or entry.get('device') or '-'} |")
    return "\n".join(lines) + "\n"


def write_summary(rows: list[Row], out: Path, invocation: dict) -> dict:
    """Write ``reproduce_summary.json`` and ``reproduce_summary.md`` into ``out``; returns the JSON content."""
    summary = {"invocation": invocation, "rows": [e for row in rows for e in row_summary(row, out)]}
    with atomic_write(out / SUMMARY_JSON, "w") as fh:
        json.dump(summary, fh, indent=2)
        fh.write("\n")
    stopped = " (stopped by the time budget: run the same command again to continue)" if invocation.get(
        "stopped_by_budget") else ""
    text = (f"# Seed table{' (smoke: toy sizes, generated data)' if invocation.get('smoke') else ''}\n\n"
            f"ESC-50 5-fold cross-validation, inductive. Written by `audio-ssl reproduce` from the result files in "
            f"this folder; this invocation: {invocation['elapsed_s'] / 60:.1f} min{stopped}.\n\n" + seed_table(summary))
    with atomic_write(out / SUMMARY_MD, "w") as fh:
        fh.write(text)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audio-ssl reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--rows-file", default=str(DEFAULT_ROWS_FILE), help="the row table (default: %(default)s)")
    parser.add_argument("--rows", default=None, help="comma-separated row names to run (default: every row)")
    parser.add_argument("--gpu-rows", action="store_true", help="only the rows that use an accelerator (gpu: true)")
    parser.add_argument("--data-dir", default=None, help="the ESC-50 folder (default: the recipes' default, "
                                                         "$AUDIO_SSL_DATA/esc50; --smoke: generated)")
    parser.add_argument("--out", default=None, help="results root (default: results/reproduce; --smoke: "
                                                    "results/reproduce_smoke)")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="wall-time budget of this invocation; the run stops when it is spent and the next "
                             "invocation continues (default: no limit)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a Lightning override for every Lightning stage of every row, e.g. "
                             "trainer.precision=bf16-mixed (repeatable; part of each run's fingerprint, so pass "
                             "the same ones when continuing)")
    parser.add_argument("--parallel", type=int, default=None, help="folds at once per row (default: the row's)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on a CPU, generated data")
    parser.add_argument("--allow-cpu", action="store_true", help="train the GPU rows (gpu: true) on a machine "
                                                                 "without CUDA (refused otherwise)")
    parser.add_argument("--readme", default="README.md", help="Markdown file whose <!-- results:seed --> section "
                                                              "is rewritten (default: %(default)s; never in --smoke)")
    parser.add_argument("--no-readme", action="store_true", help="do not touch any README")
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.budget_minutes is not None and not args.budget_minutes > 0:
        parser.error(f"--budget-minutes {args.budget_minutes}: must be > 0")
    if args.parallel is not None and args.parallel < 1:
        parser.error(f"--parallel {args.parallel}: must be >= 1")
    clock = Clock(None if args.budget_minutes is None else 60 * args.budget_minutes)
    try:
        rows, smoke = load_rows(args.rows_file)
    except (OSError, ValueError) as err:
        parser.exit(2, f"audio-ssl reproduce: error: {err}\n")
    table = [r.effective(args.smoke) for r in rows]  # the summary describes every row, the selected ones run
    if args.rows is not None:  # `--rows ''` (an unset shell variable) names no row: refused, never "every row"
        wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
        unknown = [w for w in wanted if w not in {r.name for r in rows}]
        if unknown or not wanted:
            parser.error(f"--rows {args.rows!r}: " + (f"unknown row(s) {unknown}" if unknown else "names no row")
                         + f"; the rows of {args.rows_file} are {[r.name for r in rows]}")
        rows = [r for r in rows if r.name in wanted]  # the table's order, not the option's
    if args.gpu_rows:
        dropped = [r.name for r in rows if not r.gpu]
        rows = [r for r in rows if r.gpu]
        if not rows:
            parser.error(f"--gpu-rows leaves no row to run: {dropped} are gpu: false rows (run them without "
                         "--gpu-rows)")
    if args.data_dir and not (Path(args.data_dir) / "meta" / "esc50.csv").is_file():
        parser.error(f"--data-dir {Path(args.data_dir).resolve()}: no meta/esc50.csv there; give the ESC-50 folder "
                     "(audio/ and meta/esc50.csv), or --smoke without --data-dir for generated data")
    out = Path(args.out or ("results/reproduce_smoke" if args.smoke else "results/reproduce"))
    out.mkdir(parents=True, exist_ok=True)
    data_args: dict = {}
    if args.data_dir:
        data_args["data_dir"] = str(Path(args.data_dir).resolve())
    if args.smoke:
        if not args.data_dir:
            try:
                data_args["data_dir"] = str(make_smoke_data(out / "data", smoke["data"]))
            except TypeError as err:  # a key make_synthetic_esc50 does not take
                parser.exit(2, f"audio-ssl reproduce: error: {args.rows_file}: smoke.data {smoke['data']}: {err}\n")
        data_args["cache_dir"] = str((out / "cache").resolve())
    rows = [r.effective(args.smoke) for r in rows]
    cli_set = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--set {item!r}: expected KEY=VALUE, e.g. --set trainer.precision=bf16-mixed")
        cli_set[key.strip()] = value
    try:
        calls = {r.name: cv_call(r, data_args, smoke["set"] if args.smoke else {}, cli_set) for r in rows}
    except ValueError as err:
        parser.exit(2, f"audio-ssl reproduce: error: {args.rows_file}: {err}\n")
    if not args.smoke and not args.allow_cpu:
        import torch

        gpu_rows = [r.name for r in rows if r.gpu]
        if gpu_rows and not torch.cuda.is_available():
            parser.error(f"rows {gpu_rows} are the full GPU recipes (gpu: true) and this machine has no CUDA "
                         "device: run them on a GPU machine (benchmarks/gpu/README.md), rehearse them with --smoke, "
                         "run only the CPU rows (--rows mfcc_logreg), or pass --allow-cpu to train them here")

    from audio_ssl.evaluation.runner import device_description

    stopped, crashed = None, []
    for row in rows:
        parallel = args.parallel or row.parallel
        start = time.monotonic()
        try:
            run_row(row, calls[row.name], out, clock, parallel)
            log.info("row %s: done (%.0f s in this invocation)", row.name, time.monotonic() - start)
        except BudgetExhausted as err:
            stopped = f"{row.name}: {err}"
            log.warning("budget spent after %.0f s, in row %s (%s): invoke the same command again to continue",
                        clock.elapsed(), row.name, err)
            break
        except Exception:  # one broken row must not cost the others their turn; reported below and in the exit code
            log.exception("row %s failed", row.name)
            crashed.append(row.name)
    invocation = {"smoke": args.smoke, "rows_file": str(args.rows_file), "rows": [r.name for r in rows],
                  "budget_s": clock.budget_s, "elapsed_s": clock.elapsed(), "stopped_by_budget": stopped is not None,
                  "stopped_in": stopped, "failed_rows": crashed, "device": device_description(),
                  "data_dir": data_args.get("data_dir"), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    summary = write_summary(table, out, invocation)
    selected = {r.name for r in rows}
    incomplete = [e["run"] for e in summary["rows"] if e["row"] in selected and e["status"] != "complete"]
    if not args.smoke and not args.no_readme:
        write_readme(Path(args.readme), summary)
    print(seed_table(summary), end="")
    print(f"summary in {out / SUMMARY_JSON} and {out / SUMMARY_MD} after {clock.elapsed():.0f} s; "
          f"incomplete runs: {incomplete or 'none'}")
    if stopped:
        sys.exit(EXIT_BUDGET)
    if incomplete or crashed:
        print(f"audio-ssl reproduce: failed rows {crashed}, incomplete runs {incomplete}", file=sys.stderr)
        sys.exit(1)


def write_readme(readme: Path, summary: dict) -> None:
    """Put :func:`seed_table` between the ``<!-- results:seed -->`` markers of ``readme`` (a warning, not an
    error, when the file does not exist: ``audio-ssl reproduce`` run outside a checkout). Raises SystemExit with
    the file and the markers when they are missing."""
    from audio_ssl.tools.results import replace_section

    if not readme.is_file():
        log.warning("%s not found: the seed table is only in the summary files", readme)
        return
    try:
        text = replace_section(readme.read_text(), README_SECTION, seed_table(summary), str(readme))
    except ValueError as err:
        raise SystemExit(f"audio-ssl reproduce: error: {err}") from None
    with atomic_write(readme, "w") as fh:
        fh.write(text)
    log.info("wrote the seed table into %s (section %s)", readme, README_SECTION)


def make_smoke_data(root: Path, spec: dict) -> Path:
    """The generated ESC-50-like dataset of ``--smoke`` in ``root`` (made once; ``spec``: the arguments of
    :func:`~audio_ssl.data.synthetic.make_synthetic_esc50`)."""
    from audio_ssl.data.synthetic import make_synthetic_esc50

    if not (root / "meta" / "esc50.csv").is_file():
        make_synthetic_esc50(root, **spec)
    return root.resolve()


if __name__ == "__main__":
    main()

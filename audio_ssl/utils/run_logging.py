"""Loggers that follow a run across processes: one W&B run and one CSV version per training run.

A run's logger ids live in ``logger_ids.json`` next to its checkpoint folder (``runs/x/logger_ids.json`` for
``checkpoint.dirpath: runs/x/checkpoints``) and in every checkpoint (``checkpoint["audio_ssl"]["wandb_run_id"]``).
A fresh ``fit`` starts a new W&B run (its id is chosen here) and a new CSV version and records them; a resumed
``fit`` (``--ckpt_path``), ``validate``, ``test`` and ``predict`` on the same run folder continue that W&B run
(``id=`` with ``resume="allow"``) and append to that CSV version (:class:`AppendingCSVLogger`). The W&B runs of
``audio-ssl cv`` summaries get a deterministic id from the CV run (:func:`stable_wandb_id`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
import string
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

LOGGER_IDS_FILE = "logger_ids.json"
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_wandb_id() -> str:
    """A random W&B run id (8 characters, lower-case letters and digits, as W&B makes them)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def stable_wandb_id(*parts: str) -> str:
    """A W&B run id that is the same every time for the same ``parts`` (e.g. a CV run's folder and job name)."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def is_rank_zero() -> bool:
    return all(os.environ.get(var, "0") == "0" for var in ("LOCAL_RANK", "NODE_RANK", "RANK"))


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued instead of deleted."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = list(header)


class AppendingCSVLogger(CSVLogger):
    """:class:`~lightning.pytorch.loggers.CSVLogger` that appends to the metrics of an existing version (used
    for a resumed run, so that one training run keeps one ``version_N`` folder)."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _specs(logger_config) -> list:
    if logger_config is None or isinstance(logger_config, bool):
        return []
    return list(logger_config) if isinstance(logger_config, list) else [logger_config]


def _kind(spec) -> str | None:
    class_path = str(spec.get("class_path", "")) if hasattr(spec, "get") else ""
    for kind in ("WandbLogger", "CSVLogger"):
        if class_path.endswith(kind):
            return kind
    return None


def _csv_key(init) -> str:
    return f"{init.get('save_dir')}|{init.get('name', 'lightning_logs')}"


def read_logger_ids(run_dir: Path) -> dict:
    try:
        state = json.loads((run_dir / LOGGER_IDS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


class UnwritableFolderError(OSError):
    """A folder a run must write to (its logs, its checkpoints) cannot be written; the message names it."""


def check_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """Create ``folder`` if needed and write (and delete) a probe file in it.

    Raises:
        UnwritableFolderError: naming ``folder``, ``what`` goes there and the system's reason (read-only file
            system, permissions, a file in the way, full disk).
    """
    import tempfile

    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise UnwritableFolderError(
            err.errno, f"{folder} is not writable ({err.strerror or err}): it is where {what} go; fix its "
            "permissions or point the run at a writable folder") from err


def logger_folders(logger_config) -> list[tuple[Path, str]]:
    """``(folder, what)`` for every W&B and CSV logger of a parsed ``trainer.logger`` config: the folders they
    will write to. W&B without ``save_dir``/``dir`` writes under ``$WANDB_DIR`` or the working directory."""
    folders = []
    for spec in _specs(logger_config):
        kind, init = _kind(spec), spec.get("init_args") if hasattr(spec, "get") else None
        if kind == "WandbLogger":
            init = init or {}
            folder = init.get("save_dir") or init.get("dir") or os.environ.get("WANDB_DIR") or "."
            folders.append((Path(folder), "the W&B run files (W&B would otherwise fall back to a temporary folder "
                                          "without saying so)"))
        elif kind == "CSVLogger":
            folders.append((Path((init or {}).get("save_dir") or "."), "the CSV metrics"))
    return folders


def prepare_logger_config(logger_config, run_dir: Path, resume: bool):
    """Give the W&B loggers of a parsed ``trainer.logger`` config their run id, and, on ``resume``, the CSV
    loggers their recorded version (switching them to :class:`AppendingCSVLogger`). Explicit ``id``/``version``
    values are left alone. Returns the config (changed in place where it is a namespace).

    Raises:
        UnwritableFolderError: a logger's folder cannot be written (checked with a probe file), so logs never
            silently go elsewhere.
    """
    if is_rank_zero():
        for folder, what in logger_folders(logger_config):
            check_writable_folder(folder, what)
    state = read_logger_ids(run_dir) if resume else {}
    for spec in _specs(logger_config):
        kind, init = _kind(spec), spec.get("init_args") if hasattr(spec, "get") else None
        if kind is None or init is None:
            continue
        if kind == "WandbLogger" and not (init.get("id") or init.get("version")):
            init["id"] = state.get("wandb_id") or new_wandb_id()
        elif kind == "CSVLogger" and init.get("version") is None:
            version = (state.get("csv") or {}).get(_csv_key(init))
            if version is not None:
                init["version"] = version
                spec["class_path"] = f"{AppendingCSVLogger.__module__}.{AppendingCSVLogger.__qualname__}"
    return logger_config


def record_logger_ids(loggers, run_dir: Path) -> None:
    """Write the W&B run id and the CSV versions of the instantiated ``loggers`` to ``run_dir/logger_ids.json``."""
    state = read_logger_ids(run_dir)
    csv_versions = dict(state.get("csv") or {})
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            state["wandb_id"] = logger.version
        elif isinstance(logger, CSVLogger):
            csv_versions[f"{logger.save_dir}|{logger.name}"] = logger.version
    if csv_versions:
        state["csv"] = csv_versions
    if not state:
        return
    from audio_ssl.utils.io import atomic_write

    with atomic_write(run_dir / LOGGER_IDS_FILE, "w") as fh:
        fh.write(json.dumps(state, indent=2))


__all__ = ["AppendingCSVLogger", "LOGGER_IDS_FILE", "UnwritableFolderError", "check_writable_folder",
           "logger_folders", "new_wandb_id", "prepare_logger_config", "read_logger_ids",
           "record_logger_ids", "stable_wandb_id"]

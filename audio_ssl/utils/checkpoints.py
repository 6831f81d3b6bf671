"""Checkpoints of a training run: ``last.ckpt`` (always the latest state), ``best-*.ckpt`` (only when a validation
fold separate from the test fold exists) and ``run.json`` (which run the folder belongs to).

One folder (``checkpoint.dirpath``) holds one run:

- ``last.ckpt`` is rewritten at the end of every training epoch and, with ``every_n_train_steps=N``, every N
  optimizer steps, whatever the validation metric does. ``fit --ckpt_path last`` continues exactly where the run
  stopped; ``test --ckpt_path <dir>/last.ckpt`` evaluates the final model (the usual ESC-50 protocol).
- ``best-*.ckpt`` (the top ``save_top_k`` by ``monitor``) is kept only when the data module has a ``val_fold``.
  Without one the validation loop runs on the test fold, and a checkpoint picked there would be picked on the
  test data, so none is kept.
- ``run.json`` records the run's identity (the model block and the data block without paths and worker
  settings). A fresh ``fit`` (no ``ckpt_path``) into a folder that already holds checkpoints is refused, unless
  ``existing_run="overwrite"`` (the old checkpoints are deleted first); resuming into a folder whose
  ``run.json`` names a different run is refused, with the differing keys in the message.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from audio_ssl.utils.io import atomic_write

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
EXISTING_RUN_CHOICES = ("refuse", "overwrite")
# Data-module arguments that say where files are or how fast they load, not what the run trains on.
NON_IDENTITY_DATA_KEYS = frozenset({"data_dir", "cache_dir", "num_workers", "download", "pin_memory",
                                    "eval_batch_size", "skip_bad_files"})


class RunFolderError(RuntimeError):
    """A checkpoint folder that holds another run (or checkpoints a fresh run would mix with), or a run folder
    that cannot be written."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, read-only or missing folder). ``errno`` is the system's; the
    message names the checkpoint and says that nothing was left under its name."""


def save_checkpoint_atomically(trainer: L.Trainer, filepath: str | os.PathLike, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint`` to ``<filepath>.partial``, then rename onto ``filepath`` (global rank 0), so
    ``filepath`` is always a whole checkpoint: the previous one, or the new one.

    Raises:
        CheckpointWriteError: the write failed (e.g. ``No space left on device``); the partial file is deleted
            and ``filepath`` left as it was.
    """
    filepath = os.fspath(filepath)
    partial = f"{filepath}.partial"
    try:
        trainer.save_checkpoint(partial, weights_only)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
    except OSError as err:
        if trainer.is_global_zero:
            try:
                os.unlink(partial)
            except OSError:
                pass
        reason = err.strerror or str(err)
        raise CheckpointWriteError(
            err.errno, f"cannot write checkpoint {filepath}: {reason} (nothing was left under that name; free "
            f"space or fix the folder, then resume with --ckpt_path last)") from err
    trainer.strategy.barrier()


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's :class:`ModelCheckpoint` (used for ``best-*.ckpt``) writing through
    :func:`save_checkpoint_atomically`: a full disk or a kill during the write never leaves a truncated
    checkpoint under its final name, and the error is one :class:`CheckpointWriteError` naming the file."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        save_checkpoint_atomically(trainer, filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)


def _plain(value: Any) -> Any:
    """JSON-compatible copy of a config value (jsonargparse Namespaces become dicts, other objects strings)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def run_identity(model_config: Any, data_config: Any) -> dict:
    """What makes two fits "the same run": the whole model block, and the data block without
    :data:`NON_IDENTITY_DATA_KEYS` (paths and loader settings). Trainer settings (e.g. ``max_epochs``, so a run
    can be extended) and the seed are not part of it. Inputs are the CLI's config blocks (Namespaces or dicts)."""
    data = _plain(data_config) or {}
    if isinstance(data.get("init_args"), dict):
        data["init_args"] = {k: v for k, v in data["init_args"].items() if k not in NON_IDENTITY_DATA_KEYS}
    return {"model": _plain(model_config), "data": data}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def identity_differences(recorded: dict, current: dict, limit: int = 8) -> list[str]:
    """``key: recorded -> current`` for every dotted key whose value differs (at most ``limit``, then a count)."""
    old, new = _flatten(recorded), _flatten(current)
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>"))
    lines = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys[:limit]]
    if len(keys) > limit:
        lines.append(f"... and {len(keys) - limit} more")
    return lines


def description_differences(recorded: dict, current: dict, name: str) -> tuple[list[str], list[str]]:
    """Compare two ``{"class_path", "init_args"}`` descriptions (:func:`audio_ssl.utils.provenance.describe_module`,
    ``describe_architecture``) of the module ``name``: ``(differences, unchecked)``, where each difference reads
    ``name.key: checkpoint <recorded>, this model <current>`` (a class, or an ``init_args`` entry both record) and
    ``unchecked`` names what only one side records (``name.key``, or ``name`` when either side records no
    ``init_args``)."""
    differences, unchecked = [], []
    if recorded.get("class_path") != current.get("class_path"):
        differences.append(f"{name}.class_path: checkpoint {recorded.get('class_path')!r}, "
                           f"this model {current.get('class_path')!r}")
        return differences, unchecked
    old, new = recorded.get("init_args"), current.get("init_args")
    if not isinstance(old, dict) or not isinstance(new, dict):
        return differences, [name]
    for key in sorted(old.keys() | new.keys()):
        if key not in old or key not in new:
            unchecked.append(f"{name}.{key}")
        elif _plain(old[key]) != _plain(new[key]):
            differences.append(f"{name}.{key}: checkpoint {old[key]!r}, this model {new[key]!r}")
    return differences, unchecked


def read_run_file(folder: str | os.PathLike) -> dict | None:
    """The ``run.json`` of a checkpoint folder, or None when there is none. Raises :class:`RunFolderError` for a
    file that is not a JSON object with an ``identity``."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunFolderError(f"{path}: cannot read the run record ({err}); delete it if the folder's checkpoints "
                             "belong to the run you are starting") from err
    if not isinstance(record, dict) or "identity" not in record:
        raise RunFolderError(f"{path}: not a run record (expected a JSON object with an 'identity' field)")
    return record


def check_run_folder(folder: str | os.PathLike, identity: dict | None, resuming: bool,
                     existing_run: str = "refuse") -> list[Path]:
    """Decide whether a fit may write into ``folder``; return the checkpoints to delete first (``overwrite``).

    Args:
        folder: the checkpoint folder.
        identity: this run's :func:`run_identity`, or None (then only the fresh-fit rule applies).
        resuming: whether the fit restores a checkpoint (``ckpt_path`` resolved to a file).
        existing_run: ``"refuse"`` or ``"overwrite"``: what a fresh fit does with a folder that holds checkpoints.

    Raises:
        RunFolderError: a fresh fit into a folder with checkpoints (``refuse``), or a resume into a folder whose
            ``run.json`` records a different identity; the message names the folder and how to proceed.
        ValueError: an unknown ``existing_run``.
    """
    if existing_run not in EXISTING_RUN_CHOICES:
        raise ValueError(f"checkpoint.existing_run={existing_run!r} is not one of {', '.join(EXISTING_RUN_CHOICES)}")
    folder = Path(folder)
    checkpoints = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if not resuming:
        if checkpoints and existing_run == "refuse":
            names = ", ".join(p.name for p in checkpoints[:5]) + (" ..." if len(checkpoints) > 5 else "")
            raise RunFolderError(
                f"checkpoint folder {folder} already holds a run ({names}) and this fit starts from scratch. "
                "To continue that run pass --ckpt_path last; to start a new run pass a new --checkpoint.dirpath; "
                "to delete its checkpoints and start again pass --checkpoint.existing_run overwrite"
            )
        return checkpoints
    record = read_run_file(folder)
    if record is not None and identity is not None and record["identity"] != identity:
        changes = "\n  ".join(identity_differences(record["identity"], identity))
        raise RunFolderError(
            f"checkpoint folder {folder} holds a different run than the one being resumed ({folder / RUN_FILE} "
            f"differs):\n  {changes}\nResume with the config that run was started with, or start this run in a "
            "new --checkpoint.dirpath (trainer settings such as max_epochs may change on resume)"
        )
    return []


def _check_last_settings(every_n_train_steps: int | None, every_n_epochs: int, existing_run: str) -> None:
    """The settings of ``last.ckpt`` (shared by :class:`LastCheckpoint` and :class:`CheckpointSettings`)."""
    if every_n_epochs < 1:
        raise ValueError(f"checkpoint.every_n_epochs must be >= 1, got {every_n_epochs}")
    if every_n_train_steps is not None and every_n_train_steps < 1:
        raise ValueError(f"checkpoint.every_n_train_steps must be >= 1 (or null), got {every_n_train_steps}")
    if existing_run not in EXISTING_RUN_CHOICES:
        raise ValueError(f"checkpoint.existing_run={existing_run!r} is not one of {', '.join(EXISTING_RUN_CHOICES)}")


class LastCheckpoint(AtomicModelCheckpoint):
    """Keeps ``<dirpath>/last.ckpt`` the latest training state and guards the folder (see the module docstring).

    ``last.ckpt`` is written at the end of every training epoch (after that epoch's validation) and, with
    ``every_n_train_steps=N``, after every N-th optimizer step; never during fast_dev_run, sanity checks or
    evaluation. Each write goes to ``last.ckpt.partial`` and is renamed onto ``last.ckpt``, so a kill during the
    write leaves the previous state intact. At ``on_fit_start`` :func:`check_run_folder` runs, the checkpoints of
    an overwritten run are deleted, and ``run.json`` is (re)written with ``identity``.

    Args:
        dirpath: the run's checkpoint folder.
        every_n_train_steps: also write every N optimizer steps (None or >= 1).
        every_n_epochs: write at the end of every N-th epoch (>= 1; default every epoch). The end of training
            is always written, so ``last.ckpt`` is the final state whatever N is; a larger N only saves time
            when a checkpoint is large against an epoch (e.g. ResNet-34 with Adam, ~250 MB, on a GPU).
        identity: this run's :func:`run_identity` (None: no identity check, no ``run.json``).
        existing_run: ``"refuse"`` (default) or ``"overwrite"``, see :func:`check_run_folder`.

    Raises:
        ValueError: ``every_n_train_steps`` or ``every_n_epochs`` < 1, or an unknown ``existing_run``.
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_train_steps: int | None = None,
                 identity: dict | None = None, existing_run: str = "refuse", every_n_epochs: int = 1):
        _check_last_settings(every_n_train_steps, every_n_epochs, existing_run)
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps,
                         save_on_train_epoch_end=True, enable_version_counter=False)
        self.identity = identity
        self.existing_run = existing_run
        self.every_n_epochs_last = every_n_epochs

    @property
    def state_key(self) -> str:
        return self._generate_state_key(role="last", every_n_train_steps=self._every_n_train_steps)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        stale = check_run_folder(self.dirpath, self.identity, resuming=trainer.ckpt_path is not None,
                                 existing_run=self.existing_run)
        if trainer.is_global_zero:
            for path in stale:
                log.warning("checkpoint.existing_run=overwrite: deleting %s", path)
                path.unlink()
            if self.identity is not None:
                with atomic_write(Path(self.dirpath) / RUN_FILE, "w") as fh:
                    json.dump({"identity": self.identity}, fh, indent=2, sort_keys=True)
        trainer.strategy.barrier()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Every epoch, also when a step-interval save already hit this step: the end-of-epoch state is the one
        # to resume from (validation done, epoch counted).
        if trainer.fast_dev_run or trainer.sanity_checking or not trainer.training:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs_last == 0:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run:  # fast_dev_run writes nothing: its folder stays free for the real run
            return
        if not self._last_checkpoint_saved or self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class CheckpointSettings:
    """The ``checkpoint`` block of the CLI: where a run's checkpoints go and which ones are kept.

    Args:
        dirpath: the run's folder: ``last.ckpt``, ``best-*.ckpt``, ``run.json``.
        monitor: metric that ranks ``best-*.ckpt`` (e.g. ``val/acc``); null keeps no best checkpoint. Used only
            when the data module has a ``val_fold``: without one validation runs on the test fold.
        mode: ``max`` or ``min``: whether a larger ``monitor`` is better.
        filename: name pattern of the best checkpoints (Lightning's ``ModelCheckpoint.filename``).
        save_top_k: how many best checkpoints to keep (>= 1).
        every_n_train_steps: also rewrite ``last.ckpt`` every N optimizer steps (null: at epoch ends only).
        every_n_epochs: rewrite ``last.ckpt`` at the end of every N-th epoch (default 1); the end of training is
            always written.
        existing_run: what a fresh fit does when ``dirpath`` already holds checkpoints: ``refuse`` (default,
            with a message) or ``overwrite`` (delete them and start again).

    Raises:
        ValueError: a bad ``mode``, ``save_top_k``, ``every_n_train_steps``, ``every_n_epochs`` or
            ``existing_run``.
    """

    def __init__(
        self,
        dirpath: str = "runs/default/checkpoints",
        monitor: str | None = "val/acc",
        mode: Literal["max", "min"] = "max",
        filename: str = "best-{epoch:03d}",
        save_top_k: int = 1,
        every_n_train_steps: int | None = None,
        existing_run: Literal["refuse", "overwrite"] = "refuse",
        every_n_epochs: int = 1,
    ):
        if mode not in ("max", "min"):
            raise ValueError(f"checkpoint.mode={mode!r} is not one of max, min")
        if save_top_k < 1:
            raise ValueError(f"checkpoint.save_top_k must be >= 1, got {save_top_k}")
        _check_last_settings(every_n_train_steps, every_n_epochs, existing_run)
        self.dirpath, self.monitor, self.mode, self.filename = dirpath, monitor, mode, filename
        self.save_top_k, self.every_n_train_steps, self.existing_run = save_top_k, every_n_train_steps, existing_run
        self.every_n_epochs = every_n_epochs

    def callbacks(self, val_fold: int | None, identity: dict | None = None) -> list[Callback]:
        """The checkpoint callbacks of a run: a ``best-*`` :class:`AtomicModelCheckpoint` first when ``val_fold`` is
        set and ``monitor`` is not null (so ``trainer.checkpoint_callback`` is the best one), then the
        :class:`LastCheckpoint`."""
        callbacks: list[Callback] = []
        if self.monitor and val_fold is not None:
            callbacks.append(AtomicModelCheckpoint(dirpath=self.dirpath, filename=self.filename,
                                                   monitor=self.monitor, mode=self.mode,
                                                   save_top_k=self.save_top_k, enable_version_counter=False))
        elif self.monitor:
            log.info("no val_fold: validation runs on the test fold, so no best checkpoint is kept "
                     "(%s/last.ckpt is the final model)", self.dirpath)
        callbacks.append(LastCheckpoint(self.dirpath, self.every_n_train_steps, identity, self.existing_run,
                                        every_n_epochs=self.every_n_epochs))
        return callbacks


__all__ = ["AtomicModelCheckpoint", "CheckpointSettings", "CheckpointWriteError", "LastCheckpoint", "RunFolderError", "check_run_folder", "identity_differences",
           "read_run_file", "run_identity", "save_checkpoint_atomically"]

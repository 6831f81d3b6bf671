"""The checkpoint folder rules without a training run: identity, run records, refusals, CLI settings."""

from __future__ import annotations

import json

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from audio_ssl.utils.checkpoints import (
    RUN_FILE,
    AtomicModelCheckpoint,
    CheckpointSettings,
    CheckpointWriteError,
    LastCheckpoint,
    RunFolderError,
    check_run_folder,
    identity_differences,
    read_run_file,
    run_identity,
)

MODEL = {"class_path": "audio_ssl.methods.SupervisedClassifier", "init_args": {"lr": 0.001, "dropout": 0.3}}
DATA = {"class_path": "audio_ssl.data.ESC50DataModule",
        "init_args": {"data_dir": "/a", "cache_dir": "/c", "num_workers": 2, "test_fold": 5, "batch_size": 32}}


def test_identity_ignores_paths_and_loader_settings_but_not_folds():
    moved = {**DATA, "init_args": {**DATA["init_args"], "data_dir": "/b", "num_workers": 8}}
    assert run_identity(MODEL, DATA) == run_identity(MODEL, moved)
    other_fold = {**DATA, "init_args": {**DATA["init_args"], "test_fold": 3}}
    assert run_identity(MODEL, DATA) != run_identity(MODEL, other_fold)
    assert identity_differences(run_identity(MODEL, DATA), run_identity(MODEL, other_fold)) == [
        "data.init_args.test_fold: 5 -> 3"]


def test_fresh_fit_refused_in_a_folder_with_checkpoints(tmp_path):
    assert check_run_folder(tmp_path / "new", None, resuming=False) == []
    (tmp_path / "last.ckpt").write_bytes(b"x")
    with pytest.raises(RunFolderError, match=f"{tmp_path} already holds a run \\(last.ckpt\\)"):
        check_run_folder(tmp_path, run_identity(MODEL, DATA), resuming=False)
    assert check_run_folder(tmp_path, None, resuming=False, existing_run="overwrite") == [tmp_path / "last.ckpt"]
    assert check_run_folder(tmp_path, None, resuming=True) == []  # resuming the folder's own run
    with pytest.raises(ValueError, match="existing_run='keep' is not one of refuse, overwrite"):
        check_run_folder(tmp_path, None, resuming=False, existing_run="keep")


def test_resume_refused_when_the_run_record_differs(tmp_path):
    (tmp_path / RUN_FILE).write_text(json.dumps({"identity": run_identity(MODEL, DATA)}))
    check_run_folder(tmp_path, run_identity(MODEL, DATA), resuming=True)
    other = {**MODEL, "init_args": {"lr": 0.01, "dropout": 0.3}}
    with pytest.raises(RunFolderError, match=r"holds a different run.*\n  model\.init_args\.lr: 0\.001 -> 0\.01"):
        check_run_folder(tmp_path, run_identity(other, DATA), resuming=True)


@pytest.mark.parametrize("text, error", [("{not json", "cannot read the run record"),
                                         ("[1, 2]", "not a run record")])
def test_bad_run_record_names_the_file(tmp_path, text, error):
    (tmp_path / RUN_FILE).write_text(text)
    with pytest.raises(RunFolderError, match=f"{tmp_path / RUN_FILE}: {error}"):
        read_run_file(tmp_path)


def test_best_checkpoint_only_with_a_validation_fold(tmp_path):
    settings = CheckpointSettings(dirpath=str(tmp_path), monitor="val/acc", every_n_train_steps=3)
    without = settings.callbacks(val_fold=None)
    assert [type(c) for c in without] == [LastCheckpoint]
    with_val = settings.callbacks(val_fold=4)
    assert [type(c) for c in with_val] == [AtomicModelCheckpoint, LastCheckpoint]
    assert isinstance(with_val[0], ModelCheckpoint)
    best, last = with_val
    assert best.monitor == "val/acc" and best.mode == "max" and best.save_top_k == 1 and not best.save_last
    assert last.monitor is None and last.save_last and last._every_n_train_steps == 3
    assert last.state_key != best.state_key
    assert [type(c) for c in CheckpointSettings(dirpath=str(tmp_path), monitor=None).callbacks(4)] == [LastCheckpoint]


@pytest.mark.parametrize("kwargs, error", [
    ({"mode": "best"}, "checkpoint.mode='best' is not one of max, min"),
    ({"save_top_k": 0}, "checkpoint.save_top_k must be >= 1, got 0"),
    ({"every_n_train_steps": 0}, "checkpoint.every_n_train_steps must be >= 1 \\(or null\\), got 0"),
    ({"existing_run": "append"}, "checkpoint.existing_run='append' is not one of refuse, overwrite"),
    ({"every_n_epochs": 0}, "checkpoint.every_n_epochs must be >= 1, got 0"),
])
def test_bad_checkpoint_settings(kwargs, error):
    with pytest.raises(ValueError, match=error):
        CheckpointSettings(**kwargs)


@pytest.mark.parametrize("every_n_epochs, epochs, saved_after", [(1, 3, [1, 2, 3]), (2, 5, [2, 4, 5]), (10, 3, [3])])
def test_last_written_every_n_epochs_and_always_at_the_end(tmp_path, every_n_epochs, epochs, saved_after):
    import lightning as L
    import torch
    from lightning.pytorch.demos.boring_classes import BoringModel

    saves = []

    class Counting(LastCheckpoint):
        def _save_checkpoint(self, trainer, filepath):
            saves.append(trainer.global_step // 4)  # 4 steps per epoch below: the number of finished epochs
            super()._save_checkpoint(trainer, filepath)

    callback = Counting(tmp_path, every_n_epochs=every_n_epochs)
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=4, limit_val_batches=1, callbacks=[callback],
                        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(BoringModel())
    assert saves == saved_after
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 4 * epochs


def test_full_disk_leaves_no_truncated_best_checkpoint(tmp_path):
    """A disk that fills up halfway through ``best-*.ckpt``: one CheckpointWriteError naming the file and the
    system's reason, and neither the checkpoint nor its partial file under the folder."""
    import errno

    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class FullDisk(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            with open(path, "wb") as fh:  # what a full disk leaves: the first bytes, then ENOSPC
                fh.write(b"PK\x03\x04" + b"\x00" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")

    class Logged(BoringModel):
        def validation_step(self, batch, batch_idx):
            out = super().validation_step(batch, batch_idx)
            self.log("val/acc", 0.5)
            return out

    best = CheckpointSettings(dirpath=str(tmp_path), monitor="val/acc").callbacks(val_fold=4)[0]
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[best], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        plugins=[FullDisk()])
    with pytest.raises(CheckpointWriteError) as info:
        trainer.fit(Logged())
    err = info.value
    assert err.errno == errno.ENOSPC
    assert "best-epoch=000.ckpt" in str(err) and "No space left on device" in str(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_disk_error_is_one_line_from_the_cli(monkeypatch, capsys):
    import errno

    from audio_ssl import cli

    def fail(argv):
        raise CheckpointWriteError(errno.ENOSPC, "cannot write checkpoint runs/x/best.ckpt: No space left on device")

    monkeypatch.setattr(cli, "build_cli", fail)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", "x.yaml"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err == "audio-ssl: error: cannot write checkpoint runs/x/best.ckpt: No space left on device\n"


def test_unwritable_log_folder_is_refused_not_redirected(tmp_path):
    """W&B falls back to a temporary folder without a word when its folder cannot be written: refused up front."""
    from audio_ssl.utils.run_logging import UnwritableFolderError, prepare_logger_config

    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder below a file can never be created (a read-only folder, even as root)
    loggers = [{"class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"save_dir": str(blocker / "run"), "offline": True}}]
    with pytest.raises(UnwritableFolderError, match=r"a-file/run is not writable .*W&B run files"):
        prepare_logger_config(loggers, tmp_path, resume=False)
    ok = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path / "logs")}}]
    prepare_logger_config(ok, tmp_path, resume=False)
    assert (tmp_path / "logs").is_dir() and list((tmp_path / "logs").iterdir()) == []

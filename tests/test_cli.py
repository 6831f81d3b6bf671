"""The Lightning CLI end to end: every config parses and runs fast_dev_run, a real short fit, W&B offline,
resume from last.ckpt (also when validation never improves), extending a finished run, resume after SIGKILL
mid-epoch, one run per checkpoint folder, and no evaluation of untrained weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from cli_utils import common_args, config_args, lightning_configs, prepare_recipe, run_id, small_overrides

from audio_ssl.cli import LINKED, build_cli, main
from audio_ssl.utils.checkpoints import RUN_FILE, RunFolderError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = lightning_configs()


def merged(configs) -> dict:
    """The stacked YAML files merged as the CLI does for plain values: later files win, mappings merge."""
    def merge(base, extra):
        if isinstance(base, dict) and isinstance(extra, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in extra.items()}}
        return extra
    result: dict = {}
    for path in configs:
        result = merge(result, yaml.safe_load(path.read_text()) or {})
    return result


@pytest.mark.parametrize("configs", CONFIGS, ids=run_id)
def test_config_prints(configs, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", *config_args(configs), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    source = merged(configs)
    for section in ("model", "data", "trainer"):  # every value the recipe (and overlay) states is the resolved one
        assert_contains(source[section], printed[section], section)
    assert "num_classes" not in printed["model"]["init_args"]  # linked from the data module, never stated
    for _, target in LINKED:  # linked values are stated nowhere and resolved from their source
        with pytest.raises(KeyError):
            nested(source, target)


def nested(mapping, dotted: str):
    for part in dotted.split("."):
        mapping = mapping[part]
    return mapping


def leaves(mapping, prefix=""):
    """``{"a.b": value}`` for every leaf of nested mappings (lists are leaves)."""
    if not isinstance(mapping, dict):
        return {prefix: mapping}
    out = {}
    for key, value in mapping.items():
        out.update(leaves(value, f"{prefix}.{key}" if prefix else key))
    return out


EXPECTED = ROOT / "tests" / "expected_configs"
# recipes with a cpu overlay that replaced a former <method>_cpu.yaml (recipes written with their overlay have none)
OVERLAID = [c for c in CONFIGS if len(c) == 2 and c[1].parent.name == "cpu"
            and (EXPECTED / f"{c[1].stem}_cpu.yaml").exists()]


def test_every_former_cpu_recipe_is_an_overlay():
    assert sorted(c[1].stem + "_cpu" for c in OVERLAID) == sorted(p.stem for p in EXPECTED.glob("*.yaml"))


@pytest.mark.parametrize("configs", OVERLAID, ids=run_id)
def test_size_overlay_resolves_to_the_former_cpu_recipe(configs, capsys, monkeypatch, tmp_path):
    """recipe + cpu overlay == the resolved config of the former ``<method>_cpu.yaml``, leaf by leaf (run folders
    included: the stacked run is named ``<method>_cpu``). Values now linked must equal their source; a leaf only
    in the stacked config must be stated by no recipe file (a default added to a class later)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        build_cli(["fit", *config_args(configs), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = yaml.safe_load((EXPECTED / f"{configs[1].stem}_cpu.yaml").read_text())
    got, want = leaves(printed), leaves(expected)
    linked = dict((target, source) for source, target in LINKED)
    for key, value in want.items():
        if key in linked and key not in got:
            assert got[linked[key]] == value, f"{key} (linked to {linked[key]})"
        else:
            assert key in got, f"{key} missing from the stacked config"
            assert got[key] == value, f"{key}: {got[key]!r} != {value!r}"
    stated = leaves(merged(configs))
    extra = sorted(k for k in got if k not in want)
    assert not [k for k in extra if k in stated], extra


def test_linked_values_follow_their_source_and_are_never_set_by_hand(monkeypatch, tmp_path, capsys):
    """The data's sample rate reaches the model and its front end, the front end's n_mels the Transformer encoder,
    the method's patch_size the encoder's; a linked value set by hand (command line or file) is refused."""
    monkeypatch.chdir(tmp_path)
    stack = [ROOT / "experiments" / "masked_transformer.yaml", ROOT / "experiments" / "cpu" / "masked_transformer.yaml"]
    cli = build_cli([*config_args(tuple(stack)), "--data.init_args.sample_rate", "22050",
                     "--model.init_args.frontend.init_args.n_mels", "32", "--model.init_args.patch_size", "8",
                     "--trainer.logger", "false"], run=False)
    model = cli.model
    assert model.sample_rate == model.frontend.sample_rate == 22050
    assert model.frontend.n_mels == model.encoder.n_mels == 32
    assert model.encoder.patch_size == model.patch_size == (8, 8)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *config_args(tuple(stack)), "--model.init_args.encoder.init_args.n_mels", "64"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--model.init_args.encoder.init_args.n_mels is linked to model.init_args.frontend.init_args.n_mels" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    frontend:\n      init_args:\n        sample_rate: 22050\n")
    with pytest.raises(SystemExit):
        main(["fit", *config_args(tuple(stack)), "--config", str(bad), "--print_config"])
    err = capsys.readouterr().err
    assert f"{bad}: model.init_args.frontend.init_args.sample_rate is linked to data.init_args.sample_rate" in err


def test_a_link_whose_source_the_method_lacks_leaves_the_target_settable(monkeypatch, tmp_path, capsys):
    """A supervised method has no patch_size: its Transformer encoder's own patch_size is set by hand and used; the
    masked method has one, and there the encoder's is refused."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "vit.yaml"
    recipe.write_text(
        "model:\n  class_path: audio_ssl.methods.SupervisedClassifier\n  init_args:\n"
        "    encoder: {class_path: audio_ssl.models.SpectrogramTransformer, init_args: {max_frames: 64, patch_size: 8,"
        " embed_dim: 16, depth: 1, num_heads: 2}}\n"
        "    frontend: {class_path: audio_ssl.features.LogMelSpectrogram, init_args: {n_fft: 512, n_mels: 32}}\n"
        "data:\n  class_path: audio_ssl.data.ESC50DataModule\n")
    cli = build_cli(["--config", str(recipe), "--trainer.logger", "false"], run=False)
    assert cli.model.encoder.patch_size == (8, 8) and cli.model.encoder.n_mels == 32
    masked = recipe.read_text().replace("SupervisedClassifier", "MaskedTokenPrediction")
    recipe.write_text(masked)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(recipe), "--print_config"])
    assert "model.init_args.encoder.init_args.patch_size is linked to model.init_args.patch_size" in capsys.readouterr().err


def assert_contains(expected, actual, where: str) -> None:
    """Every value of ``expected`` (a parsed YAML block) is in ``actual`` (the printed, resolved config); class
    paths are compared by class name (the CLI prints the defining module)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} missing from the resolved config"
            if key == "class_path":
                assert str(actual[key]).rsplit(".", 1)[-1] == str(value).rsplit(".", 1)[-1], f"{where}.{key}"
            else:
                assert_contains(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_contains(e, a, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected), where
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("configs", CONFIGS, ids=run_id)
def test_config_fast_dev_run(configs, esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare_recipe(configs)  # the overrides of pretrained-model recipes point at tiny random weights
    args = ["fit", *config_args(configs), *common_args(esc50_root, cache_dir, tmp_path),
            "--trainer.fast_dev_run", "true", *small_overrides(configs)]
    cli = build_cli(args)
    assert cli.trainer.state.finished
    assert cli.model.num_classes == 5  # linked from the data module


def fit_args(config, esc50_root, cache_dir, tmp_path, epochs):
    return ["--config", str(config), *common_args(esc50_root, cache_dir, tmp_path, batch_size=8),
            "--trainer.max_epochs", str(epochs),
            "--model.init_args.encoder.init_args.widths", "[8, 16, 16, 32]",
            "--trainer.log_every_n_steps", "1"]


def test_short_fit_learns_synthetic_classes(esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ROOT / "experiments" / "supervised_cpu.yaml"
    cli = build_cli(fit_args(config, esc50_root, cache_dir, tmp_path, epochs=12), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    result = cli.trainer.test(cli.model, datamodule=cli.datamodule)[0]
    assert result["test/acc"] > 0.5  # 5 classes: chance is 0.2
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 11 and last["global_step"] == cli.trainer.global_step  # the final state
    # no val_fold: validation ran on the test fold, so no checkpoint may be chosen there
    assert not list((tmp_path / "checkpoints").glob("best*"))
    assert list(tmp_path.rglob("test_confusion_matrix.png"))


def test_wandb_offline_run_directory(esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = ROOT / "experiments" / "supervised_cpu.yaml"
    args = ["test", *fit_args(config, esc50_root, cache_dir, tmp_path, epochs=1), "--allow_untrained", "true"]
    args[args.index("--trainer.logger") + 1] = json.dumps([{
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "audio-ssl-test", "save_dir": str(tmp_path), "offline": True}}])
    build_cli(args)
    import wandb

    wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].rglob("*.wandb"))  # the run file `wandb sync` uploads later
    assert list(runs[0].rglob("*confusion_matrix*.png"))


class StopAfterEpochs(L.Callback):
    """Ends fit early, as an interrupted job would, leaving last.ckpt from the last finished epoch."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def test_resume_from_last_checkpoint(esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ROOT / "experiments" / "supervised_cpu.yaml"
    args = fit_args(config, esc50_root, cache_dir, tmp_path, epochs=3)
    first = build_cli(args, run=False)
    first.trainer.callbacks.append(StopAfterEpochs(2))
    first.trainer.fit(first.model, datamodule=first.datamodule)
    steps_per_epoch = first.trainer.global_step // 2
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    second = build_cli(["fit", *args, "--ckpt_path", "last"])
    assert second.trainer.current_epoch == 3
    assert second.trainer.global_step == 3 * steps_per_epoch  # continued, not restarted


class LogConstant(L.Callback):
    """Logs ``val/const`` = 0.5 every validation: a monitored metric that never improves after epoch 0."""

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log("val/const", 0.5)


def weights(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_last_is_the_final_state_when_validation_never_improves(esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ROOT / "experiments" / "supervised_cpu.yaml"
    args = fit_args(config, esc50_root, cache_dir, tmp_path, epochs=3) + [
        "--data.init_args.val_fold", "4", "--checkpoint.monitor", "val/const"]
    first = build_cli(args, run=False)
    first.trainer.callbacks.insert(0, LogConstant())
    first.trainer.fit(first.model, datamodule=first.datamodule)
    final_step, final_weights = first.trainer.global_step, weights(first.model)
    folder = tmp_path / "checkpoints"
    # the monitored checkpoint stays at epoch 0 (never improved); last.ckpt is the end of epoch 2
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["best-epoch=000.ckpt", "last.ckpt"]
    assert not list(folder.glob("*.partial"))
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == final_step
    assert_same_weights({k: v for k, v in last["state_dict"].items()}, final_weights)
    assert torch.load(folder / "best-epoch=000.ckpt", weights_only=True)["global_step"] == final_step // 3

    resumed = build_cli(["fit", *args, "--ckpt_path", "last"])  # a finished run: nothing left to train
    assert resumed.trainer.current_epoch == 3 and resumed.trainer.global_step == final_step
    assert_same_weights(weights(resumed.model), final_weights)


def test_extending_a_finished_run_continues_its_schedule(esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ROOT / "experiments" / "supervised_cpu.yaml"  # onecycle: its length is the run's length
    args = fit_args(config, esc50_root, cache_dir, tmp_path, epochs=2)
    first = build_cli(["fit", *args])
    steps_per_epoch = first.trainer.global_step // 2
    extended = build_cli(["fit", *args, "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    assert extended.trainer.current_epoch == 3
    assert extended.trainer.global_step == 3 * steps_per_epoch  # continued, not restarted
    schedule = extended.trainer.lr_scheduler_configs[0].scheduler
    assert schedule.total_steps == 3 * steps_per_epoch and schedule.last_epoch == 3 * steps_per_epoch
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def test_one_run_per_checkpoint_folder(esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ROOT / "experiments" / "supervised_cpu.yaml"
    args = fit_args(config, esc50_root, cache_dir, tmp_path, epochs=1) + ["--trainer.limit_train_batches", "2",
                                                                          "--trainer.limit_val_batches", "1"]
    folder = tmp_path / "checkpoints"
    build_cli(["fit", *args])
    recorded = json.loads((folder / RUN_FILE).read_text())
    assert recorded["identity"]["model"]["class_path"] == "audio_ssl.methods.SupervisedClassifier"
    assert "data_dir" not in recorded["identity"]["data"]["init_args"]
    first_bytes = (folder / "last.ckpt").read_bytes()
    ids = (tmp_path / "logger_ids.json").read_text()

    # a fresh fit into the folder would mix two runs: refused, naming the folder and the ways out, before
    # anything of the refused run is written (the run's logger ids stay those of the run in the folder)
    with pytest.raises(RunFolderError) as refused:
        build_cli(["fit", *args])
    assert (tmp_path / "logger_ids.json").read_text() == ids
    message = str(refused.value)
    assert str(folder) in message and "--ckpt_path last" in message and "--checkpoint.dirpath" in message
    assert "--checkpoint.existing_run overwrite" in message
    assert (folder / "last.ckpt").read_bytes() == first_bytes

    # resuming it with another model config is refused, naming the differing key
    with pytest.raises(RunFolderError, match=r"model\.init_args\.lr: 0\.001 -> 0\.01"):
        build_cli(["fit", *args, "--trainer.max_epochs", "2", "--model.init_args.lr", "0.01", "--ckpt_path", "last"])

    # overwrite: the old checkpoints go, a new run starts; never a last-v1.ckpt for `--ckpt_path last` to pick
    again = build_cli(["fit", *args, "--model.init_args.lr", "0.01", "--checkpoint.existing_run", "overwrite"])
    assert again.trainer.global_step == 2
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["last.ckpt", RUN_FILE]
    assert json.loads((folder / RUN_FILE).read_text())["identity"]["model"]["init_args"]["lr"] == 0.01
    assert torch.load(folder / "last.ckpt", weights_only=True)["hyper_parameters"]["lr"] == 0.01


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_untrained_weights_is_refused(subcommand, esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ROOT / "experiments" / "supervised_cpu.yaml"
    args = fit_args(config, esc50_root, cache_dir, tmp_path, epochs=1)
    with pytest.raises(ValueError, match=f"audio-ssl {subcommand}: no --ckpt_path.*--allow_untrained true"):
        build_cli([subcommand, *args])
    encoder = tmp_path / "encoder.ckpt"
    encoder.write_bytes(b"")  # never read: the refusal comes first
    with pytest.raises(ValueError, match="encoder.ckpt initialises only the encoder, the classifier head"):
        build_cli([subcommand, *args, "--model.init_args.init_encoder_from", str(encoder)])


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import lightning as L
    from audio_ssl.cli import LINKED, build_cli, main

    class KillMidEpoch(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == int(os.environ["KILL_AT_STEP"]):
                os.kill(os.getpid(), signal.SIGKILL)

    cli = build_cli(sys.argv[1:], run=False)
    if "KILL_AT_STEP" in os.environ:
        cli.trainer.callbacks.append(KillMidEpoch())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=os.environ.get("CKPT"))
    print("FINISHED", cli.trainer.current_epoch, cli.trainer.global_step)
    """
)


def test_sigkill_mid_epoch_then_resume_finishes(esc50_root, cache_dir, tmp_path):
    config = ROOT / "experiments" / "supervised_cpu.yaml"
    args = fit_args(config, esc50_root, cache_dir, tmp_path, epochs=3) + ["--checkpoint.every_n_train_steps", "2"]
    script = tmp_path / "run.py"
    script.write_text(KILLER)
    env = dict(os.environ, KILL_AT_STEP="7", PYTHONPATH=str(ROOT))  # 5 steps per epoch: mid epoch 2
    killed = subprocess.run([sys.executable, str(script), *args], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6  # saved mid-epoch, before the kill
    env = dict(os.environ, CKPT="last", PYTHONPATH=str(ROOT))
    resumed = subprocess.run([sys.executable, str(script), *args], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "FINISHED 3 15" in resumed.stdout


def test_fit_without_a_logger_writes_nothing_into_the_working_directory(esc50_root, cache_dir, tmp_path, monkeypatch):
    work = tmp_path / "checkout"
    work.mkdir()
    monkeypatch.chdir(work)
    config = ROOT / "experiments" / "supervised_cpu.yaml"
    args = fit_args(config, esc50_root, cache_dir, tmp_path, epochs=1) + [
        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1", "--trainer.logger", "false"]
    build_cli(["fit", *args])
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert sorted(p.name for p in work.iterdir()) == []


def test_run_folders_follow_one_name(capsys, monkeypatch, tmp_path):
    """Recipes state no logger or checkpoint folder: both derive from --run_name, by default the config's stem
    (``_cpu`` added by the cpu size overlay)."""
    monkeypatch.chdir(tmp_path)
    recipe, overlay = ROOT / "experiments" / "simclr.yaml", ROOT / "experiments" / "cpu" / "simclr.yaml"
    for configs, extra, name in (((recipe,), [], "simclr"), ((recipe, overlay), [], "simclr_cpu"),
                                 ((recipe, overlay), ["--run_name", "trial"], "trial")):
        with pytest.raises(SystemExit):
            build_cli(["fit", *config_args(configs), *extra, "--print_config"])
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["checkpoint"]["dirpath"] == f"runs/{name}/checkpoints"
        assert [lg["init_args"]["save_dir"] for lg in printed["trainer"]["logger"]] == [f"runs/{name}"] * 2
    from audio_ssl.cli import _with_run_name, run_name_from_args

    assert run_name_from_args(["fit", "--config=a/b.yaml", "--config", "c.yaml"]) == "b"
    assert run_name_from_args(["fit", "--config=a/b.yaml", "--config", "a/cpu/b.yaml"]) == "b_cpu"
    assert _with_run_name({"x": ["runs/{run_name}"]}, "n") == {"x": ["runs/n"]}


def test_num_classes_and_json_forms_of_linked_values_are_refused(monkeypatch, tmp_path, capsys):
    """num_classes is linked from the data module at instantiation: setting it (option or file) is refused, and a
    linked value inside a JSON/YAML mapping given to a parent option is refused like the dotted form."""
    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "experiments" / "supervised_cpu.yaml"
    overlay = tmp_path / "classes.yaml"
    overlay.write_text("model:\n  init_args:\n    num_classes: 10\n")
    for extra, message in (
            (["--model.init_args.num_classes", "10"],
             "--model.init_args.num_classes is linked to data.num_classes"),
            (["--model.init_args.num_classes=10"], "--model.init_args.num_classes is linked to data.num_classes"),
            (["--config", str(overlay)], f"{overlay}: model.init_args.num_classes is linked to data.num_classes"),
            (["--model.init_args.frontend", '{"init_args": {"sample_rate": 22050}}'],
             "--model.init_args.frontend sets model.init_args.frontend.init_args.sample_rate, which is linked to "
             "data.init_args.sample_rate"),
            (["--model.init_args", '{"num_classes": 10}'],
             "--model.init_args sets model.init_args.num_classes, which is linked to data.num_classes")):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(recipe), *extra, "--print_config"])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, extra


def test_fit_refuses_a_pipeline_config(monkeypatch, tmp_path, capsys):
    """A pipeline YAML (top-level ``pipeline:``) given to a Lightning command says to run it with audio-ssl cv."""
    monkeypatch.chdir(tmp_path)
    zoo = ROOT / "experiments" / "zoo" / "clap_zeroshot.yaml"
    mine = tmp_path / "p.yaml"
    mine.write_text("pipeline: pretrain_probe\npretrain: x.yaml\n")
    for path in (zoo, mine):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"{path} is a pipeline config" in err and f"run it with audio-ssl cv --config {path}" in err
        assert len(err.strip().splitlines()) == 2  # the message and the pointer to --help


def test_short_error_keeps_the_dashes_of_an_option_that_starts_the_message():
    from audio_ssl.cli import short_error

    assert short_error("--test-fold 7 is out of range") == "--test-fold 7 is out of range"
    assert short_error("Parser key 'x':\n  - Expected an int\n  - - nested") == "Parser key 'x': Expected an int nested"

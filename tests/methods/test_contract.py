"""The method contract of :class:`audio_ssl.methods.base.BaseMethod`, checked on every method through its CPU recipe:
a one-batch fit through the CLI, embeddings ``[B, embedding_dim]``, class probabilities that sum to 1 (or a clear
refusal for methods that do not classify), a checkpoint that rebuilds the method alone, and one optimizer step in
two gloo processes that leaves every rank with the same weights."""

from __future__ import annotations

import inspect

import lightning as L
import pytest
import torch
from cli_utils import ROOT, common_args, config_args, prepare_recipe, small_overrides

import audio_ssl.methods as methods
from audio_ssl.cli import build_cli
from audio_ssl.methods.base import BaseMethod

RECIPES = {  # one CPU recipe per method: its experiments/ YAMLs in --config order (a recipe, then its cpu size)
    "SupervisedClassifier": ("supervised_cpu.yaml",),
    "SimCLR": ("simclr.yaml", "cpu/simclr.yaml"),
    "BYOLA": ("byola.yaml", "cpu/byola.yaml"),
    "MaskedTokenPrediction": ("masked_cnn.yaml", "cpu/masked_cnn.yaml"),
    "BEATsClassifier": ("beats_probe.yaml",),
    "FineTuneClassifier": ("zoo/wav2vec2_finetune.yaml",),
}


def test_every_method_has_a_contract_recipe():
    exported = {name for name in methods.__all__
                if inspect.isclass(cls := getattr(methods, name)) and issubclass(cls, BaseMethod) and cls is not BaseMethod}
    assert exported == set(RECIPES), "add the new method's CPU recipe to RECIPES"


def fit_one_batch(recipe: tuple[str, ...], esc50_root, cache_dir, tmp_path):
    configs = tuple(ROOT / "experiments" / name for name in recipe)
    prepare_recipe(configs)
    args = ["fit", *config_args(configs), *common_args(esc50_root, cache_dir, tmp_path), *small_overrides(configs),
            "--trainer.max_epochs", "1", "--trainer.max_steps", "1", "--trainer.num_sanity_val_steps", "0"]
    cli = build_cli(args)
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    return cli


class SameWeightsOnEveryRank(L.Callback):
    """Asserts on every rank that one step was taken, that it changed the weights and that the ranks agree."""

    def on_train_start(self, trainer, pl_module):
        self.start = torch.cat([p.detach().flatten().clone() for p in pl_module.parameters() if p.requires_grad])

    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters() if p.requires_grad])
        assert trainer.world_size == 2 and trainer.global_step == 1
        assert not torch.equal(flat, self.start)
        gathered = pl_module.all_gather(flat)
        assert torch.equal(gathered[0], gathered[1]), "the ranks hold different weights after one step"


@pytest.mark.ddp
@pytest.mark.parametrize("method", sorted(RECIPES))
def test_method_keeps_the_contract(method, esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = fit_one_batch(RECIPES[method], esc50_root, cache_dir, tmp_path)
    model = cli.model.eval()
    assert type(model).__name__ == method
    audio = torch.randn(3, 16000) * 0.1

    # embeddings of a waveform batch
    with torch.no_grad():
        emb = model.embed(audio)
    assert emb.shape == (3, model.embedding_dim) and torch.isfinite(emb).all()
    assert isinstance(model.encoder, torch.nn.Module)

    # class probabilities where the method classifies
    if model.classifies:
        with torch.no_grad():
            probs = model.predict_proba(audio)
        assert probs.shape == (3, model.num_classes) and (probs >= 0).all()
        torch.testing.assert_close(probs.sum(1), torch.ones(3))
        assert model.test_outputs == []  # filled by a test epoch
    else:
        with pytest.raises(NotImplementedError, match="does not classify"):
            model.predict_proba(audio)

    # the checkpoint describes the method: rebuilt from it alone, same weights, same embeddings
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    rebuilt = BaseMethod.from_checkpoint(checkpoint).eval()
    assert type(rebuilt) is type(model)
    state, rebuilt_state = model.state_dict(), rebuilt.state_dict()
    assert state.keys() == rebuilt_state.keys()
    for key in state:
        torch.testing.assert_close(rebuilt_state[key], state[key], msg=key)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.embed(audio), emb)

    # one optimizer step in two gloo processes
    cli.datamodule.trainer = None  # the fitted trainer (lr-schedule closures) is not sent to the workers
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, limit_train_batches=1,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[SameWeightsOnEveryRank()],
                        default_root_dir=tmp_path)
    trainer.fit(rebuilt.train(), datamodule=cli.datamodule)

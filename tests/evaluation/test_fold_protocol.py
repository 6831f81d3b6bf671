"""Every training/evaluation path trains, validates and tests on the clips the data module's splits name."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from audio_ssl.data import ESC50DataModule
from audio_ssl.evaluation.fold import (
    FoldContext,
    FoldOutput,
    ResultDescription,
    classification_metrics,
    predictions_frame,
)

ROOT = Path(__file__).resolve().parents[2]
SUPERVISED = ROOT / "experiments" / "supervised_cpu.yaml"
TEST_FOLD = 3
CASES = [(None, False), (5, False), (5, True)]
IDS = ["plain", "val_fold", "val_fold+transductive"]


def overrides(esc50_root, cache_dir, val_fold, transductive):
    return ["--data.init_args.data_dir", str(esc50_root), "--data.init_args.cache_dir", str(cache_dir),
            "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8",
            "--data.init_args.clip_seconds", "1.0", "--data.init_args.val_fold", "null" if val_fold is None
            else str(val_fold), "--data.init_args.transductive", "true" if transductive else "false",
            "--model.init_args.encoder.init_args.widths", "[8, 8, 8, 8]", "--trainer.max_epochs", "1"]


def expected_clips(esc50_root, cache_dir, val_fold, transductive) -> dict[str, set[str]]:
    dm = ESC50DataModule(str(esc50_root), test_fold=TEST_FOLD, val_fold=val_fold, transductive=transductive,
                         cache_dir=str(cache_dir), num_workers=0)
    clips = {split: set(dm.split_files(split)) for split in ("train", "val", "test", "pretrain")}
    meta = dm._metadata().set_index("path")["fold"]
    assert set(meta.loc[list(clips["train"])]) == {1, 2, 4, 5} - {val_fold}  # the protocol itself
    assert not clips["train"] & (clips["test"] | clips["val"])
    assert clips["pretrain"] == (set(meta.index) if transductive else clips["train"])
    return clips


def fake_output(test_set, num_classes, class_names) -> FoldOutput:
    probs = np.full((len(test_set), num_classes), 1.0 / num_classes)
    return FoldOutput(classification_metrics(test_set.labels, probs),
                      predictions_frame(test_set.files, test_set.labels, probs, class_names),
                      ResultDescription(wall_time_s=0.0))


@pytest.mark.parametrize("val_fold, transductive", CASES, ids=IDS)
def test_every_path_uses_the_data_modules_splits(esc50_root, cache_dir, tmp_path, monkeypatch, val_fold,
                                                 transductive):
    from audio_ssl.cli import build_cli
    from audio_ssl.evaluation import baselines, beats_probe, pipelines, probe
    from audio_ssl.tools import probe as probe_tool

    want = expected_clips(esc50_root, cache_dir, val_fold, transductive)
    args = overrides(esc50_root, cache_dir, val_fold, transductive)
    seen: dict[str, dict[str, set[str]]] = {}

    # 1. Lightning fit / validate / test (also the fine-tuning and `lightning` CV stages).
    cli = build_cli(["--config", str(SUPERVISED), *args, "--data.init_args.test_fold", str(TEST_FOLD),
                     "--trainer.logger", "false"], run=False)
    dm = cli.datamodule
    dm.setup("fit")
    dm.setup("test")
    seen["lightning"] = {"pretrain": set(dm.train_set.files), "val": set(dm.val_set.files),
                         "test": set(dm.test_set.files)}

    # 2. pretrain_probe: the pretraining set, then the probe's train and test clips (training is stubbed).
    def fake_fit_stage(stage_args, stage_dir, before_fit=None):
        stage_cli = build_cli(stage_args, run=False)
        before_fit(stage_cli)
        stage_cli.datamodule.setup("fit")
        seen["pretrain_probe"] = {"pretrain": set(stage_cli.datamodule.train_set.files)}
        return stage_cli, 0

    def recording_probe_fold(name):
        def fake(module, train_set, test_set, num_classes, class_names, *a, **k):
            seen.setdefault(name, {}).update(train=set(train_set.files), test=set(test_set.files))
            out = fake_output(test_set, num_classes, class_names)
            out.description.details.update(embed_time_s=0.0, probe_time_s=0.0, probe_C=1.0)
            return out
        return fake

    monkeypatch.setattr(pipelines, "fit_stage", fake_fit_stage)
    monkeypatch.setattr(pipelines, "probe_fold", recording_probe_fold("pretrain_probe"))
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump({"pipeline": "pretrain_probe", "pretrain": str(SUPERVISED),
                                           "transductive": transductive}))
    context = FoldContext(config=yaml.safe_load(config_path.read_text()), fold=TEST_FOLD, work_dir=tmp_path / "fold3",
                          config_path=config_path, overrides=(*args, "--trainer.logger", "false"), run_name="t")
    outputs = pipelines.pretrain_probe(context)
    folds = ",".join(str(f) for f in sorted({1, 2, 3, 4, 5} if transductive else {1, 2, 4, 5} - {val_fold}))
    assert outputs["pretrained"].description.pretraining_data.startswith(f"esc50 folds {folds}")

    # 3. the standalone `probe` command, on a checkpoint of the same config.
    checkpoint = tmp_path / "weights.ckpt"
    torch.save({"state_dict": cli.model.state_dict()}, checkpoint)
    monkeypatch.setattr(probe_tool, "probe_fold", recording_probe_fold("probe"))
    probe_tool.main(["--checkpoint", str(checkpoint), "--config", str(SUPERVISED), "--test-fold", str(TEST_FOLD), *args])

    # 4. the BEATs probe, an instance of frozen_probe (the frozen models and their probe stubbed: the clips are
    #    what is checked).
    class FakeBEATs(torch.nn.Module):
        def __init__(self, *a, **k):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.encoder = SimpleNamespace(num_layers=1, out_dim=4, parameters=lambda: iter([torch.zeros(1)]))
            self.layers, self.embedding_dim = [0], 4

    def fake_control(model):
        control = FakeBEATs()
        control.weight.data.fill_(1.0)
        return control

    import audio_ssl.methods.beats as beats_methods

    monkeypatch.setattr(beats_methods, "BEATsClassifier", FakeBEATs)
    monkeypatch.setattr(beats_probe, "random_init_copy", fake_control)
    monkeypatch.setattr(pipelines, "probe_fold", recording_probe_fold("beats_probe"))
    data = {"class_path": "audio_ssl.data.ESC50DataModule",
            "init_args": {"data_dir": str(esc50_root), "cache_dir": str(cache_dir), "num_workers": 0,
                          "val_fold": val_fold, "transductive": transductive, "clip_seconds": 1.0}}
    beats_dm = beats_probe.build_datamodule(data, TEST_FOLD)
    out = beats_probe.run_beats_probe("unused.pt", beats_dm, [TEST_FOLD],
                                      probe=probe.ProbeConfig(C=1.0, max_iter=50, device="cpu"))[TEST_FOLD]
    assert set(out) == {"pretrained", "random_init"}
    assert out["pretrained"].description.details["train_folds"] == sorted({1, 2, 4, 5} - {val_fold})

    # 5. the baselines.
    (base,) = baselines.run_baseline_fold(
        FoldContext(config={"baseline": "majority", "data": data}, fold=TEST_FOLD, work_dir=tmp_path)).values()
    assert base.description.details["train_clips"] == len(want["train"])
    seen["baseline"] = {"test": set(base.predictions["file"])}

    for path, splits in seen.items():
        for split, clips in splits.items():
            assert clips == want[split], f"{path} {split}: {len(clips)} clips, expected {len(want[split])}"
    assert set(seen) == {"lightning", "pretrain_probe", "probe", "beats_probe", "baseline"}

"""The benchmark scripts stay runnable (tiny runs on the synthetic ESC-50) and compare like with like: the
naive loader hands over the same clips as ours, the 44.1 kHz copy holds the same audio, and the plain training
loop takes exactly the optimisation step Lightning takes."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from audio_ssl.data import ESC50DataModule
from audio_ssl.data.audio import decode_audio
from audio_ssl.features import LogMelSpectrogram
from audio_ssl.methods import SupervisedClassifier
from audio_ssl.models.resnet import AudioResNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import data_pipeline  # noqa: E402
import fast_steps  # noqa: E402
import resample_worst_case  # noqa: E402
import train_step  # noqa: E402
from common import REPO_ROOT  # noqa: E402


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_naive_loader_matches_the_cache(esc50_root, cache_dir):
    dm = ESC50DataModule(str(esc50_root), test_fold=5, batch_size=4, num_workers=0, cache_dir=str(cache_dir))
    dm.prepare_data()
    dm.setup("fit")
    ours = dm.val_set  # centred crop / padding at the start: deterministic, so both must agree exactly
    naive = data_pipeline.NaiveLibrosaDataset(
        ours.files, ours.labels.tolist(), 16000, dm.clip_samples, random_crop=False
    )
    assert len(naive) == len(ours)
    for i in range(len(ours)):
        a, b = ours[i], naive[i]
        assert a["audio"].shape == b["audio"].shape == (dm.clip_samples,)
        # the cache stores float16: 11 significant bits
        torch.testing.assert_close(a["audio"].float(), b["audio"], atol=1e-3, rtol=2**-10)
        assert a["label"] == b["label"] and a["index"] == b["index"]
    assert naive[0]["audio"][16000:].abs().max() == 0  # 1 s clips padded with silence to 5 s


def test_resampled_copy_is_official_format_with_the_same_audio(esc50_root, tmp_path, restore_threads):
    torch.set_num_threads(1)
    written = data_pipeline.make_resampled_copy(Path(esc50_root), tmp_path, num_clips=5)
    meta = pd.read_csv(tmp_path / "meta" / "esc50.csv")
    source = pd.read_csv(Path(esc50_root) / "meta" / "esc50.csv").set_index("filename")
    assert written == len(meta) == 5
    assert sorted(meta["fold"]) == [1, 2, 3, 4, 5]
    for _, row in meta.iterrows():
        info = sf.info(str(tmp_path / "audio" / row["filename"]))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (44100, 1, "PCM_16", "WAV")
        original_name = Path(row["filename"]).with_suffix(".flac").name
        original = decode_audio(Path(esc50_root) / "audio" / original_name, 16000)
        assert info.frames == math.ceil(len(original) * 44100 / 16000)
        back = decode_audio(tmp_path / "audio" / row["filename"], 16000)[: len(original)]
        assert np.corrcoef(original, back)[0, 1] > 0.99
        assert (row["fold"], row["target"]) == tuple(source.loc[original_name, ["fold", "target"]])


def test_throughput_counts_the_steps_after_warmup():
    assert train_step.throughput([0.0, 1.0, 2.0, 4.0], warmup=1, batch_size=2) == pytest.approx(3 * 2 / 4.0)
    with pytest.raises(ValueError, match="warmup"):
        train_step.throughput([0.0, 1.0], warmup=2, batch_size=2)


def tiny_classifier() -> SupervisedClassifier:
    """No randomness in the step (no dropout, masks or mixup): both loops must land on the same weights."""
    torch.manual_seed(0)
    return SupervisedClassifier(
        encoder=AudioResNet(arch="resnet18", widths=(4, 4, 8, 8)),
        num_classes=5,
        dropout=0.0,
        freq_mask=0,
        time_mask=0,
        mixup_prob=0.0,
        label_smoothing=0.1,
        frontend=LogMelSpectrogram(n_mels=32),
        optimizer="adamw",
        lr=1e-2,
        scheduler="constant",
    )


def test_plain_loop_takes_the_same_step_as_lightning(restore_threads):
    torch.set_num_threads(1)
    model = tiny_classifier()
    twin = copy.deepcopy(model)
    batches = train_step.make_batches(2, batch_size=3, samples=8000, num_classes=5)
    device = torch.device("cpu")
    ends, _ = train_step.run_lightning(
        model,
        batches,
        steps=3,
        warmup=1,
        device=device,
        precision="32-true",
        clip_val=None,
        clip_algorithm=None,
    )
    plain = train_step.PlainLoop(twin, device, "32-true", clip_val=None, clip_algorithm=None)
    plain_ends, plain_cpu = plain.run(batches, steps=3, warmup=1)
    assert len(ends) == len(plain_ends) == len(plain_cpu) == 3 and plain.step_index == 3
    moved = False
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    for a, b in zip(model.parameters(), tiny_classifier().parameters()):
        moved |= not torch.equal(a, b)
    assert moved, "the training steps did not change the weights"


def test_data_pipeline_runs_end_to_end(esc50_root, cache_dir, tmp_path, restore_threads):
    out = tmp_path / "dp.json"
    data_pipeline.main(
        [
            "--data-dir",
            str(esc50_root),
            "--cache-dir",
            str(cache_dir),
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--num-workers",
            "0",
            "--batches",
            "2",
            "--min-seconds",
            "0",
            "--subset",
            "5",
            "--frontend-clips",
            "4",
            "--repeats",
            "1",
            "--stall-steps",
            "2",
            "--clip-seconds",
            "1.0",
            "--threads",
            "1",
        ]
    )
    result = json.loads(out.read_text())
    for key in ("loading_16k", "loading_44k"):
        section = result[key]
        assert section["ours"]["clips"] == section["naive_librosa"]["clips"] == 2 * 4
        assert section["speedup"] == pytest.approx(
            section["ours"]["clips_per_s"] / section["naive_librosa"]["clips_per_s"]
        )
    assert result["loading_44k"]["clips"] == 5 and not result["loading_44k"]["cache_was_warm"]
    front = result["frontend"]
    assert front["max_abs_diff_db_vs_librosa"] < 0.01  # ours computes what librosa computes
    assert all(v["max_rel_err"] < 1e-5 for v in front["power"]["variants"].values())
    stall = result["stall"]
    assert [e["steps"] for e in stall["epochs"]] == [2, 2]
    assert 0.0 <= stall["measured"]["data_wait_share"] <= 1.0
    assert stall["measured"]["data_wait_s"] > 0.0
    assert stall["peak_tree_pss_mb"] > 0.0
    assert [row["measurement"] for row in result["summary"]][0].startswith("load 16 kHz")


def test_train_step_runs_end_to_end(tmp_path, restore_threads):
    out = tmp_path / "ts.json"
    train_step.main(
        [
            "--steps",
            "3",
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--batch-size",
            "2",
            "--clip-seconds",
            "0.5",
            "--threads",
            "1",
            "--set",
            "model.init_args.encoder.init_args.widths",
            "[4, 4, 8, 8]",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert len(result["lightning_samples_per_s"]) == len(result["plain_samples_per_s"]) == 2
    assert result["ratio"] == pytest.approx(result["lightning_median"] / result["plain_median"])
    assert len(result["lightning_samples_per_cpu_s"]) == 2 and result["cpu_ratio"] > 0
    assert result["clip_samples"] == 8000 and result["batch_size"] == 2


def test_fast_steps_measures_each_option_against_the_same_rounds_baseline(tmp_path, restore_threads):
    """Two recipes, tiny: every option is timed in the rounds of its baseline (the ratios are of the same round),
    a recipe that refuses an option (SimCLR's LARS has no fused form) reports it skipped with the reason, a --set
    key only one recipe has applies to that one, and a forced combination is measured against the baseline."""
    out = tmp_path / "fast.json"
    result = fast_steps.main([
        "--config", str(REPO_ROOT / "experiments" / "supervised_cpu.yaml"),
        "--config", str(REPO_ROOT / "experiments" / "simclr.yaml"),
        "--variants", "bf16", "channels_last", "fused", "--combined", "channels_last", "fused",
        "--steps", "3", "--warmup", "1", "--repeats", "2", "--batch-size", "4", "--clip-seconds", "0.5",
        "--threads", "1", "--eval-batch-sizes", "8", "--eval-repeats", "1",
        "--set", "model.init_args.encoder.init_args.widths", "[4, 4, 8, 8]",
        "--set", "model.init_args.views.init_args.crop_seconds", "0.25",
        "--out", str(out),
    ])
    assert json.loads(out.read_text())["recipes"][0]["config"] == "experiments/supervised_cpu.yaml"
    supervised, simclr = result["recipes"]
    assert supervised["set_not_applied"] == ["model.init_args.views.init_args.crop_seconds"]
    assert simclr["set_not_applied"] == []
    for recipe in (supervised, simclr):
        base = recipe["baseline"]
        assert base["median_ratio"] == 1.0 and len(base["samples_per_s"]) == 2 and recipe["clip_samples"] == 8000
        for name, variant in recipe["variants"].items():
            expected = [v / b for v, b in zip(variant["samples_per_s"], base["samples_per_s"])]
            assert variant["ratio_per_round"] == pytest.approx(expected), name
            assert variant["median_ratio"] == pytest.approx(float(np.median(expected)))
        assert recipe["variants"]["bf16"]["precision"] == "bf16-mixed"
        assert recipe["pays"] == [n for n, v in recipe["variants"].items() if v["median_ratio"] >= 1.03]
        assert set(recipe["eval"]["samples_per_s"]) == {"4", "8"} and recipe["eval"]["ratio_to_train_batch"]["4"] == 1
    assert set(supervised["variants"]) == {"bf16", "channels_last", "fused"} and not supervised["skipped"]
    assert supervised["combined"]["options"] == ["channels_last", "fused"]
    assert len(supervised["combined"]["ratio_per_round"]) == 2  # measured, in its own rounds
    assert simclr["skipped"]["fused"].startswith("fused_optimizer=true: optimizer='lars' has no fused implementation")
    assert simclr["combined"] == {"options": ["channels_last"], "chosen_by": "--combined", "same_as": "channels_last"}


def test_fast_steps_refuses_a_set_key_no_recipe_has():
    with pytest.raises(ValueError, match="--set model.init_args.no_such_key: no recipe has this key"):
        fast_steps.main(["--config", str(REPO_ROOT / "experiments" / "supervised_cpu.yaml"),
                         "--set", "model.init_args.no_such_key", "1"])


def test_resample_worst_case_benchmark_measures_both_paths():
    """The co-prime pair that made the old path allocate gigabytes is measured (the new path under a 512 MB cap);
    the old path on a cheap pair shows the harness measures it too."""
    new = resample_worst_case.measure("new", 16001, 16000, seconds=0.25, mem_cap_gb=0.5)
    assert new["ok"] and new["extra_mb"] < 100, new
    old = resample_worst_case.measure("old", 16000, 44100, seconds=0.05)
    assert old["ok"] and old["seconds"] > 0, old
    summary = resample_worst_case.worst([new, old], "new")
    assert summary["slowest"] is new and summary["failed"] == []


def test_metrics_agreement_reads_csv_and_wandb_logs(tmp_path, monkeypatch):
    """The agreement check finds the values in a real offline W&B run file and a CSV log, and flags a mismatch."""
    import csv as csv_module
    import importlib.util
    import sys
    from pathlib import Path

    import wandb

    spec = importlib.util.spec_from_file_location(
        "metrics_agreement", Path(__file__).parents[1] / "benchmarks" / "metrics_agreement.py")
    agreement = importlib.util.module_from_spec(spec)
    sys.modules["metrics_agreement"] = agreement
    spec.loader.exec_module(agreement)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    fold = run_dir / "fold1"
    (fold / "csv" / "version_0").mkdir(parents=True)
    run = wandb.init(project="agreement-test", dir=str(fold), mode="offline", reinit="create_new")
    run.log({"test/acc": 0.625, "test/f1_macro": 0.5, "test/confusion": [1, 2]})
    run.finish()
    with open(fold / "csv" / "version_0" / "metrics.csv", "w", newline="") as fh:
        writer = csv_module.writer(fh)
        writer.writerows([["epoch", "test/acc", "test/f1_macro"], ["3", "", ""], ["3", "0.625", "0.5"]])
    (run_dir / "folds.csv").write_text("fold,variant,acc,f1_macro\n1,default,0.625,0.5\n")
    assert agreement.wandb_logged(fold) == {"test/acc": 0.625, "test/f1_macro": 0.5}
    assert agreement.main([str(run_dir), "--metrics", "acc", "f1_macro"]) == 0
    (run_dir / "folds.csv").write_text("fold,variant,acc,f1_macro\n1,default,0.6,0.5\n")
    assert agreement.main([str(run_dir), "--metrics", "acc", "f1_macro"]) == 1
def test_classify_long_recording_and_checkpoint(tmp_path):
    """The long-recording benchmark's inputs: a WAV written minute by minute with the asked length and shape,
    and a self-describing checkpoint of the config's model that classify loads alone."""
    import classify_long

    from audio_ssl.tools.classify import load_classifier

    classify_long.write_recording(tmp_path / "r.wav", 61.5, 8000, 2)
    info = sf.info(tmp_path / "r.wav")
    assert (info.frames, info.channels, info.samplerate, info.subtype) == (61.5 * 8000, 2, 8000, "PCM_16")
    classify_long.make_checkpoint(Path(classify_long.REPO_ROOT) / "experiments" / "supervised_cpu.yaml",
                                  tmp_path / "m.ckpt", 7)
    bundle = load_classifier(None, tmp_path / "m.ckpt")
    assert (bundle.num_classes, bundle.sample_rate, bundle.clip_seconds) == (7, 16000, 5.0)


@pytest.mark.slow
def test_classify_long_runs(tmp_path):
    import classify_long

    result = classify_long.main(["--hours", "0.002", "--baseline-hours", "0.001", "--rate", "22050",
                                 "--tmp-dir", str(tmp_path), "--out", str(tmp_path / "r.json")])
    assert set(result["runs"]) == {"clip/stream", "clip/whole_file", "baseline/stream", "baseline/whole_file",
                                   "long/stream"}
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["target_mb"] == 200
    assert not list(tmp_path.glob("classify-long-*"))  # the recordings are deleted


def test_readme_tables_render_serve_load_results_between_markers(tmp_path):
    import importlib.util
    import json as json_module
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("readme_tables",
                                                  Path(__file__).parents[1] / "benchmarks" / "readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    row = {"scenario": "one_by_one", "max_batch": 1, "max_queue": 4, "clients": 3, "ok": 5,
           "statuses": {"200": 5, "503": 2}, "requests_per_s": 12.345, "p50_ms": 10.4, "p99_ms": 99.6,
           "mean_batch": 1.0, "rss_idle_mb": 800.2, "rss_peak_mb": 810.7}
    result = tmp_path / "serve_load.json"
    result.write_text(json_module.dumps({"results": [row], "problems": []}))
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:serve_load -->\nold\n<!-- /results:serve_load -->\nb\n")
    tables.main(["serve_load", str(result), "--readme", str(readme)])
    text = readme.read_text()
    assert "old" not in text and text.startswith("a\n<!-- results:serve_load -->\n| scenario |")
    assert "| one by one | 1 | 4 | 3 | 5 | 2 x 503 | 12.3 | 10 ms | 100 ms | 1.00 | 800 / 811 MB |" in text


def test_readme_tables_render_onnx_parity_and_zoo_check_rows(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("readme_tables",
                                                  Path(__file__).parents[1] / "benchmarks" / "readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    onnx = {"args": {"clips": "32", "repeats": "5"}, "runs": [{"kind": "supervised", "method": "SupervisedClassifier", "encoder": "AudioResNet",
                      "parameters": 314338, "dynamic_length": True, "max_abs_diff": 3.63e-7,
                      "torch_clips_per_s": 193.34, "onnx_clips_per_s": 64.06, "onnx_speedup": 0.3313}]}
    assert tables.onnx_parity_table(onnx).splitlines()[2] == (
        "| supervised (SupervisedClassifier) | AudioResNet | 0.31M | yes | 32 x 5 | 3.6e-07 | 193.3 | 64.1 | 0.33x |")
    import json as json_module

    (tmp_path / "a.json").write_text(json_module.dumps(onnx))
    (tmp_path / "b.json").write_text(json_module.dumps({**onnx, "args": {"clips": "8", "repeats": "2"}}))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:onnx_parity -->\n<!-- /results:onnx_parity -->\n")
    tables.main(["onnx_parity", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--readme", str(readme)])
    body = readme.read_text().splitlines()
    assert len(body) == 6 and body[1].startswith("| classifier") and "| 32 x 5 |" in body[3] and "| 8 x 2 |" in body[4]
    zoo = {"results": [
        {"encoder": "ast", "embed": {"encoder_params": 86_190_000, "embed_clips_per_s": 1.234},
         "pipelines": {"probe": {"returncode": 0, "wall_s": 61.2, "accuracy": {"pretrained": 0.02, "random_init": 0.0}},
                       "finetune": {"returncode": 1, "wall_s": 3.0, "accuracy": None}}},
        {"encoder": "wavlm", "embed": {"encoder_params": 94_380_000, "embed_clips_per_s": 0.5},
         "pipelines": {"probe": {"returncode": 0, "wall_s": 30.0, "accuracy": {"pretrained": 0.0, "random_init": 0.1}},
                       "finetune": {"returncode": 0, "wall_s": 20.4, "accuracy": None},
                       "finetune_test": {"returncode": 0, "wall_s": 9.6, "accuracy": {"fine-tuned": 0.125}}}},
        {"encoder": "clap", "embed": {}, "pipelines": {"zeroshot": {"returncode": 0, "wall_s": 9.6,
                                                                    "accuracy": {"default": 0.5}}}}]}
    rows = tables.zoo_pipeline_check_table(zoo).splitlines()[2:]
    assert rows == ["| ast | 86.2M | 1.23 | ran, 61 s (acc 2.0 / 0.0 %) | failed (rc 1) |",
                    "| wavlm | 94.4M | 0.50 | ran, 30 s (acc 0.0 / 10.0 %) | fit 20 s, then test: ran, 10 s (acc 12.5 %) |",
                    "| clap | - | - | ran, 10 s (acc 50.0 %) | - |"]


def test_device_resident_benchmark_checks_and_times_both_paths(esc50_root, cache_dir, tmp_path, restore_threads):
    import device_resident

    with pytest.raises(SystemExit):  # a usage error naming --fold, before anything is read
        device_resident.parse_args(["--data-dir", str(esc50_root), "--fold", "9"])
    out = tmp_path / "dr.json"
    device_resident.main(["--data-dir", str(esc50_root), "--cache-dir", str(cache_dir), "--batch-size", "4",
                          "--num-workers", "0", "--clip-seconds", "0.5", "--repeats", "2", "--epochs", "2",
                          "--out", str(out)])
    result = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON: not valid JSON"))
    assert result["batches_equal"] and result["batches_per_epoch"] == 2 and result["clips_per_epoch"] == 8
    assert len(result["seconds_per_epoch"]["resident"]) == len(result["pair_ratios"]) == 2
    assert result["ratio_dataloader_over_resident"] == pytest.approx(float(np.median(result["pair_ratios"])))
    assert result["resident_mb"] == pytest.approx(2 * 10 * 16000 / 1e6 + 8 * 10 / 1e6)  # fold 1: 10 clips of 1 s
    import readme_tables

    row = readme_tables.device_resident_table(result).splitlines()[2]
    assert row.startswith("| cpu | ") and f"| 8 x 4 | 4 | 0 | {result['dataloader_s']:.3f} |" in row  # 2 pairs x 2
    assert f"| {result['ratio_dataloader_over_resident']:.2f}x |" in row

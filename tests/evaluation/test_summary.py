"""Summary arithmetic against hand-computed numbers, the fold bookkeeping check and the Markdown results table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from audio_ssl.evaluation.fold import (
    DatasetDescription,
    FoldOutput,
    ResultDescription,
    clips_digest,
    predictions_frame,
)
from audio_ssl.evaluation.run_store import finished_folds, save_fold_result, write_summary
from audio_ssl.evaluation.summary import (
    build_summary,
    check_bookkeeping,
    folds_frame,
    metric_stats,
    results_table,
)

CLIPS = {1: ["a.wav", "b.wav"], 2: ["c.wav", "d.wav"], 3: ["e.wav", "f.wav"]}
LABELS = {1: [0, 1], 2: [0, 1], 3: [1, 1]}
PROBS = {1: [[0.9, 0.1], [0.6, 0.4]], 2: [[0.2, 0.8], [0.3, 0.7]], 3: [[0.1, 0.9], [0.2, 0.8]]}
ACC = {1: 0.5, 2: 0.5, 3: 1.0}  # predictions: fold 1 -> 0, 0; fold 2 -> 1, 1; fold 3 -> 1, 1
DATASET = DatasetDescription(name="toy", num_folds=3, num_clips=6, clips_digest=clips_digest(sum(CLIPS.values(), [])),
                             class_names=["cat", "dog"], sample_rate=16000)


def write_run(run_dir, folds=(1, 2, 3)):
    for k in folds:
        outputs = {}
        for variant, description in (
                ("v", ResultDescription(method="M", epochs=3, dataset=DATASET, details={"seed": k})),
                ("w", ResultDescription(method="R", transductive=True, wall_time_s=5.0, epochs=0, dataset=DATASET))):
            frame = predictions_frame(CLIPS[k], LABELS[k], np.array(PROBS[k]), ["cat", "dog"])
            outputs[variant] = FoldOutput({"acc": ACC[k], "f1": 0.1 * k}, frame, description)
        save_fold_result(run_dir, k, outputs, wall_time_s=10.0 * k, fingerprint="x")


def test_metric_stats_by_hand():
    stats = metric_stats([0.7, 0.8, 0.9, 0.6, 0.75])
    assert stats["mean"] == pytest.approx(0.75)
    assert stats["std"] == pytest.approx(math.sqrt(0.05 / 4))  # sample std: squared deviations sum to 0.05
    assert (stats["min"], stats["max"], stats["n"]) == (0.6, 0.9, 5)
    assert metric_stats([0.4])["std"] is None


def test_summary_of_a_run_by_hand(tmp_path):
    write_run(tmp_path)
    summary = build_summary(tmp_path, finished_folds(tmp_path), {"name": "toy-run", "device": "cpu",
                                                                   "cv_config_text": "model: x\n"})
    v = summary["variants"]["v"]
    assert v["metrics"]["acc"]["mean"] == pytest.approx(2 / 3)
    assert v["metrics"]["acc"]["std"] == pytest.approx(math.sqrt(1 / 12))  # deviations -1/6, -1/6, 1/3
    assert (v["metrics"]["acc"]["min"], v["metrics"]["acc"]["max"]) == (0.5, 1.0)
    assert v["metrics"]["f1"]["mean"] == pytest.approx(0.2) and v["metrics"]["f1"]["std"] == pytest.approx(0.1)
    assert v["metrics"]["acc"]["per_fold"] == {"1": 0.5, "2": 0.5, "3": 1.0}
    assert v["per_class_accuracy"] == {"cat": 0.5, "dog": 0.75}  # cat: a right, c wrong; dog: b wrong, d e f right
    assert v["wall_time_s"]["total"] == pytest.approx(60.0) and summary["wall_time_s"]["total"] == pytest.approx(60.0)
    assert summary["variants"]["w"]["wall_time_s"]["total"] == pytest.approx(15.0)  # the variant's own time
    assert v["num_test_clips"] == 6 and v["epochs"] == 3 and v["method"] == "M"
    assert summary["complete"] and summary["bookkeeping_ok"] and summary["folds"] == [1, 2, 3]
    assert "ddof=1" in summary["std_note"]
    assert summary["variants"]["w"]["transductive"] and summary["notes"] == ["w: pretraining saw test-fold audio"]
    assert summary["dataset"] == "toy" and summary["class_names"] == ["cat", "dog"]
    assert summary["configs"]["cv_config"] == "model: x\n"
    assert v["details"] == {"1": {"seed": 1}, "2": {"seed": 2}, "3": {"seed": 3}}

    folds = folds_frame(finished_folds(tmp_path))
    write_summary(tmp_path, summary, folds)
    assert list(folds["fold"]) == [1, 1, 2, 2, 3, 3] and list(folds["acc"][::2]) == [0.5, 0.5, 1.0]
    assert json.loads((tmp_path / "summary.json").read_text())["variants"]["v"]["metrics"]["acc"]["min"] == 0.5
    assert (tmp_path / "folds.csv").read_text().startswith("fold,variant,acc,f1,fold_wall_time_s")


def test_partial_run_summary(tmp_path):
    write_run(tmp_path, folds=(2,))
    summary = build_summary(tmp_path, finished_folds(tmp_path), {"name": "p"})
    assert not summary["complete"] and summary["variants"]["v"]["metrics"]["acc"]["std"] is None
    assert summary["variants"]["v"]["bookkeeping"]["message"].startswith("partial run (1 of 3 folds)")


def test_bookkeeping_detects_missing_duplicate_and_overlap():
    ok = check_bookkeeping(CLIPS, DATASET)
    assert ok["ok"] and ok["complete"] and "every one of the 6 clips" in ok["message"]
    missing = check_bookkeeping({**CLIPS, 3: ["e.wav"]}, DATASET)
    assert not missing["ok"] and "cover 5 distinct clips" in missing["message"]
    swapped = check_bookkeeping({**CLIPS, 3: ["e.wav", "x.wav"]}, DATASET)  # right count, wrong clip
    assert not swapped["ok"]
    twice = check_bookkeeping({**CLIPS, 2: ["c.wav", "d.wav", "d.wav"]}, DATASET)
    assert not twice["ok"] and "fold 2 tests 1 clip(s) more than once" in twice["message"]
    overlap = check_bookkeeping({1: ["a.wav"], 2: ["a.wav"]}, DATASET)
    assert not overlap["ok"] and "a.wav is tested in fold 1 and fold 2" in overlap["message"]


SUMMARIES = [
    {"name": "sup5", "folds": [1, 2, 3, 4, 5], "num_folds": 5, "variants": {"default": {
        "method": "SupervisedClassifier", "encoder": "AudioResNet", "pretraining_data": "none",
        "protocol": "supervised from scratch", "epochs": 20, "transductive": False,
        "metrics": {"acc": {"mean": 0.7234, "std": 0.0211}}, "wall_time_s": {"total": 5400.0}}}},
    {"name": "ssl", "folds": [1], "num_folds": 5, "variants": {
        "pretrained": {"method": "SimCLR", "encoder": "AudioResNet", "pretraining_data": "esc50 folds 1,2,3,4,5",
                       "protocol": "linear probe (frozen encoder)", "epochs": 100, "transductive": True,
                       "metrics": {"acc": {"mean": 0.5, "std": None}}, "wall_time_s": {"total": 42.0}},
        "random_init": {"method": "none (random init)", "encoder": "AudioResNet", "pretraining_data": "none",
                        "protocol": "linear probe (frozen encoder)", "epochs": 0, "transductive": False,
                        "metrics": {"acc": {"mean": 0.25, "std": None}}, "wall_time_s": {"total": 120.0}}}},
]

EXPECTED_TABLE = """\
| run | method | encoder | pretraining data | protocol | acc (%) mean ± std | folds | epochs | wall time |
|---|---|---|---|---|---|---|---|---|
| sup5 | SupervisedClassifier | AudioResNet | none | supervised from scratch | 72.3 ± 2.1 | 5/5 | 20 | 1.5 h |
| ssl:pretrained | SimCLR | AudioResNet | esc50 folds 1,2,3,4,5 (pretraining saw test-fold audio) | \
linear probe (frozen encoder) | 50.0 | 1/5 | 100 | 42 s |
| ssl:random_init | none (random init) | AudioResNet | none | linear probe (frozen encoder) | 25.0 | 1/5 | 0 | 2.0 min |
"""


def test_results_table_from_fixed_summaries(tmp_path, capsys):
    assert results_table(SUMMARIES) == EXPECTED_TABLE
    from audio_ssl.cli import main

    for s in SUMMARIES:
        (tmp_path / s["name"]).mkdir()
        (tmp_path / s["name"] / "summary.json").write_text(json.dumps(s))
    (tmp_path / "unfinished").mkdir()  # no summary.json: skipped
    main(["results", str(tmp_path / "sup5"), str(tmp_path / "unfinished"), str(tmp_path / "ssl" / "summary.json"),
          "--out", str(tmp_path / "table.md")])
    assert capsys.readouterr().out == EXPECTED_TABLE == (tmp_path / "table.md").read_text()
    with pytest.raises(SystemExit, match="no summary.json"):
        main(["results", str(tmp_path / "unfinished")])

"""Error analysis from saved predictions: confusion counts, confused pairs and confidence extremes by hand,
and every analysis file written for a run (with log-mel images from the audio files)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audio_ssl.evaluation.analysis import analyze_run, confidence_extremes, confused_pairs, confusion_counts
from audio_ssl.evaluation.fold import (
    DatasetDescription,
    FoldOutput,
    ResultDescription,
    clips_digest,
    predictions_frame,
)
from audio_ssl.evaluation.run_store import finished_folds, save_fold_result, write_summary
from audio_ssl.evaluation.summary import build_summary, folds_frame

NAMES = ["cat", "dog", "owl"]


def frame(labels, preds, confidences, files=None):
    return pd.DataFrame({"file": files or [f"{i}.wav" for i in range(len(labels))], "label": labels,
                         "label_name": [NAMES[i] for i in labels], "pred": preds,
                         "pred_name": [NAMES[i] for i in preds], "confidence": confidences})


def test_confusions_by_hand():
    f = frame([0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 2, 1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5, 0.95, 0.4, 0.3])
    np.testing.assert_array_equal(confusion_counts(f, 3), [[1, 2, 0], [0, 1, 1], [2, 1, 0]])
    pairs = confused_pairs(f, NAMES)
    assert pairs.to_dict("records") == [
        {"true": "cat", "predicted": "dog", "count": 2, "share_of_true": 2 / 3},
        {"true": "owl", "predicted": "cat", "count": 2, "share_of_true": 2 / 3},
        {"true": "dog", "predicted": "owl", "count": 1, "share_of_true": 0.5},
        {"true": "owl", "predicted": "dog", "count": 1, "share_of_true": 1 / 3},
    ]
    low_correct, high_wrong = confidence_extremes(f, n=2)
    assert list(low_correct["confidence"]) == [0.5, 0.9]
    assert list(high_wrong["confidence"]) == [0.95, 0.8]


def test_analysis_files_for_a_run(tmp_path, capsys):
    from audio_ssl.cli import main

    run_dir = tmp_path / "results" / "toy"
    rng = np.random.default_rng(0)
    audio = tmp_path / "audio"
    audio.mkdir()
    files = []
    for i in range(9):
        path = audio / f"clip{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
        files.append(str(path))
    files.append(str(audio / "deleted.wav"))  # a clip that is gone by analysis time: drawn as unreadable
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    dataset = DatasetDescription(name="toy", num_folds=2, num_clips=10, clips_digest=clips_digest(files),
                                 class_names=NAMES, sample_rate=16000)
    for k, rows in ((1, slice(0, 5)), (2, slice(5, 10))):
        probs = rng.dirichlet(np.ones(3), 5)
        output = FoldOutput({"acc": 0.0}, predictions_frame(files[rows], labels[rows], probs, NAMES),
                            ResultDescription(dataset=dataset))
        save_fold_result(run_dir, k, {"default": output}, 1.0, "x")
    folds = finished_folds(run_dir)
    write_summary(run_dir, build_summary(run_dir, folds, {"name": "toy"}), folds_frame(folds))

    main(["cv", "--analyze-only", "toy", "--out", str(tmp_path / "results"), "--examples", "3"])
    assert "analysis written to" in capsys.readouterr().out
    out = run_dir / "analysis" / "default"
    for name in ("confusion_matrix.png", "per_class_accuracy.png", "least_confident_correct.png",
                 "most_confident_wrong.png", "confused_pairs.csv", "confused_pairs.md", "per_class_accuracy.csv"):
        assert (out / name).stat().st_size > 0, name
    predictions = pd.concat([pd.read_csv(run_dir / f"predictions/fold{k}.csv") for k in (1, 2)])
    pairs = pd.read_csv(out / "confused_pairs.csv")
    wrong = predictions[predictions["pred"] != predictions["label"]]
    assert pairs["count"].sum() == len(wrong)
    accuracy = pd.read_csv(out / "per_class_accuracy.csv").set_index("class")["accuracy"]
    for c, name in enumerate(NAMES):
        rows = predictions[predictions["label"] == c]
        assert accuracy[name] == pytest.approx((rows["pred"] == c).mean())
    most_wrong = pd.read_csv(out / "most_confident_wrong.csv")
    assert list(most_wrong["confidence"]) == sorted(wrong["confidence"], reverse=True)[:3]
    assert len(most_wrong) == min(3, len(wrong))
    assert "## default: accuracy over all test clips" in (run_dir / "analysis" / "README.md").read_text()


def test_analysis_needs_a_summary(tmp_path):
    with pytest.raises(FileNotFoundError, match="summary.json not found"):
        analyze_run(tmp_path)

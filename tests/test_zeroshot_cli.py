"""``audio-ssl zeroshot`` end to end on generated files with a tiny random CLAP model read from an offline Hub
cache: the printed and written probabilities against windows scored by hand, and the errors for bad input."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("transformers")

from clap_utils import SAMPLE_RATE, TINY_ID  # noqa: E402

from audio_ssl.cli import main as cli_main  # noqa: E402
from audio_ssl.data.audio import decode_audio  # noqa: E402
from audio_ssl.evaluation.windows import window_starts  # noqa: E402
from audio_ssl.models.clap import load_clap, prompts_for  # noqa: E402

pytestmark = pytest.mark.usefixtures("clap_offline")  # nothing here may reach the Hugging Face Hub

LABELS = ["dog barking", "siren", "rain"]


@pytest.fixture
def recordings(tmp_path):
    """A short 16 kHz FLAC (0.4 s: shorter than the model's 1 s), a 2.3 s 44.1 kHz stereo WAV, a folder."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "audio"
    folder.mkdir()
    short = folder / "short.flac"
    sf.write(short, 0.2 * rng.standard_normal(6400), 16000, subtype="PCM_16")
    long = folder / "long.wav"
    sf.write(long, 0.2 * rng.standard_normal((101430, 2)), 44100, subtype="FLOAT")
    return folder, short, long


def expected_probs(path, prompts) -> np.ndarray:
    """What the command should print: the file decoded whole at 48 kHz, cut into 1 s windows every 0.5 s (one
    window of its own length when shorter), each scored by the model, the mean over windows."""
    clap = load_clap(TINY_ID)
    wave = decode_audio(path, SAMPLE_RATE)
    window = min(len(wave), clap.max_samples)
    starts = window_starts(len(wave), window, window // 2)
    windows = np.stack([wave[s : s + window] for s in starts])
    return clap.zero_shot(windows, SAMPLE_RATE, prompts).mean(0).numpy()


def run(argv, capsys):
    try:
        cli_main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_scores_files_and_folders_like_windows_scored_by_hand(clap_hub, recordings, tmp_path, capsys):
    folder, short, long = recordings
    out_csv = tmp_path / "out" / "pred.csv"
    code, out, err = run(["zeroshot", "--model", TINY_ID, "--labels", " dog barking, siren ,rain", "--top-k", "2",
                          "--template", "A recording of {label}.", "--out", str(out_csv), str(folder)], capsys)
    assert code == 0, err
    assert "2 file(s): 2 classified, 0 could not be read" in err
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["file"] for r in rows] == [str(long), str(short)]
    prompts = prompts_for(LABELS, "A recording of {label}.")
    lines = out.strip().splitlines()
    for row, line, path in zip(rows, lines, (long, short)):
        expected = expected_probs(path, prompts)
        order = np.argsort(-expected)
        assert row["pred_name"] == LABELS[order[0]] and row["top2_name"] == LABELS[order[1]]
        assert float(row["top1_prob"]) == pytest.approx(expected[order[0]], rel=1e-5)
        assert float(row["top2_prob"]) == pytest.approx(expected[order[1]], rel=1e-5)
        assert line == f"{path}: {LABELS[order[0]]} {expected[order[0]]:.3f}, {LABELS[order[1]]} {expected[order[1]]:.3f}"
    assert rows[0]["windows"] == "4" and rows[1]["windows"] == "1"  # 2.3 s: 0, 0.5, 1 and 1.3 (end-aligned)
    assert float(rows[1]["duration"]) == pytest.approx(0.4)


def test_labels_file_and_json_output(clap_hub, recordings, tmp_path, capsys):
    _, short, _ = recordings
    labels = tmp_path / "labels.txt"
    labels.write_text("dog barking\n\nsiren\nrain\n")
    out_json = tmp_path / "pred.json"
    code, out, err = run(["zeroshot", "--model", TINY_ID, "--labels-file", str(labels), "--out", str(out_json),
                          str(short)], capsys)
    assert code == 0, err
    import json

    record = json.loads(out_json.read_text())[0]
    expected = expected_probs(short, prompts_for(LABELS))
    assert [t["name"] for t in record["top_k"]] == [LABELS[i] for i in np.argsort(-expected)]
    np.testing.assert_allclose([t["prob"] for t in record["top_k"]], np.sort(expected)[::-1], rtol=1e-5)
    assert sum(t["prob"] for t in record["top_k"]) == pytest.approx(1.0, rel=1e-5)


def test_a_missing_file_is_named_and_the_others_still_scored(clap_hub, recordings, tmp_path, capsys):
    _, short, _ = recordings
    missing = tmp_path / "missing.wav"
    out_csv = tmp_path / "pred.csv"
    code, out, err = run(["zeroshot", "--model", TINY_ID, "--labels", "dog,rain", "--out", str(out_csv),
                          str(missing), str(short)], capsys)
    assert code == 1
    assert f"cannot read {missing}" in err and str(short) in out
    rows = list(csv.DictReader(out_csv.open()))
    assert rows[0]["file"] == str(missing) and str(missing) in rows[0]["error"] and rows[1]["error"] == ""


@pytest.mark.parametrize(("args", "message"), [
    (["--labels", ""], "the label list is empty"),
    (["--labels", "dog,,rain"], "label 2 of 3 is empty"),
    (["--labels", "dog,siren,Dog"], "label 'Dog' is given twice (labels 1 and 3)"),
    (["--labels", "dog,siren", "--template", "a sound"], "template 'a sound' has no {label} field"),
    ([], "exactly one of --labels"),
    (["--labels", "dog", "--labels-file", "x.txt"], "exactly one of --labels"),
    (["--labels-file", "nowhere.txt"], "nowhere.txt: label file does not exist"),
    (["--labels", "dog", "--window-seconds", "2"], "--window-seconds 2 is longer than the 1 s"),
    (["--labels", "dog", "--hop-seconds", "2"], "--hop-seconds 2 is longer than the 1 s window"),
    (["--labels", "dog", "--out", "x.xlsx"], "--out x.xlsx: name a .csv or .json file"),
    (["--labels", "dog", "--device", "banana"], "--device banana: not a torch device"),
])
def test_bad_input_is_named(clap_hub, recordings, capsys, args, message):
    _, short, _ = recordings
    code, _, err = run(["zeroshot", "--model", TINY_ID, *args, str(short)], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_offline_model_error_says_what_to_fetch(clap_hub, recordings, capsys):
    _, short, _ = recordings
    code, _, err = run(["zeroshot", "--model", "laion/clap-htsat-unfused", "--labels", "dog", str(short)], capsys)
    assert code == 2 and "audio-ssl zeroshot: error: cannot load the CLAP model 'laion/clap-htsat-unfused'" in err
    assert "hf download laion/clap-htsat-unfused --local-dir DIR" in err and "--model DIR" in err


def test_listed_in_the_help(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "zeroshot" in out and "CLAP zero-shot" in out

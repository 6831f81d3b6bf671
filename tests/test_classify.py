"""``audio-ssl classify``: windowed prediction on files of any length/rate/channels, bad files, output formats.

A tiny supervised model is trained for two steps through the Lightning CLI, so the checkpoint is a real one;
the expected probabilities are computed here by slicing the windows by hand and averaging the model's
``predict_proba`` over them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from helpers import exit_code_and_output

from audio_ssl.cli import main as cli_main
from audio_ssl.data import stream as stream_module
from audio_ssl.data.audio import decode_audio
from audio_ssl.data.stream import RESAMPLE_QUALITY
from audio_ssl.evaluation.windows import score_long_audio
from audio_ssl.tools.classify import (
    ClassifierBundle,
    class_names_for,
    classify_file,
    find_audio_files,
    load_classifier,
    main,
)

SR = 16000
NUM_CLASSES = 5  # the esc50_root fixture


@pytest.fixture(scope="module")
def trained(tiny_classifier):
    """(config, checkpoint) of a tiny SupervisedClassifier (TTA with 2 views) fitted for two steps."""
    return tiny_classifier


@pytest.fixture(scope="module")
def bundle(trained):
    config, checkpoint = trained
    return load_classifier(config, checkpoint, "cpu")


def reference_probs(bundle: ClassifierBundle, wave: np.ndarray, starts: list[int], window: int) -> np.ndarray:
    """Mean of predict_proba over the given windows, each sliced (and zero-padded) by hand."""
    views = []
    for s in starts:
        piece = np.zeros(window, np.float32)
        chunk = wave[s : s + window]
        piece[: len(chunk)] = chunk
        views.append(torch.from_numpy(piece))
    with torch.no_grad():
        probs = torch.cat([bundle.model.predict_proba(v[None]) for v in views])  # one window per call
    return probs.mean(0).numpy()


def whole_decode(path: Path) -> np.ndarray:
    """The whole file decoded at once (libsndfile), mixed to mono and resampled in one call of
    ``soxr.resample`` with the streaming resampler's quality: what classify's streamed blocks add up to."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1, dtype=np.float32)
    return mono if rate == SR else soxr.resample(mono, rate, SR, quality=RESAMPLE_QUALITY)


def run_classify(args: list[str], capsys) -> tuple[int, str, str]:
    return exit_code_and_output(main, args, capsys)


def probs_from_row(row: dict) -> np.ndarray:
    probs = np.zeros(NUM_CLASSES)
    for i in range(1, NUM_CLASSES + 1):
        probs[int(row[f"top{i}"])] = float(row[f"top{i}_prob"])
    return probs


def tone(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t * (1 + t)) + 0.05 * rng.standard_normal(len(t))
    return np.stack([mono * (0.5 + c) for c in range(channels)], axis=1).astype(np.float32)


def test_checkpoint_weights_are_loaded(trained, bundle):
    state = torch.load(trained[1], map_location="cpu", weights_only=True)["state_dict"]
    model_state = bundle.model.state_dict()
    assert set(state) == set(model_state)
    for key, value in state.items():
        assert torch.equal(model_state[key], value), key
    assert (bundle.sample_rate, bundle.num_classes, bundle.clip_seconds) == (SR, NUM_CLASSES, 1.0)
    assert not bundle.model.training


def test_long_file_is_mean_of_window_probabilities(trained, bundle, tmp_path, capsys):
    path = tmp_path / "long.wav"
    sf.write(path, tone(3.3, SR), SR, subtype="FLOAT")
    config, checkpoint = trained
    code, out, err = run_classify(["--config", str(config), "--checkpoint", str(checkpoint), str(path),
                                   "--hop-seconds", "0.5", "--timeline"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    clip, windows = rows[0], rows[1:]
    # 1 s windows every 0.5 s over 3.3 s: 0, .5, 1, 1.5, 2 and one aligned to the end at 2.3 s
    starts = [0, 8000, 16000, 24000, 32000, 36800]
    assert clip["segment"] == "clip" and int(clip["windows"]) == len(starts) == len(windows)
    assert [float(w["start"]) for w in windows] == pytest.approx([s / SR for s in starts])
    assert [float(w["end"]) for w in windows] == pytest.approx([s / SR + 1 for s in starts])
    wave = decode_audio(path, SR)
    expected = reference_probs(bundle, wave, starts, SR)
    np.testing.assert_allclose(probs_from_row(clip), expected, atol=1e-5)
    for w, s in zip(windows, starts):
        np.testing.assert_allclose(probs_from_row(w), reference_probs(bundle, wave, [s], SR), atol=1e-5)
    assert float(clip["duration"]) == pytest.approx(3.3)


def test_short_file_is_padded_and_stereo_44k_is_mixed_and_resampled(trained, bundle, tmp_path, capsys):
    short, stereo = tmp_path / "short.flac", tmp_path / "stereo.wav"
    sf.write(short, tone(0.4, SR, seed=1), SR, subtype="PCM_16")
    sf.write(stereo, tone(2.2, 44100, channels=2, seed=2), 44100, subtype="PCM_24")
    config, checkpoint = trained
    code, out, err = run_classify(["--config", str(config), "--checkpoint", str(checkpoint),
                                   str(short), str(stereo), "--format", "json"], capsys)
    assert code == 0, err
    records = {Path(r["file"]).name: r for r in json.loads(out)}
    assert records["short.flac"]["windows"] == 1
    assert records["short.flac"]["duration"] == pytest.approx(0.4)
    expected = reference_probs(bundle, decode_audio(short, SR), [0], SR)  # zero-padded to 1 s
    got = np.zeros(NUM_CLASSES)
    for item in records["short.flac"]["top_k"]:
        got[item["index"]] = item["prob"]
    np.testing.assert_allclose(got, expected, atol=1e-5)

    # 2.2 s at the default hop (0.5 s): windows at 0, .5, 1 and 1.2 s of the mono 16 kHz decode
    rec = records["stereo.wav"]
    assert rec["windows"] == 4 and rec["duration"] == pytest.approx(2.2)
    expected = reference_probs(bundle, whole_decode(stereo), [0, 8000, 16000, 19200], SR)
    # the streaming soxr resampler and decode_audio's whole-file torchaudio resampler differ in the transition band
    close = reference_probs(bundle, decode_audio(stereo, SR), [0, 8000, 16000, 19200], SR)
    np.testing.assert_allclose(expected, close, atol=5e-4)
    got = np.zeros(NUM_CLASSES)
    for item in rec["top_k"]:
        got[item["index"]] = item["prob"]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bad_files_are_reported_and_the_rest_complete(trained, tmp_path, capsys):
    folder = tmp_path / "recordings"
    (folder / "sub").mkdir(parents=True)
    sf.write(folder / "good.wav", tone(1.5, SR), SR)
    sf.write(folder / "sub" / "good2.flac", tone(0.7, 22050), 22050)
    (folder / "garbage.wav").write_bytes(b"this is not a RIFF file at all" * 10)
    sf.write(folder / "cut.wav", tone(1.0, SR), SR, subtype="PCM_16")
    data = (folder / "cut.wav").read_bytes()
    (folder / "cut.wav").write_bytes(data[: len(data) // 2])  # data chunk declares twice what is present
    (folder / "notes.txt").write_text("not audio")
    out_file = tmp_path / "out" / "predictions.csv"
    config, checkpoint = trained
    code, _, err = run_classify(["--config", str(config), "--checkpoint", str(checkpoint), str(folder),
                                 str(tmp_path / "missing.ogg"), "--out", str(out_file)], capsys)
    assert code == 1
    rows = {Path(r["file"]).name: r for r in csv.DictReader(out_file.open())}
    assert set(rows) == {"good.wav", "good2.flac", "garbage.wav", "cut.wav", "missing.ogg"}
    for name in ("garbage.wav", "cut.wav", "missing.ogg"):
        assert rows[name]["error"] and name in rows[name]["error"]
        assert rows[name]["pred"] == ""
        assert name in err
    assert "truncated" in rows["cut.wav"]["error"] and "does not exist" in rows["missing.ogg"]["error"]
    for name in ("good.wav", "good2.flac"):
        assert rows[name]["error"] == "" and rows[name]["pred_name"]
    assert "6 file(s): 2 classified, 3 could not be read, 1 skipped (not audio)" in err
    assert "skipped" in err and "notes.txt" in err


def test_output_shapes(trained, esc50_root, tmp_path, capsys):
    import pandas as pd

    paths = [tmp_path / "a.wav", tmp_path / "b.wav"]
    sf.write(paths[0], tone(2.0, SR), SR)
    sf.write(paths[1], tone(1.0, SR, seed=3), SR)
    config, checkpoint = trained
    base = ["--config", str(config), "--checkpoint", str(checkpoint), *map(str, paths), "--top-k", "3"]

    code, out, _ = run_classify(base + ["--timeline"], capsys)  # windows: a -> 0, .5, 1 s; b -> 0
    rows = list(csv.DictReader(io.StringIO(out)))
    header = ["file", "segment", "start", "end", "duration", "windows", "pred", "pred_name", "confidence",
              "top1", "top1_name", "top1_prob", "top2", "top2_name", "top2_prob", "top3", "top3_name",
              "top3_prob", "error"]
    assert code == 0 and list(rows[0]) == header
    assert [r["segment"] for r in rows] == ["clip", "window", "window", "window", "clip", "window"]
    categories = sorted(pd.read_csv(esc50_root / "meta" / "esc50.csv")["category"].unique())
    assert all(r["pred_name"] in categories and r["pred_name"] == r["top1_name"] for r in rows)
    probs = [float(rows[0][f"top{i}_prob"]) for i in (1, 2, 3)]
    assert probs == sorted(probs, reverse=True) and float(rows[0]["confidence"]) == probs[0]

    out_file = tmp_path / "p.json"  # json from the suffix
    code, _, _ = run_classify(base + ["--labels", "index", "--timeline", "--out", str(out_file)], capsys)
    records = json.loads(out_file.read_text())
    assert code == 0 and len(records) == 2
    keys = {"file", "duration", "windows", "pred", "pred_name", "confidence", "top_k", "error", "timeline"}
    assert set(records[0]) == keys and records[0]["error"] is None
    assert len(records[0]["top_k"]) == 3 and records[0]["pred_name"] == str(records[0]["pred"])
    assert set(records[0]["top_k"][0]) == {"index", "name", "prob"}
    assert [len(r["timeline"]) for r in records] == [3, 1]
    assert [(w["start"], w["end"]) for w in records[0]["timeline"]] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0)]
    assert len(records[0]["timeline"][0]["top_k"]) == 3


def test_label_sources(bundle, esc50_root, tmp_path, monkeypatch):
    import pandas as pd

    categories = pd.read_csv(esc50_root / "meta" / "esc50.csv").drop_duplicates("target").sort_values("target")
    assert class_names_for("dataset", None, bundle) == categories["category"].tolist()
    assert class_names_for("index", None, bundle) == ["0", "1", "2", "3", "4"]
    audioset_csv = tmp_path / "class_labels_indices.csv"  # AudioSet's format
    audioset_csv.write_text("index,mid,display_name\n" + "".join(f'{i},/m/0{i},"Sound, {i}"\n' for i in range(5)))
    monkeypatch.delenv("AUDIO_SSL_AUDIOSET_LABELS", raising=False)
    with pytest.raises(ValueError, match="class_labels_indices.csv"):
        class_names_for("audioset", None, bundle)
    monkeypatch.setenv("AUDIO_SSL_AUDIOSET_LABELS", str(audioset_csv))
    assert class_names_for("audioset", None, bundle) == [f"Sound, {i}" for i in range(5)]
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\nd\ne\n")
    assert class_names_for("dataset", str(names), bundle) == list("abcde")
    names.write_text("one\ntwo\n")
    with pytest.raises(ValueError, match="names 2 classes but the model has 5 outputs"):
        class_names_for("dataset", str(names), bundle)


def test_cli_subcommand_and_softmax_fallback(trained, tmp_path, capsys):
    path = tmp_path / "x.wav"
    sf.write(path, tone(1.0, SR), SR)
    config, checkpoint = trained
    cli_main(["classify", "--config", str(config), "--checkpoint", str(checkpoint), str(path)])
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 1

    class Plain(torch.nn.Module):  # no predict_proba: probabilities are softmax(forward(frontend(audio)))
        sample_rate, num_classes = SR, 3

        def __init__(self):
            super().__init__()
            self.frontend = torch.nn.Linear(10, 4)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.head(x)

    model = Plain()
    scorer = ClassifierBundle(model, type("DM", (), {"clip_seconds": 1.0})(), torch.device("cpu"))
    audio = torch.randn(2, 10)
    torch.testing.assert_close(scorer.score(audio), torch.softmax(model.head(model.frontend(audio)), 1))


def test_folder_search_and_bad_config(trained, tmp_path, capsys):
    (tmp_path / "d" / "e").mkdir(parents=True)
    for name in ("d/b.WAV", "d/e/a.flac", "d/.hidden.wav", "d/readme.md", "d/e/c.ogg"):
        (tmp_path / name).write_bytes(b"x")
    found = find_audio_files([tmp_path / "d", tmp_path / "odd.bin"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["d/b.WAV", "d/e/a.flac", "d/e/c.ogg", "odd.bin"]

    code, _, err = run_classify(["--config", str(tmp_path / "nope.yaml"), "--checkpoint", str(trained[1]),
                                 str(tmp_path)], capsys)
    assert code == 2 and "nope.yaml" in err
    code, _, err = run_classify(["--config", str(trained[0]), "--checkpoint", str(tmp_path / "none.ckpt"),
                                 str(tmp_path)], capsys)
    assert code == 2 and "none.ckpt" in err and "does not exist" in err


@pytest.mark.parametrize(("rate", "channels", "suffix"), [(SR, 1, "wav"), (22050, 2, "flac")])
def test_streamed_classify_equals_the_whole_file_path(bundle, tmp_path, rate, channels, suffix):
    """40 s decoded in 10 s blocks, resampled block by block, windows scored as they complete: the same
    windows and probabilities as scoring the whole decoded waveform at once."""
    path = tmp_path / f"rec.{suffix}"
    sf.write(path, tone(40.0, rate, channels, seed=4), rate)
    names = [str(i) for i in range(NUM_CLASSES)]
    record = classify_file(path, bundle, names, 1.0, 0.5, NUM_CLASSES, batch_size=16)
    mean, per_window, starts = score_long_audio(bundle.score, whole_decode(path), SR, SR // 2, 16)
    assert record["windows"] == len(starts) == 79 and record["duration"] == pytest.approx(40.0)
    np.testing.assert_allclose(record["probs"], mean, atol=1e-5)
    assert [w["start"] for w in record["timeline"]] == pytest.approx((starts / SR).tolist())
    for w, probs in zip(record["timeline"], per_window):
        np.testing.assert_allclose([probs[t["index"]] for t in w["top_k"]], [t["prob"] for t in w["top_k"]],
                                   atol=1e-5)
    lean = classify_file(path, bundle, names, 1.0, 0.5, NUM_CLASSES, timeline=False)
    assert lean["timeline"] is None and np.allclose(lean["probs"], record["probs"], atol=1e-6)


class EnergyModel(torch.nn.Module):
    """A stand-in classifier (3 classes from the windows' mean power), cheap enough for minutes of audio."""

    sample_rate, num_classes = SR, 3

    def predict_proba(self, audio):
        power = audio.pow(2).mean(1, keepdim=True)
        return torch.softmax(torch.cat([power, -power, power * 2], 1), 1)


def test_classify_memory_does_not_grow_with_the_length(tmp_path):
    """4 minutes of 44.1 kHz stereo: peak Python/numpy allocations during classify stay a small multiple of
    one block (10 s at 44.1 kHz stereo = 3.4 MiB), far below the 85 MiB the whole decode would take."""
    import tracemalloc

    path = tmp_path / "four-minutes.wav"
    with sf.SoundFile(path, "w", 44100, 2, subtype="PCM_16") as f:
        for i in range(24):
            f.write(tone(10.0, 44100, channels=2, seed=i))
    scorer = ClassifierBundle(EnergyModel(), type("DM", (), {"clip_seconds": 1.0})(), torch.device("cpu"))
    tracemalloc.start()
    try:
        record = classify_file(path, scorer, ["a", "b", "c"], 1.0, 0.5, 3, timeline=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert record["windows"] == 479 and record["duration"] == pytest.approx(240.0)
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert peak < 240 * 44100 * 2 * 4 / 5


def test_every_file_of_a_folder_is_accounted_for(trained, tmp_path, capsys, monkeypatch):
    """Recordings in the formats people record in are classified next to WAVs (FFmpeg through PyAV, generated
    here with its encoders); other files are named as skipped, hidden ones counted, and a count ends stderr."""
    pytest.importorskip("av")
    from encoded_audio import encode

    folder = tmp_path / "field"
    folder.mkdir()
    audio = tone(2.0, 48000, channels=2, seed=5)
    sf.write(folder / "a.wav", audio, 48000)
    compressed = ["b.m4a", "c.aac", "d.webm", "e.mp3"]
    for name in compressed:
        encode(folder / name, audio, 48000)
    encode(folder / "f.wma", tone(2.0, 44100, channels=2, seed=5), 44100)
    (folder / "notes.txt").write_text("site 4, north fence")
    (folder / ".DS_Store").write_bytes(b"\0")
    config, checkpoint = trained
    args = ["--config", str(config), "--checkpoint", str(checkpoint), str(folder), "--format", "json"]
    code, out, err = run_classify(args, capsys)
    assert code == 0, err
    records = {Path(r["file"]).name: r for r in json.loads(out)}
    assert set(records) == {"a.wav", *compressed, "f.wma"}
    assert all(r["error"] is None and r["duration"] == pytest.approx(2.0, abs=0.1) for r in records.values())
    assert "skipped" in err and "notes.txt: not an audio file (suffix .txt" in err
    assert err.strip().splitlines()[-1] == ("audio-ssl classify: 8 file(s): 6 classified, 0 could not be read, "
                                            "1 skipped (not audio), 1 hidden (ignored)")

    monkeypatch.setattr(stream_module, "ffmpeg_available", lambda: False)  # without PyAV: error rows, what to install
    code, out, err = run_classify(args, capsys)
    records = {Path(r["file"]).name: r for r in json.loads(out)}
    assert code == 1 and set(records) == {"a.wav", *compressed, "f.wma"}
    for name in ("b.m4a", "c.aac", "d.webm", "f.wma"):
        assert name in records[name]["error"] and "pip install 'audio-ssl[formats]'" in records[name]["error"]
        assert f"cannot read {folder / name}" in err
    assert records["a.wav"]["error"] is None and records["e.mp3"]["error"] is None  # libsndfile reads mp3
    assert "6 classified" not in err and "2 classified, 4 could not be read" in err


def test_progress_bar_on_stderr(trained, tmp_path, capsys):
    path = tmp_path / "x.wav"
    sf.write(path, tone(3.0, SR), SR)
    config, checkpoint = trained
    base = ["--config", str(config), "--checkpoint", str(checkpoint), str(path)]
    code, _, err = run_classify(base + ["--progress", "always"], capsys)
    assert code == 0 and "x.wav:" in err and "s of audio" in err
    code, _, err = run_classify(base, capsys)  # auto: only for long recordings on a terminal
    assert code == 0 and "s of audio" not in err


def test_a_file_named_twice_is_scored_once(tmp_path):
    from audio_ssl.tools.classify import scan_paths

    folder = tmp_path / "f"
    folder.mkdir()
    for name in ("a.wav", "b.wav"):
        (folder / name).write_bytes(b"")
    scan = scan_paths([folder / "a.wav", folder, tmp_path])
    assert [p.name for p in scan.audio] == ["a.wav", "b.wav"]


def test_hop_longer_than_the_window_and_unknown_output_format_are_refused(trained, tmp_path, capsys):
    config, checkpoint = trained
    wave = tmp_path / "a.wav"
    sf.write(wave, np.zeros(16000, np.float32), 16000)
    base = ["classify", "--checkpoint", str(checkpoint), str(wave)]
    code, _, err = exit_code_and_output(cli_main, [*base, "--window-seconds", "1", "--hop-seconds", "1.5"], capsys)
    assert code == 2 and "--hop-seconds 1.5 is longer than the 1 s window" in err
    code, _, err = exit_code_and_output(cli_main, [*base, "--out", str(tmp_path / "p.xlsx")], capsys)
    assert code == 2 and "name a .csv or .json file, or give --format csv|json" in err


def test_per_clip_metadata_gives_one_name_per_class_index(esc50_root, tmp_path):
    import pandas as pd

    from audio_ssl.tools.classify import read_label_file

    meta = pd.read_csv(esc50_root / "meta" / "esc50.csv")
    expected = meta.drop_duplicates("target").sort_values("target")["category"].tolist()
    assert read_label_file(esc50_root / "meta" / "esc50.csv") == expected  # one row per clip, ids 0..K-1
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,target,category\na.wav,0,dog\nb.wav,0,cat\n")
    with pytest.raises(ValueError, match="target 0 is named both 'dog' and 'cat'"):
        read_label_file(bad)

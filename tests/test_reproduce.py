"""``audio-ssl reproduce``: the row table is checked before anything runs, the smoke runs every row end to end
(generated data, CPU), a budget stops it between folds or inside a running fold and the next call finishes, a
call over finished rows trains nothing, and the summary puts each random-init control beside its probe."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path

import pytest
from helpers import exit_code
from helpers import tiny_reproduce_rows as tiny_rows

from audio_ssl.tools import reproduce
from audio_ssl.tools.reproduce import BudgetExhausted, deadline, load_rows, seed_table

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"

run_main = functools.partial(exit_code, reproduce.main)  # the exit status of `audio-ssl reproduce ARGV`


# ---------------------------------------------------------------------------------------------- the row table
@pytest.mark.parametrize("row, message", [
    ("{name: a, config: supervised_cpu.yaml, epochs: 3}", r"row 1 \(a\): unknown key\(s\) \['epochs'\]"),
    ("{config: supervised_cpu.yaml}", r"row 1 \(no name\): 'name' must be a plain folder name, got None"),
    ("{name: a, config: supervised_cpu.yaml, tta_views: 1}", r"row 1 \(a\): 'tta_views' must be an integer >= 2, got 1"),
    ("{name: a, config: supervised_cpu.yaml, parallel: 0}", r"row 1 \(a\): 'parallel' must be an integer >= 1, got 0"),
    ("{name: a, config: supervised_cpu.yaml, smoke: {epochs: 1}}", r"row 1 \(a\): smoke: unknown key"),
    ("{name: a, config: supervised_cpu.yaml, smoke: {parallel: 0}}",
     r"row 1 \(a\): 'smoke.parallel' must be an integer >= 1, got 0"),
    ("{name: a, config: [1, 2]}", r"row 1 \(a\): 'config' must be a YAML path or a list of them"),
])
def test_bad_rows_are_named_with_file_row_and_field(tmp_path, row, message):
    path = tmp_path / "rows.yaml"
    path.write_text(f"rows:\n  - {row}\n")
    with pytest.raises(ValueError, match=rf"{path}: {message}"):
        load_rows(path)


def test_duplicate_rows_and_bad_row_configs_are_refused_before_anything_runs(tmp_path, capsys):
    path = tmp_path / "rows.yaml"
    path.write_text("rows:\n  - {name: a, config: x.yaml}\n  - {name: a, config: y.yaml}\n")
    with pytest.raises(ValueError, match=r"row 2 \(a\): the name 'a' is used by an earlier row"):
        load_rows(path)
    for text, message in (
            ("rows:\n  - {name: a, config: missing.yaml}\n", "config file(s)"),
            (f"rows:\n  - {{name: a, config: {EXPERIMENTS / 'simclr_probe.yaml'}, tta_views: 3}}\n",
             "tta_views re-tests a Lightning run; simclr_probe.yaml is a pretrain_probe pipeline"),
            (f"rows:\n  - {{name: a, config: {EXPERIMENTS / 'simclr_probe.yaml'}, "
             "pipeline_set: {transductive: true}}\n", "inductive only"),
            (f"rows:\n  - {{name: a, config: {EXPERIMENTS / 'baseline_mfcc_logreg.yaml'}, set: {{x.y: 1}}}}\n",
             "a baseline row runs no Lightning stage")):
        path.write_text(text)
        assert run_main(["--rows-file", str(path), "--out", str(tmp_path / "out"), "--no-readme"]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and message in err, err
        assert not (tmp_path / "out" / "a").exists()  # nothing written for the row
    assert run_main(["--rows-file", str(path), "--rows", "nope", "--out", str(tmp_path / "out")]) == 2
    assert "unknown row(s) ['nope']" in capsys.readouterr().err


def test_the_shipped_table_states_the_seed_table_in_order():
    rows, smoke = load_rows(reproduce.DEFAULT_ROWS_FILE)
    assert [r.name for r in rows] == ["supervised_resnet34", "simclr", "masked_cnn", "masked_transformer",
                                      "mfcc_logreg"]
    by_name = {r.name: r for r in rows}
    assert by_name["supervised_resnet34"].tta_views == 10 and by_name["supervised_resnet34"].smoke["tta_views"] == 2
    assert [r.name for r in rows if not r.gpu] == ["mfcc_logreg"]
    assert all(r.config[0].parent == EXPERIMENTS for r in rows)
    assert smoke["set"]["trainer.accelerator"] == "cpu"
    # the smoke adds to the row, it never replaces what the row does not name
    sup = by_name["supervised_resnet34"].effective(smoke=True)
    assert sup.set["checkpoint.every_n_epochs"] == 25 and sup.set["model.init_args.freq_mask"] == 8
    # five fold processes per GPU row; in the smoke one row keeps two (the launcher's path), the others one
    assert [r.parallel for r in rows] == [5, 5, 5, 5, 1]
    assert [r.effective(smoke=True).parallel for r in rows] == [2, 1, 1, 1, 1]


# ---------------------------------------------------------------------------------------------- the summary
def test_seed_table_puts_the_control_beside_its_probe():
    acc = {"mean": 0.7, "std": 0.1, "per_fold": {"1": 0.6, "2": 0.8}}
    control = {"mean": 0.25, "std": None, "per_fold": {"1": 0.25}}
    entry = {"row": "simclr", "run": "simclr", "status": "partial", "folds": [1, 2], "num_folds": 5,
             "variants": {
                 "probe_pretrained": {"protocol": "linear probe", "method": "SimCLR", "acc": acc, "inductive": True,
                                      "wall_time_s": 90.0, "device": "cuda",
                                      "random_init_control": {"variant": "probe_random_init", "acc": control}},
                 "probe_random_init": {"protocol": "linear probe", "method": "none", "acc": control,
                                       "inductive": True, "wall_time_s": 6.0, "device": "cuda"}}}
    table = seed_table({"rows": [entry, {"row": "m", "run": "m", "status": "not started", "folds": [],
                                         "variants": {}}]})
    lines = table.splitlines()
    assert lines[2] == ("| simclr | probe_pretrained | linear probe | 70.0 ± 10.0 | 25.0 | 60.0, 80.0 | 2/5 | yes | "
                        "1.5 min | cuda |")
    assert lines[3].startswith("| m | - | - | not started |")
    assert len(lines) == 4  # the control is a column, not a line of its own
    assert reproduce.control_of("probe_pretrained", entry["variants"]) == "probe_random_init"
    assert reproduce.control_of("pretrained", {"random_init": {}}) == "random_init"
    assert reproduce.control_of("default", {"default": {}}) is None


def test_deadline_stops_running_python_code_and_restores_the_handler():
    import signal

    before = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    with pytest.raises(BudgetExhausted), deadline(0.2):
        while time.monotonic() - start < 5:
            sum(range(1000))
    assert time.monotonic() - start < 4
    assert signal.getsignal(signal.SIGALRM) == before
    with deadline(math.inf):  # no budget: no alarm
        pass


# ---------------------------------------------------------------------------------------------- end to end
def test_smoke_budget_resume_and_summary(tmp_path, monkeypatch, capsys):
    """Four calls of `audio-ssl reproduce --smoke` on one output folder: (1) a budget that runs out after the first
    fold stops between folds (exit 3); (2) a budget that runs out inside a fold stops it there and (3) the next
    call runs it again; (3) without a
    budget every row finishes, the summary holds every fold and the random-init control of the probe, the
    README in the working directory is untouched; (4) a call over finished rows trains and writes no fold."""
    from audio_ssl.evaluation import run_store, runner

    monkeypatch.chdir(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:seed -->\nold\n<!-- /results:seed -->\n")
    rows, out = tiny_rows(tmp_path), tmp_path / "out"
    argv = ["--smoke", "--rows-file", str(rows), "--out", str(out)]

    # (1) stop between folds: the budget is spent once fold 1 of the first row has finished
    real_run_cv, spent = runner.run_cv, {"value": False}

    def run_cv_then_spend(*args, **kwargs):
        summary = real_run_cv(*args, **kwargs)
        spent["value"] = True
        return summary

    monkeypatch.setattr(runner, "run_cv", run_cv_then_spend)
    monkeypatch.setattr(reproduce.Clock, "left", lambda self: 0.0 if spent["value"] else 1e6)
    assert run_main(argv) == reproduce.EXIT_BUDGET
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    summary = json.loads((out / reproduce.SUMMARY_JSON).read_text())
    assert summary["invocation"]["stopped_by_budget"] and "before fold(s) [2]" in summary["invocation"]["stopped_in"]
    status = {e["run"]: (e["status"], e["folds"]) for e in summary["rows"]}
    assert status == {"sup": ("partial", [1]), "sup_tta2": ("not started", []),
                      "simclr_probe": ("not started", []), "mfcc": ("not started", [])}
    assert sorted(run_store.finished_folds(out / "sup")) == [1]

    # (2) 0.3 s left when fold 2 starts: the alarm stops the running fold; nothing half-written, nothing recorded
    monkeypatch.setattr(reproduce.Clock, "left", lambda self: 0.3)
    assert run_main(argv) == reproduce.EXIT_BUDGET
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    summary = json.loads((out / reproduce.SUMMARY_JSON).read_text())
    assert summary["invocation"]["stopped_in"].startswith("sup: the time budget ran out")
    assert (out / "sup" / "fold2").is_dir() and sorted(run_store.finished_folds(out / "sup")) == [1]
    assert not [p for p in out.rglob("*.tmp")]

    # (3) no budget: every row finishes
    assert run_main(argv) == 0
    assert readme.read_text() == "<!-- results:seed -->\nold\n<!-- /results:seed -->\n"  # smoke: never the README
    summary = json.loads((out / reproduce.SUMMARY_JSON).read_text())
    entries = {e["run"]: e for e in summary["rows"]}
    assert list(entries) == ["sup", "sup_tta2", "simclr_probe", "mfcc"]
    assert all(e["status"] == "complete" and e["folds"] == [1, 2, 3, 4, 5] for e in entries.values())
    probe = entries["simclr_probe"]["variants"]
    on_disk = json.loads((out / "simclr_probe" / "summary.json").read_text())["variants"]
    assert probe["pretrained"]["random_init_control"]["variant"] == "random_init"
    control = probe["pretrained"]["random_init_control"]["acc"]
    assert control["mean"] == on_disk["random_init"]["metrics"]["acc"]["mean"]
    assert control["per_fold"] == on_disk["random_init"]["metrics"]["acc"]["per_fold"]
    assert probe["pretrained"]["acc"]["per_fold"] == on_disk["pretrained"]["metrics"]["acc"]["per_fold"]
    assert all(v["inductive"] for e in entries.values() for v in e["variants"].values())
    stall = entries["sup"]["variants"]["default"]["data_stall_fraction"]  # DataStallMonitor, via the fold details
    assert sorted(stall) == ["1", "2", "3", "4", "5"] and all(0 <= x <= 1 for x in stall.values())
    tta = json.loads((out / "sup_tta2" / "summary.json").read_text())
    assert all(d["tta_views"] == 2 and d["tta"] == "augment" and d["tta_seed"] == 0
               for d in tta["variants"]["default"]["details"].values())
    assert "2-view augmented TTA" in tta["variants"]["default"]["protocol"]
    table = (out / reproduce.SUMMARY_MD).read_text()
    assert "| simclr_probe | pretrained |" in table and "| simclr_probe | random_init |" not in table
    assert "| mfcc | mfcc_logreg |" in table and (out / "sup" / "analysis").is_dir()

    # (4) a call over finished rows: no training, no fold written (summaries and analyses are rewritten)
    import lightning.pytorch as pl

    def refuse(*args, **kwargs):
        raise AssertionError("a finished row was trained or written again")

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    monkeypatch.setattr(pl.Trainer, "fit", refuse)
    monkeypatch.setattr(run_store, "save_fold_result", refuse)
    assert run_main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)

    # (5) the same final weights re-tested with circular shifts by the command-line re-test (benchmarks/gpu/tta_eval.py)
    import importlib.util

    spec = importlib.util.spec_from_file_location("tta_eval", ROOT / "benchmarks" / "gpu" / "tta_eval.py")
    tta_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tta_eval)
    assert tta_eval.main(["--run-dir", str(out / "sup"), "--tta-views", "3", "--tta", "shift", "--folds", "1"]) == 0
    shift = json.loads((out / "sup_tta3_shift" / "summary.json").read_text())["variants"]["default"]
    assert shift["details"]["1"]["tta"] == "shift" and "3-view circular-shift TTA" in shift["protocol"]
    for bad in (["--tta-seed", "-1"], ["--folds", "7"]):  # one-line argparse errors, not a traceback or "not finished"
        with pytest.raises(SystemExit):
            tta_eval.main(["--run-dir", str(out / "sup"), "--tta-views", "3", *bad])
    assert "folds [7]: " in capsys.readouterr().err


def test_shipped_table_smoke_runs_every_row(tmp_path, monkeypatch):
    """`audio-ssl reproduce --smoke` with experiments/reproduce.yaml: every row, every fold, a random-init control
    beside every pretrained probe and fine-tune."""
    rows, _ = load_rows(reproduce.DEFAULT_ROWS_FILE)
    missing = [str(p.relative_to(ROOT)) for r in rows for p in r.config if not p.is_file()]
    if missing:
        pytest.skip(f"row configs not in this checkout yet: {missing}")
    monkeypatch.chdir(tmp_path)
    assert run_main(["--smoke", "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / reproduce.SUMMARY_JSON).read_text())
    assert all(e["status"] == "complete" for e in summary["rows"])
    pretrained = [v for e in summary["rows"] for name, v in e["variants"].items() if "pretrained" in name.split("_")]
    assert pretrained and all("random_init_control" in v for v in pretrained)


def test_row_summary_collects_data_stall_and_the_control_from_the_run_files(tmp_path):
    """The reproduce summary reads each run's summary.json: the fold accuracies as written, the control of a
    pretrained variant, the data-stall fraction of the folds that recorded one (and no key when none did)."""
    def variant(accs, details):
        return {"method": "m", "protocol": "p", "encoder": "e", "transductive": False, "epochs": 1, "device": "cuda",
                "metrics": {"acc": {"mean": sum(accs) / len(accs), "std": None,
                                    "per_fold": {str(i + 1): a for i, a in enumerate(accs)}}},
                "wall_time_s": {"total": 12.0}, "details": details}

    run = tmp_path / "ssl"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({
        "folds": [1, 2], "num_folds": 5, "complete": False, "device": "cuda: H200", "wall_time_s": {"total": 30.0},
        "variants": {"finetune_pretrained": variant([0.5, 0.7], {"1": {"data_stall_fraction": 0.25}, "2": {}}),
                     "finetune_random_init": variant([0.25, 0.5], {"1": {}, "2": {}})}}))
    row = reproduce.Row(name="ssl", config=[tmp_path / "x.yaml"], set={}, pipeline_set={})
    (entry,) = reproduce.row_summary(row, tmp_path)
    assert entry["status"] == "partial" and entry["folds"] == [1, 2]
    pretrained = entry["variants"]["finetune_pretrained"]
    assert pretrained["acc"]["per_fold"] == {"1": 0.5, "2": 0.7} and pretrained["acc"]["mean"] == 0.6
    assert pretrained["random_init_control"] == {"variant": "finetune_random_init",
                                                 "acc": {"mean": 0.375, "std": None, "per_fold": {"1": 0.25, "2": 0.5}}}
    assert pretrained["data_stall_fraction"] == {"1": 0.25}
    assert "data_stall_fraction" not in entry["variants"]["finetune_random_init"]
    (missing,) = reproduce.row_summary(dataclasses.replace(row, name="none"), tmp_path)
    assert missing["status"] == "not started" and missing["variants"] == {}



def test_the_readme_section_is_written_from_the_summary(tmp_path):
    """A real (not smoke) run writes the seed table between its README markers, and benchmarks/readme_tables.py
    renders the same table from a committed reproduce_summary.json; a README without the markers is named."""
    summary = {"rows": [{"row": "m", "run": "m", "status": "not started", "folds": [], "variants": {}}]}
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- results:seed -->\nold\n<!-- /results:seed -->\nend\n")
    reproduce.write_readme(readme, summary)
    assert readme.read_text() == f"top\n<!-- results:seed -->\n{seed_table(summary)}<!-- /results:seed -->\nend\n"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import readme_tables
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    before = readme.read_text()
    readme.write_text(before.replace(seed_table(summary), "stale\n"))
    readme_tables.main(["seed", str(tmp_path / "summary.json"), "--readme", str(readme)])
    assert readme.read_text() == before
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match=rf"{readme}: needs exactly one '<!-- results:seed -->'"):
        reproduce.write_readme(readme, summary)


def test_a_bad_smoke_data_block_is_named(tmp_path, capsys):
    path = tmp_path / "rows.yaml"
    path.write_text(f"smoke: {{data: {{classes: 3}}}}\nrows:\n  - {{name: a, config: {EXPERIMENTS / 'supervised_cpu.yaml'}}}\n")
    assert run_main(["--smoke", "--rows-file", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: smoke.data {{'classes': 3}}" in err and "classes" in err

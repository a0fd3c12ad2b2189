"""The contract for bad input, probed as a hostile but realistic user would: one line, a non-zero
exit, no traceback, the store unchanged, and nothing already written lost or served wrong."""

import fractions
import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sgtool.cli import app
from sgtool.cli.app import error
from tests.conftest import exited_cleanly
from tests.text_fixtures import sorted_movies

runner = CliRunner()
TINY = ["--dataset", "synthetic", "--model", "mlp", "--train-size", "64", "--test-size", "32", "--epochs", "1"]


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def snapshot(root: Path) -> dict:
    """Every file under root and its bytes: what "the store unchanged" compares."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def one_line_failure(r, code=None) -> bool:
    """A non-zero exit (or the given one), no uncaught exception, and one line on stderr."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    return (r.exit_code != 0 if code is None else r.exit_code == code) and exited_cleanly(r) and len(lines) == 1


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with one tiny trained run, evaluated by mask-eval and attack."""
    root = tmp_path_factory.mktemp("store") / "runs"
    assert invoke("train", *TINY, "--runs-dir", root).exit_code == 0
    (run_id,) = [p.name for p in root.iterdir()]
    for cmd in (["mask-eval", run_id, "--method", "grad,random", "--limit", "16"],
                ["attack", run_id, "--method", "fgsm", "--eps", "0.1", "--limit", "16"]):
        assert invoke(*cmd, "--runs-dir", root).exit_code == 0
    return root, run_id


@pytest.fixture
def runs(store, tmp_path):
    """A copy of the store for one test to change."""
    root, run_id = store
    shutil.copytree(root, tmp_path / "runs")
    return tmp_path / "runs", run_id


# --------------------------------------------------------------------------- 1. wrong results


def _entry(root, run_id, kind):
    (json_path,) = (root / run_id / kind).glob("*.json")
    return json_path.with_suffix("")


@pytest.mark.parametrize("kind, suffix, cut", [
    ("mask_eval", ".csv", "line"), ("mask_eval", ".csv", "empty"), ("mask_eval", ".summary.csv", "line"),
    ("mask_eval", ".csv", "mid"), ("mask_eval", ".summary.csv", "mid"), ("attack", ".csv", "line"),
    ("attack", ".csv", "mid"), ("attack", ".json", "mid"),
])
def test_a_damaged_cache_entry_is_recomputed_not_served(runs, kind, suffix, cut):
    root, run_id = runs
    base = _entry(root, run_id, kind)
    cmd = {"mask_eval": ["mask-eval", run_id, "--method", "grad,random", "--limit", "16"],
           "attack": ["attack", run_id, "--method", "fgsm", "--eps", "0.1", "--limit", "16"]}[kind]
    good = invoke(*cmd, "--runs-dir", root).stdout
    assert "(cached)" in good
    path = Path(f"{base}{suffix}")
    text = path.read_bytes()
    lines = text.splitlines(keepends=True)
    path.write_bytes({"line": b"".join(lines[:-1]), "empty": b"", "mid": text[: len(text) - 7]}[cut])
    again = invoke(*cmd, "--runs-dir", root)
    assert again.exit_code == 0 and "(cached)" not in again.stdout, again.stdout
    assert again.stdout.replace(" (cached)", "").replace("cached:", "written:") == good.replace(
        " (cached)", "").replace("cached:", "written:")
    if suffix == ".json":  # written whole again, at a new time
        assert {**json.loads(path.read_bytes()), "created": None} == {**json.loads(text), "created": None}
    else:
        assert path.read_bytes() == text  # written whole again


def test_a_damaged_entry_written_before_entries_recorded_their_files_is_recomputed(runs):
    """An entry whose JSON lists no files (as they were written before) is checked by its tables'
    shape: a CSV cut at a line end has too few rows."""
    root, run_id = runs
    base = _entry(root, run_id, "mask_eval")
    meta = json.loads(Path(f"{base}.json").read_text())
    del meta["files"]
    Path(f"{base}.json").write_text(json.dumps(meta))
    cmd = ["mask-eval", run_id, "--method", "grad,random", "--limit", "16", "--runs-dir", root]
    assert "(cached)" in invoke(*cmd).stdout  # whole: still served
    csv = Path(f"{base}.csv")
    csv.write_bytes(b"".join(csv.read_bytes().splitlines(keepends=True)[:-1]))
    assert "(cached)" not in invoke(*cmd).stdout


def test_report_skips_a_damaged_entry_with_one_warning(runs):
    root, run_id = runs
    base = _entry(root, run_id, "mask_eval")
    Path(f"{base}.csv").write_text("run,method\n")
    r = invoke("report", "--runs-dir", root)
    assert r.exit_code == 0 and exited_cleanly(r), r.output
    assert [ln for ln in r.stderr.splitlines() if "warning" in ln] == [
        f"warning: run {run_id}: mask-eval {base.name} is corrupt or incomplete; skipped"]


@pytest.mark.parametrize("args, fragment", [
    (["--trainer", "sgt", "--kl-weight", "nan"], "--kl-weight must be non-negative, got nan"),
    (["--trainer", "sgt", "--kl-weight", "inf"], "--kl-weight must be non-negative, got inf"),
    (["--lr", "inf"], "--lr must be positive and at most 100, got inf"),
    (["--lr", "1e308"], "--lr must be positive and at most 100"),
    (["--seed", "-1"], "--seed must be between 0 and 2**31 - 1, got -1"),
    (["--seed", str(2**63)], "--seed must be between 0 and 2**31 - 1"),
    (["--dataset", "[/]"], "unknown dataset '[/]'"),
    (["--optimizer", "[/bold]"], "unknown optimizer '[/bold]'"),
    (["--dataset", "synthetic-text", "--max-len", "1"], "synthetic-text does not take --max-len"),
    (["--dataset", "mnist", "--data-version", "1"], "mnist does not take --data-version"),
    (["--width", "8"], "model mlp does not take --width"),
])
def test_bad_values_are_refused_at_the_flag(tmp_path, args, fragment):
    r = invoke("train", *TINY, *args, "--runs-dir", tmp_path / "runs")
    assert one_line_failure(r, 2), r.output
    assert fragment in r.stderr
    assert not (tmp_path / "runs").exists()


def test_a_training_that_diverges_fails_keeping_its_last_finished_epoch(tmp_path):
    args = ["--dataset", "synthetic", "--model", "tests.toys:nan_in_epoch_two", "--trainer", "standard",
            "--train-size", "32", "--batch-size", "32", "--test-size", "16", "--epochs", "3"]
    r = invoke("train", *args, "--runs-dir", tmp_path)
    assert one_line_failure(r, 1), r.output
    assert "the training loss became nan at epoch 2, batch 1" in r.stderr
    (run,) = tmp_path.iterdir()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "epoch 2, batch 1" in info["error"]
    assert not (run / "model.safetensors").exists()
    assert json.loads((run / "checkpoint.json").read_text())["epoch"] == 1
    assert [r["epoch"] for r in __import__("csv").DictReader(open(run / "metrics.csv"))] == ["1"]


@pytest.mark.parametrize("factory, fragment", [
    ("tests.toys:wrong_logits", "returns (2, 14) for a batch of 2, not (batch, 10) logits"),
    ("tests.toys:exits", "the factory failed (SystemExit: 0)"),
])
def test_a_factory_that_misbehaves_is_one_line_before_anything_is_written(tmp_path, factory, fragment):
    r = invoke("train", *TINY[:2], "--model", factory, *TINY[4:], "--runs-dir", tmp_path / "runs")
    assert one_line_failure(r), r.output
    assert fragment in r.stderr and not (tmp_path / "runs").exists()


def test_an_option_the_trainer_does_not_use_is_not_stored(tmp_path):
    r = invoke("train", *TINY, "--trainer", "sgt", "--adv-eps", "5", "--runs-dir", tmp_path)
    assert r.exit_code == 0, r.output
    (run,) = tmp_path.iterdir()
    assert "adv_eps: null" in (run / "config.yaml").read_text()


# --------------------------------------------------------------------------- 2. files


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00binary", "epochs: 1\n".encode("utf-16"),
                                     b"epochs: \xff\xfe 1\n"])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_config_that_is_not_utf8_text_is_one_line(tmp_path, content, command):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    args = ["train", "--config", bad] if command == "train" else ["sweep", bad, "--dry-run"]
    r = invoke(*args, "--runs-dir", tmp_path / "runs")
    assert one_line_failure(r, 2), r.output
    assert f"{bad}: not a" in r.stderr


@pytest.mark.parametrize("make, fragment", [
    (lambda p: np.savez(p, x_train=np.array([["a", "b"]] * 4), y_train=np.zeros(4), x_test=np.zeros((2, 2)),
                        y_test=np.zeros(2)), "'x_train' is not an array of numbers"),
    (lambda p: np.savez(p, x_train=np.zeros((0, 3, 4)), y_train=np.zeros(0), x_test=np.zeros((2, 3, 4)),
                        y_test=np.zeros(2)), "has no training samples"),
    (lambda p: torch.save({"x_train": torch.zeros(4, 3, 4), "y_train": ["a"] * 4, "x_test": torch.zeros(2, 3, 4),
                           "y_test": torch.zeros(2)}, p), "'y_train' is not an array of numbers"),
    (lambda p: torch.save({"x_train": torch.zeros(4, 3, 4, dtype=torch.complex64), "y_train": torch.zeros(4),
                           "x_test": torch.zeros(2, 3, 4), "y_test": torch.zeros(2)}, p), "holds complex numbers"),
    (lambda p: torch.save({"x_train": torch.zeros(4, 3), "y_train": [0, 1, 0, 1], "x_test": torch.zeros(2, 3),
                           "y_test": [0, 1], "note": fractions.Fraction(1, 2)}, p),
     "holds Python objects, and sgtool never unpickles"),
])
def test_own_data_files_that_cannot_be_trained_on_are_one_line(tmp_path, make, fragment):
    path = tmp_path / ("d.pt" if "torch" in make.__code__.co_names else "d.npz")
    make(path)
    r = invoke("train", "--dataset", f"{path.suffix[1:]}:{path}", "--epochs", "1", "--runs-dir", tmp_path / "runs")
    assert one_line_failure(r), r.output
    assert fragment in r.stderr and not (tmp_path / "runs").exists()


def test_a_one_class_subset_of_a_sorted_file_warns_and_evaluates(tmp_path):
    """ERASER's files are sorted by class (Movies: the first 800 training reviews are negative).
    With --subset first, 4 training and 3 test documents are all negative: the run warns, and
    mask-eval still works (the classes are the dataset's, not the subset's); the ERASER default,
    stratified, takes both classes."""
    data = sorted_movies(tmp_path)
    base = ["--dataset", "eraser-movies", "--data-dir", data, "--width", "4", "--epochs", "1", "--train-size", "4",
            "--test-size", "3", "--trainer", "standard", "--runs-dir", tmp_path / "runs"]
    first = invoke("train", *base, "--subset", "first")
    assert first.exit_code == 0, first.output
    assert "the training split holds 1 of the dataset's 2 classes" in first.stderr
    run_id = next(p.name for p in (tmp_path / "runs").iterdir())
    ev = invoke("mask-eval", run_id, "--method", "grad", "--random-seeds", "1", "--data-dir", data, "--runs-dir",
                tmp_path / "runs")
    assert ev.exit_code == 0 and exited_cleanly(ev), ev.output
    assert "the test split holds 1 of the dataset's 2 classes" in ev.stderr
    strat = invoke("train", *base)
    assert strat.exit_code == 0 and "classes" not in strat.stderr, strat.output
    assert len(list((tmp_path / "runs").iterdir())) == 2  # the subset mode is part of the run's id


def _ts(path: Path, dims: int, rows: list[str]):
    path.write_text(f"@problemName x\n@dimensions {dims}\n@classLabel true a b\n@data\n" + "\n".join(rows) + "\n")


def test_uea_files_that_do_not_fit_are_one_line(tmp_path):
    d = tmp_path / "uea" / "Toy"
    d.mkdir(parents=True)
    _ts(d / "Toy_TRAIN.ts", 2, ["1,2,3:4,5,6:a", "1,2,3:4,5,6:b"])
    r = invoke("train", "--dataset", "uea:Toy", "--data-dir", tmp_path, "--runs-dir", tmp_path / "runs")
    assert one_line_failure(r) and "missing file Toy_TEST.ts" in r.stderr, r.output
    _ts(d / "Toy_TEST.ts", 3, ["1,2:3,4:5,6:a"])
    r = invoke("train", "--dataset", "uea:Toy", "--model", "tcn", "--data-dir", tmp_path, "--runs-dir",
               tmp_path / "runs")
    assert one_line_failure(r) and "Toy_TEST.ts has 3 dimensions, Toy_TRAIN.ts has 2" in r.stderr, r.output
    _ts(d / "Toy_TEST.ts", 2, ["1,2,3:4,5,6:a", "1,2,3:4,5,6:b"])
    _ts(d / "Toy_TRAIN.ts", 2, ["1,NaN,3:4,5,6:a", "1,2,3:4,5,6:b"])
    r = invoke("train", "--dataset", "uea:Toy", "--model", "tcn", "--data-dir", tmp_path, "--runs-dir",
               tmp_path / "runs")
    assert one_line_failure(r) and "Toy_TRAIN.ts, line 5: a value is NaN" in r.stderr, r.output
    assert not (tmp_path / "runs").exists()


def test_word_vectors_that_are_not_finite_are_one_line(tmp_path):
    from tests.text_fixtures import movies_like

    movies_like(tmp_path)
    glove = tmp_path / "g.txt.gz"
    with gzip.open(glove, "wt") as f:
        f.write("the 0.1 0.2\ngood nan 0.3\n")
    r = invoke("train", "--dataset", "eraser-movies", "--data-dir", tmp_path, "--embeddings", glove, "--epochs", "1",
               "--runs-dir", tmp_path / "runs")
    assert one_line_failure(r) and f"embeddings file {glove}, line 2: a value is NaN or infinite" in r.stderr


def test_rich_markup_in_names_is_shown_as_it_is(runs, capsys):
    root, run_id = runs
    r = invoke("mask-eval", "[/x]", "--runs-dir", root)
    assert one_line_failure(r) and "no run '[/x]'" in r.stderr
    weird = root.parent / "da[/y]ta.npz"
    r = invoke("train", "--dataset", f"npz:{weird}", "--runs-dir", root)
    assert one_line_failure(r) and f"dataset file {weird} not found" in r.stderr
    error("install it: pip install 'sgtool[cluster]'")
    assert "pip install 'sgtool[cluster]'" in capsys.readouterr().err


# --------------------------------------------------------------------------- 3. messages


def test_a_run_whose_config_is_garbage_is_one_line_naming_it(runs, tmp_path):
    root, run_id = runs
    (root / run_id / "config.yaml").write_text("dataset: [synthetic\n  : :\n")
    for cmd in (["mask-eval", run_id], ["attack", run_id], ["explain", run_id, "--out", tmp_path / "e.png"],
                ["unlock", run_id]):
        r = invoke(*cmd, "--runs-dir", root)
        assert one_line_failure(r) and f"run {run_id} is corrupt or half-written (config.yaml is not YAML)" in r.stderr
    r = invoke("report", "--runs-dir", root)
    assert r.exit_code != 0 and exited_cleanly(r)
    assert len(r.stderr.splitlines()) == 2 and f"run {run_id} is corrupt" in r.stderr  # the warning and the error


def test_train_on_a_damaged_run_says_so_and_force_retrains(runs):
    root, run_id = runs
    cfg = (root / run_id / "config.yaml").read_text()
    model = root / run_id / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-50])
    r = invoke("train", *TINY, "--runs-dir", root)
    assert one_line_failure(r, 1) and f"run {run_id} is damaged (its model.safetensors does not read)" in r.stderr
    assert invoke("train", *TINY, "--force", "--runs-dir", root).exit_code == 0
    (root / run_id / "config.yaml").write_text("[")
    r = invoke("train", *TINY, "--runs-dir", root)
    assert one_line_failure(r, 1) and "its config.yaml does not read" in r.stderr
    (root / run_id / "config.yaml").write_text(cfg)


def test_paths_that_are_directories_or_cross_files_say_so(runs, tmp_path):
    root, run_id = runs
    r = invoke("train", "--config", tmp_path, "--runs-dir", root)
    assert one_line_failure(r, 2) and f"config file {tmp_path} is a directory" in r.stderr
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = invoke("explain", run_id, "--out", afile / "x.png", "--runs-dir", root)
    assert one_line_failure(r) and f"{afile} is a file, not a directory" in r.stderr
    r = invoke("report", "--format", "html", "--out", afile, "--runs-dir", root)
    assert one_line_failure(r) and f"{afile} is a file, not a directory" in r.stderr


def test_a_cache_hit_says_cached(runs):
    root, run_id = runs
    r = invoke("mask-eval", run_id, "--method", "grad,random", "--limit", "16", "--runs-dir", root)
    assert "cached: " in r.stdout and "written: " not in r.stdout


def test_an_unknown_dataset_folds_the_families_and_suggests_the_closest(tmp_path):
    r = invoke("train", "--dataset", "tsb-middel-box", "--runs-dir", tmp_path)
    assert one_line_failure(r, 2) and len(r.stderr) < 800
    assert "did you mean tsb-middle-box" in r.stderr and "tsb-TYPE-BACKGROUND (TYPE: middle" in r.stderr


# --------------------------------------------------------------------------- 4. traps


def test_a_failed_load_creates_nothing(tmp_path):
    r = invoke("train", "--dataset", "mnist", "--data-dir", tmp_path / "nosuchdir", "--runs-dir", tmp_path / "runs")
    assert one_line_failure(r, 1)
    (tmp_path / "data").mkdir()
    r = invoke("train", "--dataset", "uea:NoSuchSet", "--data-dir", tmp_path / "data", "--runs-dir", tmp_path / "runs")
    assert one_line_failure(r, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"] and not any((tmp_path / "data").iterdir())


def test_a_relative_file_path_is_stored_absolute_and_found_from_anywhere(tmp_path, monkeypatch):
    np.savez(tmp_path / "d.npz", x_train=np.random.rand(16, 3, 4), y_train=np.arange(16) % 2,
             x_test=np.random.rand(8, 3, 4), y_test=np.arange(8) % 2)
    monkeypatch.chdir(tmp_path)
    r = invoke("train", "--dataset", "npz:d.npz", "--epochs", "1", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    (run,) = (tmp_path / "runs").iterdir()
    assert f"dataset: npz:{tmp_path / 'd.npz'}" in (run / "config.yaml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = invoke("mask-eval", run.name, "--method", "grad", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_yaml_key_given_twice_is_refused(tmp_path, command):
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 1\nepochs: 2\n" if command == "train" else "a:\n  train: {seed: 1}\na:\n  train: {seed: 2}\n")
    args = ["train", "--config", y] if command == "train" else ["sweep", y, "--dry-run"]
    r = invoke(*args, "--runs-dir", tmp_path / "runs")
    assert one_line_failure(r, 2) and "given twice" in r.stderr


def test_the_cli_prints_no_progress_when_not_on_a_terminal(tmp_path):
    r = invoke("train", *TINY, "--runs-dir", tmp_path)
    assert r.exit_code == 0 and r.stderr == ""
    assert os.environ.get("COLUMNS")  # conftest's width, so the checks above see whole lines

"""`sgtool train` and `sgtool runs` through typer's CliRunner: results, and one-line errors."""

import os

import pytest
from typer.testing import CliRunner

from sgtool.cli import app
from tests.conftest import exited_cleanly

runner = CliRunner()
TINY = ["--model", "mlp", "--train-size", "128", "--test-size", "32", "--epochs", "1"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def store_snapshot(root):
    return sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*")) if root.exists() else []


def test_train_then_already_trained_then_runs(tmp_path):
    r = invoke("train", *TINY, "--runs-dir", tmp_path)
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output
    (run_id,) = [p.name for p in tmp_path.iterdir()]
    assert run_id in r.output and len(run_id) == 12
    again = invoke("train", *TINY, "--runs-dir", tmp_path)
    assert again.exit_code == 0 and f"already trained: {run_id}" in again.output
    listing = invoke("runs", "--runs-dir", tmp_path)
    assert listing.exit_code == 0 and run_id[:6] in listing.output and "completed" in listing.output


def test_config_file_and_flag_precedence(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("trainer: standard\nepochs: 5\nmodel: mlp\ntrain-size: 64\ntest-size: 16\n")
    r = invoke("train", "--config", y, "--epochs", "1", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    cfg = next((tmp_path / "runs").iterdir()) / "config.yaml"
    text = cfg.read_text()
    assert "epochs: 1" in text and "trainer: standard" in text


@pytest.mark.parametrize("args, code, fragment", [
    (["--dataset", "imagenet"], 2, "unknown dataset 'imagenet'; choose from: cifar10, "),
    (["--model", "vgg"], 2, "unknown model 'vgg'; choose from: "),
    (["--trainer", "magic"], 2, "unknown trainer 'magic'"),
    (["--optimizer", "lion"], 2, "unknown optimizer 'lion'"),
    (["--mask-frac", "1.5"], 2, "--mask-frac must be in [0, 1)"),
    (["--mask-frac", "0.0001"], 2, "masks 0 of 784 features"),
    (["--epochs", "0"], 2, "--epochs must be at least 1"),
    (["--dataset", "mnist", "--data-dir", "{tmp}/nodata"], 1, "missing file train-images-idx3-ubyte.gz"),
])
def test_bad_input_one_line_no_traceback_store_unchanged(tmp_path, args, code, fragment):
    (tmp_path / "runs").mkdir()
    before = store_snapshot(tmp_path / "runs")
    r = invoke("train", *[a.replace("{tmp}", str(tmp_path)) for a in args], "--runs-dir", tmp_path / "runs")
    assert r.exit_code == code, r.output
    assert fragment in " ".join(r.output.split())
    assert exited_cleanly(r), r.exception
    assert store_snapshot(tmp_path / "runs") == before


def test_missing_data_creates_no_runs_dir_and_draws_no_bar(tmp_path):
    r = invoke("train", "--dataset", "mnist", "--data-dir", tmp_path / "nodata", "--runs-dir", tmp_path / "a" / "runs")
    assert r.exit_code == 1 and "missing file" in r.output
    assert not (tmp_path / "a").exists()
    assert "0/?" not in r.output  # the progress bar starts with the first training step


def test_malformed_yaml_and_unknown_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    r = invoke("train", "--config", bad, "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 2 and "malformed YAML" in r.output and not (tmp_path / "runs").exists()
    unk = tmp_path / "unk.yaml"
    unk.write_text("learning_rate: 0.1\n")
    r = invoke("train", "--config", unk, "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 2 and "unknown key 'learning_rate'" in r.output


def test_corrupt_idx_file(tmp_path):
    from tests.test_data import fake_mnist

    fake_mnist(tmp_path / "data" / "mnist")
    (tmp_path / "data" / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    r = invoke("train", "--dataset", "mnist", "--data-dir", tmp_path / "data", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 1 and "corrupt IDX file" in r.output
    assert not any((tmp_path / "runs").rglob("*.safetensors"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_runs_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r = invoke("train", *TINY, "--runs-dir", ro / "runs")
    assert r.exit_code == 1 and "cannot write runs dir" in r.output


@pytest.mark.parametrize("exists", [True, False])
def test_unwritable_runs_dir_as_any_user(tmp_path, monkeypatch, exists):
    """The same two refusals with the permission check faked, so they run as root too: an
    existing dir where no file can be created, and a new one whose parent is not writable."""
    import sgtool.store as store

    runs = tmp_path / "runs"
    if exists:
        runs.mkdir()

        def no_file(*a, **k):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(store.tempfile, "mkstemp", no_file)
    else:
        monkeypatch.setattr(store.os, "access", lambda *a: False)
    r = invoke("train", *TINY, "--runs-dir", runs)
    assert r.exit_code == 1 and "cannot write runs dir" in r.output
    assert ("Permission denied" if exists else "is not writable") in r.output
    assert (list(runs.iterdir()) == []) if exists else not runs.exists()


def test_runs_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("not a dir")
    r = invoke("train", *TINY, "--runs-dir", f)
    assert r.exit_code == 1 and "cannot write runs dir" in r.output
    assert f.read_text() == "not a dir"


def test_runs_on_empty_store(tmp_path):
    r = invoke("runs", "--runs-dir", tmp_path / "none")
    assert r.exit_code == 0 and "no runs" in r.output


@pytest.mark.processes
@pytest.mark.parametrize("args", [["train", "--epochs", "abc"], ["train", "--bogus"], ["nosuchcommand"]])
def test_parse_errors_are_one_line_through_the_console_script(args):
    """Typer's own parse errors, through `python -m sgtool` (the console script's main)."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "sgtool", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--help" in lines[0], p.stderr
    assert "Traceback" not in p.stderr + p.stdout


def test_store_files_get_the_umask_mode(tmp_path):
    import stat

    from sgtool.store import UMASK, write_json

    write_json(tmp_path / "x.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o666 & ~UMASK


@pytest.mark.parametrize("command", ["mask-eval", "attack", "explain"])
def test_evaluation_commands_select_a_run_by_its_training_flags(tmp_path, command):
    """The selection flags (added by cli.selects_runs) reach the store: the trained run is found
    by its flags, with --train-seed standing for train's --seed, and a wrong seed finds nothing."""
    assert invoke("train", *TINY, "--trainer", "standard", "--seed", "3", "--runs-dir", tmp_path).exit_code == 0
    (run_id,) = [p.name for p in tmp_path.iterdir()]
    extra = {"mask-eval": ["--method", "grad", "--fractions", "0,0.5", "--limit", "8"],
             "attack": ["--method", "fgsm", "--eps", "0.1", "--limit", "8"],
             "explain": ["--n", "2", "--out", tmp_path / "e.png"]}[command]
    select = ["--model", "mlp", "--train-size", "128", "--test-size", "32", "--epochs", "1", "--trainer", "standard"]
    r = invoke(command, *select, "--train-seed", "3", *extra, "--runs-dir", tmp_path)
    assert r.exit_code == 0, r.output
    assert command == "explain" or run_id in r.output
    miss = invoke(command, *select, "--train-seed", "4", *extra, "--runs-dir", tmp_path)
    assert miss.exit_code != 0 and exited_cleanly(miss)
    assert len(miss.output.strip().splitlines()) == 1, miss.output

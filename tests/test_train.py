import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn

from sgtool.config import make_config
from sgtool.store import read_run
from sgtool.train import train_run

TINY = dict(dataset="synthetic", model="mlp", train_size=256, test_size=64, epochs=2, batch_size=64)


def _metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.mark.parametrize("trainer", ["standard", "sgt"])
def test_same_config_same_numbers(tmp_path, trainer):
    a = train_run(make_config(trainer=trainer, runs_dir=str(tmp_path / "a"), **TINY))
    b = train_run(make_config(trainer=trainer, runs_dir=str(tmp_path / "b"), **TINY))
    assert a["id"] == b["id"]
    assert _metrics(a["dir"]) == _metrics(b["dir"])
    from sgtool.store import load_tensors

    wa, wb = load_tensors(a["dir"] / "model.safetensors"), load_tensors(b["dir"] / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_completed_run_is_not_retrained_and_force_retrains(tmp_path):
    cfg = make_config(runs_dir=str(tmp_path), **TINY)
    first = train_run(cfg)
    mtime = (first["dir"] / "model.safetensors").stat().st_mtime_ns
    again = train_run(cfg)
    assert again["already"] and (first["dir"] / "model.safetensors").stat().st_mtime_ns == mtime
    forced = train_run(cfg, force=True)
    assert not forced["already"] and forced["test_acc"] == first["test_acc"]
    info = read_run(first["dir"])
    assert info["status"] == "completed" and info["torch_version"] == torch.__version__
    assert len(_metrics(first["dir"])) == 2


def _run_cli(args, env):
    return subprocess.Popen([sys.executable, "-m", "sgtool", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.processes
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_resume_after_kill_gives_uninterrupted_metrics(tmp_path, sig):
    args = ["--model", "small-cnn", "--train-size", "384", "--test-size", "32", "--epochs", "2",
            "--batch-size", "64", "--trainer", "sgt"]
    env = {**os.environ, "SGTOOL_OFFLINE": "1"}
    ref = _run_cli([*args, "--runs-dir", str(tmp_path / "ref")], env)
    assert ref.wait(timeout=300) == 0, ref.stdout.read()

    killed = _run_cli([*args, "--runs-dir", str(tmp_path / "k")], env)
    run_dir = next((tmp_path / "ref").iterdir())
    target = tmp_path / "k" / run_dir.name
    deadline = time.time() + 120
    while not ((target / "metrics.csv").is_file() and len(_metrics(target)) >= 1):
        assert time.time() < deadline and killed.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    killed.send_signal(sig)
    killed.wait(timeout=60)
    info = read_run(target)
    assert info["status"] == "interrupted"
    assert len(_metrics(target)) < 2

    resumed = _run_cli([*args, "--runs-dir", str(tmp_path / "k")], env)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert _metrics(target) == _metrics(run_dir)
    assert json.loads((target / "run.json").read_text())["status"] == "completed"


def test_lock_refuses_a_second_trainer(tmp_path):
    from sgtool.errors import SgtoolError
    from sgtool.store import run_lock

    d = tmp_path / "r"
    d.mkdir()
    with run_lock(d):
        with pytest.raises(SgtoolError, match="being trained by another process"):
            with run_lock(d):
                pass


def test_tune_malloc_takes_on_glibc():
    import platform

    import sgtool

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc tuning is for glibc only")
    if os.environ.get("SGTOOL_MALLOC") == "default":
        pytest.skip("opted out with SGTOOL_MALLOC=default")
    assert sgtool.tune_malloc() is True


def test_metrics_csv_keeps_a_column_that_later_rows_add(tmp_path):
    """A run resumed by a newer sgtool may log a column (val_loss) its first epochs lack: the CSV
    has every column, in first-seen order, and the old rows leave the new one empty."""
    from sgtool.store import read_csv, write_csv

    write_csv(tmp_path / "m.csv", [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.6, "val_loss": 0.4}])
    assert read_csv(tmp_path / "m.csv") == [{"epoch": "1", "val_acc": "0.5", "val_loss": ""},
                                            {"epoch": "2", "val_acc": "0.6", "val_loss": "0.4"}]


def test_split_scores_are_the_mean_nll_and_accuracy_over_all_batches():
    """split_scores (the validation row of --select val-loss) averages the cross-entropy over the
    whole split, whatever the batching, and leaves the model in the mode it found it in."""
    from sgtool.runs import split_scores

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.5))
    x, y = torch.randn(10, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    model.eval()
    logits = model(x)
    model.train()
    got = split_scores(model, x, y, batch_size=3)  # batches of 3, 3, 3, 1
    assert model.training
    assert got["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    assert got["acc"] == (logits.argmax(1) == y).sum().item() / 10
    assert torch.equal(got["correct"], logits.argmax(1) == y)  # per sample, in x's order


def test_split_scores_marks_each_document_in_its_own_place():
    """Token ids are batched longest first; "correct" must still follow x's order."""
    from sgtool.runs import split_scores

    class FirstToken(nn.Module):  # predicts class = the first token's id mod 2
        pad_id = 0

        def forward(self, ids):
            return nn.functional.one_hot(ids[:, 0] % 2, 2).float()

    x = torch.tensor([[3, 0, 0, 0], [2, 5, 5, 5], [1, 4, 0, 0], [4, 4, 4, 0]])  # lengths 1, 4, 2, 3
    y = torch.tensor([1, 1, 1, 1])
    got = split_scores(FirstToken(), x, y, device="cpu")
    assert got["correct"].tolist() == [True, False, True, False]
    assert got["acc"] == 0.5

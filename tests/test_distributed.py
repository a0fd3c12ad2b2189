"""Several processes on the CPU (torchrun, gloo): the parameters agree on every process, a
2-process run gives the single process's numbers for the same global batch, and mask-eval and
attack split over processes give exactly the single-process results."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sgtool.config import config_hash, make_config
from sgtool.store import load_tensors, read_metrics, read_run

pytestmark = pytest.mark.processes

TINY = dict(dataset="synthetic", model="mlp", trainer="sgt", mask_fill="zero", train_size=192, test_size=48,
            epochs=2, batch_size=64)  # no dropout, a deterministic fill: the numbers must agree
ENV = {**os.environ, "SGTOOL_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def torchrun(*args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *map(str, args)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def sgtool_cli(*args, timeout=300):
    r = subprocess.run([sys.executable, "-m", "sgtool", *map(str, args)], env=ENV, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def flags(d: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in d.items()]


def test_parameters_agree_on_every_process_after_sgt_steps(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    torchrun(worker, tmp_path, *[f"{k}={v}" for k, v in {**TINY, "runs_dir": tmp_path / "runs"}.items()])
    a, b = load_tensors(tmp_path / "rank0.safetensors"), load_tensors(tmp_path / "rank1.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    sgtool_cli("train", "--nproc", "2", *flags(TINY), "--runs-dir", root / "two")
    sgtool_cli("train", *flags(TINY), "--runs-dir", root / "one")
    return root


def test_two_processes_give_one_process_numbers(runs):
    (two,) = (runs / "two").iterdir()
    (one,) = (runs / "one").iterdir()
    assert read_run(two)["config"]["world_size"] == 2 and two.name != one.name  # the world size is hashed
    assert two.name == config_hash(make_config(**TINY, world_size=2))
    m2, m1 = read_metrics(two), read_metrics(one)
    for r2, r1 in zip(m2, m1):
        for k in ("train_loss", "train_ce", "train_kl", "train_acc", "test_acc"):
            assert float(r2[k]) == pytest.approx(float(r1[k]), abs=2e-6), k
    w2, w1 = load_tensors(two / "model.safetensors"), load_tensors(one / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=2e-5)  # Adam divides rounding by sqrt(v)


@pytest.mark.parametrize("command, extra", [
    ("mask-eval", ["--method", "grad,ig,random", "--fractions", "0,0.2,0.5", "--batch-size", "16"]),
    ("attack", ["--method", "fgsm,pgd", "--eps", "0.05,0.1", "--steps", "3", "--batch-size", "16"]),
])
def test_evaluations_split_over_processes_equal_one_process(runs, command, extra):
    (one,) = (runs / "one").iterdir()
    sgtool_cli(command, one.name, *extra, "--runs-dir", runs / "one")
    folder = one / command.replace("-", "_")
    (csv,) = folder.glob("*[!y].csv") if command == "mask-eval" else folder.glob("*.csv")
    single = {p.name: p.read_text() for p in folder.glob("*.csv")}
    for p in folder.iterdir():
        p.unlink()
    torchrun("-m", "sgtool", command, one.name, *extra, "--runs-dir", runs / "one")
    assert {p.name: p.read_text() for p in folder.glob("*.csv")} == single

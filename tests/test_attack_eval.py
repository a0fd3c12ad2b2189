"""evaluate.attack_eval and `sgtool attack`: rows and their invariants, the cache and its hash,
saved examples whose accuracy is the reported one, the sanity flags, and one-line errors."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from sgtool.attacks import predict
from sgtool.cli import app
from sgtool.config import AttackConfig, make_config
from sgtool.evaluate import attack_eval
from sgtool.evaluate.attack import _attack_mode, _attack_warnings
from sgtool.models import build
from sgtool.runs import accuracy, load_model
from sgtool.store import find_run, load_tensors, read_csv, save_tensors
from sgtool.train import train_run
from tests.conftest import exited_cleanly

runner = CliRunner()
FAST = AttackConfig(methods=("fgsm", "pgd", "mifgsm"), eps=(0.0, 0.1, 0.3), steps=3, step_size=0.1, limit=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    """A small-cnn trained on 512 synthetic images (64 test samples), shared by the tests here; each
    test that writes evaluations gets its own copy of the run dir."""
    root = tmp_path_factory.mktemp("runs")
    cfg = make_config(dataset="synthetic", trainer="standard", train_size=512, test_size=64,
                      epochs=2, runs_dir=str(root))
    res = train_run(cfg)
    return find_run(root, res["id"])


@pytest.fixture
def fresh(run, tmp_path):
    shutil.copytree(run["dir"], tmp_path / run["id"])
    return find_run(tmp_path, run["id"])


def by_key(rows):
    return {(r["method"], r["eps"]): r["accuracy"] for r in rows}


def test_rows_invariants_csv_json_and_cache(fresh):
    res = attack_eval(fresh, FAST)
    rows, acc = res["rows"], by_key(res["rows"])
    assert not res["cached"] and len(res["id"]) == 12
    assert [(r["method"], r["eps"]) for r in rows] == [("clean", 0.0)] + [
        (m, e) for m in ("fgsm", "pgd", "mifgsm", "worst") for e in (0.0, 0.1, 0.3)]
    assert all(r["n"] == 32 and r["run"] == fresh["id"] for r in rows)
    model, cfg = load_model(fresh)
    clean = accuracy(model, *(v[:32] for v in load_xy(cfg)))
    assert res["clean_accuracy"] == clean == acc["clean", 0.0] and clean > 0.5
    for m in ("fgsm", "pgd", "mifgsm", "worst"):
        assert acc[m, 0.0] == clean  # eps 0 is the clean accuracy
        assert acc[m, 0.3] <= acc[m, 0.1] <= clean
    for e in (0.1, 0.3):
        assert acc["worst", e] <= min(acc[m, e] for m in ("fgsm", "pgd", "mifgsm"))
    assert acc["pgd", 0.3] < clean / 2  # the attacks bite
    on_disk = read_csv(res["path"])
    assert list(on_disk[0]) == ["run", "method", "eps", "accuracy", "n"]
    assert [(r["method"], float(r["eps"]), float(r["accuracy"])) for r in on_disk] == [
        (r["method"], r["eps"], r["accuracy"]) for r in rows]
    meta = json.loads(res["path"].with_suffix(".json").read_text())
    assert meta["kind"] == "attack" and meta["run"] == fresh["id"] and meta["clean_accuracy"] == clean
    assert meta["config"]["eps"] == [0.0, 0.1, 0.3] and "created" in meta and meta["warnings"] == res["warnings"]
    again = attack_eval(fresh, FAST)
    assert again["cached"] and again["rows"] == rows and again["id"] == res["id"]
    forced = attack_eval(fresh, FAST, force=True)
    assert not forced["cached"] and forced["rows"] == rows  # seeded: the same numbers again


def load_xy(cfg):
    from sgtool.data import load

    d = load(cfg.dataset, None, 1, cfg.test_size)
    return d.x_test, d.y_test


def test_defaults_are_resolved_before_hashing(fresh):
    a = attack_eval(fresh, AttackConfig(methods=("fgsm",), limit=8))
    # synthetic's attack defaults: eps 0.1, step size 0.01, 20 steps; eps lists are sorted and deduped
    b = attack_eval(fresh, AttackConfig(methods=("fgsm", "fgsm"), eps=(0.1, 0.1), steps=20, step_size=0.01, limit=8))
    assert b["cached"] and a["id"] == b["id"] and [r["eps"] for r in a["rows"]] == [0.0, 0.1, 0.1]
    c = attack_eval(fresh, AttackConfig(methods=("fgsm",), limit=8, seed=1))
    assert not c["cached"] and c["id"] != a["id"]


def test_saved_examples_give_the_reported_accuracy(fresh):
    cfg = AttackConfig(methods=("fgsm", "pgd"), eps=(0.1, 0.3), steps=2, step_size=0.1, limit=40, batch_size=16)
    plain = attack_eval(fresh, cfg)
    assert plain["examples"] is None
    res = attack_eval(fresh, cfg, save_examples=True)  # cached rows, but no examples yet: recomputed
    assert not res["cached"] and res["rows"] == plain["rows"] and res["examples"].is_file()
    t = load_tensors(res["examples"])
    model, tcfg = load_model(fresh)
    x, y = (v[:40] for v in load_xy(tcfg))
    assert torch.equal(t["x"], x) and torch.equal(t["y"], y)
    for r in res["rows"][1:]:
        adv = t[f"{r['method']}/{r['eps']!r}"]
        assert (adv - x).abs().max() <= r["eps"] + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        pred = torch.cat([predict(model, adv[i : i + 16]) for i in range(0, 40, 16)])
        assert int((pred == y).sum()) / 40 == r["accuracy"], r
    assert attack_eval(fresh, cfg, save_examples=True)["cached"]


def test_all_zero_gradients_are_flagged(fresh):
    """A model whose last layer is zeroed has a constant output: every input gradient is zero."""
    weights = load_tensors(fresh["dir"] / "model.safetensors")
    last = sorted(k for k in weights if k.endswith("weight"))[-1]
    weights[last] = torch.zeros_like(weights[last])
    save_tensors(fresh["dir"] / "model.safetensors", weights)
    res = attack_eval(fresh, AttackConfig(methods=("pgd",), eps=(0.1,), steps=2, step_size=0.05))
    assert any("100% of the samples have an all-zero input gradient" in w for w in res["warnings"])
    meta = json.loads(res["path"].with_suffix(".json").read_text())
    assert meta["zero_grad_share"] == 1.0 and meta["warnings"] == res["warnings"]


def test_short_attack_is_flagged(fresh):
    res = attack_eval(fresh, AttackConfig(methods=("pgd",), eps=(0.1,), steps=2, step_size=0.01))
    assert any("steps x step size = 0.02 < eps 0.1" in w for w in res["warnings"])


def test_warning_rules():
    eps = (0.1, 0.2)
    fine = {("pgd", 0.1): 0.5, ("pgd", 0.2): 0.3, ("fgsm", 0.1): 0.6, ("fgsm", 0.2): 0.4,
            ("worst", 0.1): 0.5, ("worst", 0.2): 0.3}
    cfg = AttackConfig(steps=40, step_size=0.01)
    assert _attack_warnings(fine, ("pgd", "fgsm"), eps, {0.1: 0.6, 0.2: 0.4}, 0.0, cfg) == []
    rising = {**fine, ("pgd", 0.2): 0.55, ("worst", 0.2): 0.55}
    w = _attack_warnings(rising, ("pgd", "fgsm"), eps, {0.1: 0.6, 0.2: 0.4}, 0.0, cfg)
    assert any(s.startswith("pgd: robust accuracy rises with eps") for s in w)
    assert any(s.startswith("pgd is weaker than FGSM at eps 0.2") for s in w)
    assert any("all-zero input gradient" in s for s in
               _attack_warnings(fine, ("pgd", "fgsm"), eps, {0.1: 0.6, 0.2: 0.4}, 0.5, cfg))


def test_train_mode_restores_batchnorm_statistics():
    model = build("resnet20", "cifar10").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with _attack_mode(model, True):
        assert model.training
        model(torch.rand(4, 3, 32, 32))
    assert not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_table_and_warnings(run, tmp_path):
    shutil.copytree(run["dir"], tmp_path / run["id"])
    r = invoke("attack", run["id"][:5], "--method", "fgsm,pgd", "--eps", "0.05,0.15", "--steps", "2",
               "--step-size", "0.01", "--limit", "32", "--runs-dir", tmp_path)
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "clean accuracy" in out and "0.05" in out and "0.15" in out and "eps" in out
    assert all(m in out for m in ("fgsm", "pgd", "worst"))
    assert "warning: steps x step size = 0.02 < eps 0.15" in out
    again = invoke("attack", run["id"][:5], "--method", "pgd,fgsm", "--eps", "0.15,0.05", "--steps", "2",
                   "--step-size", "0.01", "--limit", "32", "--runs-dir", tmp_path)
    assert again.exit_code == 0 and "(cached)" not in again.output  # method order is part of the table
    by_flags = invoke("attack", "--trainer", "standard", "--train-size", "512", "--test-size", "64",
                      "--epochs", "2", "--method", "fgsm,pgd", "--eps", "0.05,0.15", "--steps", "2",
                      "--step-size", "0.01", "--limit", "32", "--runs-dir", tmp_path)
    assert by_flags.exit_code == 0 and "(cached)" in by_flags.output


@pytest.mark.parametrize("args, code, fragment", [
    (["--method", "pgd,cw"], 2, "unknown attack method 'cw'; choose from: fgsm, mifgsm, pgd"),
    (["--eps", "-0.1"], 2, "--eps must be non-negative, got -0.1"),
    (["--eps", "1.5"], 2, "--eps must be in [0, 1] (pixel space) for synthetic, got 1.5"),
    (["--eps", "0.1,abc"], 2, "--eps: 'abc' is not a number"),
    (["--eps", ","], 2, "--eps: 'eps' is empty"),
    (["--eps", "nan"], 2, "--eps: nan is not a finite number"),
    (["--steps", "0"], 2, "--steps must be at least 1, got 0"),
    (["--restarts", "0"], 2, "--restarts must be at least 1"),
    (["--step-size", "-1"], 2, "--step-size must be positive, got -1.0"),
    (["--limit", "0"], 2, "--limit must be at least 1"),
    (["--device", "tpu"], 2, "unknown device 'tpu'"),
])
def test_bad_input_one_line(run, tmp_path, args, code, fragment):
    shutil.copytree(run["dir"], tmp_path / run["id"])
    r = invoke("attack", run["id"], *args, "--runs-dir", tmp_path)
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0], r.output
    assert exited_cleanly(r) and not (tmp_path / run["id"] / "attack").exists()


def test_missing_run_one_line(tmp_path):
    (tmp_path / "runs").mkdir()
    r = invoke("attack", "abc123", "--runs-dir", tmp_path / "runs")
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and "no run 'abc123'" in lines[0]
    r = invoke("attack", "--trainer", "standard", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 1 and "train it first" in r.output

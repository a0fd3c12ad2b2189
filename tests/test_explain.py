"""`sgtool explain`: the PNG grid, the raw maps beside it, and the explain cache the sweep uses."""

from __future__ import annotations

import struct

import pytest
import torch
from typer.testing import CliRunner

from sgtool import report
from sgtool.cli import app
from sgtool.config import ExplainConfig, make_config
from sgtool.errors import UsageError
from sgtool.evaluate import explain_run, read_maps
from sgtool.report.figure import DPI
from sgtool.report.maps import CELL_W, explain_size
from sgtool.report.plots import plot_explain
from sgtool.runs import load_model
from sgtool.saliency import LogProb, get_saliency
from sgtool.store import find_run, runs_root
from sgtool.train import train_run
from tests.conftest import exited_cleanly

TINY = dict(dataset="synthetic", model="mlp", train_size=256, test_size=64, epochs=1)  # mlp: fast


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = []
    for trainer in ("standard", "sgt"):
        res = train_run(make_config(trainer=trainer, runs_dir=str(root), **TINY))
        out.append(find_run(runs_root(root), res["id"]))
    return out


def png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])  # IHDR width, height


def test_png_grid_size_and_raw_maps(runs, tmp_path):
    out = tmp_path / "maps" / "grid.png"
    res = report.explain(runs, ExplainConfig(methods=("grad", "random"), n=3, device="cpu"), out=out)
    # one row per sample; the input column plus one per (run, method) pair
    assert png_size(out) == res["size"] == explain_size(3, 1 + 2 * 2)
    assert res["size"][0] == round(5 * CELL_W * DPI)
    maps = read_maps(res["maps"])
    assert res["maps"] == tmp_path / "maps" / "grid.safetensors"
    assert [(c["run"], c["method"]) for c in maps["columns"]] == [
        (runs[0]["id"], "grad"), (runs[0]["id"], "random"), (runs[1]["id"], "grad"), (runs[1]["id"], "random")]
    assert maps["input"].shape == (3, 1, 28, 28) and maps["index"].tolist() == [0, 1, 2]
    # the saved map is the saliency of that run's model on those samples: of log p(label | x)
    model, _ = load_model(runs[1], "cpu")
    expect = get_saliency("grad")(LogProb(model), maps["input"].clone(), maps["label"])
    torch.testing.assert_close(maps["maps"][2], expect)
    assert torch.equal(maps["pred"][2], model(maps["input"]).argmax(1))
    assert "sgt mask-frac 0.5" in maps["columns"][2]["title"] and "standard" in maps["columns"][0]["title"]


def test_index_picks_samples_and_bad_input(runs, tmp_path):
    res = report.explain(runs[:1], ExplainConfig(indices=(5, 2), device="cpu"), out=tmp_path / "i.png")
    assert read_maps(res["maps"])["index"].tolist() == [5, 2]
    assert png_size(res["png"]) == explain_size(2, 2)
    with pytest.raises(UsageError, match="--index 64 is out of range: the test split has 64 samples"):
        report.explain(runs[:1], ExplainConfig(indices=(64,), device="cpu"), out=tmp_path / "j.png")
    with pytest.raises(UsageError, match="unknown saliency method 'nope'"):
        report.explain(runs[:1], ExplainConfig(methods=("nope",)), out=tmp_path / "k.png")
    with pytest.raises(UsageError, match="one dataset"):
        other = {**runs[0], "config": {**runs[0]["config"], "dataset": "mnist"}}
        report.explain([runs[0], other], ExplainConfig(), out=tmp_path / "l.png")
    with pytest.raises(UsageError, match=r"\.png"):
        report.explain(runs[:1], ExplainConfig(), out=tmp_path / "m.jpg")
    assert not list(tmp_path.glob("[jklm].*"))  # nothing written on bad input


def test_explain_run_is_cached_and_reported_side_by_side(runs, tmp_path):
    cfg = ExplainConfig(methods=("grad",), n=2, device="cpu")
    first = [explain_run(r, cfg) for r in runs]
    assert [f["cached"] for f in first] == [False, False]
    mtime = first[0]["maps"].stat().st_mtime_ns
    again = explain_run(runs[0], cfg)
    assert again["cached"] and again["maps"].stat().st_mtime_ns == mtime
    rep = report.collect(runs[0]["dir"].parent)
    figs = plot_explain(rep)
    assert [name for name, _, _ in figs] == ["saliency_synthetic.png"]
    out = tmp_path / "side.png"
    out.write_bytes(figs[0][2])
    assert png_size(out) == explain_size(2, 1 + 2)  # both runs' columns in one grid


runner = CliRunner()


def test_cli_explain(runs, tmp_path):
    root = str(runs[0]["dir"].parent)
    out = tmp_path / "cli.png"
    r = runner.invoke(app, ["explain", runs[0]["id"][:6], runs[1]["id"], "--method", "grad,random", "--n", "2",
                            "--out", str(out), "--runs-dir", root, "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert png_size(out) == explain_size(2, 5) and out.with_suffix(".safetensors").is_file()
    # a run selected by its training flags instead of its id
    r = runner.invoke(app, ["explain", "--trainer", "sgt", "--model", "mlp", "--train-size", "256", "--test-size", "64",
                            "--epochs", "1", "--n", "1", "--out", str(tmp_path / "f.png"), "--runs-dir", root])
    assert r.exit_code == 0, r.output
    for args, code, msg in [
        ([runs[0]["id"], "--method", "gradd"], 2, "unknown saliency method 'gradd'"),
        ([runs[0]["id"], "--index", "1,x"], 2, "--index: 'x' is not an integer"),
        ([runs[0]["id"], "--n", "0"], 2, "--n must be at least 1"),
        (["ffffffffffff"], 1, "no run 'ffffffffffff'"),
        ([], 1, "name a run id"),
    ]:
        r = runner.invoke(app, ["explain", *args, "--runs-dir", root, "--out", str(tmp_path / "bad.png")])
        assert r.exit_code == code, (args, r.output)
        assert msg in r.output and exited_cleanly(r)
    assert not (tmp_path / "bad.png").exists()

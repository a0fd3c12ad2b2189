"""experiments.yaml parsing and `sgtool sweep`: the grid, the errors, and resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sgtool import report, sweep
from sgtool.cli import app
from sgtool.errors import UsageError
from tests.conftest import exited_cleanly

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

# The mlp keeps these fast. The second experiment trains longer, so that a kill right after the
# first one finishes lands in the middle of it.
TWO_CELLS = """
first:
  train: {dataset: synthetic, model: mlp, trainer: [standard], train_size: 256, test_size: 64, epochs: 1}
second:
  train: {dataset: synthetic, model: mlp, trainer: sgt, train_size: 1000, test_size: 64, epochs: 2}
"""


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "experiments.yaml"
    p.write_text(text)
    return p


def status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None  # not there yet, or caught mid-replace


@pytest.mark.processes
def test_sweep_resumes_after_kill_without_retraining(tmp_path):
    path = write(tmp_path, TWO_CELLS)
    runs = tmp_path / "runs"
    first, second = sweep.plan(path, only="first,second", runs_dir=str(runs))
    env = {**os.environ, "SGTOOL_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sgtool", "sweep", str(path), "--only", "first,second",
                             "--runs-dir", str(runs)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while status(runs / first.run_id) != "completed":
            assert proc.poll() is None, "the sweep ended before its first cell completed"
            assert time.time() < deadline, "the first cell did not complete in time"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)  # a hard kill: no handler runs, as after a crash
        proc.wait()
    model = runs / first.run_id / "model.safetensors"
    stamps = {p: p.stat().st_mtime_ns for p in (model, runs / first.run_id / "run.json")}
    # the rerun: the CLI says the first cell is cached and finishes the second
    second_done = status(runs / second.run_id) == "completed"  # almost never: it is killed mid-way
    r = runner.invoke(app, ["sweep", str(path), "--only", "first,second", "--runs-dir", str(runs)])
    assert r.exit_code == 0, r.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the first run was not retrained
    assert status(runs / second.run_id) == "completed"
    assert "cached" in r.output and first.run_id in r.output
    if not second_done:
        assert "trained" in r.output or "resumed" in r.output
    rows = sweep.run_sweep(path, only="first,second", runs_dir=str(runs))
    assert [row["train"] for row in rows] == ["cached", "cached"]


def test_grid_expands_dedupes_and_parses_fractions(tmp_path):
    path = write(tmp_path, """
grid:
  description: a grid
  train:
    dataset: synthetic
    trainer: [standard, sgt]
    mask-frac: [0.25, 0.5]
    seed: [0, 1]
  attack: {methods: fgsm, eps: [2/255, 0.1], limit: 10}
  explain: {methods: "grad, random", n: 2}
""")
    cells = sweep.plan(path, runs_dir=str(tmp_path))
    # a standard run ignores mask-frac: 2 seeds x (1 standard + 2 sgt)
    assert len(cells) == 6 and len({c.run_id for c in cells}) == 6
    # (a standard run's config keeps mask-frac at its default: it did not use the grid's value)
    assert [(c.cfg.trainer, c.cfg.mask_frac, c.cfg.seed) for c in cells][:3] == [
        ("standard", 0.5, 0), ("standard", 0.5, 1), ("sgt", 0.25, 0)]
    attack = cells[0].evals["attack"]
    assert attack.eps == (2 / 255, 0.1) and attack.methods == ("fgsm",) and attack.limit == 10
    assert cells[0].evals["explain"].methods == ("grad", "random")
    assert list(cells[0].evals) == ["attack", "explain"] and cells[0].evals["attack"].device == "auto"
    rows = sweep.run_sweep(path, dry_run=True, runs_dir=str(tmp_path), device="cpu")
    assert {(r["train"], r["attack"], r["explain"], r["mask_eval"]) for r in rows} == {("todo", "todo", "todo", None)}
    assert not any(tmp_path.glob("*/run.json"))  # a dry run runs nothing


@pytest.mark.parametrize("text, message", [
    ("a:\n  train: {dataset: synthetic, mask_frak: 0.5}", "experiment 'a': train: unknown key 'mask_frak'"),
    ("a:\n  train: {dataset: synthetic, epochs: many}", "experiment 'a': train: 'epochs' must be an integer"),
    ("a:\n  train: {trainer: [standard, sgd]}", "experiment 'a': train: unknown trainer 'sgd'"),
    ("a:\n  train: {trainer: sgt, mask_frac: 1.5}", "experiment 'a': train: --mask-frac must be in [0, 1)"),
    ("a:\n  train: {seed: []}", "experiment 'a': train: 'seed' is an empty list"),
    ("a:\n  train: {device: cpu}", "experiment 'a': train: 'device' comes from the --device flag"),
    ("a:\n  train: {}\n", "experiment 'a': train: 'train' must be a mapping"),
    ("a:\n  description: x\n", "experiment 'a': no 'train' section"),
    ("a:\n  train: {}\n  evaluate: {}", "experiment 'a': unknown key 'evaluate'"),
    ("a:\n  train: {seed: 1}\n  mask_eval: {methods: [gradd]}", "experiment 'a': mask-eval: unknown saliency method 'gradd'"),
    ("a:\n  train: {seed: 1}\n  mask_eval: {colour: red}", "experiment 'a': mask-eval: unknown key 'colour'"),
    ("a:\n  train: {seed: 1}\n  attack: {eps: [0.1, big]}", "experiment 'a': attack: 'big' is not a number"),
    ("a:\n  train: {seed: 1}\n  attack: {methods: [cw]}", "experiment 'a': attack: unknown attack method 'cw'"),
    ("a:\n  train: {seed: 1}\n  attack: {limit: 0}", "experiment 'a': attack: --limit must be at least 1"),
    ("a:\n  train: {seed: 1}\n  explain: {n: 0}", "experiment 'a': explain: --n must be at least 1"),
    ("a:\n  train: {seed: 1}\n  explain: [grad]", "experiment 'a': explain: expected a mapping"),
    ("a: [1, 2]", "experiment 'a': expected a mapping"),
    ("- a\n- b", "expected a mapping of experiment names"),
    ("a:\n  train: {seed: 1\n", "malformed YAML at line"),
])
def test_errors_name_the_experiment_and_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as e:
        sweep.plan(path, runs_dir=str(tmp_path))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_sweep_bad_input(tmp_path):
    path = write(tmp_path, TWO_CELLS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a:\n  train: {epochs: x}")
    for args, code, msg in [
        ([str(path), "--only", "nope"], 2, "unknown experiment 'nope'; choose from: first, second"),
        ([str(tmp_path / "missing.yaml")], 2, "not found"),
        ([str(bad)], 2, "experiment 'a': train: 'epochs' must be an integer"),
    ]:
        r = runner.invoke(app, ["sweep", *args, "--runs-dir", str(tmp_path / "runs")])
        assert r.exit_code == code, (args, r.output)
        assert msg in r.output and exited_cleanly(r)
        assert len(r.output.strip().splitlines()) == 1, r.output  # one line, no progress display
    assert not (tmp_path / "runs").exists()


def test_repo_experiments_file():
    """The shipped experiments parse, with the papers' settings."""
    import dataclasses

    from sgtool.config import config_hash
    from tests.conftest import SHARED_DATA

    names = list(sweep.load_experiments(REPO / "experiments.yaml"))
    eraser = ["eraser-movies", "eraser-movies-no-dropout"]
    if not (SHARED_DATA / "glove").is_dir():  # the ERASER experiments hash their GloVe file: they need it
        names = [n for n in names if n not in eraser]
    cells = sweep.plan(REPO / "experiments.yaml", only=names, runs_dir="unused", data_dir=str(SHARED_DATA))
    by = {}
    for c in cells:
        by.setdefault(c.experiment, []).append(c)
    assert {k: len(v) for k, v in by.items()} == {"demo": 6, "mnist-sgt": 6, "mnist-sgt-authors": 6, "mnist-asgt": 3, "cifar10-asgt": 3,
                                                  "cifar10-sgt": 2, "tsb-sgt": 264,
                                                  **({k: 6 for k in eraser} if eraser[0] in names else {})}
    assert {c.cfg.dataset for c in by["demo"]} == {"synthetic", "tsb-middle-box", "synthetic-text"}
    assert len({c.cfg.dataset for c in by["tsb-sgt"]}) == 11 and {c.cfg.model for c in by["tsb-sgt"]} == {
        "tcn", "lstm-ica", "lstm", "transformer"}
    assert {c.cfg.trainer for c in by["mnist-asgt"]} == {"standard", "sgt", "asgt"}
    assert by["mnist-asgt"][0].evals["attack"].eps == (0.1, 0.2, 0.3)
    assert by["cifar10-asgt"][0].evals["attack"].eps == (2 / 255, 4 / 255, 8 / 255)
    assert set(by["mnist-sgt"][0].evals["mask_eval"].methods) == {
        "grad", "smoothgrad", "ig", "deeplift", "gradshap", "deepliftshap", "random"}
    assert {c.cfg.seed for c in by["mnist-sgt"]} == {0, 1, 2}
    assert {(c.cfg.mask_frac, c.cfg.mask_fill) for c in by["mnist-sgt"] if c.cfg.trainer == "sgt"} == {(0.5, "random")}
    assert {c.cfg.model for c in by["cifar10-sgt"]} == {"resnet18"}
    assert {(c.cfg.recipe, c.cfg.batch_size, c.cfg.optimizer, c.cfg.epochs) for c in by["mnist-sgt-authors"]} == {
        ("authors", 512, "adadelta", 100)}
    assert set(by["demo"][0].evals) == {"mask_eval", "attack", "explain"}
    if eraser[0] in names:  # ERASER's embedding dropout is the dataset's default; the second table has none
        assert {(c.cfg.embed_dropout, c.cfg.select, c.cfg.epochs) for c in by["eraser-movies"]} == {(0.2, "val-loss", 15)}
        # the earlier default's runs, under the ids they had before the default changed
        nodrop = by["eraser-movies-no-dropout"]
        assert all(c.run_id == config_hash(dataclasses.replace(c.cfg, embed_dropout=None)) for c in nodrop)
        assert not {c.run_id for c in nodrop} & {c.run_id for c in by["eraser-movies"]}


def test_end_to_end_tiny_sweep_then_report(tmp_path):
    """train -> mask-eval -> attack -> explain for two cells, a cached rerun, and the report."""
    path = write(tmp_path, """
e2e:
  train: {dataset: synthetic, model: mlp, trainer: [standard, sgt], train_size: 256, test_size: 64, epochs: 1}
  mask_eval: {methods: [grad, random], fractions: [0, 0.05, 0.2], limit: 32}
  attack: {methods: [fgsm, pgd], eps: [0.1, 0.3], steps: 3, step_size: 0.1, limit: 32}
  explain: {methods: [grad], n: 2}
""")
    runs = tmp_path / "runs"
    events = []
    rows = sweep.run_sweep(path, runs_dir=str(runs), device="cpu", on_progress=lambda **e: events.append(e))
    assert [(r["train"], r["mask_eval"], r["attack"], r["explain"]) for r in rows] == [("trained", "done", "done",
                                                                                         "done")] * 2
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages == ["train", "mask_eval", "attack", "explain"] * 2
    assert events[0] == {"event": "plan", "cells": 2, "steps": 8}
    assert any(e["event"] == "inner" and e["total"] for e in events)
    again = sweep.run_sweep(path, runs_dir=str(runs), device="cpu")
    assert [(r["train"], r["mask_eval"], r["attack"], r["explain"]) for r in again] == [("cached",) * 4] * 2
    assert {r["train"] for r in sweep.run_sweep(path, dry_run=True, runs_dir=str(runs))} == {"cached"}
    assert {r["attack"] for r in sweep.run_sweep(path, dry_run=True, runs_dir=str(runs))} == {"cached"}

    rep = report.collect(runs)
    assert rep.warnings == [] and len(rep.runs) == 2
    tabs = report.tables(rep)
    assert set(tabs) == {"training", "mask_eval", "ground_truth", "robustness"}
    assert {"0.05", "auc", "auc_vs_random"} <= set(tabs["mask_eval"].columns)
    assert {"clean", "pgd ε=0.3", "worst ε=0.1"} <= set(tabs["robustness"].columns)
    res = report.write_report(rep, "html", tmp_path / "report")
    assert sorted(p.name for p in res["files"] if p.suffix == ".png") == [
        "mask_eval_synthetic.png", "robustness_synthetic.png", "saliency_synthetic.png", "training_synthetic.png"]
    assert res["report"].read_text().count("data:image/png;base64,") == 4

"""`sgtool report` on a fixture store written here in the evaluation files' contract formats."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from sgtool import report
from sgtool.cli import app
from sgtool.config import config_hash, make_config, to_dict
from sgtool.errors import UsageError
from sgtool.report.tables import fmt_eps
from sgtool.store import write_csv, write_json, write_yaml
from tests.conftest import exited_cleanly

FRACTIONS = [0.0, 0.25, 0.5, 0.75]
EPS = [0.05, 0.1]


def acc_curve(trainer: str, method: str, seed: int) -> list[float]:
    """A made-up accuracy-drop curve: SGT models drop faster under real saliency."""
    slope = 0.3 if method == "random" else (0.9 if trainer == "sgt" else 0.6)
    return [round(max(0.0, 0.95 - slope * f) - 0.01 * seed, 4) for f in FRACTIONS]


def write_run(root, trainer: str, seed: int, evals: bool = True) -> str:
    cfg = make_config(dataset="synthetic", trainer=trainer, seed=seed, epochs=2, train_size=64, test_size=32)
    rid = config_hash(cfg)
    d = root / rid
    d.mkdir(parents=True)
    write_yaml(d / "config.yaml", to_dict(cfg))
    accs = [0.8 + 0.01 * seed, 0.9 + 0.02 * seed]
    write_csv(d / "metrics.csv", [
        {"epoch": e + 1, "train_loss": 1.0 / (e + 1), "train_ce": 1.0 / (e + 1), "train_kl": 0.0,
         "train_acc": a, "test_acc": a, "seconds": 1.5} for e, a in enumerate(accs)])
    write_json(d / "run.json", {"status": "completed", "id": rid, "test_acc": accs[-1], "wall_seconds": 3.0})
    if not evals:
        return rid
    (d / "mask_eval").mkdir()
    rows, summary = [], []
    for m in ("grad", "random"):
        curve = acc_curve(trainer, m, seed)
        rows += [{"run": rid, "method": m, "fraction": f, "accuracy": a, "n": 32} for f, a in zip(FRACTIONS, curve)]
        summary.append({"run": rid, "method": m, "auc": sum(curve) / len(curve), "auc_vs_random": 0.0,
                        "deletion_auc": 0.1, "insertion_auc": 0.2, "aup": 0.3 + seed * 0.1, "aur": 0.4,
                        "precision_at_gt": 0.5, "drop_vs_random_0.5": 0.0})
    write_csv(d / "mask_eval" / "aaaaaaaaaaaa.csv", rows)
    write_csv(d / "mask_eval" / "aaaaaaaaaaaa.summary.csv", summary)
    write_json(d / "mask_eval" / "aaaaaaaaaaaa.json", {"kind": "mask_eval", "run": rid, "created": "now", "config": {
        "methods": ["grad", "random"], "fractions": FRACTIONS, "order": "morf", "fill": "background",
        "limit": 32, "seed": 0, "device": "cpu", "data_dir": None}})
    (d / "attack").mkdir()
    base = 0.9 if trainer == "standard" else 0.92
    arows = [{"run": rid, "method": "clean", "eps": 0.0, "accuracy": base, "n": 32}]
    for m, drop in (("fgsm", 2.0), ("pgd", 4.0), ("worst", 5.0)):
        arows += [{"run": rid, "method": m, "eps": e, "accuracy": round(base - drop * e - 0.01 * seed, 4), "n": 32}
                  for e in EPS]
    write_csv(d / "attack" / "bbbbbbbbbbbb.csv", arows)
    write_json(d / "attack" / "bbbbbbbbbbbb.json", {"kind": "attack", "run": rid, "clean_accuracy": base,
                                                    "warnings": [], "created": "now", "config": {
        "methods": ["fgsm", "pgd"], "eps": EPS, "steps": 5, "seed": 0, "device": "cpu"}})
    return rid


@pytest.fixture()
def store(tmp_path):
    root = tmp_path / "runs"
    ids = {(t, s): write_run(root, t, s) for t in ("standard", "sgt") for s in (0, 1)}
    return root, ids


def test_two_seeds_grouped_as_mean_std_n(store):
    root, ids = store
    rep = report.collect(root)
    assert rep.warnings == []
    assert len(rep.runs) == 4 and len(rep.groups) == 2
    tabs = report.tables(rep)
    train = tabs["training"].set_index("trainer")
    # seeds 0 and 1 reach 0.90 and 0.92
    assert train.loc["sgt", "n"] == 2
    assert math.isclose(train.loc["sgt", "test_acc"], 0.91)
    assert math.isclose(train.loc["sgt", "test_acc_std"], 0.02 / math.sqrt(2))
    shown = report.formatted(tabs["training"])
    assert shown.loc[shown["trainer"] == "sgt", "test acc"].item() == "0.910 ± 0.014"
    assert set(shown["mask-frac"]) == {"-", "0.5"}  # standard runs have no mask fraction

    me = tabs["mask_eval"].set_index(["trainer", "method"])
    expect = sum(acc_curve("sgt", "grad", s)[2] for s in (0, 1)) / 2
    assert math.isclose(me.loc[("sgt", "grad"), "0.5"], expect)
    assert me.loc[("sgt", "grad"), "n"] == 2
    rob = tabs["robustness"].set_index("trainer")
    assert {"clean", "fgsm ε=0.05", "pgd ε=0.1", "worst ε=0.1"} <= set(rob.columns)
    assert math.isclose(rob.loc["standard", "pgd ε=0.1"], (0.5 + 0.49) / 2)
    gt = tabs["ground_truth"].set_index(["trainer", "method"])
    assert math.isclose(gt.loc[("sgt", "grad"), "aup"], 0.35)


def test_where_filters_on_config_keys(store):
    root, _ = store
    rep = report.collect(root, where=["trainer=sgt", "mask-frac=0.5"])
    assert set(rep.groups["trainer"]) == {"sgt"} and len(rep.runs) == 2
    assert len(report.collect(root, where=["seed=1"]).runs) == 2
    assert report.collect(root, where=["dataset=mnist"]).empty
    with pytest.raises(UsageError, match="unknown --where key 'colour'"):
        report.collect(root, where=["colour=red"])
    with pytest.raises(UsageError, match="key=value"):
        report.collect(root, where=["trainer"])


@pytest.mark.parametrize("fmt", ["md", "csv", "latex", "html", "table"])
def test_every_format_renders_and_plots_are_written(store, tmp_path, fmt):
    root, _ = store
    rep = report.collect(root)
    out = tmp_path / f"out-{fmt}"
    res = report.write_report(rep, fmt, out)
    pngs = sorted(p.name for p in out.glob("*.png"))
    if fmt != "csv":
        assert pngs == ["mask_eval_synthetic.png", "robustness_synthetic.png", "training_synthetic.png"]
        for p in out.glob("*.png"):
            assert p.stat().st_size > 5000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = {"md": "report.md", "latex": "report.tex", "html": "report.html"}.get(fmt)
    if text:
        body = (out / text).read_text()
        assert "0.910 ± 0.014" in body or r"0.910 $\pm$ 0.014" in body
    if fmt == "html":
        body = (out / "report.html").read_text()
        assert body.count("data:image/png;base64,") == 3 and "<table" in body
    if fmt == "csv":
        assert {p.name for p in out.glob("*.csv")} == {"training.csv", "mask_eval.csv", "robustness.csv",
                                                       "ground_truth.csv"}
        assert "test_acc_std" in (out / "training.csv").read_text()
    if fmt == "table":
        assert "Training" in res["tables"] and res["text"] is None


def test_text_formats_print_without_out(store):
    rep = report.collect(store[0])
    assert report.write_report(rep, "md")["text"].startswith("# sgtool report")
    assert "\\begin{tabular}" in report.write_report(rep, "latex")["text"]
    assert "# training\n" in report.write_report(rep, "csv")["text"]


def test_corrupt_and_half_written_are_skipped_with_warnings(store):
    root, ids = store
    (root / "deadbeef0000").mkdir()
    (root / "deadbeef0000" / "run.json").write_text("{not json")
    (root / "halfwritten0").mkdir()  # killed before config.yaml was written
    sgt0 = root / ids[("sgt", 0)]
    (sgt0 / "mask_eval" / "aaaaaaaaaaaa.csv").write_text("garbage,\n\x00\x01")
    (sgt0 / "attack" / "cccccccccccc.csv").write_text("run,method,eps,accuracy,n\n")  # no .json yet
    sgt1 = root / ids[("sgt", 1)]
    (sgt1 / "attack" / "bbbbbbbbbbbb.csv").write_text("run,method,eps,accuracy,n\nx,pgd,0.1,lots,3\n")
    std0 = root / ids[("standard", 0)]
    (std0 / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n")  # cut short
    std1 = root / ids[("standard", 1)]
    write_json(std1 / "run.json", {"status": "interrupted", "id": std1.name})
    rep = report.collect(root)
    text = "\n".join(rep.warnings)
    assert "deadbeef0000" in text and "halfwritten0" in text
    assert f"run {sgt0.name}: mask-eval aaaaaaaaaaaa is corrupt" in text
    assert f"run {sgt0.name}: attack cccccccccccc is incomplete" in text
    assert f"run {std1.name} is interrupted; left out" in text
    assert f"run {sgt1.name}: attack bbbbbbbbbbbb is corrupt" in text
    assert f"run {std0.name}: metrics.csv or run.json is corrupt" in text
    assert len(rep.runs) == 2 and len(rep.groups) == 1  # the two sgt seeds
    assert set(rep.attack["run"]) == {sgt0.name}
    # the rest still reports: the remaining sgt seed's mask-eval, everything in every format
    me = report.tables(rep)["mask_eval"]
    assert me["n"].tolist() == [1, 1]  # grad and random of the one sgt seed whose mask-eval is intact
    for fmt in ("md", "html"):
        report.write_report(rep, fmt, store[0].parent / f"o-{fmt}")


def test_eps_labels():
    assert fmt_eps(0.1) == "0.1" and fmt_eps(8 / 255) == "8/255" and fmt_eps(0.2) == "0.2"


# --------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_report_table_and_html(store, tmp_path):
    root, _ = store
    r = runner.invoke(app, ["report", "--runs-dir", str(root)])
    assert r.exit_code == 0, r.output
    assert "Training" in r.output and "0.910 ± 0.014" in r.output
    out = tmp_path / "html"
    r = runner.invoke(app, ["report", "--runs-dir", str(root), "--format", "html", "--out", str(out),
                            "--where", "trainer=sgt"])
    assert r.exit_code == 0, r.output
    assert "report.html" in r.output and (out / "report.html").is_file()


def test_cli_report_bad_input(store, tmp_path):
    root, _ = store
    (tmp_path / "empty").mkdir()
    for args, code, msg in [
        (["--runs-dir", str(tmp_path / "missing")], 1, "no runs in"),
        (["--runs-dir", str(tmp_path / "empty")], 1, "no runs in"),
        (["--runs-dir", str(root), "--format", "pdf"], 2, "unknown format 'pdf'"),
        (["--runs-dir", str(root), "--where", "bogus=1"], 2, "unknown --where key 'bogus'"),
        (["--runs-dir", str(root), "--where", "trainer=asgt"], 1, "match"),
    ]:
        r = runner.invoke(app, ["report", *args])
        assert r.exit_code == code, (args, r.output)
        assert msg in r.output and exited_cleanly(r)
        assert len([line for line in r.output.strip().splitlines() if line.strip()]) == 1, r.output


def test_summary_json_is_untouched(store):
    """The report only reads: no file in the store changes."""
    root, _ = store
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    report.write_report(report.collect(root), "md")
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert before == after and json.loads(next(root.rglob("run.json")).read_text())["status"] == "completed"

"""Every command's tables read whole in an 80-column terminal (a pipe, a log file, CI): no line
wider than 80, nothing cut with an ellipsis, and every number of the results printed whole."""

import csv
import re

import pytest
from typer.testing import CliRunner

from sgtool.cli import app

runner = CliRunner()


def run80(*args):
    r = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    # table lines (prose lines may run on: they wrap in the terminal and hold no cut numbers)
    too_wide = [line for line in r.output.splitlines() if len(line) > 80 and any(c in line for c in "┃│┏┡└")]
    assert not too_wide, "\n".join(too_wide)
    # a table wider than the terminal is cropped at 80: its right border is lost
    cropped = [line for line in r.output.splitlines() if line[:1] in "┏┃┡│└" and line.rstrip()[-1:] not in "┓┃┩│┘"]
    assert not cropped, "\n".join(cropped)
    assert "…" not in r.output, [line for line in r.output.splitlines() if "…" in line]
    return r.output


def numbers_in(path, skip=("run", "method", "n")) -> set[str]:
    """Every value of a results CSV as the tables print it (3 decimals); the drop_vs_random and
    perm_ columns are left out: the CSV keeps them, the terminal shows auc_vs_random and the
    ΔAUP/ΔAUR they make."""
    with open(path) as f:
        return {f"{float(v):.3f}".replace("-0.000", "0.000") for row in csv.DictReader(f) for k, v in row.items()
                if k not in skip and v not in ("", None) and not k.startswith(("drop_vs_random", "perm_"))}


def printed(output: str) -> set[str]:
    return {m.lstrip("+").replace("-0.000", "0.000") for m in re.findall(r"[-+]?\d+\.\d{3}\b", output)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs80")
    common = ["--runs-dir", root, "--epochs", "1"]
    for args in (["--dataset", "synthetic", "--model", "small-cnn", "--train-size", "128", "--test-size", "32"],
                 ["--dataset", "tsb-middle-box", "--model", "tcn", "--width", "4", "--train-size", "64",
                  "--test-size", "16"],
                 ["--dataset", "synthetic-text", "--width", "4", "--train-size", "100", "--test-size", "16"]):
        for trainer in ("standard", "sgt"):
            r = runner.invoke(app, ["train", *map(str, args), "--trainer", trainer, *map(str, common)])
            assert r.exit_code == 0, r.output
    return root


def _ids(root, dataset):
    import yaml

    return sorted(p.name for p in root.iterdir()
                  if yaml.safe_load((p / "config.yaml").read_text())["dataset"] == dataset)


def test_runs_and_datasets(store):
    out = run80("runs", "--runs-dir", store)
    for p in store.iterdir():
        assert p.name in out  # the whole 12-digit id
    (store / "broken").mkdir()
    (store / "broken" / "run.json").write_text("{half")
    out = run80("runs", "--runs-dir", store)
    assert re.search(r"broken .*corrupt", out)
    (store / "broken" / "run.json").unlink()
    (store / "broken").rmdir()
    run80("datasets")


@pytest.mark.parametrize("dataset, extra", [
    ("synthetic", ["--method", "grad,smoothgrad,ig,deeplift,gradshap,deepliftshap,random"]),
    ("tsb-middle-box", ["--method", "grad,smoothgrad,ig,deeplift,gradshap,deepliftshap,random"]),
    ("synthetic-text", ["--method", "grad,ig,smoothgrad,random", "--random-seeds", "2"]),
])
def test_mask_eval_tables(store, dataset, extra):
    for rid in _ids(store, dataset):
        out = run80("mask-eval", rid, *extra, "--runs-dir", store, "--force")
        folder = store / rid / "mask_eval"
        eid = max(folder.glob("*.json"), key=lambda p: p.stat().st_mtime).stem
        want = numbers_in(folder / f"{eid}.summary.csv") | numbers_in(folder / f"{eid}.csv", skip=("run", "method", "n", "fraction"))
        missing = want - printed(out)
        assert not missing, f"not printed whole: {sorted(missing)[:5]}"


def test_attack_table(store):
    rid = _ids(store, "synthetic")[0]
    out = run80("attack", rid, "--method", "fgsm,pgd,mifgsm", "--eps", "0.05,0.1,0.2,0.3", "--steps", "2",
                "--runs-dir", store)
    folder = store / rid / "attack"
    (csv_path,) = folder.glob("*.csv")
    assert numbers_in(csv_path, skip=("run", "method", "n", "eps")) <= printed(out)


def test_report_and_sweep_tables(store, tmp_path):
    out = run80("report", "--runs-dir", store)
    assert "Training" in out and "Mask-eval" in out and "Table 1 (text)" in out
    # runs of three kinds of data differ in many settings: a numbered legend holds them, and
    # every setting reads whole (not one letter a line in a squeezed column)
    assert "┃ # ┃" in out
    for word in ("synthetic-text", "tsb-middle-box", "bilstm", "previous-salient", "saliency_sign"):
        assert word in out, word
    for p in store.iterdir():
        rows = list(csv.DictReader(open(p / "metrics.csv")))
        assert f"{float(rows[-1]['test_acc']):.3f}" in out
    exp = tmp_path / "e.yaml"
    exp.write_text("tiny:\n  train: {dataset: synthetic, model: small-cnn, trainer: [standard, sgt], train_size: 128,\n"
                   "          test_size: 32, epochs: 1}\n")
    out = run80("sweep", exp, "--dry-run", "--runs-dir", store)
    assert "cached" in out

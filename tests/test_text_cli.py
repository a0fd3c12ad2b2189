"""Text through the command line: training, evaluation and report, the options that only text
takes, the kept validation epoch, and bad input."""

import json

import pytest
import torch
from typer.testing import CliRunner

from sgtool.cli import app
from sgtool.config import make_config
from sgtool.errors import UsageError
from sgtool.train import train_run
from tests.conftest import exited_cleanly, train_standard_and_sgt
from tests.text_fixtures import movies_like

runner = CliRunner()


def test_word_vectors_for_a_dataset_that_cannot_read_them_are_refused_in_one_line(tmp_path):
    g = tmp_path / "glove.txt"
    g.write_text("w1 1 2\n")
    r = runner.invoke(app, ["train", "--dataset", "synthetic-text", "--embeddings", str(g), "--runs-dir",
                            str(tmp_path / "runs")])
    assert r.exit_code == 2 and r.output.strip() == ("error: synthetic-text does not read word vectors (its words "
                                                     "are its own); leave out --embeddings")
    assert not (tmp_path / "runs").exists()


def test_oov_for_a_loader_that_cannot_take_it_is_refused(tmp_path):
    from sgtool.data import DATASETS, register_dataset

    g = tmp_path / "glove.txt"
    g.write_text("w1 1 2\n")
    register_dataset("own-vectors", lambda data_dir, train_size, test_size, embeddings=None: None, layout="tokens",
                     shape=(None,), num_classes=2, bounds=None,
                     defaults=dict(model="bilstm", epochs=1, batch_size=8, optimizer="adam", lr=1e-3))
    try:
        make_config(dataset="own-vectors", embeddings=str(g))  # the loader reads vectors: fine
        with pytest.raises(UsageError, match="own-vectors's loader gives the words without a vector their own"):
            make_config(dataset="own-vectors", embeddings=str(g), oov="unk")
    finally:
        DATASETS.pop("own-vectors")


def test_asgt_on_text_is_refused_in_one_line(tmp_path):
    r = runner.invoke(app, ["train", "--dataset", "synthetic-text", "--trainer", "asgt", "--runs-dir", str(tmp_path)])
    assert r.exit_code == 2 and "--trainer asgt is for images and series" in r.output
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- metrics by hand


def test_cli_text_train_mask_eval_explain_report(tmp_path):
    runs = ["--runs-dir", str(tmp_path / "runs")]
    ids = train_standard_and_sgt(tmp_path / "runs", "--dataset", "synthetic-text", "--train-size", "200",
                                 "--test-size", "40", "--epochs", "1", "--width", "8")
    r = runner.invoke(app, ["mask-eval", *ids, "--method", "grad,random", "--random-seeds", "2", *runs])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "comprehensiveness" in out and "AUPRC" in out and "IOU F1" in out
    r = runner.invoke(app, ["explain", *ids, "--method", "grad", "--n", "2", "--out", str(tmp_path / "t.png"), *runs])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "t.html").read_text()
    assert html.startswith("<!doctype html>") and "text-decoration:underline" in html
    r = runner.invoke(app, ["report", *runs])
    assert r.exit_code == 0 and "Table 1 (text)" in r.output and "plausibility" in r.output


@pytest.mark.parametrize("select, epoch, test_acc", [(None, "1", 0.3), ("val-loss", "1", 0.3), ("val", "2", 0.4)])
def test_eraser_runs_keep_the_best_validation_epoch(tmp_path, monkeypatch, select, epoch, test_acc):
    """ERASER's default --select val-loss keeps the first epoch with the lowest validation NLL;
    --select val the first with the best validation accuracy. Both log val_acc and val_loss, keep
    that epoch's weights and report its test accuracy. The scores are scripted so that the two
    picks differ (val-loss 1, val 2), neither is the best test epoch (3) nor the last (4), and
    each criterion ties with epoch 4, which must lose to the earlier epoch."""
    import csv

    from safetensors import safe_open
    from safetensors.torch import load_file

    import sgtool.train as train_mod

    movies_like(tmp_path)
    script = {"acc": iter([0.2, 0.9, 0.5, 0.9]), "loss": iter([0.3, 0.5, 0.4, 0.3]),
              "test": iter([0.3, 0.4, 0.8, 0.1])}
    real = train_mod.split_scores

    def scripted(model, x, y, *a, **kw):
        real(model, x, y, *a, **kw)  # the real pass still runs
        if x is data_seen["val"]:
            return {"acc": next(script["acc"]), "loss": next(script["loss"])}
        return {"acc": next(script["test"]), "loss": 9.0}

    monkeypatch.setattr(train_mod, "split_scores", scripted)
    data_seen = {}
    real_load = train_mod.load_data
    monkeypatch.setattr(train_mod, "load_data", lambda *a, **kw: data_seen.update(
        val=(d := real_load(*a, **kw)).extras["x_val"]) or d)
    cfg = make_config(dataset="eraser-movies", trainer="standard", epochs=4, width=4, data_dir=str(tmp_path),
                      runs_dir=str(tmp_path / "runs"), select=select)
    assert cfg.select == (select or "val-loss") and make_config(dataset="synthetic-text").select is None
    res = train_run(cfg)
    run = res["dir"]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["val_acc"] for r in rows] == ["0.2", "0.9", "0.5", "0.9"]
    assert [r["val_loss"] for r in rows] == ["0.3", "0.5", "0.4", "0.3"]
    with safe_open(str(run / "best.safetensors"), "pt") as f:
        assert f.metadata()["epoch"] == epoch
    final, best = load_file(run / "model.safetensors"), load_file(run / "best.safetensors")
    assert all(torch.equal(final[k], best[k]) for k in final)
    assert res["test_acc"] == test_acc and json.loads((run / "run.json").read_text())["test_acc"] == test_acc
    monkeypatch.undo()
    # selecting on the validation split with it as the test split is refused; --test-split val alone is fine
    sel = select or "val-loss"
    with pytest.raises(UsageError, match=f"--select {sel} keeps an epoch chosen on the validation split"):
        make_config(dataset="eraser-movies", select=sel, test_split="val", data_dir=str(tmp_path))
    assert make_config(dataset="eraser-movies", test_split="val", data_dir=str(tmp_path)).select == "last"
    r = runner.invoke(app, ["train", "--dataset", "synthetic-text", "--select", sel, "--runs-dir", str(tmp_path / "r2")])
    assert r.exit_code == 1 and f"--select {sel} needs a validation split" in r.output
    assert not (tmp_path / "r2").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--dataset", "synthetic-text", "--model", "mnist-cnn"], "model 'mnist-cnn' takes image data"),
    (["--dataset", "mnist", "--embeddings", "x.txt"], "--embeddings, --max-len, --freeze-embeddings, --pooling and --embed-dropout are for text"),
    (["--dataset", "mnist", "--embed-dropout", "0.2"], "--embed-dropout are for text; mnist is image data"),
    (["--dataset", "synthetic-text", "--mask-frac", "0.01"], "masks 0 features of the shortest sample"),
    (["--dataset", "synthetic-text", "--test-split", "dev"], "unknown test split 'dev'"),
])
def test_cli_text_bad_input(tmp_path, args, fragment):
    r = runner.invoke(app, ["train", *args, "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code != 0 and fragment in " ".join(r.output.split()) and exited_cleanly(r)
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- real data


def test_eraser_defaults_to_erasers_embedding_dropout_and_old_runs_keep_their_ids_and_models(tmp_path):
    import dataclasses

    from sgtool import find_run, runs_root
    from sgtool.config import config_hash, from_dict, to_dict
    from sgtool.runs import build_model, load_data, load_model

    root = movies_like(tmp_path)
    cfg = make_config(dataset="eraser-movies", trainer="standard", epochs=1, width=4, data_dir=str(root),
                      runs_dir=str(tmp_path / "runs"))
    assert cfg.embed_dropout == 0.2 and make_config(dataset="synthetic-text").embed_dropout is None
    # --embed-dropout 0 is the run a config without the field (sgtool before this default) named
    old = dataclasses.replace(cfg, embed_dropout=None)
    assert config_hash(make_config(dataset="eraser-movies", trainer="standard", epochs=1, width=4,
                                   data_dir=str(root), embed_dropout=0.0)) == config_hash(old) != config_hash(cfg)
    # a stored config is read as it was written, never re-resolved: an old run still builds p = 0
    assert build_model(from_dict(to_dict(old)), load_data(cfg)).embed_drop.p == 0
    run = find_run(runs_root(cfg.runs_dir), train_run(cfg)["id"])
    assert run["config"]["embed_dropout"] == 0.2 and "embed_dropout: 0.2" in (run["dir"] / "config.yaml").read_text()
    assert load_model(run)[0].embed_drop.p == 0.2

"""mask-eval: exact nested removal, clean accuracy at fraction 0, seeding, caching, the ground
truth metrics against hand computations, and the `sgtool mask-eval` command."""

import csv
import json

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from sgtool import evaluate
from sgtool.cli import app
from sgtool.config import (
    MaskEvalConfig,
    config_hash,
    eval_hash,
    make_config,
    mask_eval_config,
    mask_k,
    resolve_mask_eval,
)
from sgtool.data import load
from sgtool.errors import UsageError
from sgtool.evaluate import mask_eval, precision_at_gt, saliency_precision_recall
from sgtool.layout import removal_rank
from sgtool.runs import accuracy, load_model
from sgtool.saliency import SALIENCY, get_saliency, position_score
from sgtool.store import find_run
from sgtool.train import train_run
from tests.conftest import exited_cleanly, record_model_inputs

TRAIN = dict(dataset="synthetic", model="mlp", trainer="standard", train_size=256, test_size=64, epochs=1,
             batch_size=64)
TRAIN_FLAGS = ["--dataset", "synthetic", "--model", "mlp", "--trainer", "standard", "--train-size", "256",
               "--test-size", "64", "--epochs", "1", "--train-batch-size", "64"]
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny trained run (an MLP on the synthetic data, one epoch)."""
    root = tmp_path_factory.mktemp("runs")
    res = train_run(make_config(**TRAIN, runs_dir=str(root)))
    return find_run(root, res["id"])


def test_exactly_the_k_most_salient_positions_are_removed_once_each(run, monkeypatch, tmp_path):
    """Every input the model sees is the clean batch with exactly the m top-ranked (or, for
    insertion, bottom-ranked) positions of a known score replaced, for every fraction; and each
    distinct removal is passed through the model once."""
    n, hw = 16, 28 * 28
    g = torch.Generator().manual_seed(0)
    # A known score without ties: a different random permutation of the positions per sample.
    score = torch.stack([torch.randperm(hw, generator=g) for _ in range(n)]).float().view(n, 1, 28, 28)
    monkeypatch.setitem(SALIENCY, "probe", lambda model, x, target, **kw: score[: len(x)])
    seen = record_model_inputs(monkeypatch)
    x = load("synthetic", test_size=64).x_test[:n]
    rank = removal_rank(score.view(n, -1)).view(n, 28, 28)  # (n, H, W)
    fractions = (0.0, 0.1, 0.25, 0.5, 0.9)
    ks = {mask_k(f, (1, 28, 28)) for f in fractions} - {0}
    di = [mask_k(j / 10, (1, 28, 28)) for j in range(1, 10)]  # deletion / insertion points
    for order, end in (("morf", "top"), ("lerf", "bottom")):
        seen.clear()
        cfg = MaskEvalConfig(methods=("probe",), fractions=fractions, order=order, fill="random", limit=n,
                             batch_size=n)
        res = mask_eval(run, cfg, force=True)
        assert [r["fraction"] for r in res["rows"]] == list(fractions)
        removals = []
        for inp in seen:
            changed = (inp != x)[:, 0]  # (n, H, W): a random fill never equals the pixel it replaces
            m = changed.flatten(1).sum(1)
            assert (m == m[0]).all(), "every sample loses the same number of positions"
            m = int(m[0])
            if torch.equal(changed, rank < m):
                removals.append(("top", m))
            else:
                assert torch.equal(changed, rank >= hw - m), f"{m} removed positions are not the top or bottom {m}"
                removals.append(("bottom", m))
        assert ("top", 0) in removals and ("top", hw) in removals  # the clean and the all-filled pass
        assert {(end, k) for k in ks} <= set(removals)  # every fraction of the accuracy curve
        assert {("top", k) for k in di} | {("bottom", hw - k) for k in di} <= set(removals)
        assert len(removals) == len(set(removals)), "a removal was passed through the model twice"


def test_fraction_zero_is_the_clean_accuracy_for_every_method(run):
    cfg = MaskEvalConfig(methods=tuple(sorted(SALIENCY)), fractions=(0.0, 0.5), limit=16, batch_size=16)
    res = mask_eval(run, cfg)
    model, _ = load_model(run)
    data = load("synthetic", test_size=64)
    clean = accuracy(model, data.x_test[:16], data.y_test[:16])
    at0 = {r["method"]: r["accuracy"] for r in res["rows"] if r["fraction"] == 0.0}
    assert set(at0) == set(SALIENCY)
    assert all(a == pytest.approx(clean, abs=1e-6) for a in at0.values())
    assert res["clean_accuracy"] == pytest.approx(clean, abs=1e-6)
    assert all(r["n"] == 16 for r in res["rows"])


def test_files_summary_and_cache(run):
    cfg = MaskEvalConfig(methods=("grad", "random"), fractions=(0.0, 0.2, 0.6), limit=32, batch_size=20)
    res = mask_eval(run, cfg, force=True)
    eid = eval_hash(resolve_mask_eval(cfg, "synthetic"), run["id"])
    folder = run["dir"] / "mask_eval"
    assert res["id"] == eid and res["path"] == folder / f"{eid}.csv" and not res["cached"]
    with open(folder / f"{eid}.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["run", "method", "fraction", "accuracy", "n"] and len(rows) == 6
    with open(folder / f"{eid}.summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert list(summary[0]) == ["run", "method", "auc", "auc_vs_random", "deletion_auc", "insertion_auc", "aup",
                                "aur", "precision_at_gt", "drop_vs_random_0", "drop_vs_random_0.2",
                                "drop_vs_random_0.6"]
    meta = json.loads((folder / f"{eid}.json").read_text())
    assert meta["kind"] == "mask_eval" and meta["run"] == run["id"] and meta["config"]["methods"] == ["grad", "random"]
    # The summary follows from the rows: trapezoid area, and drops relative to random.
    acc = {(r["method"], r["fraction"]): r["accuracy"] for r in res["rows"]}
    s = {r["method"]: r for r in res["summary"]}
    area = lambda m: 0.2 * (acc[m, 0.0] + acc[m, 0.2]) / 2 + 0.4 * (acc[m, 0.2] + acc[m, 0.6]) / 2  # noqa: E731
    assert s["grad"]["auc"] == pytest.approx(area("grad"), abs=2e-6)
    assert s["grad"]["auc_vs_random"] == pytest.approx(area("grad") - area("random"), abs=2e-6)
    assert s["grad"]["drop_vs_random_0.6"] == pytest.approx(acc["random", 0.6] - acc["grad", 0.6], abs=2e-6)
    assert s["random"]["drop_vs_random_0.2"] == 0.0
    assert all(0.0 <= s[m][k] <= 1.0 for m in s for k in ("deletion_auc", "insertion_auc", "aup", "aur", "precision_at_gt"))
    again = mask_eval(run, cfg)
    assert again["cached"] and again["rows"] == res["rows"] and again["summary"] == res["summary"]


def test_random_baseline_is_reproducible_from_its_seed(run):
    def go(seed):
        cfg = MaskEvalConfig(methods=("random",), fractions=(0.0, 0.3, 0.6), fill="random", limit=40,
                             batch_size=16, seed=seed)
        return mask_eval(run, cfg, force=True)

    first, second, other = go(0), go(0), go(1)
    assert first["rows"] == second["rows"] and first["summary"] == second["summary"]
    assert other["id"] != first["id"]
    x = torch.rand(4, 1, 28, 28)
    rnd = get_saliency("random")
    assert torch.equal(rnd(None, x, None, seed=3), rnd(None, x, None, seed=3))
    assert not torch.equal(rnd(None, x, None, seed=3), rnd(None, x, None, seed=4))


def test_grad_has_precision_one_on_a_model_that_reads_only_known_pixels():
    known = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    known[0, 0, 1:3, 2:5] = True  # 6 pixels
    g = torch.Generator().manual_seed(0)
    w = (torch.rand(3, 36, generator=g) + 0.5) * known.flatten()  # non-zero weights on known pixels only
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3, bias=False)).eval()
    model[1].weight.data = w
    x = torch.rand(5, 1, 6, 6, generator=g)
    score = position_score(get_saliency("grad")(model, x, torch.tensor([0, 1, 2, 0, 1])))
    gt = known.expand(5, 1, 6, 6)
    prec, rec = saliency_precision_recall(score, gt)
    assert torch.allclose(prec, torch.ones(5, 9))
    assert torch.allclose(rec[:, -1], torch.tensor(0.9), atol=0.2)  # recall grows towards 1
    assert torch.equal(precision_at_gt(score, gt), torch.ones(5))
    assert evaluate.trapezoid(prec, evaluate.GT_LEVELS).mean().item() == pytest.approx(0.8)  # AUP = 1 x (0.9 - 0.1)


def test_aup_aur_and_precision_at_gt_match_a_hand_computation():
    # Scores 4, 3, 2, 1 (total 10) at shuffled positions of a 2x2 image; GT = the "3" and "2".
    score = torch.tensor([[[2.0, 4.0], [1.0, 3.0]]])
    gt = torch.tensor([[[[True, False], [False, True]]]])
    # p <= 0.4: {4} is enough.  0.5 <= p <= 0.7: {4, 3} (sum 7).  p >= 0.8: {4, 3, 2} (sum 9).
    prec_hand = [0, 0, 0, 0, 3 / 7, 3 / 7, 3 / 7, 5 / 9, 5 / 9]
    rec_hand = [0, 0, 0, 0, 3 / 5, 3 / 5, 3 / 5, 1, 1]
    prec, rec = saliency_precision_recall(score, gt)
    assert prec[0].tolist() == pytest.approx(prec_hand)
    assert rec[0].tolist() == pytest.approx(rec_hand)
    area = lambda ys: sum(0.1 * (a + b) / 2 for a, b in zip(ys, ys[1:]))  # noqa: E731
    assert evaluate.trapezoid(prec, evaluate.GT_LEVELS).item() == pytest.approx(area(prec_hand))
    assert evaluate.trapezoid(rec, evaluate.GT_LEVELS).item() == pytest.approx(area(rec_hand))
    assert precision_at_gt(score, gt).item() == pytest.approx(0.5)  # top 2 = {4, 3}; only 3 is in GT
    # A saliency map of zeros selects nothing: precision and recall 0, not nan.
    p0, r0 = saliency_precision_recall(torch.zeros(1, 2, 2), gt)
    assert (p0 == 0).all() and (r0 == 0).all()


def test_config_validation():
    cfg = mask_eval_config(methods="grad, ig,grad", fractions="0.5,0,0.1")
    assert cfg.methods == ("grad", "ig") and cfg.fractions == (0.0, 0.1, 0.5)
    assert mask_eval_config() == MaskEvalConfig()
    for kw, msg in [
        (dict(methods="grad,lime"), "unknown saliency method 'lime'; choose from: deeplift"),
        (dict(fractions="0,1"), "outside [0, 1)"),
        (dict(fractions="nan"), "outside [0, 1)"),
        (dict(fractions="0,x"), "'x' is not a number"),
        (dict(limit=0), "--limit must be at least 1"),
        (dict(batch_size=0), "--batch-size must be at least 1"),
        (dict(order="middle"), "unknown order 'middle'"),
        (dict(target="other"), "unknown target 'other'"),
        (dict(baseline="mean"), "unknown baseline 'mean'"),
        (dict(output="prob"), "unknown output 'prob'"),
        (dict(ties="first"), "unknown ties 'first'"),
    ]:
        with pytest.raises(UsageError, match=msg.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            mask_eval_config(**kw)
    # the fill depends on the kind of data: checked against the run's dataset
    with pytest.raises(UsageError, match="unknown image fill 'noise'"):
        resolve_mask_eval(mask_eval_config(fill="noise"), "synthetic")


# --------------------------------------------------------------------------- the command


def invoke(*args):
    return runner.invoke(app, ["mask-eval", *[str(a) for a in args]])


def test_cli_by_id_then_cached_then_by_training_flags(run):
    root = run["dir"].parent
    args = ["--runs-dir", root, "--method", "grad,random", "--fractions", "0,0.5", "--limit", "16"]
    r = invoke(run["id"][:6], *args)
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "accuracy as the most salient features are removed" in out and "vs random" in out and "P@GT" in out
    eid = eval_hash(resolve_mask_eval(mask_eval_config(methods="grad,random", fractions="0,0.5", limit=16),
                                      "synthetic"), run["id"])
    assert (run["dir"] / "mask_eval" / f"{eid}.json").is_file()
    again = invoke(*TRAIN_FLAGS, *args)  # the same run, found by the hash of its training config
    assert config_hash(make_config(**TRAIN)) == run["id"]
    assert again.exit_code == 0 and "(cached)" in again.output and run["id"] in again.output


@pytest.mark.parametrize("args, code, fragment", [
    (["{id}", "--method", "grad,lime"], 2, "unknown saliency method 'lime'; choose from: deeplift, deeplift-authors, "
                                           "deepliftshap, grad, gradshap, guided-backprop, ig, inputxgrad, occlusion, "
                                           "random, smoothgrad, tsr-<method>"),
    (["{id}", "--fractions", "0,1"], 2, "--fractions: 1.0 is outside [0, 1)"),
    (["{id}", "--fractions", "-0.1"], 2, "--fractions: -0.1 is outside [0, 1)"),
    (["{id}", "--limit", "0"], 2, "--limit must be at least 1, got 0"),
    (["{id}", "--fill", "noise"], 2, "unknown image fill 'noise'"),
    (["ffffff"], 1, "no run 'ffffff' in"),
    ([], 1, "name a run id, or give the training flags"),
    (["--dataset", "synthetic", "--epochs", "7"], 1, "no run for that training config"),
])
def test_cli_bad_input_one_line_no_traceback_nothing_written(run, args, code, fragment):
    root = run["dir"].parent
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    r = invoke(*[a.replace("{id}", run["id"]) for a in args], "--runs-dir", root)
    assert r.exit_code == code, r.output
    assert fragment in " ".join(r.output.split())
    assert len(r.output.strip().splitlines()) == 1 and exited_cleanly(r)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before

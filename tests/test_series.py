"""Time series: the TSB generators, the .ts reader, the series models, SGT on padded series, the
ground-truth metrics' sanity values, TSR, the CLI, and the real UEA files."""

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sgtool.cli import app
from sgtool.config import make_config
from sgtool.data import get_dataset, load
from sgtool.data.series import BACKGROUNDS, TSB_TYPES, _narma_curve, make_tsb
from sgtool.data.uea import read_ts
from sgtool.errors import SgtoolError, UsageError
from sgtool.evaluate.ground_truth import axis_precision_recall, series_metrics
from sgtool.models import build, models_for
from sgtool.saliency import SALIENCY, needs_cudnn_off
from sgtool.saliency.tsr import tsr
from sgtool.sgt import SGTLoss
from tests.conftest import exited_cleanly, train_standard_and_sgt
from tests.toys import ToySeries

runner = CliRunner()
SHARED_UEA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "uea"


# --------------------------------------------------------------------------- the generator

@pytest.mark.parametrize("kind", sorted(TSB_TYPES))
def test_box_positions_labels_and_ground_truth(kind):
    x, y, gt = make_tsb(kind, "box", 200, seed=3)
    bt, bf, start = TSB_TYPES[kind]
    assert x.shape == gt.shape == (200, 50, 50) and y.shape == (200,) and set(y.tolist()) == {0, 1}
    steps, feats = gt.any(2), gt.any(1)  # (N, T), (N, F)
    assert (steps.sum(1) == bt).all() and (feats.sum(1) == bf).all() and (gt.sum((1, 2)) == bt * bf).all()
    t0, f0 = steps.float().argmax(1), feats.float().argmax(1)
    if isinstance(start, tuple):
        assert (t0 == start[0]).all() and (f0 == start[1]).all()
    elif start == "moving":
        assert t0.max() < 50 - bt and f0.max() < 50 - bf and len(set(t0.tolist())) > 5
    elif start == "time":  # the class sets the features
        assert (f0 == torch.where(y == 1, 1, 29)).all() and len(set(t0.tolist())) > 5
    else:
        assert (t0 == torch.where(y == 1, 1, 29)).all() and len(set(f0.tolist())) > 5
    # On the box background the box's cells are N(+1, 1) for class 1 and N(-1, 1) for class 0
    # (positional sets: always +1); the rest is N(0, 1).
    box_mean = (x * gt).sum((1, 2)) / gt.sum((1, 2))
    plus = torch.ones(200, dtype=torch.bool) if start in ("time", "feature") else y == 1
    assert abs(box_mean[plus].mean() - 1) < 0.1 and (start in ("time", "feature") or abs(box_mean[~plus].mean() + 1) < 0.1)
    assert abs(x[~gt].mean()) < 0.02 and abs(x[~gt].std() - 1) < 0.02
    x2, y2, gt2 = make_tsb(kind, "box", 200, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(gt, gt2)  # seeded


# (mean, std) over all cells of a long draw of each background, without a box: the processes'
# own moments plus N(0, 0.3) noise. AR and GP are averaged over their first steps too.
MOMENTS = {"box": (0.0, 1.0), "car": (0.0, 0.3), "harmonic": (0.0, math.sqrt(0.5 + 0.09)),
           "pseudo-periodic": (0.0, None), "narma": (0.260, None), "gp": (0.0, math.sqrt(1 + 0.09)),
           "ar": (0.0, None)}


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_background_moments(background):
    from sgtool.data.series import BACKGROUND_FNS

    x = BACKGROUND_FNS[background](400, 50, 50, torch.Generator().manual_seed(0))
    mean, std = MOMENTS[background]
    assert abs(x.mean().item() - mean) < 0.05, x.mean()
    if std is not None:
        assert abs(x.std().item() - std) < 0.06, x.std()
    if background == "ar":  # x_t = 0.9 x_{t-1} + N(0, 0.5) from 0: Var(x_t) = 0.25 (1 - 0.81^(t+1)) / 0.19
        late = x[:, 40:].var().item()
        assert abs(late - (0.25 / 0.19 + 0.09)) < 0.2
    if background == "narma":  # one deterministic curve in every feature of every sample, plus noise
        assert torch.allclose(x.mean((0, 2)), _narma_curve(50), atol=0.02)
    if background == "pseudo-periodic":  # E[amp^2] E[sin^2] + noise, with amp ~ N(1, 0.5)
        assert 0.55 < x.var().item() < 0.8


def test_narma_keeps_the_benchmarks_curve():
    want = [0.102891, 0.476658, 0.471501, 0.28912, 0.197374, 0.169941, 0.157609, 0.317732, 0.292688, 0.265136]
    assert _narma_curve(50)[:10].tolist() == pytest.approx(want, abs=1e-6)


def test_tsb_dataset_is_scaled_on_train_and_sizes_work():
    d = load("tsb-rare-time-gp", train_size=64, test_size=20)
    assert d.x_train.shape == (64, 50, 50) and d.x_test.shape == (20, 50, 50) and d.gt_test.shape == (20, 50, 50)
    assert d.x_train.min() == 0 and d.x_train.max() == 1  # min-max per cell on the training split
    bg = d.extras["background"](3, torch.Generator().manual_seed(0))
    assert bg.shape == (3, 50, 50)
    # an evaluation that asks for one training sample gets the run's scaling
    e = load("tsb-rare-time-gp", train_size=1, test_size=20, run_train_size=64)
    assert torch.equal(e.x_test, d.x_test)


# --------------------------------------------------------------------------- the .ts reader

def write_ts(path, rows, header="@problemName t\n@dimensions 2\n@equalLength false\n@classLabel true a b\n@data\n"):
    path.write_text("# a comment\n" + header + "\n".join(rows) + "\n")
    return path


def test_ts_reader_equal_and_unequal_length(tmp_path):
    series, labels, classes = read_ts(write_ts(tmp_path / "u.ts", ["1,2,3:4,5,6:a", "7,?:9,10:b"]))
    assert classes == ["a", "b"] and labels == ["a", "b"]
    assert series[0].shape == (3, 2) and series[1].shape == (2, 2) and np.isnan(series[1][1, 0])
    assert series[0][:, 1].tolist() == [4, 5, 6]


@pytest.mark.parametrize("rows, header, fragment", [
    (["1,2:3,4"], None, "line 7: 1 dimensions, the header says 2"),
    (["1,2:3,x:a"], None, "line 7: a value is not a number"),
    (["1,2:3:a"], None, "line 7: its dimensions have different lengths"),
    (["1,2:3,4:c"], None, "line 7: class 'c' is not among @classLabel a b"),
    (["1,2:3,4:a"], "@problemName t\n1,2\n", "line 3: expected an @ header line"),
    ([], None, "no @data section with cases"),
])
def test_malformed_ts_names_the_file_and_line(tmp_path, rows, header, fragment):
    kw = {} if header is None else {"header": header}
    path = write_ts(tmp_path / "bad.ts", rows, **kw)
    with pytest.raises(SgtoolError) as e:
        read_ts(path)
    assert str(path) in str(e.value) and fragment in str(e.value) and "\n" not in str(e.value)


def test_uea_loader_pads_at_the_front_and_standardises(tmp_path):
    d = tmp_path / "uea" / "Toy"
    d.mkdir(parents=True)
    write_ts(d / "Toy_TRAIN.ts", ["1,2,3:4,5,6:a", "7,8:9,10:b", "2,2,2:1,1,1:a"])
    write_ts(d / "Toy_TEST.ts", ["1:2:b"])
    spec = get_dataset("uea:Toy", tmp_path)
    assert spec.layout == "series" and spec.shape == (3, 2) and spec.num_classes == 2
    data = load("uea:Toy", tmp_path)
    assert data.valid_train.tolist() == [[True] * 3, [False, True, True], [True] * 3]
    assert data.x_train[1, 0].tolist() == [0.0, 0.0]  # front padding is 0 (the channel mean)
    real = data.x_train[data.valid_train]  # (cells, F): standardised on the training split
    assert torch.allclose(real.mean(0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(real.std(0, unbiased=False), torch.ones(2), atol=1e-5)
    assert data.valid_test.tolist() == [[False, False, True]]


# --------------------------------------------------------------------------- models

SHAPES = [(50, 50), (28, 28), (29, 12), (100, 6)]


@pytest.mark.parametrize("name", models_for("series"))
@pytest.mark.parametrize("shape", SHAPES)
def test_every_series_model_forward_backward(name, shape):
    from sgtool.data import DatasetSpec

    spec = DatasetSpec(None, shape, 3, layout="series")
    heads = [h for h in (5, 4, 3, 2) if shape[1] % h == 0][0] if name == "transformer" else None
    torch.manual_seed(0)
    model = build(name, spec, width=8, heads=heads)
    x = torch.rand(2, *shape, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape and all(p.grad is not None for p in model.parameters())


def test_transformer_heads_must_divide_the_features():
    with pytest.raises(UsageError, match="5 heads do not divide the 6 features .* pass --heads with one of 1, 2, 3, 6"):
        make_config(dataset="uea-basic-motions", model="transformer")
        build("transformer", "uea-basic-motions")


def test_tcn_and_attention_are_causal():
    """A change at step t changes nothing the model computes from steps before t."""
    from sgtool.models.series import TCN, InputCellAttention

    torch.manual_seed(0)
    x = torch.rand(1, 20, 4)
    y = x.clone()
    y[0, 12:] = torch.rand(8, 4)
    tcn = TCN(4, 2, 8).eval()
    assert torch.allclose(tcn.blocks(x.transpose(1, 2))[..., :12], tcn.blocks(y.transpose(1, 2))[..., :12])
    att = InputCellAttention(4)
    assert torch.allclose(att(x)[:, :12], att(y)[:, :12])


def test_cudnn_rnn_eval_gradients_are_handled():
    """cuDNN refuses an RNN backward in eval mode; saliency passes then switch cuDNN off for
    models with an RNN on CUDA. The decision is testable on a CPU."""
    lstm = build("lstm", "tsb-middle-box")
    assert needs_cudnn_off(lstm, "cuda") and not needs_cudnn_off(lstm, "cpu")
    assert not needs_cudnn_off(build("tcn", "tsb-middle-box"), "cuda")


# --------------------------------------------------------------------------- SGT on series

def test_sgt_on_padded_series_never_touches_padding():
    torch.manual_seed(0)
    model = build("lstm", "uea-japanese-vowels", width=8).train()
    x = torch.randn(4, 29, 12)
    steps = torch.arange(29)[None] >= torch.tensor([0, 10, 20, 22])[:, None]  # front padding
    x[~steps] = 0
    seen = []
    real_forward = model.forward
    model.forward = lambda inp: seen.append(inp.detach().clone()) or real_forward(inp)
    loss = SGTLoss(mask_frac=0.5, layout="series", fill="zero")(model, x, torch.arange(4), steps)
    loss.backward()
    masked = seen[-1]  # the X~ pass
    assert torch.equal(masked[~steps], x[~steps])
    changed = (masked != x).reshape(4, -1).sum(1)
    assert changed.tolist() == [math.floor(0.5 * n * 12) for n in steps.sum(1).tolist()]


# --------------------------------------------------------------------------- metrics

def test_aup_sanity_values_on_the_middle_box():
    """The ground truth as the map gives AUP 0.8 (the maximum over p = 0.1..0.9); a uniform
    random map gives about 0.28 (the box is 36 % of the cells)."""
    _, _, gt = make_tsb("middle", "box", 100, seed=2)
    gtf = gt.reshape(100, -1)
    perm = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    m = series_metrics(gtf.double(), gtf, (50, 50), perm())
    assert m["aup"] / 100 == pytest.approx(0.8, abs=1e-6) and m["aupr"] / 100 == pytest.approx(0.8, abs=1e-6)
    r = series_metrics(torch.rand(100, 2500, generator=torch.Generator().manual_seed(1)), gtf, (50, 50), perm())
    assert 0.26 < r["aup"] / 100 < 0.31
    assert abs(r["aup"] - r["perm_aup"]) / 100 < 0.02  # permuting noise changes nothing


def test_time_and_feature_level_precision_recall_by_hand():
    # one sample, T=3, F=2; the box is step 1, both features; scores put all mass on (1, 0) and (2, 1)
    score = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]]])
    gt = torch.tensor([[[False, False], [True, True], [False, False]]])
    out = axis_precision_recall(score, gt, levels=(0.5, 0.9))
    # p = 0.5: only (1, 0) is taken -> step 1 (true) and feature 0 (true)
    # p = 0.9: (1, 0) and (2, 1) -> steps 1, 2 and features 0, 1
    # step weights: mean of the top-2 scores of each step (the box spans 2 features): 0, 1.5, 0.5
    tp, fp = 1.5, 0.5
    assert out["time"][0][0].tolist() == pytest.approx([1.0, tp / (tp + fp)])
    assert out["time"][1][0].tolist() == pytest.approx([1.0, 1.0])
    # feature weights: top-1 score of each feature (the box spans 1 step): 3 and 1; both are true
    assert out["feature"][0][0].tolist() == pytest.approx([1.0, 1.0])
    assert out["feature"][1][0].tolist() == pytest.approx([3 / 4, 1.0])


# --------------------------------------------------------------------------- TSR

def _tsr_loop(method, model, x, target):
    """TSR written out one sample, one step, one cell at a time: the reference."""
    out = torch.zeros_like(x)
    for i in range(len(x)):
        xi, ti = x[i : i + 1], target[i : i + 1]
        a0 = method(model, xi, ti)
        v = xi[0, 0, 0]
        delta = torch.zeros(x.shape[1])
        for t in range(x.shape[1]):
            xm = xi.clone()
            xm[0, t] = v
            delta[t] = (method(model, xm, ti) - a0).abs().sum()
        tau = (delta - delta.min()) / (delta.max() - delta.min()) if delta.max() > delta.min() else delta * 0
        keep = tau > torch.quantile(tau, 0.55)
        for t in range(x.shape[1]):
            if not keep[t]:
                out[i, t] = 0.1 * tau[t]
                continue
            d = torch.zeros(x.shape[2])
            for f in range(x.shape[2]):
                xm = xi.clone()
                xm[0, t, f] = v
                d[f] = (method(model, xm, ti) - a0).abs().sum()
            phi = (d - d.min()) / (d.max() - d.min()) if d.max() > d.min() else d * 0
            out[i, t] = tau[t] * phi
    return out


def test_tsr_finds_the_cells_a_linear_model_reads_and_equals_the_loop():
    model = ToySeries(t=10, f=4, classes=2).double()
    with torch.no_grad():  # the model reads steps 2..5 and features 1..2 only
        model.w.zero_()
        model.w[:, 2:6, 1:3] = torch.randn(2, 4, 2, generator=torch.Generator().manual_seed(0))
    x = torch.rand(3, 10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    target = torch.tensor([0, 1, 1])
    method = SALIENCY["inputxgrad"]
    r = tsr(method)(model, x, target)
    support = torch.zeros(10, 4, dtype=torch.bool)
    support[2:6, 1:3] = True
    assert (r[:, ~support] == 0).all() and (r[:, support] > 0).all()
    torch.testing.assert_close(r, _tsr_loop(method, model, x, target))
    rnd = torch.rand(3, 10, 4, dtype=torch.float64)  # any method: the batched TSR equals the loop
    torch.testing.assert_close(tsr(SALIENCY["grad"])(model, rnd, target), _tsr_loop(SALIENCY["grad"], model, rnd, target))


# --------------------------------------------------------------------------- the CLI

TINY = ["--dataset", "tsb-small-middle-box", "--model", "tcn", "--train-size", "64", "--test-size", "16",
        "--epochs", "1", "--width", "8"]


def test_cli_train_mask_eval_explain_report(tmp_path):
    runs = ["--runs-dir", str(tmp_path / "runs")]
    ids = train_standard_and_sgt(tmp_path / "runs", *TINY)
    r = runner.invoke(app, ["mask-eval", *ids, "--method", "grad,tsr-grad,random", "--fractions", "0,0.5", *runs])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "ΔAUP perm" in out and "time AUP" in out and "fill background" in out
    r = runner.invoke(app, ["explain", *ids, "--method", "grad", "--n", "2", "--out", str(tmp_path / "m.png"), *runs])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.png").stat().st_size > 1000 and (tmp_path / "m.safetensors").is_file()
    r = runner.invoke(app, ["report", *runs])
    assert r.exit_code == 0, r.output
    assert "Table 2 (time series): Diff(AUP)" in r.output and "tcn" in r.output


@pytest.mark.parametrize("args, code, fragment", [
    (["--dataset", "tsb-middle-tartan"], 2, "unknown dataset 'tsb-middle-tartan'"),
    (["--dataset", "tsb-middle-box", "--model", "mnist-cnn"], 2, "model 'mnist-cnn' takes image data, but "
                                                                  "tsb-middle-box is series data; use one of: "
                                                                  "lstm, lstm-ica, tcn, transformer"),
    (["--dataset", "tsb-middle-box", "--mask-frac", "0.0001"], 2, "masks 0 of 2500 features"),
    (["--dataset", "tsb-middle-box", "--trainer", "asgt", "--adv-eps", "1.5"], 2,
     "--adv-eps 1.5 is wider than tsb-middle-box's value range (1)"),
    (["--dataset", "mnist-seq", "--model", "transformer", "--data-dir", "{shared}"], 2,
     "5 heads do not divide the 28 features"),
])
def test_cli_bad_input(tmp_path, args, code, fragment):
    shared = str(SHARED_UEA.parent)
    r = runner.invoke(app, ["train", *[a.replace("{shared}", shared) for a in args], "--runs-dir", str(tmp_path)])
    assert r.exit_code == code, r.output
    assert fragment in " ".join(r.output.split()) and exited_cleanly(r)
    assert list(tmp_path.iterdir()) == []


def test_attack_on_series_checks_eps_against_the_range(tmp_path):
    r = runner.invoke(app, ["train", *TINY, "--trainer", "standard", "--runs-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    (rid,) = [p.name for p in tmp_path.iterdir()]
    r = runner.invoke(app, ["attack", rid, "--eps", "1.5", "--runs-dir", str(tmp_path)])
    assert r.exit_code == 2 and "--eps must be in [0, 1] for tsb-small-middle-box" in r.output
    r = runner.invoke(app, ["attack", rid, "--method", "fgsm,pgd", "--eps", "0.05", "--steps", "3",
                            "--runs-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------- real data

@pytest.fixture
def uea():
    if not (SHARED_UEA / "BasicMotions").is_dir():
        pytest.skip(f"the UEA files are not at {SHARED_UEA}")
    return SHARED_UEA.parent


def test_real_basic_motions(uea):
    d = load("uea-basic-motions", uea)
    assert d.x_train.shape == (40, 100, 6) and d.x_test.shape == (40, 100, 6) and d.valid_train is None
    assert d.classes == ["Standing", "Running", "Walking", "Badminton"] and d.y_train.bincount().tolist() == [10] * 4


def test_real_japanese_vowels(uea):
    d = load("uea-japanese-vowels", uea)
    assert d.x_train.shape == (270, 29, 12) and d.x_test.shape == (370, 29, 12)
    lengths = torch.cat([d.valid_train.sum(1), d.valid_test.sum(1)])
    assert lengths.min() == 7 and lengths.max() == 29 and len(d.classes) == 9
    assert (d.x_train[~d.valid_train] == 0).all()

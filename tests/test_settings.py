"""Every mask-eval setting that moves the SGT authors' numbers is pinned here (each test fails
when its setting changes): SmoothGrad's samples and sigma, GradientShap's sigma and baselines,
IG's steps, the baselines' range, the background pixel, the explained output (log p or logit),
and how ties are broken. Also: a corrupt model file is one line."""

import functools

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from sgtool.cli import app
from sgtool.config import make_config, mask_eval_config
from sgtool.layout import IMAGE_FILLS
from sgtool.models import build
from sgtool.saliency import LogProb, explain_setup, get_saliency
from sgtool.store import find_run
from sgtool.train import train_run
from tests.conftest import exited_cleanly, record_model_inputs

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def model_and_batch():
    torch.manual_seed(0)
    model = build("mnist-cnn", "mnist").eval().requires_grad_(False)
    return model, torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])


@pytest.fixture
def spy(monkeypatch):
    """Records the keyword arguments of Captum's attribute calls, per class."""
    import captum.attr as ca

    calls = {}

    def wrap(cls):
        real = cls.attribute

        @functools.wraps(real)  # Captum calls some methods through attribute.__wrapped__
        def attribute(self, inputs, *args, **kw):
            calls[cls.__name__] = {**kw, "inputs": inputs}
            return real(self, inputs, *args, **kw)

        monkeypatch.setattr(cls, "attribute", attribute)

    for name in ("NoiseTunnel", "GradientShap", "IntegratedGradients", "DeepLift", "DeepLiftShap"):
        wrap(getattr(ca, name))
    return calls


def run_method(name, baseline="authors", output="logprob"):
    model, x, y = model_and_batch()
    explained, kw = explain_setup(model, [name], output, baseline, "image")
    return get_saliency(name)(explained, x, y, seed=0, **kw), model


def test_smoothgrad_samples_and_sigma(spy):
    run_method("smoothgrad")
    kw = spy["NoiseTunnel"]
    assert kw["nt_type"] == "smoothgrad_sq" and kw["nt_samples"] == 5
    assert kw["stdevs"] == pytest.approx(1.0 * MNIST_STD)  # 1 normalised unit, in pixels


def test_gradientshap_sigma_and_baselines(spy):
    run_method("gradshap")
    kw = spy["GradientShap"]
    assert kw["n_samples"] == 5 and kw["stdevs"] == pytest.approx(0.09 * MNIST_STD)
    assert kw["baselines"].shape == (5, 1, 28, 28)


def test_integrated_gradients_steps_and_one_baseline_per_sample(spy):
    run_method("ig")
    kw = spy["IntegratedGradients"]
    assert kw["n_steps"] == 50 and kw["baselines"].shape == (3, 1, 28, 28)


@pytest.mark.parametrize("baseline, lo, hi", [
    ("authors", MNIST_MEAN, MNIST_MEAN + MNIST_STD),  # U[0, 1) in normalised units, in pixels
    ("uniform", 0.0, 1.0),
    ("zero", 0.0, 0.0),
])
def test_the_baselines_range(spy, baseline, lo, hi):
    for method, cls, key in (("ig", "IntegratedGradients", "baselines"), ("deeplift", "DeepLift", "baselines"),
                             ("deepliftshap", "DeepLiftShap", "baselines")):
        run_method(method, baseline=baseline)
        refs = spy[cls][key]
        if method == "deepliftshap" and baseline == "zero":  # the SHAP methods keep noise baselines
            lo_, hi_ = 0.0, 1.0
        else:
            lo_, hi_ = lo, hi
        assert refs.min().item() >= lo_ - 1e-6 and refs.max().item() <= hi_ + 1e-6, (method, baseline)
        if hi_ > lo_:
            assert refs.max().item() - refs.min().item() > 0.5 * (hi_ - lo_)  # spread over the range


def test_deeplift_authors_is_input_minus_baseline_times_gradient():
    model, x, y = model_and_batch()
    explained, kw = explain_setup(model, ["deeplift-authors"], "logprob", "zero", "image")
    got = get_saliency("deeplift-authors")(explained, x, y, **kw)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.log_softmax(model(xr), 1).gather(1, y[:, None]).sum(), xr)
    torch.testing.assert_close(got, x * g)


def test_the_background_fill_is_each_images_top_left_pixel():
    x = torch.rand(4, 3, 6, 6)
    v = IMAGE_FILLS["background"](x, None, None, {})
    assert torch.equal(v, x[:, :, :1, :1].expand_as(x))


@pytest.mark.parametrize("output", ["logprob", "logit"])
def test_the_explained_output(output):
    model, x, y = model_and_batch()
    got, _ = run_method("grad", output=output)
    xr = x.clone().requires_grad_(True)
    out = model(xr)
    if output == "logprob":
        out = torch.log_softmax(out, 1)
    (want,) = torch.autograd.grad(out.gather(1, y[:, None]).sum(), xr)
    torch.testing.assert_close(got, want)
    assert isinstance(explain_setup(model, ["grad"], output, "zero", "image")[0], LogProb) == (output == "logprob")


def test_smoothgrad_without_a_normalisation_layer_is_one_clear_error():
    from sgtool.errors import UsageError

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 3))
    with pytest.raises(UsageError, match="no leading Normalize layer and no `input_std` attribute"):
        explain_setup(model, ["smoothgrad"], "logprob", "authors", "image")
    model.input_std = 0.5  # the documented way out
    assert explain_setup(model, ["smoothgrad"], "logprob", "authors", "image")[1]["scale"] == 0.5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("settings")
    res = train_run(make_config(dataset="synthetic", model="mlp", trainer="standard", train_size=64, test_size=16,
                                epochs=1, runs_dir=str(root)))
    return find_run(root, res["id"])


@pytest.mark.parametrize("ties", ["random", "index"])
def test_ties_are_broken_at_random_not_by_index(run, monkeypatch, ties):
    """A map of equal scores: with ties=index the 10 % removed are the first rows of the image;
    with ties=random (the default) they are scattered over it."""
    from sgtool.evaluate import mask_eval
    from sgtool.saliency import SALIENCY

    seen = record_model_inputs(monkeypatch)
    monkeypatch.setitem(SALIENCY, "flat", lambda model, x, target, **kw: torch.ones_like(x))
    mask_eval(run, mask_eval_config(methods="flat", fractions="0,0.1", fill="zero", ties=ties, limit=4,
                                    batch_size=4), force=True)
    clean = seen[0]  # the clean batch goes through first
    changed = [(s != clean)[:, 0] for s in seen[1:]]  # (B, H, W) per pass
    (removed,) = [c for c in changed if 60 <= c.flatten(1).sum(1).float().mean() <= 78]  # the 10 % pass
    rows = removed.any(2).sum(1)  # how many image rows hold a removed pixel
    if ties == "index":
        assert (rows <= 3).all()  # 78 pixels = the first 2.8 rows
    else:
        assert (rows >= 15).all()


def test_a_corrupt_model_file_is_one_line(run, tmp_path):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(run["dir"], root / run["id"])
    (root / run["id"] / "model.safetensors").write_bytes(b"\x00" * 10)
    runner = CliRunner()
    for args in (["mask-eval", run["id"], "--method", "grad"], ["explain", run["id"], "--out", str(tmp_path / "e.png")]):
        r = runner.invoke(app, [*args, "--runs-dir", str(root)])
        assert r.exit_code == 1, r.output
        line = " ".join(r.output.split())
        assert "model.safetensors is corrupt or does not fit the run's model" in line and "--force" in line
        assert exited_cleanly(r)

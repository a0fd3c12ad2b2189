"""The SALIENCY registry (every Captum method on every model) and the removal ranking."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from sgtool.errors import UsageError
from sgtool.layout import removal_rank
from sgtool.models import build, models_for
from sgtool.saliency import SALIENCY, get_saliency, position_score


def tiny_batch(model_name="mlp", n=3):
    ds = "cifar10" if model_name.startswith("resnet") else "synthetic"
    torch.manual_seed(0)
    model = build(model_name, ds).eval().requires_grad_(False)
    shape = (3, 32, 32) if ds == "cifar10" else (1, 28, 28)
    return model, torch.rand(n, *shape), torch.arange(n) % 10


@pytest.mark.parametrize("name", sorted(SALIENCY))
def test_every_method_gives_a_finite_attribution_shaped_like_x_and_is_seeded(name):
    model, x, t = tiny_batch()
    torch.manual_seed(123)
    a = get_saliency(name)(model, x, t, seed=5, baseline="zero")
    outside_draw = torch.rand(1)
    b = get_saliency(name)(model, x, t, seed=5, baseline="zero")
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)  # same seed, same numbers
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), outside_draw)  # the caller's RNG stream is left alone
    assert position_score(a.detach()).shape == (len(x), 28, 28)


@pytest.mark.parametrize("name", ["random", "smoothgrad", "gradshap", "deepliftshap"])
def test_random_methods_change_with_the_seed(name):
    model, x, t = tiny_batch()
    fn = get_saliency(name)
    assert not torch.equal(fn(model, x, t, seed=0), fn(model, x, t, seed=1))


def test_ig_baselines_differ_and_unknown_method_lists_names():
    model, x, t = tiny_batch()
    ig = get_saliency("ig")
    assert not torch.allclose(ig(model, x, t, baseline="zero"), ig(model, x, t, baseline="random", seed=0))
    with pytest.raises(UsageError, match="choose from: deeplift, deeplift-authors, deepliftshap, grad"):
        get_saliency("lime")


@pytest.mark.parametrize("model_name", models_for("image"))
@pytest.mark.parametrize("name", ["deeplift", "guided-backprop"])
def test_deeplift_and_guided_backprop_run_on_every_model(model_name, name):
    model, x, t = tiny_batch(model_name, n=1)
    a = get_saliency(name)(model, x, t)
    assert a.shape == x.shape and torch.isfinite(a).all() and a.abs().sum() > 0


@pytest.mark.filterwarnings("ignore::UserWarning")  # Captum: "setting hooks", "input did not require grad"
@pytest.mark.parametrize("model_name", ["mnist-cnn", "mlp", "resnet20"])
def test_deeplift_sums_to_the_output_difference(model_name):
    """DeepLift's summation-to-delta holds exactly only if Captum overrides every ReLU, i.e. all
    of them are distinct nn.ReLU modules (the ResNet blocks used F.relu before). small-cnn is
    left out: Captum's rule for max pooling is itself approximate when the input's and the
    reference's maxima sit at different positions."""
    from captum.attr import DeepLift

    model, x, t = tiny_batch(model_name, n=1)
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    _, delta = DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=t, return_convergence_delta=True)
    assert delta.abs().max() < 1e-4


def test_every_relu_of_the_resnet_is_its_own_module():
    model, x, _ = tiny_batch("resnet20", n=1)
    calls = []
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    for m in relus:
        m.register_forward_hook(lambda mod, i, o: calls.append(mod))
    model(x)
    assert len(relus) == 1 + 2 * 9  # stem + two per block, 9 blocks
    assert sorted(map(id, calls)) == sorted(map(id, relus))  # each used exactly once


def test_removal_rank_masks_exactly_the_k_most_salient_nested():
    g = torch.Generator().manual_seed(0)
    score = torch.randint(0, 5, (4, 6, 6), generator=g).float()  # many ties
    flat = score.flatten(1)
    rank = removal_rank(flat)
    prev = torch.zeros_like(flat, dtype=torch.bool)
    for k in range(37):
        mask = (rank < k).flatten(1)
        assert (mask.sum(1) == k).all()
        if 0 < k < 36:
            removed_min = torch.where(mask, flat, torch.inf).amin(1)
            kept_max = torch.where(mask, -torch.inf, flat).amax(1)
            assert (removed_min >= kept_max).all()
        assert (mask | ~prev).all()  # nested: the smaller set is inside the larger
        prev = mask
    # The k least salient are the last k of the ranking.
    low = (rank >= 36 - 5).flatten(1)
    assert (torch.where(low, flat, -torch.inf).amax(1) <= torch.where(low, torch.inf, flat).amin(1)).all()
    # A permutation of positions per sample.
    assert torch.equal(rank.flatten(1).sort(1).values, torch.arange(36).expand(4, 36))


def test_seeded_restores_numpy_state():
    model, x, t = tiny_batch()
    np.random.seed(7)
    expect = np.random.rand()
    np.random.seed(7)
    get_saliency("gradshap")(model, x, t, seed=3)
    assert np.random.rand() == expect


@pytest.mark.parametrize("name", ["deeplift", "deepliftshap"])
def test_deeplift_treats_sgtools_max_pool_as_a_max_pool(name):
    """Captum picks DeepLift's rule by exact layer type, so sgtool's MaxPool2d must be given
    nn.MaxPool2d's rule. With the pool straight after a convolution the rule matters (treated as
    linear, the attributions differ), and the attributions must equal nn.MaxPool2d's."""
    from sgtool.fastpath import MaxPool2d
    from sgtool.models import Normalize

    def net(pool):
        torch.manual_seed(0)
        return torch.nn.Sequential(Normalize([0.5], [0.25]), torch.nn.Conv2d(1, 4, 3), pool,
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 13 * 13, 8), torch.nn.ReLU(),
                                   torch.nn.Linear(8, 3)).eval()

    torch.manual_seed(1)
    x, t = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 0])
    a = SALIENCY[name](net(MaxPool2d(2)), x, t)
    b = SALIENCY[name](net(torch.nn.MaxPool2d(2)), x, t)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

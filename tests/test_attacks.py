"""sgtool.attacks: the eps-ball and [0, 1], eps 0, seeding, restarts, sub-batching, untouched
parameters, and agreement with torchattacks 3.5.1."""

import pytest
import torch
import torch.nn as nn
import torchattacks

from sgtool import attacks
from sgtool.attacks import ATTACKS, get_attack, predict, run_attack
from sgtool.errors import UsageError
from sgtool.models import build

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


PARAMS = dict(steps=5, step_size=0.02, restarts=2, decay=1.0, random_start=True)


def batch(n=40, dtype=torch.float32, seed=1):
    """Five classes, each a fixed 8x8 prototype, blended with noise: (n, 1, 8, 8) in [0, 1]."""
    protos = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (n,), generator=g)
    x = 0.6 * protos[y] + 0.4 * torch.rand(n, 1, 8, 8, generator=g)
    return x.to(dtype), y


def tiny_cnn(dtype=torch.float32) -> nn.Module:
    """A small conv net on (B, 1, 8, 8), fitted for 60 Adam steps so that its decisions depend on
    the input (an untrained net gives one class everywhere, which no attack can change)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 3 * 3, 16),
                        nn.ReLU(), nn.Linear(16, 5))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = batch(256, seed=7)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.zero_grad(set_to_none=True)
    return net.to(dtype).eval()


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("eps", [0.03, 0.3])
def test_linf_ball_and_pixel_range(name, eps):
    model = tiny_cnn()
    x, y = batch()
    x_adv = run_attack(name, model, x, y, eps, generator=torch.Generator().manual_seed(0), **PARAMS)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    # float32 rounding of x +- eps may overshoot by one ulp, as in torchattacks.
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)  # it did move
    assert not x_adv.requires_grad


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_eps_zero_returns_the_clean_images(name):
    model = tiny_cnn()
    x, y = batch()
    x_adv = run_attack(name, model, x, y, 0.0, **PARAMS)
    assert torch.equal(x_adv, x)
    assert torch.equal(predict(model, x_adv), predict(model, x))


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_parameters_grad_and_mode_untouched(name):
    model = tiny_cnn()
    model.train()  # the caller's choice of mode must survive the attack
    x, y = batch()
    sentinel = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinel):
        p.grad = s.clone()
    before = [p.detach().clone() for p in model.parameters()]
    run_attack(name, model, x, y, 0.1, **PARAMS)
    assert model.training
    for p, s, b in zip(model.parameters(), sentinel, before):
        assert torch.equal(p.grad, s) and torch.equal(p.detach(), b) and p.requires_grad


def test_attacks_lower_accuracy_and_pgd_is_seeded():
    model = tiny_cnn()
    x, y = batch(200)
    y = predict(model, x)  # every sample right before the attack
    for name in ATTACKS:
        assert (predict(model, run_attack(name, model, x, y, 0.3, **PARAMS)) == y).float().mean() < 0.5
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = attacks.pgd(model, x, y, 0.1, steps=3, step_size=0.02, generator=g(0))
    assert torch.equal(a, attacks.pgd(model, x, y, 0.1, steps=3, step_size=0.02, generator=g(0)))
    assert not torch.equal(a, attacks.pgd(model, x, y, 0.1, steps=3, step_size=0.02, generator=g(1)))


def test_restarts_keep_every_sample_a_restart_fooled():
    """Restart 0 draws what a single run draws, and later restarts only replace samples that
    are still right, so the fooled set can only grow."""
    model = tiny_cnn()
    x, y = batch(200)
    y = predict(model, x)
    kw = dict(steps=2, step_size=0.01)
    one = attacks.pgd(model, x, y, 0.05, restarts=1, generator=torch.Generator().manual_seed(3), **kw)
    many = attacks.pgd(model, x, y, 0.05, restarts=4, generator=torch.Generator().manual_seed(3), **kw)
    fooled_one, fooled_many = predict(model, one) != y, predict(model, many) != y
    assert torch.equal(many[fooled_one], one[fooled_one])
    assert (fooled_one <= fooled_many).all() and fooled_many.sum() > fooled_one.sum()
    assert (many - x).abs().max() <= 0.05 + 1e-6


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_sub_batches_do_not_change_results(name, monkeypatch):
    model = tiny_cnn(torch.float64)
    x, y = batch(50, torch.float64)
    whole = run_attack(name, model, x, y, 0.1, generator=torch.Generator().manual_seed(0), **PARAMS)
    monkeypatch.setattr(attacks, "CPU_CHUNK", 7)
    chunked = run_attack(name, model, x, y, 0.1, generator=torch.Generator().manual_seed(0), **PARAMS)
    assert torch.allclose(whole, chunked, atol=1e-12, rtol=0)


def test_fgsm_identical_to_torchattacks_float32():
    torch.manual_seed(0)
    model = build("mnist-cnn", "mnist").eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(100, 1, 28, 28, generator=g), torch.randint(0, 10, (100,), generator=g)
    for eps in (0.1, 0.3):
        assert torch.equal(attacks.fgsm(model, x, y, eps), torchattacks.FGSM(model, eps=eps)(x, y))


def test_pgd_and_mifgsm_agree_with_torchattacks_float64():
    """float64, so that a rounding difference (one projection clamp against torchattacks' two)
    cannot flip the sign of a tiny gradient component."""
    model = tiny_cnn(torch.float64)
    x, y = batch(100, torch.float64)
    ours = attacks.pgd(model, x, y, 0.1, steps=10, step_size=0.02, random_start=False)
    theirs = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=10, random_start=False)(x, y)
    assert (ours - theirs).abs().max() <= 1e-6 and not torch.equal(ours, x)
    ours = attacks.mifgsm(model, x, y, 0.1, steps=10, step_size=0.02, decay=0.8)
    theirs = torchattacks.MIFGSM(model, eps=0.1, alpha=0.02, steps=10, decay=0.8)(x, y)
    assert (ours - theirs).abs().max() <= 1e-6 and not torch.equal(ours, x)
    ours = attacks.fgsm(model, x, y, 0.1)
    assert torch.equal(ours, torchattacks.FGSM(model, eps=0.1)(x, y))


def test_unknown_attack_lists_the_names():
    with pytest.raises(UsageError, match="unknown attack method 'cw'; choose from: fgsm, mifgsm, pgd"):
        get_attack("cw")


def test_empty_batch():
    model = tiny_cnn()
    x, y = batch(0)
    for name in ATTACKS:
        assert run_attack(name, model, x, y, 0.1, **PARAMS).shape == (0, 1, 8, 8)

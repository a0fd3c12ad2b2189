"""The asgt trainer: its loss against a hand computation on a linear softmax model, the training
attack's settings and mode, and ASGT runs in the store and through `sgtool train` / `attack`."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from sgtool import attacks
from sgtool.cli import app
from sgtool.sgt import ASGTLoss

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


CFG = dict(attack="fgsm", eps=0.1, steps=1, step_size=0.1, fill="zero", kl_weight=0.7, saliency_pass="eval",
           sign="abs")


def asgt_loss(model, x, y, cfg, k):
    """(loss, logits, parts as floats) of ASGTLoss masking k of x's 4 pixels."""
    loss = ASGTLoss(mask_frac=k / 4, **cfg)(model, x, y)
    return loss, loss.logits, {name: v.item() for name, v in loss.parts.items()}


def linear_model():
    """f(x) = W x + b on (B, 1, 2, 2) images flattened to 4 features; 3 classes; float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.5, -2.0, 0.5, 1.0], [-1.0, 0.7, 2.0, -0.3], [0.2, 1.1, -1.4, 0.8]]))
        model[1].bias.copy_(torch.tensor([0.1, -0.2, 0.05]))
    return model


X = torch.tensor([[0.2, 0.9, 0.4, 0.05], [0.7, 0.3, 0.95, 0.5], [0.0, 0.6, 0.1, 1.0]], dtype=torch.float64)
Y = torch.tensor([0, 2, 1])


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def by_hand(W, b, x, y, eps, k, lam):
    """ASGT's loss written out for a linear softmax model, with numpy."""
    onehot = np.eye(3)[y]
    p = softmax(x @ W.T + b)
    grad_ce = (p - onehot) @ W  # d CE / d x
    xa = np.clip(x + eps * np.sign(grad_ce), 0, 1)  # FGSM
    pa = softmax(xa @ W.T + b)
    sal = np.abs(W[y] - pa @ W)  # |d log p(y | x') / d x'|
    xm = xa.copy()
    lowest = np.argsort(sal, axis=1, kind="stable")[:, :k]
    np.put_along_axis(xm, lowest, 0.0, axis=1)  # mask fill "zero"
    pm = softmax(xm @ W.T + b)
    ce = -np.log(p[np.arange(len(y)), y]).mean()
    ce_adv = -np.log(pa[np.arange(len(y)), y]).mean()
    kl_seed = (pm * (np.log(pm) - np.log(p))).sum(1).mean()  # KL(p(X~') || p(X)), Algorithm 2
    kl_reverse = (p * (np.log(p) - np.log(pm))).sum(1).mean()
    return ce + ce_adv + lam * kl_seed, ce, ce_adv, kl_seed, kl_reverse


def test_loss_equals_hand_computation():
    model = linear_model().train()
    W, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    loss, logits, parts = asgt_loss(model, X.view(3, 1, 2, 2), Y, CFG, 2)
    want, ce, ce_adv, kl_seed, kl_reverse = by_hand(W, b, X.numpy(), Y.numpy(), 0.1, 2, 0.7)
    assert loss.item() == pytest.approx(want, abs=1e-12)
    assert parts["ce"] == pytest.approx(ce, abs=1e-12)
    assert parts["adv_ce"] == pytest.approx(ce_adv, abs=1e-12)
    assert parts["kl"] == pytest.approx(kl_seed, abs=1e-12)
    assert abs(kl_seed - kl_reverse) > 1e-3  # the direction is tested, not just the magnitude
    assert torch.allclose(logits, model(X.view(3, 1, 2, 2)))
    assert model.training  # back in train mode after the attack
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_shared_saliency_pass_equals_eval_without_dropout():
    model = linear_model().train()
    a, _, _ = asgt_loss(model, X.view(3, 1, 2, 2), Y, CFG, 2)
    b, _, _ = asgt_loss(model, X.view(3, 1, 2, 2), Y, {**CFG, "saliency_pass": "shared"}, 2)
    assert a.item() == pytest.approx(b.item(), abs=1e-12)


def test_training_attack_settings_and_eval_mode(monkeypatch):
    """The attack gets the cfg's adv_* values and sees the model in eval mode; X' is in the ball."""
    seen = {}

    def spy(name, model, x, y, eps, **params):
        seen.update(name=name, eps=eps, training=model.training, **params)
        out = real(name, model, x, y, eps, **params)
        seen["linf"] = (out - x).abs().max().item()
        return out

    real = attacks.run_attack
    monkeypatch.setattr(attacks, "run_attack", spy)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    model.train()
    cfg = {**CFG, "attack": "pgd", "eps": 0.05, "steps": 3, "step_size": 0.02}
    loss, _, parts = asgt_loss(model, X.view(3, 1, 2, 2), Y, cfg, 1)
    assert seen["name"] == "pgd" and seen["eps"] == 0.05 and seen["steps"] == 3 and seen["step_size"] == 0.02
    assert seen["training"] is False and model.training
    assert 0 < seen["linf"] <= 0.05 + 1e-12
    assert np.isfinite(loss.item()) and set(parts) >= {"ce", "kl", "adv_ce"}


def test_asgt_run_through_the_cli_then_attack(tmp_path):
    runner = CliRunner()
    tiny = ["--trainer", "asgt", "--model", "mlp", "--train-size", "128", "--test-size", "32", "--epochs", "1",
            "--adv-steps", "2", "--adv-step-size", "0.05", "--runs-dir", str(tmp_path)]
    r = runner.invoke(app, ["train", *tiny])
    assert r.exit_code == 0, r.output
    (run_dir,) = tmp_path.iterdir()
    cfg = (run_dir / "config.yaml").read_text()
    assert "trainer: asgt" in cfg and "adv_steps: 2" in cfg and "adv_eps: 0.1" in cfg  # synthetic default eps
    again = runner.invoke(app, ["train", *tiny, "--adv-steps", "3"])  # an asgt field changes the run id
    assert again.exit_code == 0 and len(list(tmp_path.iterdir())) == 2
    r = runner.invoke(app, ["attack", run_dir.name[:6], "--method", "fgsm", "--eps", "0.1", "--runs-dir",
                            str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "worst" in r.output and len(list((run_dir / "attack").glob("*.csv"))) == 1

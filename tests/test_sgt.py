"""SGTLoss and ASGTLoss: hand computations on a tiny model of each layout, the clean branch's
gradient (a detached f(X) must fail here), anyone's models (a class, one with BatchNorm, one on
token ids), the model's mode, and `sgtool train` taking exactly these objects."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from sgtool.config import make_config
from sgtool.data import DATASETS, Data, register_dataset
from sgtool.layout import LAYOUTS
from sgtool.models import MODEL_LAYOUTS, MODELS, build, register_model
from sgtool.recipe import LOSSES
from sgtool.sgt import ASGTLoss, SGTLoss, StandardLoss
from sgtool.store import load_tensors
from sgtool.train import epoch_seed, train_run
from tests.toys import ConvNet, Linear2x2, ToySeries, ToyTokens, conv_factory


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ce_kl(p_clean, p_masked, y):
    ce = -np.log(p_clean[np.arange(len(y)), y]).mean()
    kl = (p_clean * (np.log(p_clean) - np.log(p_masked))).sum(1).mean()
    return ce, kl


# --------------------------------------------------------------------------- hand computations


def test_series_sgt_loss_by_hand_with_padding():
    model = ToySeries(t=4, f=3, classes=3).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 4, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([2, 0])
    steps = torch.tensor([[True] * 4, [True, True, False, False]])  # sample 1 has 2 real steps
    x[1, 2:] = 0.0
    loss = SGTLoss(mask_frac=0.5, kl_weight=0.7, fill="zero", layout="series")(model, x, y, steps)

    W, b, xv = model.w.detach().numpy(), model.b.detach().numpy(), x.numpy()
    p = softmax(np.einsum("btf,ctf->bc", xv, W) + b)
    grad = W[y] - np.einsum("bc,ctf->btf", p, W)  # d log p(y|x)/dx, (B, T, F)
    xm = xv.copy()
    for i, t_real in enumerate([4, 2]):
        cells = np.abs(grad[i, :t_real]).reshape(-1)
        k = int(np.floor(0.5 * cells.size))
        low = np.argsort(cells, kind="stable")[:k]
        xm[i, :t_real].reshape(-1)[low] = 0.0  # (a view: writes into xm)
    pm = softmax(np.einsum("btf,ctf->bc", xm, W) + b)
    ce, kl = ce_kl(p, pm, y.numpy())
    assert loss.parts["ce"].item() == pytest.approx(ce, abs=1e-12)
    assert loss.parts["kl"].item() == pytest.approx(kl, abs=1e-12)
    assert loss.item() == pytest.approx(ce + 0.7 * kl, abs=1e-12)


def test_token_sgt_loss_by_hand_padding_never_masked():
    model = ToyTokens(vocab=12, dim=3, length=6).double()
    ids = torch.tensor([[3, 4, 5, 6, 7, 8], [9, 10, 11, 4, 0, 0]])
    y = torch.tensor([1, 0])
    loss = SGTLoss(mask_frac=0.5, fill="zero", layout="tokens")(model, ids, y)  # sign "sum"

    E = model.emb.weight.detach().numpy()
    W, b = model.w.detach().numpy(), model.b.detach().numpy()
    real = (ids != 0).numpy()
    e = E[ids.numpy()] * real[..., None]  # padding contributes nothing to the logits
    p = softmax(np.einsum("bld,cld->bc", e, W) + b)
    grad = W[y.numpy()] - np.einsum("bc,cld->bld", p, W)  # (B, L, D) at real tokens
    score = grad.sum(-1)  # the summed gradient of each token's embedding
    em = e.copy()
    for i in range(2):
        n = real[i].sum()
        low = np.argsort(score[i, :n], kind="stable")[: int(0.5 * n)]
        em[i, low] = 0.0
    pm = softmax(np.einsum("bld,cld->bc", em, W) + b)
    ce, kl = ce_kl(p, pm, y.numpy())
    assert loss.parts["ce"].item() == pytest.approx(ce, abs=1e-12)
    assert loss.parts["kl"].item() == pytest.approx(kl, abs=1e-12)


def test_series_asgt_loss_by_hand_without_clipping():
    model = ToySeries(t=3, f=2, classes=2).double()
    x = torch.rand(3, 3, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3 - 1
    y = torch.tensor([0, 1, 1])
    asgt = ASGTLoss(mask_frac=0.5, kl_weight=0.5, fill="zero", layout="series", attack="fgsm", eps=0.2,
                    bounds=None)
    loss = asgt(model, x, y)

    W, b, xv = model.w.detach().numpy(), model.b.detach().numpy(), x.numpy()
    onehot = np.eye(2)[y]
    p = softmax(np.einsum("btf,ctf->bc", xv, W) + b)
    grad_ce = np.einsum("bc,ctf->btf", p - onehot, W)
    xa = xv + 0.2 * np.sign(grad_ce)  # FGSM, no clipping: series have no fixed range
    pa = softmax(np.einsum("btf,ctf->bc", xa, W) + b)
    sal = np.abs(W[y] - np.einsum("bc,ctf->btf", pa, W)).reshape(3, -1)
    xm = xa.reshape(3, -1).copy()
    np.put_along_axis(xm, np.argsort(sal, axis=1, kind="stable")[:, :3], 0.0, axis=1)
    pm = softmax(np.einsum("btf,ctf->bc", xm.reshape(3, 3, 2), W) + b)
    ce = -np.log(p[np.arange(3), y]).mean()
    ce_adv = -np.log(pa[np.arange(3), y]).mean()
    kl = (pm * (np.log(pm) - np.log(p))).sum(1).mean()  # KL(p(X~') || p(X))
    assert loss.item() == pytest.approx(ce + ce_adv + 0.5 * kl, abs=1e-12)
    assert loss.parts["adv_ce"].item() == pytest.approx(ce_adv, abs=1e-12)


# --------------------------------------------------------------------------- the clean branch


def _cases():
    torch.manual_seed(0)
    img = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x_img = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    ser = ToySeries(t=4, f=3).double()
    x_ser = torch.rand(4, 4, 3, dtype=torch.float64)
    tok = ToyTokens(length=6).double()
    x_tok = torch.tensor([[3, 4, 5, 6, 7, 8], [9, 10, 11, 4, 0, 0], [2, 5, 7, 0, 0, 0], [4, 4, 4, 4, 4, 4]])
    y = torch.tensor([0, 1, 2, 1]) % 2
    return [("image", img, x_img, y), ("series", ser, x_ser, y), ("tokens", tok, x_tok, y)]


@pytest.mark.parametrize("case", range(3))
@pytest.mark.parametrize("trainer", ["sgt", "asgt"])
def test_kl_gradient_flows_through_the_clean_branch(case, trainer):
    """The parameter gradient of the loss equals autograd's on the graph where neither f(X) nor
    f(X~) is detached, for the same masked input. Detaching the clean logits in the KL term
    (in either loss) changes the gradient and fails this test."""
    layout, model, x, y = _cases()[case]
    if trainer == "asgt" and layout == "tokens":
        pytest.skip("ASGT is for images and series")
    common = dict(mask_frac=0.5, kl_weight=1.3, fill="zero", layout=layout)
    loss_fn = SGTLoss(**common) if trainer == "sgt" else ASGTLoss(**common, attack="fgsm", eps=0.1, bounds=None)
    params = [p for p in model.parameters()]
    got = torch.autograd.grad(loss_fn(model, x, y), params)

    b = LAYOUTS[layout].batch(model, x)
    ce = torch.nn.functional.cross_entropy
    logp = lambda z: torch.log_softmax(z, 1)  # noqa: E731
    kl = lambda p, q: (logp(p).exp() * (logp(p) - logp(q))).sum(1).mean()  # noqa: E731
    if trainer == "sgt":
        x_masked, _ = loss_fn.masked(model, b, b.inp, y)
        logits, logits_m = b.logits(b.inp), b.logits(x_masked)
        ref = ce(logits, y) + 1.3 * kl(logits, logits_m)
    else:
        from sgtool.attacks import fgsm

        x_adv = fgsm(model.eval(), b.inp.detach(), y, 0.1, bounds=None)
        model.train()
        x_masked, _ = loss_fn.masked(model, b, x_adv, y)
        logits, logits_adv, logits_m = b.logits(b.inp), b.logits(x_adv), b.logits(x_masked)
        ref = ce(logits, y) + ce(logits_adv, y) + 1.3 * kl(logits_m, logits)
    want = torch.autograd.grad(ref, params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- anyone's models


@pytest.mark.parametrize("batchnorm", [False, True])
def test_sgt_on_a_foreign_image_model_keeps_its_mode(batchnorm):
    torch.manual_seed(0)
    model = ConvNet(c=1, classes=3, batchnorm=batchnorm, dropout=0.3)
    x, y = torch.rand(8, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for mode in (True, False):
        model.train(mode)
        stats = [b.clone() for b in model.buffers()]
        loss = SGTLoss(mask_frac=0.5)(model, x, y)
        assert torch.isfinite(loss) and set(loss.parts) == {"ce", "kl"} and loss.logits.shape == (8, 3)
        assert all(m.training == mode for m in model.modules())  # the mode is restored
        if batchnorm:
            moved = any(not torch.equal(a, b) for a, b in zip(stats, model.buffers()))
            assert moved == mode  # only train-mode passes move the running statistics
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        model.zero_grad()


def test_asgt_on_a_foreign_model_with_batchnorm():
    torch.manual_seed(0)
    model = ConvNet(c=1, classes=3, batchnorm=True).train()
    x, y = torch.rand(8, 1, 6, 6), torch.arange(8) % 3
    loss = ASGTLoss(mask_frac=0.5, attack="pgd", eps=0.1, steps=3, step_size=0.05)(model, x, y)
    assert torch.isfinite(loss) and set(loss.parts) == {"ce", "kl", "adv_ce"} and model.training
    loss.backward()


def test_sgt_on_token_ids_through_an_embedding():
    model = ToyTokens(length=6).train()
    ids = torch.tensor([[3, 4, 5, 6, 7, 8], [9, 10, 11, 0, 0, 0]])
    loss = SGTLoss(mask_frac=0.5, layout="tokens")(model, ids, torch.tensor([0, 1]))  # previous-salient
    loss.backward()
    assert model.emb.weight.grad is not None and model.emb.weight.grad[0].abs().sum() == 0  # <pad> untouched
    with pytest.raises(ValueError, match="ASGT is for images and series"):
        ASGTLoss(layout="tokens")


def test_bad_settings_are_refused():
    from sgtool.errors import UsageError

    with pytest.raises(UsageError, match="unknown image fill 'previous-salient'"):
        SGTLoss(fill="previous-salient")
    with pytest.raises(UsageError, match="unknown image saliency reduction 'sum'"):
        SGTLoss(sign="sum")
    with pytest.raises(ValueError, match="mask_frac"):
        SGTLoss(mask_frac=1.0)


@pytest.fixture
def toy_registry():
    """A dataset and a model of the tests' own, registered the public way, removed afterwards."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 6, 6, generator=g), torch.randint(0, 3, (40,), generator=g)

    def loader(data_dir, train_size, test_size):
        return Data(x[:32][:train_size], y[:32][:train_size], x[32:][:test_size], y[32:][:test_size], ["a", "b", "c"])

    register_dataset("toy-images", loader, shape=(1, 6, 6), num_classes=3, mean=(0.5,), std=(0.3,),
                     defaults=dict(model="toy-conv", epochs=1, batch_size=16, optimizer="adam", lr=0.01))
    register_model("toy-conv", conv_factory, "image")
    yield x, y
    del DATASETS["toy-images"], MODELS["toy-conv"], MODEL_LAYOUTS["toy-conv"]


@pytest.mark.parametrize("trainer", ["sgt", "asgt"])
def test_sgtool_train_is_the_loss_object_in_a_plain_loop(toy_registry, tmp_path, trainer):
    """`sgtool train` on a registered foreign model gives exactly the weights of a plain PyTorch
    loop with SGTLoss / ASGTLoss on the same batches."""
    x, y = toy_registry
    cfg = make_config(dataset="toy-images", trainer=trainer, adv_steps=2, runs_dir=str(tmp_path))
    res = train_run(cfg)

    torch.manual_seed(cfg.seed)
    model = build("toy-conv", "toy-images")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = SGTLoss(mask_frac=0.5) if trainer == "sgt" else \
        ASGTLoss(mask_frac=0.5, attack="pgd", eps=cfg.adv_eps, steps=2, step_size=cfg.adv_step_size)
    torch.manual_seed(epoch_seed(cfg.seed, 1))
    perm = torch.randperm(32)
    model.train()
    for idx in perm.split(16):
        loss = loss_fn(model, x[idx], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    stored = load_tensors(res["dir"] / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(stored[k], v), k


def test_sgt_loss_matches_hand_computation():
    w = [[1.0, -2.0, 0.5, 0.0], [0.3, 0.1, -1.0, 2.0]]  # 2 classes, 4 pixels
    model = Linear2x2(w)
    x = torch.tensor([[[[0.2, 0.9], [0.4, 0.6]]]])
    y = torch.tensor([0])
    loss = SGTLoss(mask_frac=0.5, fill="zero", kl_weight=0.7)(model, x, y)
    parts = {k: v.item() for k, v in loss.parts.items()}

    # By hand. logits z = W x; grad of log p_0 wrt x = W_0 - sum_c p_c W_c.
    xv = [0.2, 0.9, 0.4, 0.6]
    z = [sum(wi * xi for wi, xi in zip(row, xv)) for row in w]
    p = [math.exp(zi) / sum(math.exp(zj) for zj in z) for zi in z]
    grad = [w[0][i] - (p[0] * w[0][i] + p[1] * w[1][i]) for i in range(4)]
    # |grad| = |(1-p0)(w0 - w1)|: smallest two magnitudes are pixels 1 (|0.7-... |) etc.
    order = sorted(range(4), key=lambda i: abs(grad[i]))
    xm = [0.0 if i in order[:2] else xv[i] for i in range(4)]
    zm = [sum(wi * xi for wi, xi in zip(row, xm)) for row in w]
    pm = [math.exp(zi) / sum(math.exp(zj) for zj in zm) for zi in zm]
    ce = -math.log(p[0])
    kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, pm))
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert parts["kl"] == pytest.approx(kl, rel=1e-5)
    assert loss.item() == pytest.approx(ce + 0.7 * kl, rel=1e-5)
    # The clean branch is not detached: the KL term sends gradient through f(X) too.
    loss.backward()
    assert model.w.grad is not None


def test_shared_pass_gives_same_loss_without_dropout():
    model = Linear2x2([[1.0, -2.0, 0.5, 0.0], [0.3, 0.1, -1.0, 2.0]])
    x = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 1])
    a = SGTLoss(fill="zero")(model, x, y)
    b = SGTLoss(fill="zero", saliency_pass="shared")(model, x, y)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_standard_loss_is_cross_entropy():
    model = Linear2x2([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    x = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    loss = StandardLoss()(model, x, torch.tensor([0]))
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)), rel=1e-6)
    assert set(LOSSES) == {"standard", "sgt", "asgt"}

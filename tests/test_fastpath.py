"""The CPU speed-ups' switch: where they run, where they must not, that they change no numbers,
and that importing sgtool changes nothing in the process."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from sgtool import fastpath
from sgtool.models import build
from sgtool.sgt import SGTLoss
from tests.toys import ConvNet


@pytest.fixture
def switch():
    yield fastpath.set_enabled
    fastpath.set_enabled(True)


def test_the_switch_is_on_only_for_float32_cpu_without_autocast(switch):
    x = torch.rand(2, 1, 28, 28)
    model = build("mnist-cnn", "mnist")
    assert fastpath.active(x) and fastpath.applies(model, x)
    assert not fastpath.active(x.double())
    with torch.autocast("cpu", torch.bfloat16):
        assert not fastpath.active(x) and not fastpath.applies(model, x)
    assert not fastpath.applies(ConvNet(), x)  # a model class of its own: plain autograd
    assert not fastpath.applies(nn.Sequential(nn.Dropout(), nn.Flatten(), nn.Linear(784, 2)), x)  # no trunk
    switch(False)
    assert not fastpath.active(x) and not fastpath.applies(model, x)


def test_linear_works_under_cpu_autocast():
    """models.Linear used to fail here: "expected m1 and m2 to have the same dtype"."""
    lin = fastpath.Linear(8, 3)
    x = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        out = lin(x)
        (g,) = torch.autograd.grad(out.float().sum(), x)
    assert out.dtype == torch.bfloat16 and g.shape == x.shape and torch.isfinite(g).all()
    model = build("mnist-cnn", "mnist").train()
    with torch.autocast("cpu", torch.bfloat16):
        loss = SGTLoss(mask_frac=0.5)(model, torch.rand(4, 1, 28, 28), torch.arange(4))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("saliency_pass", ["eval", "shared"])
def test_sgt_numbers_are_the_same_with_the_switch_off(switch, saliency_pass):
    torch.manual_seed(0)
    model = build("mnist-cnn", "mnist").train()
    x, y = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 10
    grads = []
    for on in (True, False):
        switch(on)
        torch.manual_seed(5)  # the same dropout and fill draws
        loss = SGTLoss(mask_frac=0.5, saliency_pass=saliency_pass)(model, x, y)
        grads.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()))))
    (l1, g1), (l2, g2) = grads
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def _python_without_omp_policy(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter whose environment has no OMP_WAIT_POLICY."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.processes
def test_importing_sgtool_changes_nothing_in_the_process():
    """The malloc tuning and OMP_WAIT_POLICY belong to the `sgtool` command, not to `import sgtool`."""
    code = ("import os, sgtool.process as p\n"
            "p.tune_malloc = p.tune_process = lambda: (_ for _ in ()).throw(SystemExit('tuned on import'))\n"
            "import sgtool, sgtool.train, sgtool.evaluate, sgtool.report, sgtool.sweep\n"
            "sgtool.SGTLoss, sgtool.train_run\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))\n")
    out = _python_without_omp_policy(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"


@pytest.mark.processes
def test_the_command_tunes_the_process_before_torch_loads():
    code = ("import sys, os\n"
            "from sgtool.process import tune_process\n"
            "assert 'torch' not in sys.modules\n"
            "tune_process()\n"
            "print(os.environ['OMP_WAIT_POLICY'])\n")
    out = _python_without_omp_policy(code)
    assert out.returncode == 0 and out.stdout.strip() == "PASSIVE", out.stderr


def run_pass(net, x, y, how):
    """SGT's saliency pass as the losses run it (fastpath's where it applies)."""
    from sgtool.layout import Batch
    from sgtool.sgt import saliency_pass

    return saliency_pass(net, Batch(x, net), y, how)

def _reference_pass(net, x, y, saliency_pass):
    """(d log p(y|x)/dx, train-mode logits) by plain autograd, with the dropout draws of seed 5:
    what run_pass(..., saliency_pass) must return when run after torch.manual_seed(5)."""
    from sgtool.saliency import input_gradient

    torch.manual_seed(5)
    if saliency_pass == "eval":
        net.eval()
        g_ref = input_gradient(net, x, y)
        net.train()
        return g_ref, net(x)
    xr = x.clone().requires_grad_(True)
    logits_ref = net(xr)
    (g_ref,) = torch.autograd.grad(torch.log_softmax(logits_ref, 1).gather(1, y[:, None]).sum(), xr)
    return g_ref, logits_ref

def _odd_trunk_net():
    """A trunk of every layer the saliency passes finish by hand, in awkward settings: a padded
    ceil-mode max-pool with overlapping windows after a ReLU, a strided convolution, a max-pool
    before its ReLU, a 1x1 convolution; then a head with dropout."""
    from sgtool.models import Normalize

    return nn.Sequential(Normalize([0.4], [0.3]), nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),  # 13 -> 7, windows overlap
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.MaxPool2d(2), nn.ReLU(),  # 7 -> 4 -> 2
        nn.Conv2d(6, 5, 1), nn.Dropout(0.3), nn.Flatten(), nn.Linear(20, 3)))


def test_split_trunk_stops_at_the_first_mode_dependent_layer():
    from sgtool.fastpath import split_trunk
    from sgtool.models import build

    trunk, head = split_trunk(build("mnist-cnn", "mnist"))
    assert [type(m).__name__ for m in trunk] == ["Normalize", "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"]
    assert isinstance(head[0], nn.Dropout)
    trunk, head = split_trunk(build("resnet20", "cifar10"))  # BatchNorm inside: nothing shared
    assert [type(m).__name__ for m in trunk] == ["Normalize"] and len(head) == 1
    trunk, head = split_trunk(build("mlp", "synthetic"))  # no mode-dependent layer at all
    assert head == []


def test_shared_trunk_gives_the_eval_saliency_and_train_logits():
    """eval_pass = a separate eval-mode input gradient + a train-mode forward."""
    from sgtool.fastpath import eval_pass
    from sgtool.models import build
    from sgtool.saliency import input_gradient

    torch.manual_seed(0)
    net = build("mnist-cnn", "mnist").train()  # conv trunk, dropout head
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 10
    torch.manual_seed(5)
    g, logits = eval_pass(net, x, y)
    assert net.training and all(m.training for m in net.modules())
    net.eval()
    g_ref = input_gradient(net, x, y)
    net.train()
    torch.manual_seed(5)  # the same dropout draws
    logits_ref = net(x)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-5, atol=1e-6)
    # Dropout is active in the returned logits and not in the saliency.
    net.eval()
    assert not torch.allclose(logits, net(x))


@pytest.mark.parametrize("c_in,c_out,kernel,stride,padding,dilation,hw", [
    (1, 32, 3, 1, 0, 1, (28, 28)),  # mnist-cnn's first layer
    (3, 8, 3, 1, 1, 1, (9, 7)),  # small-cnn's: padded
    (2, 4, (3, 5), 2, (1, 2), 1, (11, 10)),  # strided: the last input row feeds no output
    (3, 4, 3, 1, 2, 2, (8, 8)),  # dilated
])
def test_conv_input_grad_equals_autograd(c_in, c_out, kernel, stride, padding, dilation, hw):
    from sgtool.fastpath import conv_input_grad

    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation)
    x = torch.randn(5, c_in, *hw, requires_grad=True)
    out = conv(x)
    g = torch.randn_like(out)
    (ref,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(conv_input_grad(conv, g, hw), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,dataset", [("mnist-cnn", "mnist"), ("small-cnn", "synthetic"),
                                          ("mlp", "synthetic"), ("resnet20", "cifar10")])
@pytest.mark.parametrize("saliency_pass", ["eval", "shared"])
@pytest.mark.parametrize("frozen_stem", [False, True])
def test_saliency_passes_give_autograds_input_gradient(name, dataset, saliency_pass, frozen_stem):
    """Whatever shortcut a pass takes (a shared trunk, the first convolution's input gradient by
    hand), its saliency is autograd's d log p(y|x)/dx in the pass's mode, and its logits are the
    train-mode forward's."""
    from sgtool.data import get_dataset
    from sgtool.models import build

    torch.manual_seed(0)
    net = build(name, dataset).train()
    if frozen_stem:
        next(net.parameters()).requires_grad_(False)  # the first layer's weight
    x = torch.rand(6, *get_dataset(dataset).shape, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 10
    state = {k: v.clone() for k, v in net.state_dict().items()}  # BatchNorm's running stats move
    torch.manual_seed(5)
    g, logits = run_pass(net, x, y, saliency_pass)
    net.load_state_dict(state)
    g_ref, logits_ref = _reference_pass(net, x, y, saliency_pass)
    assert g.shape == x.shape
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("saliency_pass", ["eval", "shared"])
def test_saliency_passes_finish_any_conv_relu_pool_prefix(saliency_pass):
    from sgtool.fastpath import saliency_start, split_trunk

    torch.manual_seed(0)
    net = _odd_trunk_net().train()
    x = torch.rand(7, 1, 13, 13, generator=torch.Generator().manual_seed(1))
    y = torch.arange(7) % 3
    trunk, _ = split_trunk(net)
    _, rest, _ = saliency_start(trunk, x)
    assert rest == []  # every trunk layer was run by hand, none left to autograd
    torch.manual_seed(5)
    g, logits = run_pass(net, x, y, saliency_pass)
    g_ref, logits_ref = _reference_pass(net, x, y, saliency_pass)
    assert g.abs().sum() > 0
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-5, atol=1e-6)

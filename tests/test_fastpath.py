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


def test_the_command_tunes_the_process_before_torch_loads():
    code = ("import sys, os\n"
            "from sgtool.process import tune_process\n"
            "assert 'torch' not in sys.modules\n"
            "tune_process()\n"
            "print(os.environ['OMP_WAIT_POLICY'])\n")
    out = _python_without_omp_policy(code)
    assert out.returncode == 0 and out.stdout.strip() == "PASSIVE", out.stderr

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from sgtool.config import make_config
from sgtool.recipe import LOSSES
from sgtool.sgt import SGTLoss, StandardLoss
from sgtool.store import read_run
from sgtool.train import train_run

TINY = dict(dataset="synthetic", model="mlp", train_size=256, test_size=64, epochs=2, batch_size=64)


class Linear2x2(nn.Module):
    """logits = W @ x.flatten() for a 1x2x2 image: the input gradient is known in closed form."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return x.flatten(1) @ self.w.T


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


def test_standard_loss_is_cross_entropy():
    model = Linear2x2([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    x = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    loss = StandardLoss()(model, x, torch.tensor([0]))
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)), rel=1e-6)
    assert set(LOSSES) == {"standard", "sgt", "asgt"}


def _metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.mark.parametrize("trainer", ["standard", "sgt"])
def test_same_config_same_numbers(tmp_path, trainer):
    a = train_run(make_config(trainer=trainer, runs_dir=str(tmp_path / "a"), **TINY))
    b = train_run(make_config(trainer=trainer, runs_dir=str(tmp_path / "b"), **TINY))
    assert a["id"] == b["id"]
    assert _metrics(a["dir"]) == _metrics(b["dir"])
    from sgtool.store import load_tensors

    wa, wb = load_tensors(a["dir"] / "model.safetensors"), load_tensors(b["dir"] / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_completed_run_is_not_retrained_and_force_retrains(tmp_path):
    cfg = make_config(runs_dir=str(tmp_path), **TINY)
    first = train_run(cfg)
    mtime = (first["dir"] / "model.safetensors").stat().st_mtime_ns
    again = train_run(cfg)
    assert again["already"] and (first["dir"] / "model.safetensors").stat().st_mtime_ns == mtime
    forced = train_run(cfg, force=True)
    assert not forced["already"] and forced["test_acc"] == first["test_acc"]
    info = read_run(first["dir"])
    assert info["status"] == "completed" and info["torch_version"] == torch.__version__
    assert len(_metrics(first["dir"])) == 2


def _run_cli(args, env):
    return subprocess.Popen([sys.executable, "-m", "sgtool", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_resume_after_kill_gives_uninterrupted_metrics(tmp_path, sig):
    args = ["--model", "small-cnn", "--train-size", "384", "--test-size", "32", "--epochs", "2",
            "--batch-size", "64", "--trainer", "sgt"]
    env = {**os.environ, "SGTOOL_OFFLINE": "1"}
    ref = _run_cli([*args, "--runs-dir", str(tmp_path / "ref")], env)
    assert ref.wait(timeout=300) == 0, ref.stdout.read()

    killed = _run_cli([*args, "--runs-dir", str(tmp_path / "k")], env)
    run_dir = next((tmp_path / "ref").iterdir())
    target = tmp_path / "k" / run_dir.name
    deadline = time.time() + 120
    while not ((target / "metrics.csv").is_file() and len(_metrics(target)) >= 1):
        assert time.time() < deadline and killed.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    killed.send_signal(sig)
    killed.wait(timeout=60)
    info = read_run(target)
    assert info["status"] == "interrupted"
    assert len(_metrics(target)) < 2

    resumed = _run_cli([*args, "--runs-dir", str(tmp_path / "k")], env)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert _metrics(target) == _metrics(run_dir)
    assert json.loads((target / "run.json").read_text())["status"] == "completed"


def test_lock_refuses_a_second_trainer(tmp_path):
    from sgtool.errors import SgtoolError
    from sgtool.store import run_lock

    d = tmp_path / "r"
    d.mkdir()
    with run_lock(d):
        with pytest.raises(SgtoolError, match="being trained by another process"):
            with run_lock(d):
                pass


def test_tune_malloc_takes_on_glibc():
    import platform

    import sgtool

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc tuning is for glibc only")
    if os.environ.get("SGTOOL_MALLOC") == "default":
        pytest.skip("opted out with SGTOOL_MALLOC=default")
    assert sgtool.tune_malloc() is True


def test_train_speed_benchmark_prints_ratios_and_floor(shared_data):
    """benchmarks/train_speed.py runs end to end on real MNIST (tiny: batch 32, one step per mode)
    and its floor line is the formula it states, from the parts it prints."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "train_speed.py"), "--data-dir", str(shared_data),
         "--batch-size", "32", "--repeats", "2", "--steps", "1"],
        capture_output=True, text=True, timeout=300, check=True).stdout
    rows = {line.split()[0] + (" " + line.split()[1] if line.startswith("sgt") else ""): line.split()
            for line in out.splitlines() if line.startswith(("standard", "sgt"))}
    assert set(rows) == {"standard", "sgt (eval)", "sgt (shared)"}
    assert float(rows["standard"][-3]) == 1.0  # its own ratio
    m = re.search(r"floor of sgt \(shared\): ([\d.]+) = 2 \+ \(saliency backward ([\d.]+) ms \+ masking "
                  r"([\d.]+) ms - optimiser step ([\d.]+) ms\) / standard ([\d.]+) ms", out)
    assert m, out
    floor, sal, msk, opt, std = (float(v) for v in m.groups())
    assert sal > 0 and std > 0
    # the parts are printed to 0.1 ms and the floor to 0.01
    assert floor == pytest.approx(2 + (sal + msk - opt) / std, abs=0.005 + 0.2 / std)


def test_gpu_suite_runs_on_the_cpu_in_smoke_mode(shared_data):
    """benchmarks/gpu_suite.py cannot rot while no GPU is lent: its smoke run prints every row."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_suite.py"), "--smoke", "--data-dir",
                          str(shared_data)], capture_output=True, text=True, timeout=300, check=True).stdout
    for row in ("mnist-cnn b8 SGT", "resnet20 b4 ASGT", "authors' SGT step", "mask-eval ig", "bf16 SGT masks",
                "PGD-3"):
        assert row in out, out


def test_metrics_csv_keeps_a_column_that_later_rows_add(tmp_path):
    """A run resumed by a newer sgtool may log a column (val_loss) its first epochs lack: the CSV
    has every column, in first-seen order, and the old rows leave the new one empty."""
    from sgtool.store import read_csv, write_csv

    write_csv(tmp_path / "m.csv", [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.6, "val_loss": 0.4}])
    assert read_csv(tmp_path / "m.csv") == [{"epoch": "1", "val_acc": "0.5", "val_loss": ""},
                                            {"epoch": "2", "val_acc": "0.6", "val_loss": "0.4"}]


def test_split_scores_are_the_mean_nll_and_accuracy_over_all_batches():
    """split_scores (the validation row of --select val-loss) averages the cross-entropy over the
    whole split, whatever the batching, and leaves the model in the mode it found it in."""
    from sgtool.runs import split_scores

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.5))
    x, y = torch.randn(10, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    model.eval()
    logits = model(x)
    model.train()
    got = split_scores(model, x, y, batch_size=3)  # batches of 3, 3, 3, 1
    assert model.training
    assert got["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    assert got["acc"] == (logits.argmax(1) == y).sum().item() / 10
    assert torch.equal(got["correct"], logits.argmax(1) == y)  # per sample, in x's order


def test_split_scores_marks_each_document_in_its_own_place():
    """Token ids are batched longest first; "correct" must still follow x's order."""
    from sgtool.runs import split_scores

    class FirstToken(nn.Module):  # predicts class = the first token's id mod 2
        pad_id = 0

        def forward(self, ids):
            return nn.functional.one_hot(ids[:, 0] % 2, 2).float()

    x = torch.tensor([[3, 0, 0, 0], [2, 5, 5, 5], [1, 4, 0, 0], [4, 4, 4, 0]])  # lengths 1, 4, 2, 3
    y = torch.tensor([1, 1, 1, 1])
    got = split_scores(FirstToken(), x, y, device="cpu")
    assert got["correct"].tolist() == [True, False, True, False]
    assert got["acc"] == 0.5

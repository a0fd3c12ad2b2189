"""The GPU checks in one script (under 8 minutes on one GPU), printing one table:

    python benchmarks/gpu_suite.py [--data-dir ../shared/data] [--precision bf16]
    python benchmarks/gpu_suite.py --smoke          # seconds on a CPU: what CI runs

1. seconds per training step of standard, SGT and ASGT, and their ratios, on mnist-cnn at batch
   512 (MNIST, or MNIST-shaped random data without it) and on resnet20 at batch 128 (CIFAR-10, or
   CIFAR-shaped random data without it);
2. the SGT authors' training step beside sgtool's on the same batches: `authors_sgt_step` below
   is a faithful copy of the MNIST path of `interpretable.py::train` in
   github.com/ayaabdelsalam91/saliency_guided_training (their network ends in log_softmax; the
   saliency is Captum's Saliency of the label; the k lowest signed gradients are masked, sample
   by sample in a Python loop with two .item() calls and a host-to-device copy each; two
   train-mode forwards; KLDivLoss(log_target=True, batchmean); four more .item() calls). Target
   on a GPU: authors' / sgtool's >= 5 on mnist-cnn at batch 512;
3. mask-eval images/s for grad, ig and smoothgrad (all ten fractions);
4. PGD-40 images/s, sgtool's against torchattacks' (when installed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sgtool.process import tune_process

tune_process()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sgtool import find_run, make_config, runs_root, train_run  # noqa: E402
from sgtool.config import MaskEvalConfig  # noqa: E402
from sgtool.data import get_dataset, load  # noqa: E402
from sgtool.errors import SgtoolError  # noqa: E402
from sgtool.evaluate import mask_eval  # noqa: E402
from sgtool.models import build, freeze  # noqa: E402
from sgtool.recipe import autocast, make_loss, make_optimizer  # noqa: E402

# common.py is beside this file: importable also when the file is loaded by its path (the tests)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Output, add_markdown_argument  # noqa: E402

TITLE = "GPU checks: step times, the authors' SGT step, mask-eval and PGD throughput"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch(dataset, n, device, data_dir):
    """n training images of the dataset, or random ones of its shape when the files are absent."""
    try:
        d = load(dataset, data_dir, train_size=n, test_size=1)
        x, y = d.x_train, d.y_train
        source = dataset
    except SgtoolError:
        spec = get_dataset(dataset)
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(n, *spec.shape, generator=g), torch.randint(0, spec.num_classes, (n,), generator=g)
        source = f"random {dataset}-shaped"
    return x.to(device), y.to(device), source


def time_steps(step, repeats, device) -> float:
    step()  # warm-up (cuDNN autotuning, allocations)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sgtool_steps(model_name, dataset, bs, device, precision, repeats, data_dir):
    """{trainer: seconds per step} for standard, sgt and asgt with sgtool's own loss objects."""
    x, y, source = batch(dataset, bs, device, data_dir)
    out = {}
    for trainer in ("standard", "sgt", "asgt"):
        cfg = make_config(dataset=dataset, model=model_name, trainer=trainer, batch_size=bs, precision=precision,
                          adv_steps=10)
        torch.manual_seed(0)
        model = build(cfg.model, cfg.dataset).to(device).train()
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        opt, _ = make_optimizer(cfg, model)
        loss_fn = make_loss(cfg)
        params = [p for p in model.parameters()]
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

        def step(model=model, opt=opt, loss_fn=loss_fn, params=params, scaler=scaler):
            with autocast(device, precision):
                loss = loss_fn(model, x, y)
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward(inputs=params)
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()

        out[trainer] = time_steps(step, repeats, device)
    return out, source


class AuthorsNet(nn.Module):
    """cnn.py::Net: the PyTorch MNIST example, functional ReLU and max-pool, log_softmax out."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = torch.flatten(self.dropout1(x), 1)
        return F.log_softmax(self.fc2(self.dropout2(F.relu(self.fc1(x)))), dim=1)


def authors_sgt_step(model, optimizer, data, target, device, p=0.5):
    """interpretable.py::train, one MNIST minibatch with --RandomMasking (their README's command),
    line for line (their comments and variable names kept where they help the comparison)."""
    from captum.attr import Saliency

    criterion = nn.CrossEntropyLoss()
    criterion_kdl = nn.KLDivLoss(log_target=True, reduction="batchmean")
    data.requires_grad = True
    model.eval()
    number_of_features = int(p * data.shape[1] * data.shape[2] * data.shape[3])
    temp_data = data.clone()
    grads = Saliency(model).attribute(data, target, abs=False).mean(1).detach().cpu().to(dtype=torch.float)
    temp_data = temp_data.view(data.shape[0], -1).detach()
    temp_grads = grads.view(data.shape[0], -1)
    _, indx = torch.topk(temp_grads, number_of_features, dim=1, largest=False)
    for idx in range(data.shape[0]):  # their per-sample loop
        min_ = torch.min(temp_data[idx]).item()
        max_ = torch.max(temp_data[idx]).item()
        random_mask = np.random.uniform(low=min_, high=max_, size=(len(indx[idx]),))
        temp_data[idx][indx[idx]] = torch.Tensor(random_mask).to(device)
    masked_inputs = temp_data.view(data.shape).detach()
    model.train()
    optimizer.zero_grad()
    output = model(data)
    loss = criterion(output, target)
    _ = loss.item()
    masked_outputs = model(masked_inputs)
    kl_loss = criterion_kdl(masked_outputs, output)
    _ = kl_loss.item()
    loss = loss + kl_loss
    loss.backward()
    optimizer.step()
    _ = loss.item()
    _ = output.argmax(dim=1, keepdim=True).eq(target.view(-1, 1)).sum().item()


def authors_vs_ours(bs, device, repeats, data_dir):
    x, y, _ = batch("mnist", bs, device, data_dir)
    norm = (x - 0.1307) / 0.3081  # their transform normalises the data itself
    torch.manual_seed(0)
    theirs = AuthorsNet().to(device)
    opt = torch.optim.Adadelta(theirs.parameters(), lr=1.0)
    np.random.seed(0)
    t_theirs = time_steps(lambda: authors_sgt_step(theirs, opt, norm.clone(), y, device), repeats, device)
    ours, _ = sgtool_steps("mnist-cnn", "mnist", bs, device, "fp32", repeats, data_dir)
    return t_theirs, ours["sgt"]


def mask_eval_speed(device, n, data_dir, root):
    """({method: images per second}, the number of fractions each was evaluated at)."""
    cfg = make_config(dataset="mnist" if _has_mnist(data_dir) else "synthetic", model="mnist-cnn",
                      trainer="standard", epochs=1, train_size=256, test_size=n, data_dir=data_dir,
                      device=device.type, runs_dir=root, batch_size=64)
    run = find_run(runs_root(root), train_run(cfg)["id"])
    out = {}
    for m in ("grad", "ig", "smoothgrad"):
        t0 = time.perf_counter()
        res = mask_eval(run, MaskEvalConfig(methods=(m,), limit=n, device=device.type, data_dir=data_dir),
                        force=True)
        out[m] = n / (time.perf_counter() - t0)
    return out, len(res["config"].fractions)


def _has_mnist(data_dir):
    try:
        load("mnist", data_dir, train_size=1, test_size=1)
        return True
    except SgtoolError:
        return False


def bf16_mask_change(bs, device, data_dir) -> float:
    """The share of SGT's masked positions (mask-frac 0.5, mnist-cnn, one batch) that differ when
    the saliency pass runs under bf16 autocast instead of float32."""
    from sgtool.layout import LAYOUTS, lowest_k
    from sgtool.saliency import input_gradient

    x, y, _ = batch("mnist", bs, device, data_dir)
    torch.manual_seed(0)
    model = build("mnist-cnn", "mnist").to(device).eval()
    masks = []
    for precision in ("fp32", "bf16"):
        with autocast(device, precision):
            g = input_gradient(model, x, y).float()
        masks.append(lowest_k(LAYOUTS["image"].score(g, x, "abs"), 0.5))
    return float((masks[0] != masks[1]).sum() / (2 * masks[0].sum()))


def pgd_speed(bs, steps, device, repeats, data_dir):
    from sgtool.attacks import pgd

    x, y, _ = batch("mnist", bs, device, data_dir)
    torch.manual_seed(0)
    model = freeze(build("mnist-cnn", "mnist").to(device).eval())
    ours = bs / time_steps(lambda: pgd(model, x, y, 0.3, steps=steps, step_size=0.01), repeats, device)
    try:
        import torchattacks
    except ImportError:
        return ours, None
    plain = build("mnist-cnn", "mnist").to(device).eval()
    atk = torchattacks.PGD(plain, eps=0.3, alpha=0.01, steps=steps)
    theirs = bs / time_steps(lambda: atk(x, y), repeats, device)
    return ours, theirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, seconds: CI runs this")
    ap.add_argument("--device", default=None, help="[cuda when available; --smoke: cpu]")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--repeats", type=int, default=None)
    add_markdown_argument(ap)
    args = ap.parse_args()
    out = Output()
    device = torch.device(args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda"))
    s = args.smoke
    reps = args.repeats or (1 if s else 10)
    bs_mnist, bs_cifar, n_eval, pgd_steps = (8, 4, 8, 3) if s else (512, 128, 1000, 40)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    out.line(f"device {name}, torch {torch.__version__}, precision {args.precision}"
             f"{' (smoke run)' if s else ''}")
    rows = []
    for model_name, dataset, bs in (("mnist-cnn", "mnist", bs_mnist), ("resnet20", "cifar10", bs_cifar)):
        t, source = sgtool_steps(model_name, dataset, bs, device, args.precision, reps, args.data_dir)
        rows.append((f"{model_name} b{bs} standard", f"{1e3 * t['standard']:.1f} ms", source))
        rows.append((f"{model_name} b{bs} SGT", f"{1e3 * t['sgt']:.1f} ms", f"x{t['sgt'] / t['standard']:.2f}"))
        rows.append((f"{model_name} b{bs} ASGT (PGD-10)", f"{1e3 * t['asgt']:.1f} ms",
                     f"x{t['asgt'] / t['standard']:.2f}"))
    theirs, ours = authors_vs_ours(bs_mnist, device, reps, args.data_dir)
    rows.append((f"authors' SGT step b{bs_mnist}", f"{1e3 * theirs:.1f} ms", f"{theirs / ours:.1f}x sgtool's (target >= 5)"))
    with tempfile.TemporaryDirectory() as tmp:
        speeds, n_fractions = mask_eval_speed(device, n_eval, args.data_dir, tmp)
        for m, ips in speeds.items():
            rows.append((f"mask-eval {m}", f"{ips:.0f} img/s", f"{n_eval} images x {n_fractions} fractions"))
    changed = bf16_mask_change(bs_mnist, device, args.data_dir)
    rows.append((f"bf16 SGT masks b{bs_mnist}", f"{100 * changed:.1f} %", "of the masked positions differ from fp32's"))
    ours_pgd, theirs_pgd = pgd_speed(bs_mnist, pgd_steps, device, reps, args.data_dir)
    rows.append((f"PGD-{pgd_steps} b{bs_mnist}", f"{ours_pgd:.0f} img/s",
                 f"torchattacks {theirs_pgd:.0f} img/s" if theirs_pgd else "torchattacks not installed"))
    w = max(len(r[0]) for r in rows)
    out.table(("measure", "value", "note"), rows, fmt=f"{{:<{w}}}  {{:>12}}  {{}}")
    out.write(args.markdown, TITLE)


if __name__ == "__main__":
    main()

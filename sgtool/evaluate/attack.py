"""Attack evaluation: robust accuracy under FGSM, PGD and MI-FGSM, per eps.

Robust accuracy counts a test sample as robust only when the model gets it right both clean and
under attack; a sample the model already gets wrong is its own adversarial example (it is not
attacked, as in AutoAttack). So robust accuracy <= clean accuracy, eps 0 gives the clean
accuracy, and the examples saved with --save-examples give exactly the reported accuracies.
Images and series; a token model has no input space to attack (see docs/text.md).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .. import distributed as ddp
from ..attacks import predict, run_attack
from ..config import AttackConfig, eval_hash
from ..errors import SgtoolError, UsageError
from ..saliency import input_gradient
from ..store import tensor_bytes
from .pipeline import ROWS, Context, Evaluation, Output, evaluate

EXAMPLES = ".examples.safetensors"

ZERO_GRAD_WARN = 0.1  # share of samples with an all-zero input gradient that flags gradient masking


@contextmanager
def _attack_mode(model, train_mode: bool):
    """The model's mode while it is attacked: eval unless train_mode. In train mode BatchNorm
    would update its running statistics; they are restored afterwards, so an attack never
    changes the model that is evaluated. The model is left in eval mode."""
    saved = [b.clone() for b in model.buffers()] if train_mode else []
    model.train(train_mode)
    try:
        yield
    finally:
        for b, s in zip(model.buffers(), saved):
            b.data.copy_(s)
        model.eval()


def _examples_key(method: str, eps: float) -> str:
    return f"{method}/{eps!r}"


def _attack_warnings(acc: dict, methods, eps, fgsm_ref: dict, zero_share: float, cfg) -> list[str]:
    """The sanity flags of an attack evaluation. acc maps (method, eps) -> robust accuracy and
    includes method "worst"; fgsm_ref maps eps -> FGSM accuracy."""
    out = []
    for m in [*methods, "worst"]:
        for e0, e1 in zip(eps, eps[1:]):
            if acc[m, e1] > acc[m, e0]:
                out.append(f"{m}: robust accuracy rises with eps ({acc[m, e0]:.4f} at eps {e0:g}, "
                           f"{acc[m, e1]:.4f} at eps {e1:g}): the attack is not converging; "
                           f"raise --steps or --restarts")
    iterative = [m for m in methods if m != "fgsm"]
    for m in iterative:
        for e in eps:
            if acc[m, e] > fgsm_ref[e]:
                out.append(f"{m} is weaker than FGSM at eps {e:g} ({acc[m, e]:.4f} > {fgsm_ref[e]:.4f}): "
                           f"too few steps or too small a step size, or gradient masking")
    if iterative and cfg.steps * cfg.step_size < max(eps):
        out.append(f"steps x step size = {cfg.steps * cfg.step_size:g} < eps {max(eps):g}: "
                   f"{', '.join(iterative)} cannot reach the edge of the eps-ball from its start")
    if zero_share > ZERO_GRAD_WARN:
        out.append(f"{zero_share:.0%} of the samples have an all-zero input gradient: gradient masking "
                   f"is likely, so gradient attacks understate the risk and robust accuracy is overstated")
    return out


def check(run: dict, spec) -> None:
    if spec.layout == "tokens":
        raise UsageError(f"run {run['id']} is a text model: its input is token ids, which an eps-ball "
                         f"does not perturb; attack image and series runs")


def compute(ctx: Context) -> Output:
    """Clean accuracy, robust accuracy for each (method, eps) and the per-sample worst case over
    the methods at each eps (method "worst"), on the run's test split (first cfg.limit samples);
    with the option save_examples, the adversarial examples (keys "x", "y" and "<method>/<eps>")."""
    cfg, spec, data, model, device, lead, run = ctx.cfg, ctx.spec, ctx.data, ctx.model, ctx.device, ctx.lead, ctx.run
    on_progress, save_examples = ctx.on_progress, ctx.options.get("save_examples", False)
    eid = eval_hash(cfg, run["id"])
    x_all, y_all = data.x_test[: cfg.limit], data.y_test[: cfg.limit]
    n, eps, methods = len(x_all), cfg.eps, cfg.methods
    # FGSM also runs as the yardstick of the "weaker than FGSM" flag when it was not asked for.
    iterative = any(m != "fgsm" for m in methods)
    attacked = methods + (("fgsm",) if iterative and "fgsm" not in methods else ())
    # Randomness (PGD's starts, dropout in train mode): one stream for the whole evaluation
    # ("stream", which keeps attacks cached before per-batch seeds valid), or one per batch, seeded
    # from (seed, batch): the same numbers
    # however the batches are shared among processes.
    stream = torch.Generator(device).manual_seed(cfg.seed)
    params = dict(steps=cfg.steps, step_size=cfg.step_size, restarts=cfg.restarts, decay=cfg.decay,
                  random_start=cfg.random_start, bounds=spec.bounds)
    if cfg.train_mode and cfg.seeding == "stream":
        torch.manual_seed(cfg.seed)  # dropout masks during the attack

    batches = list(range(0, n, cfg.batch_size))
    if ddp.rank_world()[1] > 1 and cfg.seeding == "stream":
        raise SgtoolError("an attack split over processes needs per-batch seeds; drop --seeding stream")
    total, done = len(batches) * len(attacked) * len(eps), 0
    local = {}  # batch -> (clean right, zero gradient, {(method, eps): right under attack}, examples)
    for b, i in ddp.mine(list(enumerate(batches))):
        gen = stream if cfg.seeding == "stream" else torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + b)
        if cfg.train_mode and cfg.seeding == "batch":
            torch.manual_seed(cfg.seed * 1_000_003 + b)
        x, y = x_all[i : i + cfg.batch_size].to(device), y_all[i : i + cfg.batch_size].to(device)
        right = predict(model, x) == y  # (B,)
        with _attack_mode(model, cfg.train_mode):
            g = input_gradient(model, x, y)  # (B, C, H, W): what the attacks see at x
        zero = (g.flatten(1) == 0).all(1).cpu()
        idx = right.nonzero().squeeze(1)  # only the samples the model gets right are attacked
        ok_b, ex_b = {}, {}
        for m in attacked:
            for e in eps:
                with _attack_mode(model, cfg.train_mode):
                    x_adv = x.clone()
                    if len(idx):
                        x_adv[idx] = run_attack(m, model, x[idx], y[idx], e, generator=gen, **params)
                ok_b[m, e] = (predict(model, x_adv) == y).cpu()
                if save_examples and m in methods:
                    ex_b[_examples_key(m, e)] = x_adv.cpu()
                done += 1
                if on_progress and lead:
                    on_progress(done=done, total=total, method=m, eps=e)
        local[b] = (right.cpu(), zero, ok_b, ex_b)
    per_batch = ddp.gather(local)  # every process's batches, joined in batch order below
    parts = [per_batch[b] for b in range(len(batches))]
    clean_ok, zero_grad = [p[0] for p in parts], [p[1] for p in parts]
    ok = {k: torch.cat([p[2][k] for p in parts]) for k in (parts[0][2] if parts else {})}
    examples = {k: [p[3][k] for p in parts] for k in (parts[0][3] if parts else {})}
    for e in eps:
        ok["worst", e] = torch.stack([ok[m, e] for m in methods]).all(0)
    rate = lambda t: int(t.sum()) / n if n else 0.0  # noqa: E731
    clean = rate(torch.cat(clean_ok))
    acc = {k: rate(v) for k, v in ok.items()}
    zero_share = float(torch.cat(zero_grad).float().mean()) if n else 0.0
    fgsm_ref = {e: acc["fgsm", e] for e in eps} if "fgsm" in attacked else {}
    warnings = _attack_warnings(acc, methods, eps, fgsm_ref, zero_share, cfg)

    rows = [{"run": run["id"], "method": "clean", "eps": 0.0, "accuracy": clean, "n": n}]
    rows += [{"run": run["id"], "method": m, "eps": e, "accuracy": acc[m, e], "n": n}
             for m in [*methods, "worst"] for e in eps]
    files = {}
    if save_examples and lead:
        tensors = {k: torch.cat(v) for k, v in examples.items()}
        for e in eps:
            # Each sample's worst case: the first method's example that fools the model, else
            # the first method's example (the model gets it right under every method).
            xw = tensors[_examples_key(methods[0], e)].clone()
            fooled = ~ok[methods[0], e]
            for m in methods[1:]:
                take = ~fooled & ~ok[m, e]
                xw[take] = tensors[_examples_key(m, e)][take]
                fooled |= take
            tensors[_examples_key("worst", e)] = xw
        tensors.update(x=x_all, y=y_all)
        files[EXAMPLES] = tensor_bytes(tensors, metadata={"run": run["id"], "eval": eid})
    meta = {"clean_accuracy": clean, "warnings": warnings, "n": n, "zero_grad_share": zero_share}
    return Output(rows, meta=meta, files=files)


def expected_rows(cfg: dict) -> dict:
    return {ROWS: 1 + (len(cfg["methods"]) + 1) * len(cfg["eps"])}


ATTACK = Evaluation("attack", AttackConfig, compute, rows=expected_rows, check=check,
                    needs=lambda options: (EXAMPLES,) if options.get("save_examples") else ())


def attack_eval(run: dict, cfg, save_examples: bool = False, force: bool = False, on_progress=None) -> dict:
    """`evaluate(ATTACK, ...)`: robust accuracy of a stored run, cached under <run dir>/attack/
    (<id>.csv: run, method, eps, accuracy, n; <id>.examples.safetensors with save_examples; <id>.json
    last). on_progress(done, total, method, eps) is called after each attacked batch. The result
    adds "examples", the examples' path or None."""
    res = evaluate(ATTACK, run, cfg, force, on_progress, save_examples=save_examples)
    return {**res, "examples": res["files"].get(EXAMPLES)}

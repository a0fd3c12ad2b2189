"""Attack evaluation: robust accuracy under FGSM, PGD and MI-FGSM, per eps.

Robust accuracy counts a test sample as robust only when the model gets it right both clean and
under attack; a sample the model already gets wrong is its own adversarial example (it is not
attacked, as in AutoAttack). So robust accuracy <= clean accuracy, eps 0 gives the clean
accuracy, and the examples saved with --save-examples give exactly the reported accuracies.
Images and series; a token model has no input space to attack (see the README).
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import distributed as ddp
from ..config import eval_hash
from ..data import get_dataset
from ..errors import SgtoolError, UsageError
from ..models import freeze
from ..store import read_csv, write_csv, write_json
from ..train import load_data, load_model, pick_device

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


def _read_attack_rows(path) -> list[dict]:
    return [{"run": r["run"], "method": r["method"], "eps": float(r["eps"]), "accuracy": float(r["accuracy"]),
             "n": int(r["n"])} for r in read_csv(path)]


def attack_eval(run: dict, cfg, save_examples: bool = False, force: bool = False, on_progress=None) -> dict:
    """Clean accuracy, robust accuracy for each (method, eps) and the per-sample worst case over
    the methods at each eps (method "worst"), on the run's test split (first cfg.limit samples).

    Writes <run dir>/attack/<id>.csv (run, method, eps, accuracy, n), the adversarial examples
    as <id>.examples.safetensors with save_examples (keys "x", "y" and "<method>/<eps>"), and
    <id>.json last. A rerun with the same resolved config is served from that cache unless
    force. on_progress(done, total, method, eps) is called after each attacked batch.
    Returns {"id", "rows", "clean_accuracy", "warnings", "path", "cached", "examples"}.
    """
    from ..attacks import predict, run_attack
    from ..config import resolve_attack
    from ..saliency import input_gradient
    from ..store import save_tensors

    data_dir = cfg.data_dir or run["config"].get("data_dir")
    spec = get_dataset(run["config"]["dataset"], data_dir)
    if spec.layout == "tokens":
        raise UsageError(f"run {run['id']} is a text model: its input is token ids, which an eps-ball "
                         f"does not perturb; attack image and series runs")
    cfg = resolve_attack(cfg, run["config"]["dataset"], data_dir)
    eid = eval_hash(cfg, run["id"])
    out_dir = Path(run["dir"]) / "attack"
    csv_path, json_path = out_dir / f"{eid}.csv", out_dir / f"{eid}.json"
    ex_path = out_dir / f"{eid}.examples.safetensors"
    if not force and json_path.is_file() and csv_path.is_file() and (not save_examples or ex_path.is_file()):
        meta = json.loads(json_path.read_text())
        return {"id": eid, "rows": _read_attack_rows(csv_path), "clean_accuracy": meta["clean_accuracy"],
                "warnings": meta["warnings"], "path": csv_path, "cached": True,
                "examples": ex_path if ex_path.is_file() else None}

    device, lead = ddp.join(pick_device(cfg.device))
    model, tcfg = load_model(run, device, data_dir=data_dir)
    model = freeze(model)  # input gradients only; channels-last
    data = load_data(tcfg, train_size=1, test_size=tcfg.test_size, data_dir=cfg.data_dir)
    try:
        out_dir.mkdir(exist_ok=True)
    except OSError as e:
        raise SgtoolError(f"cannot write {out_dir}: {e.strerror or e}") from None
    x_all, y_all = data.x_test[: cfg.limit], data.y_test[: cfg.limit]
    n, eps, methods = len(x_all), cfg.eps, cfg.methods
    # FGSM also runs as the yardstick of the "weaker than FGSM" flag when it was not asked for.
    iterative = any(m != "fgsm" for m in methods)
    attacked = methods + (("fgsm",) if iterative and "fgsm" not in methods else ())
    # Randomness (PGD's starts, dropout in train mode): one stream for the whole evaluation
    # ("stream", sgtool 0.1's), or one per batch, seeded from (seed, batch): the same numbers
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
        save_tensors(ex_path, tensors, metadata={"run": run["id"], "eval": eid})
    if lead:  # one process writes
        write_csv(csv_path, rows)
        write_json(json_path, {
            "kind": "attack", "run": run["id"], "config": dataclasses.asdict(cfg), "clean_accuracy": clean,
            "warnings": warnings, "n": n, "zero_grad_share": zero_share,
            "created": datetime.now(timezone.utc).isoformat(),
        })
    ddp.barrier()
    return {"id": eid, "rows": rows, "clean_accuracy": clean, "warnings": warnings, "path": csv_path,
            "cached": False, "examples": ex_path if save_examples else None}

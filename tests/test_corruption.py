"""Every file an evaluation writes, cut at a random byte: the next call is a cache miss that
recomputes, and its result equals a fresh computation. Nothing damaged is ever served."""

import json
import random
import shutil

import pytest
import safetensors.torch

from sgtool.config import ExplainConfig, attack_config, make_config, mask_eval_config
from sgtool.evaluate import ATTACK, EXPLAIN, MASK_EVAL, evaluate
from sgtool.runs import find_run
from sgtool.store import runs_root
from sgtool.train import train_run

CASES = {
    "images": (dict(dataset="synthetic", model="mlp", train_size=64, test_size=24, epochs=1),
               [(MASK_EVAL, mask_eval_config(methods="grad,random", fractions="0,0.5", limit=16), {}),
                (ATTACK, attack_config(methods="fgsm,pgd", eps="0.1", steps=2, limit=16), {"save_examples": True}),
                (EXPLAIN, ExplainConfig(methods=("grad",), n=2), {})]),
    "text": (dict(dataset="synthetic-text", train_size=64, test_size=12, epochs=1, width=4),
             [(MASK_EVAL, mask_eval_config(methods="grad,random", random_seeds=1), {})]),
}


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    cfg = make_config(**CASES[request.param][0], runs_dir=str(root / "runs"))
    return request.param, find_run(runs_root(cfg.runs_dir), train_run(cfg)["id"])


def _tensors(data: bytes):
    header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])
    tensors = safetensors.torch.load(data)
    return header.get("__metadata__"), {k: v.tolist() for k, v in tensors.items()}


def _same(a: dict, b: dict) -> bool:
    return a["rows"] == b["rows"] and a["summary"] == b["summary"] and a["id"] == b["id"]


def test_every_written_file_cut_anywhere_is_recomputed(trained, tmp_path):
    name, original = trained
    rng = random.Random(0)
    for ev, cfg, options in CASES[name][1]:
        fresh = evaluate(ev, original, cfg, force=True, **options)
        meta = json.loads((original["dir"] / ev.kind / f"{fresh['id']}.json").read_text())
        suffixes = [*meta["files"], ".json"]
        assert len(suffixes) >= 2
        for suffix in suffixes:
            run_dir = tmp_path / f"{name}-{ev.kind}-{suffix.strip('.')}"
            shutil.copytree(original["dir"], run_dir)
            run = {**original, "dir": run_dir}
            path = run_dir / ev.kind / f"{fresh['id']}{suffix}"
            data = path.read_bytes()
            cut = rng.randrange(0, len(data))
            path.write_bytes(data[:cut])
            again = evaluate(ev, run, cfg, **options)
            assert not again["cached"], (ev.kind, suffix, cut)
            assert _same(again, fresh), (ev.kind, suffix, cut)
            if suffix.endswith(".safetensors"):  # whole again: the same tensors and metadata (whose order
                assert _tensors(path.read_bytes()) == _tensors(data)  # in the header is not fixed)
            elif suffix != ".json":
                assert path.read_bytes() == data  # whole again
            served = evaluate(ev, run, cfg, **options)
            assert served["cached"] and _same(served, fresh)

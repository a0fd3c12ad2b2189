"""Stored runs keep their ids and results: configs trained by sgtool 0.1 (commit 6a7ec4a;
tests/fixtures/make_image_v1.py wrote the fixtures) get the same run ids, byte-identical
model.safetensors when retrained, and identical mask-eval and attack CSVs.

Bits are those of one kind of CPU (tests/cpu_kind.py): each fixture file records the kind it was
written on, and the test takes the one of this machine's kind. image_v1.json, the first, names
none; it serves any other kind. On a kind whose bits differ from every fixture the run ids are
still checked exactly and the metrics to float rounding, and the byte comparisons are skipped
with the command that writes a fixture for it."""

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

import sgtool
from sgtool.config import attack_config, mask_eval_config
from sgtool.evaluate import attack_eval, mask_eval

from .cpu_kind import cpu_kind

pytestmark = pytest.mark.retrain

FIXTURES = Path(__file__).parent / "fixtures"
KIND = cpu_kind()
_own = FIXTURES / f"image_v1.{KIND}.json"
FIXTURE = json.loads((_own if _own.is_file() else FIXTURES / "image_v1.json").read_text())
BITS_KNOWN = FIXTURE.get("cpu_kind") == KIND
# 0.1's mask-eval had no output, ties or fill-resolution settings: its behaviour is these values.
LEGACY_MASK_EVAL = dict(output="logit", ties="index", fill="background")


def _config(entry, runs_dir):
    # data_version 1 is the synthetic task as 0.1 drew it.
    return sgtool.make_config(runs_dir=str(runs_dir), data_version=1, **entry["given"])


@pytest.mark.parametrize("i", range(len(FIXTURE["runs"])))
def test_run_ids_are_unchanged(i, tmp_path):
    entry = FIXTURE["runs"][i]
    assert sgtool.config_hash(_config(entry, tmp_path)) == entry["id"]


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    torch.set_num_threads(2)  # the fixture was written with 2 threads
    root = tmp_path_factory.mktemp("compat")
    return root, [sgtool.train_run(_config(e, root)) for e in FIXTURE["runs"]]


@pytest.mark.parametrize("i", range(len(FIXTURE["runs"])))
def test_retraining_gives_byte_identical_weights_and_metrics(retrained, i):
    _, results = retrained
    entry, res = FIXTURE["runs"][i], retrained[1][i]
    assert res["id"] == entry["id"]
    metrics = [{k: v for k, v in r.items() if k != "seconds"} for r in sgtool.store.read_metrics(res["dir"])]
    same = hashlib.sha256((res["dir"] / "model.safetensors").read_bytes()).hexdigest() == entry["model_sha256"]
    if not same and not BITS_KNOWN:
        _close(metrics, entry["metrics"])
        _skip_bits()
    assert same, f"{entry['given']}: weights differ from sgtool 0.1's"
    assert metrics == entry["metrics"]


def _close(rows, want):
    """Every metric near the fixture's, as another CPU's float rounding leaves it: losses to 1e-3,
    accuracies to two of the 64 test samples (rounding can flip a sample near the boundary)."""
    assert [r.keys() for r in rows] == [w.keys() for w in want]
    for r, w in zip(rows, want):
        for k in r:
            tol = 2 / 64 if k.endswith("acc") else 1e-3
            assert math.isclose(float(r[k]), float(w[k]), abs_tol=tol), (k, r[k], w[k])


def _skip_bits():
    pytest.skip(f"no fixture of this CPU's kind ({KIND}) and its float rounding differs from image_v1.json's; "
                f"write one as tests/fixtures/make_image_v1.py says to compare bits")


@pytest.mark.parametrize("i", [i for i, e in enumerate(FIXTURE["runs"]) if "mask_eval" in e])
def test_mask_eval_and_attack_csvs_are_identical(retrained, i):
    root, results = retrained
    entry = FIXTURE["runs"][i]
    run = sgtool.find_run(root, results[i]["id"])
    me = mask_eval(run, mask_eval_config(**FIXTURE["mask_eval_settings"], **LEGACY_MASK_EVAL))
    assert me["id"] == entry["mask_eval"]["id"]  # 0.1's cache entry would be found
    at = attack_eval(run, attack_config(**FIXTURE["attack_settings"], seeding="stream"))  # 0.1's random stream
    assert at["id"] == entry["attack"]["id"]
    got = [Path(me["path"]).read_text(), me["path"].with_name(me["id"] + ".summary.csv").read_text(),
           Path(at["path"]).read_text()]
    if not BITS_KNOWN and got != [entry["mask_eval"]["csv"], entry["mask_eval"]["summary"], entry["attack"]["csv"]]:
        _skip_bits()
    assert got[0] == entry["mask_eval"]["csv"]
    assert got[1] == entry["mask_eval"]["summary"]
    assert got[2] == entry["attack"]["csv"]

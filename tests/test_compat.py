"""Image results do not change with the modality-generic core: configs trained by sgtool 0.1
(commit 6a7ec4a; tests/fixtures/make_image_v1.py wrote image_v1.json) get the same run ids,
byte-identical model.safetensors when retrained, and identical mask-eval and attack CSVs."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

import sgtool
from sgtool.config import attack_config, mask_eval_config
from sgtool.evaluate import attack_eval, mask_eval

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "image_v1.json").read_text())
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
    assert hashlib.sha256((res["dir"] / "model.safetensors").read_bytes()).hexdigest() == entry["model_sha256"], \
        f"{entry['given']}: weights differ from sgtool 0.1's"
    metrics = [{k: v for k, v in r.items() if k != "seconds"} for r in sgtool.store.read_metrics(res["dir"])]
    assert metrics == entry["metrics"]


@pytest.mark.parametrize("i", [i for i, e in enumerate(FIXTURE["runs"]) if "mask_eval" in e])
def test_mask_eval_and_attack_csvs_are_identical(retrained, i):
    root, results = retrained
    entry = FIXTURE["runs"][i]
    run = sgtool.find_run(root, results[i]["id"])
    me = mask_eval(run, mask_eval_config(**FIXTURE["mask_eval_settings"], **LEGACY_MASK_EVAL))
    assert me["id"] == entry["mask_eval"]["id"]  # 0.1's cache entry would be found
    assert Path(me["path"]).read_text() == entry["mask_eval"]["csv"]
    assert me["path"].with_name(me["id"] + ".summary.csv").read_text() == entry["mask_eval"]["summary"]
    at = attack_eval(run, attack_config(**FIXTURE["attack_settings"], seeding="stream"))  # 0.1's random stream
    assert at["id"] == entry["attack"]["id"]
    assert Path(at["path"]).read_text() == entry["attack"]["csv"]

"""Your own data and models without editing sgtool: `--dataset npz:PATH` / `pt:PATH` and
`--model module.path:factory`, their hashing, and their bad inputs (one line, exit code, the
store unchanged)."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sgtool.cli import app
from sgtool.config import config_hash, make_config
from sgtool.data import get_dataset, load
from sgtool.errors import UsageError
from tests.conftest import exited_cleanly

runner = CliRunner()


def write_images(path, n=48, seed=0, **extra):
    rng = np.random.default_rng(seed)
    arrays = dict(x_train=rng.random((n, 1, 8, 8), dtype=np.float32), y_train=rng.integers(0, 3, n),
                  x_test=rng.random((16, 1, 8, 8), dtype=np.float32), y_test=rng.integers(0, 3, 16))
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(r) -> bool:
    """The output holds exactly one error line (stdout may hold the run's header) and no traceback."""
    lines = [line for line in r.output.splitlines() if line.strip()]
    return sum(line.startswith("error:") for line in lines) == 1 and exited_cleanly(r) \
        and lines[-1].startswith("error:")


def snapshot(root):
    return sorted((p.relative_to(root), p.stat().st_size) for p in root.rglob("*")) if root.exists() else []


def test_npz_images_train_evaluate_and_hash_the_file(tmp_path):
    f = tmp_path / "mine.npz"
    write_images(f)
    spec = get_dataset(f"npz:{f}")
    assert spec.layout == "image" and spec.shape == (1, 8, 8) and spec.num_classes == 3
    cfg = make_config(dataset=f"npz:{f}", trainer="sgt", epochs=1, runs_dir=str(tmp_path / "runs"))
    assert cfg.model == "small-cnn" and len(cfg.data_sha256) == 64
    r = invoke("train", "--dataset", f"npz:{f}", "--epochs", "1", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    rid = config_hash(cfg)
    assert (tmp_path / "runs" / rid / "model.safetensors").is_file()
    r = invoke("mask-eval", rid, "--method", "grad,random", "--fractions", "0,0.5", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    # a changed file is a new run, and the old run refuses the new file
    write_images(f, seed=1)
    assert config_hash(make_config(dataset=f"npz:{f}", trainer="sgt", epochs=1)) != rid
    r = invoke("mask-eval", rid, "--method", "grad", "--force", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 1 and "has changed since this run was trained" in r.output


def test_series_with_lengths_and_gt_and_tokens_from_pt(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "s.npz"
    np.savez(f, x_train=rng.random((20, 7, 3)), y_train=rng.integers(0, 2, 20), x_test=rng.random((6, 7, 3)),
             y_test=rng.integers(0, 2, 6), lengths_train=rng.integers(2, 8, 20), lengths_test=np.full(6, 7),
             gt_test=rng.random((6, 7, 3)) > 0.5)
    d = load(f"npz:{f}")
    assert get_dataset(f"npz:{f}").layout == "series" and d.valid_train.shape == (20, 7)
    assert d.valid_train.sum(1).tolist() == np.asarray(np.load(f)["lengths_train"]).tolist()
    assert d.gt_test.shape == (6, 7, 3) and d.gt_test.dtype == torch.bool
    p = tmp_path / "t.pt"
    torch.save({"x_train": torch.randint(1, 30, (10, 5)), "y_train": torch.arange(10) % 2,
                "x_test": torch.randint(1, 30, (4, 5)), "y_test": torch.arange(4) % 2}, p)
    assert get_dataset(f"pt:{p}").layout == "tokens"


@pytest.mark.parametrize("change, fragment", [
    (dict(drop="y_test"), "no 'y_test' array; it needs x_train, y_train, x_test, y_test"),
    (dict(y_train=np.zeros(5, dtype=np.int64)), "y_train has shape (5,), but x_train has 48 samples"),
    (dict(x_test=np.zeros((16, 1, 7, 7), dtype=np.float32)), "x_train samples are (1, 8, 8) but x_test's are (1, 7, 7)"),
    (dict(y_test=np.full(16, -1)), "labels must lie in [0, 3)"),
    (dict(num_classes=2), "labels must lie in [0, 2)"),
    (dict(x_train=np.full((48, 1, 8, 8), np.nan, dtype=np.float32)), "x_train holds NaN or infinite values"),
    (dict(gt_test=np.zeros((16, 8, 7), dtype=bool)), "gt_test has shape (16, 1, 8, 7); the features of x_test are (16, 1, 8, 8)"),
    (dict(lengths_train=np.ones(48)), "lengths_train is for series and tokens, not images"),
])
def test_bad_npz_is_one_line_and_the_store_is_unchanged(tmp_path, change, fragment):
    f = tmp_path / "bad.npz"
    arrays = write_images(tmp_path / "ok.npz")
    drop = change.pop("drop", None)
    arrays = {**{k: v for k, v in arrays.items() if k != drop}, **change}
    np.savez(f, **arrays)
    (tmp_path / "runs").mkdir()
    before = snapshot(tmp_path / "runs")
    r = invoke("train", "--dataset", f"npz:{f}", "--epochs", "1", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 2, r.output
    assert fragment in " ".join(r.output.split()) and one_error_line(r)
    assert snapshot(tmp_path / "runs") == before


def test_missing_or_unreadable_file(tmp_path):
    r = invoke("train", "--dataset", f"npz:{tmp_path}/none.npz", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 1 and "not found" in r.output and one_error_line(r)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    r = invoke("train", "--dataset", f"npz:{tmp_path}/junk.npz", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 1 and "is unreadable" in r.output and not (tmp_path / "runs").exists()


def test_model_factory_by_import_path(tmp_path):
    f = tmp_path / "mine.npz"
    write_images(f)
    args = ["train", "--dataset", f"npz:{f}", "--epochs", "1", "--runs-dir", tmp_path / "runs"]
    r = invoke(*args, "--model", "tests.toys:conv_factory")
    assert r.exit_code == 0, r.output
    (run,) = (tmp_path / "runs").iterdir()
    assert "model: tests.toys:conv_factory" in (run / "config.yaml").read_text()
    assert config_hash(make_config(dataset=f"npz:{f}", epochs=1, model="tests.toys:conv_factory")) == run.name


@pytest.mark.parametrize("model, code, fragment", [
    ("tests.nowhere:factory", 2, "cannot import factory from tests.nowhere (ModuleNotFoundError"),
    ("tests.toys:missing", 2, "cannot import missing from tests.toys (AttributeError"),
    ("tests.toys:not_a_module", 2, "the factory returned str, not an nn.Module"),
])
def test_bad_factories_are_one_line(tmp_path, model, code, fragment):
    f = tmp_path / "mine.npz"
    write_images(f)
    (tmp_path / "runs").mkdir()
    r = invoke("train", "--dataset", f"npz:{f}", "--model", model, "--epochs", "1", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == code, r.output
    assert fragment in " ".join(r.output.split()) and one_error_line(r)
    assert snapshot(tmp_path / "runs") == []


def test_a_series_dataset_with_an_image_model_names_the_models_that_fit(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "s.npz"
    np.savez(f, x_train=rng.random((8, 5, 2)), y_train=np.arange(8) % 2, x_test=rng.random((4, 5, 2)),
             y_test=np.arange(4) % 2)
    with pytest.raises(UsageError, match="model 'mnist-cnn' takes image data, but .* is series data; use one of"):
        make_config(dataset=f"npz:{f}", model="mnist-cnn")

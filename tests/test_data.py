import gzip
import hashlib
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from sgtool.data import DATASETS, get_dataset, images, load
from sgtool.data.images import make_synthetic
from sgtool.errors import SgtoolError, UsageError


def write_idx(path, arr: np.ndarray, gz=True):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return raw


def fake_mnist(folder, n_train=20, n_test=10, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, 28, 28)), gz)
    write_idx(folder / f"train-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_train), gz)
    write_idx(folder / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, 28, 28)), gz)
    write_idx(folder / f"t10k-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_test), gz)


def test_synthetic_is_deterministic_with_ground_truth():
    x1, y1, g1 = make_synthetic(50, seed=1)
    x2, y2, g2 = make_synthetic(50, seed=1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(g1, g2)
    assert x1.shape == (50, 1, 28, 28) and x1.dtype == torch.float32 and y1.dtype == torch.int64
    assert 0 <= x1.min() and x1.max() <= 1
    assert (g1.sum(dim=(1, 2, 3)) == 25).all()  # one 5x5 square per sample
    # Inside the square the pixels are the class pattern (0 or 1); outside, noise in [0, 0.5].
    assert set(x1[g1].unique().tolist()) <= {0.0, 1.0}
    assert x1[~g1].max() <= 0.5
    pats = x1[g1].view(50, 25)
    for c in y1.unique():
        assert (pats[y1 == c] == pats[y1 == c][0]).all()  # the pattern is set by the class


def test_synthetic_sizes_and_splits():
    d = load("synthetic", train_size=30, test_size=20)
    assert d.x_train.shape == (30, 1, 28, 28) and d.x_test.shape == (20, 1, 28, 28)
    assert d.gt_test.shape == (20, 1, 28, 28) and d.gt_test.dtype == torch.bool
    assert not torch.equal(d.x_train[:20], d.x_test)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader(tmp_path, gz):
    fake_mnist(tmp_path / "mnist", gz=gz)
    d = load("mnist", tmp_path, train_size=5)
    assert d.x_train.shape == (5, 1, 28, 28) and d.x_test.shape == (10, 1, 28, 28)
    assert d.y_train.dtype == torch.int64 and 0 <= d.x_train.min() and d.x_train.max() <= 1


def test_idx_corrupt_magic_and_size(tmp_path):
    fake_mnist(tmp_path)
    p = tmp_path / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(b"\x00\x00\x09\x01" + struct.pack(">I", 10) + bytes(10)))
    with pytest.raises(SgtoolError, match="bad magic number"):
        load("mnist", tmp_path)
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + bytes(7)))
    with pytest.raises(SgtoolError, match="expected 18"):
        load("mnist", tmp_path)
    p.write_bytes(b"not gzip at all")
    with pytest.raises(SgtoolError, match="corrupt IDX file"):
        load("mnist", tmp_path)


def test_missing_file_offline_names_file_and_data_dir(tmp_path):
    with pytest.raises(SgtoolError) as e:
        load("fashion-mnist", tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "--data-dir" in msg and "\n" not in msg


def test_download_checks_md5(tmp_path, monkeypatch):
    """A mirror is any URL: a file:// one exercises the whole download path offline."""
    src = tmp_path / "mirror"
    fake_mnist(src)
    files = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in src.iterdir()}
    monkeypatch.setenv("SGTOOL_OFFLINE", "0")
    monkeypatch.setitem(images.MIRRORS, "mnist", [src.as_uri() + "/"])
    monkeypatch.setattr(images, "MNIST_FILES", files)
    loader = images.idx_loader("mnist", files, list("0123456789"))
    d = loader(tmp_path / "dl", None, None)
    assert d.x_train.shape == (20, 1, 28, 28)
    assert (tmp_path / "dl" / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    bad = dict(files, **{"t10k-labels-idx1-ubyte.gz": "0" * 32})
    with pytest.raises(SgtoolError, match="t10k-labels-idx1-ubyte.gz"):
        images.idx_loader("mnist", bad, list("0123456789"))(tmp_path / "dl2", None, None)
    assert not (tmp_path / "dl2" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    # The official batches are protocol-2 pickles of dicts with bytes keys.
    d = {b"batch_label": b"x", b"labels": rng.integers(0, 10, n).tolist(),
         b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), b"filenames": [b"a"] * n}
    return pickle.dumps(d, protocol=2)


def write_cifar(folder, as_tar=True, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": _cifar_batch(n, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(n, 9)
    if as_tar:
        with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, raw in batches.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    else:
        (folder / "cifar-10-batches-py").mkdir()
        for name, raw in batches.items():
            (folder / "cifar-10-batches-py" / name).write_bytes(raw)


@pytest.mark.parametrize("as_tar", [True, False])
def test_cifar10_real_format(tmp_path, as_tar):
    write_cifar(tmp_path / "cifar10", as_tar)
    d = load("cifar10", tmp_path, test_size=3)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert d.y_train.dtype == torch.int64 and d.x_train.max() <= 1
    # Channel-first layout as in the official files: row 0's first 1024 values are red.
    raw = pickle.loads(_cifar_batch(4, 1))[b"data"]
    assert torch.allclose(d.x_train[0, 0].flatten(), torch.tensor(raw[0, :1024] / 255, dtype=torch.float32))


def test_cifar10_refuses_foreign_objects(tmp_path):
    write_cifar(tmp_path, as_tar=False)
    evil = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": print}, protocol=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(evil)
    with pytest.raises(SgtoolError, match=r"refusing to load (__builtin__|builtins)\.print"):
        load("cifar10", tmp_path)


def test_unknown_dataset_lists_names():
    with pytest.raises(UsageError, match="choose from: cifar10, "):
        load("svhn")


def test_real_mnist(shared_data):
    d = load("mnist", shared_data)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.y_train.bincount().tolist()[:2] == [5923, 6742]  # the well-known class counts
    assert 0.13 < d.x_train.mean().item() < 0.132


def test_real_fashion_mnist(shared_data):
    if not (shared_data / "fashion-mnist").is_dir():
        pytest.skip(f"real Fashion-MNIST not found at {shared_data / 'fashion-mnist'}")
    d = load("fashion-mnist", shared_data, test_size=1000)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert d.y_train.bincount().tolist() == [6000] * 10  # Fashion-MNIST is balanced
    spec = get_dataset("fashion-mnist")
    assert abs(d.x_train.mean().item() - spec.mean[0]) < 1e-3  # the normalisation fits the data
    assert 0 <= d.x_train.min().item() and d.x_train.max().item() <= 1


def test_all_datasets_registered_with_shapes():
    for name, spec in DATASETS.items():
        if spec.layout == "image":
            assert len(spec.mean) == spec.shape[0] == len(spec.std), name
        assert {"eps", "step_size", "steps"} <= set(spec.attack), name

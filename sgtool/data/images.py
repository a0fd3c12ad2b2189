"""Image datasets: the built-in synthetic task, MNIST and Fashion-MNIST (IDX files), CIFAR-10.

Images come out float32 in [0, 1], shaped (N, C, H, W), with int64 labels.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..errors import SgtoolError, unknown_name
from .download import download, find
from .registry import Data, register_dataset

# --------------------------------------------------------------------------- synthetic

SYNTH_H = 28
SYNTH_P = 5  # pattern side
SYNTH_CLASSES = 10
SYNTH_TRAIN = 4000
SYNTH_TEST = 1000


def _synthetic_patterns(g: torch.Generator) -> torch.Tensor:
    """10 distinct 5x5 binary patterns, each with 9-16 pixels on: (10, 5, 5)."""
    pats: list[torch.Tensor] = []
    while len(pats) < SYNTH_CLASSES:
        p = (torch.rand(SYNTH_P, SYNTH_P, generator=g) < 0.5).float()
        # Far apart in Hamming distance, so each class is set by its pattern alone.
        if 9 <= p.sum() <= 16 and all((p != q).sum() >= 8 for q in pats):
            pats.append(p)
    return torch.stack(pats)


def make_synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images whose class is set only by a 5x5 pattern at a random place.

    Background: uniform noise in [0, 0.5]. Pattern pixels are 1 (on) or 0 (off), so the
    pattern's whole 5x5 square differs from the noise. The ground truth is that square.
    Returns x (n, 1, 28, 28), y (n,), gt (n, 1, 28, 28) bool. Vectorised over samples.
    """
    g = torch.Generator().manual_seed(seed)
    pats = _synthetic_patterns(torch.Generator().manual_seed(12345))  # fixed across splits
    y = torch.randint(0, SYNTH_CLASSES, (n,), generator=g)
    x = torch.rand(n, 1, SYNTH_H, SYNTH_H, generator=g) * 0.5
    r = torch.randint(0, SYNTH_H - SYNTH_P + 1, (n,), generator=g)
    c = torch.randint(0, SYNTH_H - SYNTH_P + 1, (n,), generator=g)
    # Absolute pixel coordinates of every pattern cell: (n, 5, 5).
    ar = torch.arange(SYNTH_P)
    rows = (r[:, None, None] + ar[None, :, None]).expand(n, SYNTH_P, SYNTH_P)
    cols = (c[:, None, None] + ar[None, None, :]).expand(n, SYNTH_P, SYNTH_P)
    idx = torch.arange(n)[:, None, None].expand(n, SYNTH_P, SYNTH_P)
    x[idx, 0, rows, cols] = pats[y]
    gt = torch.zeros(n, 1, SYNTH_H, SYNTH_H, dtype=torch.bool)
    gt[idx, 0, rows, cols] = True
    return x, y, gt


# Version 2 (the default since sgtool 0.2): the same task made harder, so that neither standard
# nor SGT training solves it within the demo's budget and the saliency has something to show.
# Designed before any run, and not tuned afterwards:
# - lower contrast and noise on the class pattern: "on" pixels 0.85, "off" 0.15, plus N(0, 0.15);
# - two distractors: the patterns of two other classes, at random places, at half the contrast
#   ("on" 0.6, "off" 0.25, plus the same noise); the class pattern is drawn last, on top.
# The ground truth stays the class pattern's 5x5 square.
V2_ON, V2_OFF, V2_NOISE = 0.85, 0.15, 0.15
V2_DISTRACT_ON, V2_DISTRACT_OFF, V2_DISTRACTORS = 0.6, 0.25, 2


def make_synthetic_v2(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Version 2 of the synthetic task (see above): x (n, 1, 28, 28), y (n,), gt (n, 1, 28, 28)."""
    g = torch.Generator().manual_seed(seed)
    pats = _synthetic_patterns(torch.Generator().manual_seed(12345))  # (10, 5, 5), as version 1
    y = torch.randint(0, SYNTH_CLASSES, (n,), generator=g)
    x = torch.rand(n, 1, SYNTH_H, SYNTH_H, generator=g) * 0.5
    ar = torch.arange(SYNTH_P)
    idx = torch.arange(n)[:, None, None].expand(n, SYNTH_P, SYNTH_P)
    gt = torch.zeros(n, 1, SYNTH_H, SYNTH_H, dtype=torch.bool)
    # distractors first (other classes: y + 1..9, mod 10), then the class pattern on top
    other = (y[:, None] + torch.randint(1, SYNTH_CLASSES, (n, V2_DISTRACTORS), generator=g)) % SYNTH_CLASSES
    layers = [(other[:, j], V2_DISTRACT_ON, V2_DISTRACT_OFF, False) for j in range(V2_DISTRACTORS)]
    for cls, on, off, is_gt in [*layers, (y, V2_ON, V2_OFF, True)]:
        r = torch.randint(0, SYNTH_H - SYNTH_P + 1, (n,), generator=g)
        c = torch.randint(0, SYNTH_H - SYNTH_P + 1, (n,), generator=g)
        rows = (r[:, None, None] + ar[None, :, None]).expand(n, SYNTH_P, SYNTH_P)
        cols = (c[:, None, None] + ar[None, None, :]).expand(n, SYNTH_P, SYNTH_P)
        noise = torch.randn(n, SYNTH_P, SYNTH_P, generator=g) * V2_NOISE
        x[idx, 0, rows, cols] = (off + (on - off) * pats[cls] + noise).clamp(0, 1)
        if is_gt:
            gt[idx, 0, rows, cols] = True
    return x, y, gt


SYNTHETIC_VERSIONS = {1: make_synthetic, 2: make_synthetic_v2}


def load_synthetic(data_dir: Path, train_size: int | None, test_size: int | None, data_version=None) -> Data:
    """The built-in task: data_version 2 (the default) or 1, the easier first task (a stored run
    without a data_version trained on it: config/legacy.py)."""
    version = data_version or 2
    if version not in SYNTHETIC_VERSIONS:
        raise unknown_name("synthetic data version", str(version), [str(v) for v in SYNTHETIC_VERSIONS])
    make = SYNTHETIC_VERSIONS[version]
    ntr, nte = train_size or SYNTH_TRAIN, test_size or SYNTH_TEST
    # Fixed data seeds: runs with different training seeds see the same data.
    xtr, ytr, gtr = make(ntr, seed=1)
    xte, yte, gte = make(nte, seed=2)
    return Data(xtr, ytr, xte, yte, [f"pattern{i}" for i in range(10)], gtr, gte)


# --------------------------------------------------------------------------- IDX (MNIST)

MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
}
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (.gz or raw) into a uint8 tensor, checking magic and size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise SgtoolError(f"corrupt IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise SgtoolError(f"corrupt IDX file {path}: bad magic number {raw[:4].hex()}; delete it to re-download")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expect = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != expect:
        raise SgtoolError(f"corrupt IDX file {path}: {len(raw)} bytes, expected {expect} for shape {dims}")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy())


def idx_loader(name: str, files: dict[str, str], classes: list[str]):
    def load(data_dir: Path, train_size: int | None, test_size: int | None) -> Data:
        arrays = {}
        for fname, md5 in files.items():
            path = find(name, fname, data_dir) or download(name, fname, MIRRORS[name], data_dir / name, md5)
            arrays[fname.split("-idx")[0]] = read_idx(path)
        xtr, ytr = arrays["train-images"], arrays["train-labels"]
        xte, yte = arrays["t10k-images"], arrays["t10k-labels"]
        if xtr.ndim != 3 or ytr.ndim != 1 or len(xtr) != len(ytr) or len(xte) != len(yte):
            raise SgtoolError(f"{name}: image and label files in {data_dir} do not match")
        xtr, ytr = xtr[:train_size], ytr[:train_size]
        xte, yte = xte[:test_size], yte[:test_size]
        return Data(
            (xtr.float() / 255).unsqueeze(1), ytr.long(), (xte.float() / 255).unsqueeze(1), yte.long(), classes
        )

    return load


# --------------------------------------------------------------------------- CIFAR-10

class _ArrayUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles of dicts of numpy arrays. We never unpickle arbitrary
    objects: only numpy's array reconstruction is allowed, everything else is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Python 3 pickles of protocol 2 write bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            if module == "_codecs":
                import codecs

                return codecs.encode
            if module == "numpy":
                return getattr(np, name)
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _read_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as e:  # noqa: BLE001 - any failure here means the file is not a CIFAR batch
        raise SgtoolError(f"corrupt CIFAR-10 batch {where}: {e}") from None
    if len(data) != len(labels):
        raise SgtoolError(f"corrupt CIFAR-10 batch {where}: {len(data)} images, {len(labels)} labels")
    return data, labels


CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def load_cifar10(data_dir: Path, train_size: int | None, test_size: int | None) -> Data:
    batches: dict[str, bytes] = {}
    folder = next((d / "cifar-10-batches-py" for d in (data_dir / "cifar10", data_dir)
                   if (d / "cifar-10-batches-py").is_dir()), None)
    if folder is not None:
        for b in CIFAR_TRAIN + ["test_batch"]:
            if not (folder / b).is_file():
                raise SgtoolError(f"cifar10: missing file {b} in {folder}; put it there or pass --data-dir DIR")
            batches[b] = (folder / b).read_bytes()
    else:
        archive = find("cifar10", CIFAR_ARCHIVE, data_dir) or download(
            "cifar10", CIFAR_ARCHIVE, MIRRORS["cifar10"], data_dir / "cifar10", CIFAR_MD5)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for m in tar.getmembers():
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in CIFAR_TRAIN + ["test_batch"]:
                        batches[base] = tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise SgtoolError(f"corrupt CIFAR-10 archive {archive}: {e}") from None
        missing = [b for b in CIFAR_TRAIN + ["test_batch"] if b not in batches]
        if missing:
            raise SgtoolError(f"corrupt CIFAR-10 archive {archive}: no {missing[0]} inside")
    parts = [_read_cifar_batch(batches[b], b) for b in CIFAR_TRAIN]
    xtr = np.concatenate([p[0] for p in parts])[:train_size]
    ytr = np.concatenate([p[1] for p in parts])[:train_size]
    xte, yte = _read_cifar_batch(batches["test_batch"], "test_batch")
    xte, yte = xte[:test_size], yte[:test_size]
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    f = lambda a: torch.from_numpy(a.copy()).float() / 255  # noqa: E731
    return Data(f(xtr), torch.from_numpy(ytr.copy()), f(xte), torch.from_numpy(yte.copy()), classes)


_MNIST_TRAIN = dict(model="mnist-cnn", epochs=3, batch_size=64, optimizer="adadelta", lr=1.0)
_MNIST_ATTACK = dict(eps=0.3, step_size=0.01, steps=40)
_MNIST_TRAIN_ATTACK = dict(eps=0.3, step_size=0.05, steps=10)

register_dataset(
    "synthetic", load_synthetic, shape=(1, 28, 28), num_classes=10, mean=(0.25,), std=(0.25,),
    defaults=dict(model="small-cnn", epochs=2, batch_size=64, optimizer="adam", lr=2e-3),
    attack=dict(eps=0.1, step_size=0.01, steps=20), has_gt=True, version=2,
    description="built in: noise images whose class is set by a 5x5 pattern, among two fainter ones "
                "(--data-version 1: the pattern alone, an easier task)")
register_dataset(
    "mnist", idx_loader("mnist", MNIST_FILES, [str(i) for i in range(10)]),
    shape=(1, 28, 28), num_classes=10, mean=(0.1307,), std=(0.3081,), defaults=_MNIST_TRAIN,
    attack=_MNIST_ATTACK, train_attack=_MNIST_TRAIN_ATTACK, description="MNIST digits (IDX files)")
register_dataset(
    "fashion-mnist", idx_loader("fashion-mnist", FASHION_FILES, FASHION_CLASSES),
    shape=(1, 28, 28), num_classes=10, mean=(0.2860,), std=(0.3530,), defaults=_MNIST_TRAIN,
    attack=_MNIST_ATTACK, train_attack=_MNIST_TRAIN_ATTACK, description="Fashion-MNIST (IDX files)")
register_dataset(
    "cifar10", load_cifar10, shape=(3, 32, 32), num_classes=10, mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    defaults=dict(model="resnet20", epochs=30, batch_size=128, optimizer="sgd", lr=0.1, augment="crop-flip"),
    attack=dict(eps=8 / 255, step_size=2 / 255, steps=10), description="CIFAR-10 (python batches)")

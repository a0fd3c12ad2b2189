"""The UEA multivariate archive's .ts files as series datasets, (N, T, F).

UEA (`uea-basic-motions`, `uea-japanese-vowels`, or `uea:NAME` for any <NAME>/<NAME>_TRAIN.ts
under --data-dir): standardised per channel with the training split's mean and std. Series of
unequal length are padded at the front with the channel mean (0 after standardising), so that a
model's last step is the series' last real step, and carry a (N, T) validity mask.
"""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import SgtoolError, UsageError
from .download import download, find, offline
from .registry import PREFIXES, UNSET, Data, DatasetSpec, default_data_dir, register_dataset


def _value(text: str) -> float:
    """One value: '?' is the format's missing value (NaN); a NaN or an infinity written as a
    number is refused, since it is no measurement."""
    text = text.strip()
    if text == "?":
        return math.nan
    try:
        v = float(text)
    except ValueError:
        raise ValueError("a value is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"a value is {text}; write a missing value as '?'")
    return v


def read_ts(path: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """The UEA/UCR .ts format: '#' comments, '@' header lines, '@data', then one case per line:
    dimensions separated by ':', values by ',', the class label last. Returns (series, each
    (T_i, F) float64 with NaN for '?', labels, the header's class labels). A malformed file is
    one line naming the file and the line."""
    series, labels, classes, dims, in_data = [], [], [], None, False
    try:
        text = Path(path).read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as e:
        raise SgtoolError(f"{path}: cannot read ({e})") from None
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise SgtoolError(f"{path}, line {no}: expected an @ header line or @data before the values")
            key, _, rest = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                in_data = True
            elif key == "classlabel":
                parts = rest.split()
                if parts and parts[0].lower() == "true":
                    classes = parts[1:]
            elif key == "dimensions":
                try:
                    dims = int(rest)
                except ValueError:
                    raise SgtoolError(f"{path}, line {no}: @dimensions must be a number, got '{rest}'") from None
            continue
        *values, label = line.split(":")
        if not values:
            raise SgtoolError(f"{path}, line {no}: a case needs its values and a class label separated by ':'")
        if dims is not None and len(values) != dims:
            raise SgtoolError(f"{path}, line {no}: {len(values)} dimensions, the header says {dims}")
        try:
            cols = [np.array([_value(v) for v in d.split(",")]) for d in values]
        except ValueError as e:
            raise SgtoolError(f"{path}, line {no}: {e}") from None
        if len({len(c) for c in cols}) != 1:
            raise SgtoolError(f"{path}, line {no}: its dimensions have different lengths")
        label = label.strip()
        if classes and label not in classes:
            raise SgtoolError(f"{path}, line {no}: class '{label}' is not among @classLabel {' '.join(classes)}")
        series.append(np.stack(cols, axis=1))  # (T_i, F)
        labels.append(label)
    if not in_data or not series:
        raise SgtoolError(f"{path}: no @data section with cases; is it a .ts file?")
    if len({s.shape[1] for s in series}) != 1:
        raise SgtoolError(f"{path}: cases have different numbers of dimensions")
    return series, labels, classes or sorted(set(labels))


UEA_MIRROR = ["https://www.timeseriesclassification.com/aeon-toolkit/"]


def _uea_files(name: str, data_dir: Path) -> tuple[Path, Path]:
    """<NAME>_TRAIN.ts and _TEST.ts under DIR/uea/NAME, DIR/NAME, DIR/uea or DIR; online, the
    archive's per-dataset zip is downloaded and unpacked (no checksum is published: its contents
    are checked instead)."""
    for d in (data_dir / "uea" / name, data_dir / name, data_dir / "uea", data_dir):
        tr, te = d / f"{name}_TRAIN.ts", d / f"{name}_TEST.ts"
        if tr.is_file() and te.is_file():
            return tr, te
    dest = data_dir / "uea" / name
    archive = find(f"uea/{name}", f"{name}.zip", data_dir)
    if archive is None and not offline():
        def check(p):
            with zipfile.ZipFile(p) as z:
                return {f"{name}_TRAIN.ts", f"{name}_TEST.ts"} <= {Path(m).name for m in z.namelist()}
        try:
            archive = download(f"uea:{name}", f"{name}.zip", UEA_MIRROR, dest, check=check)
        except SgtoolError:
            archive = None
    if archive is None:
        # name the file that is missing, where the other one was found (else under DIR/uea/NAME)
        where, missing = data_dir / "uea" / name, f"{name}_TRAIN.ts"
        for d in (data_dir / "uea" / name, data_dir / name, data_dir / "uea", data_dir):
            have = [f for f in (f"{name}_TRAIN.ts", f"{name}_TEST.ts") if (d / f).is_file()]
            if have:
                where, missing = d, f"{name}_TEST.ts" if have == [f"{name}_TRAIN.ts"] else f"{name}_TRAIN.ts"
                break
        raise SgtoolError(f"uea:{name}: missing file {missing} in {where} "
                          f"({'offline' if offline() else 'download failed'}); put it there or pass --data-dir DIR")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(archive) as z:
            for m in z.namelist():
                if Path(m).name in (f"{name}_TRAIN.ts", f"{name}_TEST.ts"):
                    (dest / Path(m).name).write_bytes(z.read(m))
    except (zipfile.BadZipFile, OSError) as e:
        raise SgtoolError(f"uea:{name}: corrupt archive {archive} ({e}); delete it to download again") from None
    return dest / f"{name}_TRAIN.ts", dest / f"{name}_TEST.ts"


def _pad_front(series: list[np.ndarray], t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T, F) values padded at the front with 0, and the (N, T) validity mask."""
    f = series[0].shape[1]
    x = np.zeros((len(series), t, f))
    valid = np.zeros((len(series), t), dtype=bool)
    for i, s in enumerate(series):  # a loop over files' cases at load time, not over a batch
        x[i, t - len(s):] = s[:t]
        valid[i, t - len(s):] = True
    return torch.from_numpy(x), torch.from_numpy(valid)


def uea_loader(name: str):
    def load(data_dir, train_size, test_size, run_train_size=UNSET) -> Data:
        tr_path, te_path = _uea_files(name, data_dir)
        tr, ytr, classes = read_ts(tr_path)
        te, yte, _ = read_ts(te_path)
        if tr[0].shape[1] != te[0].shape[1]:
            raise SgtoolError(f"uea:{name}: {te_path.name} has {te[0].shape[1]} dimensions, {tr_path.name} has "
                              f"{tr[0].shape[1]}; give the TEST file of the same dataset")
        index = {c: i for i, c in enumerate(classes)}
        missing = [c for c in set(ytr) | set(yte) if c not in index]
        if missing:
            raise SgtoolError(f"uea:{name}: class '{missing[0]}' is not among the training file's classes")
        t = max(len(s) for s in tr + te)
        xtr, vtr = _pad_front(tr, t)
        xte, vte = _pad_front(te, t)
        # Standardise per channel on the run's training split (its valid, non-missing cells).
        n_fit = (train_size if run_train_size is UNSET else run_train_size) or len(tr)
        fit = xtr[:n_fit][vtr[:n_fit]]  # (cells, F)
        ok = ~torch.isnan(fit)
        mean = torch.where(ok, fit, 0).sum(0) / ok.sum(0).clamp_min(1)
        std = torch.sqrt(torch.where(ok, (fit - mean) ** 2, 0).sum(0) / ok.sum(0).clamp_min(1)).clamp_min(1e-8)

        def std_(x, v):
            z = ((x - mean) / std).nan_to_num(0.0)  # missing values: the channel mean
            return (z * v[:, :, None]).float()  # padding: 0

        y_tr = torch.tensor([index[c] for c in ytr])
        y_te = torch.tensor([index[c] for c in yte])
        ntr, nte = train_size or len(tr), test_size or len(te)
        equal = bool(vtr.all() and vte.all())
        return Data(std_(xtr, vtr)[:ntr], y_tr[:ntr], std_(xte, vte)[:nte], y_te[:nte], list(classes),
                    valid_train=None if equal else vtr[:ntr], valid_test=None if equal else vte[:nte])

    return load


UEA_DEFAULTS = dict(model="tcn", epochs=100, batch_size=16, optimizer="adam", lr=1e-3)
UEA_ATTACK = dict(eps=0.1, step_size=0.01, steps=20)
UEA_SETS = {"uea-basic-motions": ("BasicMotions", (100, 6), 4, "UEA BasicMotions: 6 channels x 100 steps"),
            "uea-japanese-vowels": ("JapaneseVowels", (29, 12), 9,
                                    "UEA JapaneseVowels: 12 channels, 7 to 29 steps (padded)")}
for _name, (_uea, _shape, _classes, _what) in UEA_SETS.items():
    register_dataset(_name, uea_loader(_uea), layout="series", shape=_shape, num_classes=_classes,
                     defaults=UEA_DEFAULTS, attack=UEA_ATTACK, bounds=None, description=_what)


def _uea_spec(name: str, data_dir=None) -> DatasetSpec:
    """uea:NAME: the shape and classes come from its files under the data dir (read once)."""
    uea = name.split(":", 1)[1]
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", uea or ""):
        raise UsageError(f"--dataset {name}: give uea:NAME with the archive's dataset name, e.g. uea:BasicMotions")
    key = (uea, str(Path(data_dir) if data_dir else default_data_dir()))
    if key not in _SPECS:
        tr, te = _uea_files(uea, Path(key[1]))
        train, _, classes = read_ts(tr)
        t = max(len(s) for s in train + read_ts(te)[0])
        _SPECS[key] = DatasetSpec(uea_loader(uea), (t, train[0].shape[1]), len(classes), defaults=UEA_DEFAULTS,
                                  attack=UEA_ATTACK, layout="series", bounds=None, description=f"UEA {uea}")
    return _SPECS[key]


_SPECS: dict = {}
PREFIXES["uea"] = _uea_spec

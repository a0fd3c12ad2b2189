"""Series datasets, (N, T, F): the time-series interpretability benchmark's synthetic sets (TSB,
Ismail et al. 2020) with ground truth, and sequential MNIST. The UEA archive's .ts files are
uea.py's.

TSB (`tsb-<type>-<background>`): 50 steps x 50 features, 1000 train and 100 test samples, two
classes. An informative box of cells carries the label: +1 for class 1, -1 for class 0. On the
`box` background (N(0, 1) noise) the box's cells are replaced by N(±1, 1); on the others ±1 is
added to them. Each sample's ground truth (T, F) is its box. The backgrounds are timesynth's,
reimplemented vectorised in torch (timesynth does not install with current Python and numpy),
on its irregular time grid: 50 of 100 points on [0, 20], jittered by N(0, 0.2), one grid per
sample shared by its features, with N(0, 0.3) noise on every cell. Kept from the benchmark
(its numbers depend on them): NARMA's private RandomState(42) re-created for every series (so
every NARMA feature is the same curve plus noise), and timesynth's NARMA slice bug, which
removes its 0.05 term; PseudoPeriodic's frequency and amplitude drawn afresh at every point and
without 2π; AR's sigma 0.5 from x = 0; CAR's sigma 0.01 (it is close to white noise). Dropped:
the benchmark's unseeded draws (sgtool's data are seeded: train 1, test 2, and fresh background
draws from the caller's generator). The data are min-max scaled per (t, f) cell on the training
split, as the benchmark does, so the model sees [0, 1] (the test split may leave it).

`mnist-seq`: MNIST as 28 steps (rows) x 28 features (pixels), in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import unknown_name
from .registry import FAMILIES, UNSET, Data, load, register_dataset

T_TSB, F_TSB, N_TRAIN, N_TEST = 50, 50, 1000, 100

# type -> (box steps, box features, start). start: (t0, f0) fixed, "moving" (random per sample),
# or "time"/"feature": the positional sets, whose class is the box's place along one axis.
TSB_TYPES = {
    "middle": (30, 30, (10, 10)),
    "small-middle": (14, 14, (18, 18)),
    "moving-middle": (30, 30, "moving"),
    "moving-small-middle": (15, 15, "moving"),  # 15 in the benchmark, not 14
    "rare-time": (6, 40, (22, 5)),
    "moving-rare-time": (6, 40, "moving"),
    "rare-feature": (40, 6, (5, 22)),
    "moving-rare-feature": (40, 6, "moving"),
    # The benchmark's `PostionalTime`: random time start, features start at 1 (class 1) or 29
    # (class 0); `PostionalFeature` the reverse. The box always gets +1.
    "positional-time": (20, 20, "time"),
    "positional-feature": (20, 20, "feature"),
}
BACKGROUNDS = ("box", "ar", "car", "narma", "harmonic", "pseudo-periodic", "gp")
NOISE_STD = 0.3
# run_train_size not given: the split asked for is the run's (see train.data_options)


# --------------------------------------------------------------------------- backgrounds
# Each takes (n, T, F, generator) and returns raw (n, T, F) float64 series.


def _grid(n: int, t: int, g: torch.Generator) -> torch.Tensor:
    """timesynth's irregular sampler: of 2T points evenly on [0, 20], T kept (sorted), each
    jittered by N(0, 20 / 2T), sorted again. One grid per sample: (n, T)."""
    full = torch.linspace(0, 20, 2 * t, dtype=torch.float64)
    keep = torch.rand(n, 2 * t, generator=g).argsort(1)[:, :t].sort(1).values  # (n, T)
    jitter = torch.randn(n, t, generator=g, dtype=torch.float64) * (20 / (2 * t))
    return (full[keep] + jitter).sort(1).values


def _noise(n, t, f, g):
    return torch.randn(n, t, f, generator=g, dtype=torch.float64) * NOISE_STD


def bg_box(n, t, f, g):
    return torch.randn(n, t, f, generator=g, dtype=torch.float64)


def bg_harmonic(n, t, f, g):
    tt = _grid(n, t, g)
    return torch.sin(2 * math.pi * 2.0 * tt)[:, :, None].expand(n, t, f) + _noise(n, t, f, g)


def bg_pseudo_periodic(n, t, f, g):
    tt = _grid(n, t, g)[:, :, None]  # (n, T, 1)
    freq = 2.0 + 0.01 * torch.randn(n, t, f, generator=g, dtype=torch.float64)
    amp = 1.0 + 0.5 * torch.randn(n, t, f, generator=g, dtype=torch.float64)
    return amp * torch.sin(freq * tt) + _noise(n, t, f, g)  # no 2π, as timesynth


def bg_ar(n, t, f, g):
    """x_t = 0.9 x_{t-1} + N(0, 0.5), from x_{-1} = 0 (timesynth's defaults). A loop over the
    T steps of a recurrence, over all series at once."""
    e = torch.randn(n, t, f, generator=g, dtype=torch.float64) * 0.5
    x = torch.zeros(n, t, f, dtype=torch.float64)
    prev = torch.zeros(n, f, dtype=torch.float64)
    for i in range(t):
        prev = 0.9 * prev + e[:, i]
        x[:, i] = prev
    return x + _noise(n, t, f, g)


def bg_car(n, t, f, g):
    """Continuous AR on the irregular grid: x_0 = 0.01, x_i = 0.9^Δ x_{i-1} + 0.01 sqrt(1 - 0.9^Δ) z."""
    tt = _grid(n, t, g)
    phi = 0.9 ** (tt[:, 1:] - tt[:, :-1]).clamp_min(0)  # (n, T-1)
    z = torch.randn(n, t, f, generator=g, dtype=torch.float64)
    x = torch.empty(n, t, f, dtype=torch.float64)
    x[:, 0] = 0.01
    for i in range(1, t):
        p = phi[:, i - 1, None]
        x[:, i] = p * x[:, i - 1] + 0.01 * torch.sqrt(1 - p) * z[:, i]
    return x + _noise(n, t, f, g)


def _narma_curve(t: int) -> torch.Tensor:
    """timesynth's NARMA(10) as the benchmark ran it: a fresh RandomState(42) for every series,
    and a slice bug that zeroes the a1 term, leaving y_k = 0.3 y_{k-1} + 1.5 u_{k-10} u_k + 0.1.
    The same curve for every series: (T,)."""
    r = np.random.RandomState(42)
    u = np.concatenate([r.uniform(0, 0.5, 10), r.uniform(0, 0.5, t)])
    y = np.zeros(t + 10)
    for k in range(10, t + 10):
        y[k] = 0.3 * y[k - 1] + 1.5 * u[k - 10] * u[k] + 0.1
    return torch.from_numpy(y[10:])


def bg_narma(n, t, f, g):
    return _narma_curve(t)[None, :, None].expand(n, t, f) + _noise(n, t, f, g)


def bg_gp(n, t, f, g):
    """Gaussian process, Matérn nu = 1.5, lengthscale 1, variance 1, on each sample's grid: one
    Cholesky factor per grid, shared by its F features (n Cholesky factors, not n x F draws)."""
    tt = _grid(n, t, g)
    d = (tt[:, :, None] - tt[:, None, :]).abs() * math.sqrt(3.0)  # (n, T, T)
    k = (1 + d) * torch.exp(-d)
    eye = torch.eye(t, dtype=torch.float64)
    for jitter in (1e-12, 1e-10, 1e-8, 1e-6):  # timesynth adds 1e-12; jittered grids can need more
        chol, info = torch.linalg.cholesky_ex(k + jitter * eye)
        if not info.any():
            break
    z = torch.randn(n, t, f, generator=g, dtype=torch.float64)
    return chol @ z + _noise(n, t, f, g)


BACKGROUND_FNS = {"box": bg_box, "ar": bg_ar, "car": bg_car, "narma": bg_narma, "harmonic": bg_harmonic,
                  "pseudo-periodic": bg_pseudo_periodic, "gp": bg_gp}


# --------------------------------------------------------------------------- TSB samples


def make_tsb(kind: str, background: str, n: int, seed: int, t: int = T_TSB, f: int = F_TSB):
    """Raw TSB samples: x (n, T, F) float64, y (n,) int64 (1: the +1 box), gt (n, T, F) bool.
    Vectorised over samples."""
    if kind not in TSB_TYPES:
        raise unknown_name("TSB type", kind, TSB_TYPES)
    if background not in BACKGROUND_FNS:
        raise unknown_name("TSB background", background, BACKGROUND_FNS)
    g = torch.Generator().manual_seed(seed)
    bt, bf, start = TSB_TYPES[kind]
    y = torch.randint(0, 2, (n,), generator=g)
    sign = (2 * y - 1).double()  # +1 for class 1, -1 for class 0
    if isinstance(start, tuple):
        t0, f0 = torch.full((n,), start[0]), torch.full((n,), start[1])
    elif start == "moving":
        t0 = torch.randint(0, t - bt, (n,), generator=g)
        f0 = torch.randint(0, f - bf, (n,), generator=g)
    elif start == "time":  # random time, the class's features
        t0 = torch.randint(0, t - bt, (n,), generator=g)
        f0 = torch.where(y == 1, 1, 29)
        sign = torch.ones(n, dtype=torch.float64)
    else:  # "feature": random features, the class's time
        f0 = torch.randint(0, f - bf, (n,), generator=g)
        t0 = torch.where(y == 1, 1, 29)
        sign = torch.ones(n, dtype=torch.float64)
    steps, feats = torch.arange(t), torch.arange(f)
    gt = (((steps[None] >= t0[:, None]) & (steps[None] < (t0 + bt)[:, None]))[:, :, None]
          & ((feats[None] >= f0[:, None]) & (feats[None] < (f0 + bf)[:, None]))[:, None, :])  # (n, T, F)
    x = BACKGROUND_FNS[background](n, t, f, g)
    s = sign[:, None, None]
    if background == "box":  # the box's cells are replaced by N(±1, 1)
        box = s + torch.randn(n, t, f, generator=g, dtype=torch.float64)
        x = torch.where(gt, box, x)
    else:  # ±1 is added to them
        x = x + gt * s
    return x, y, gt


class MinMax:
    """The benchmark's scaler: min and max per (t, f) cell over the training split -> [0, 1]."""

    def __init__(self, x: torch.Tensor):
        self.lo, self.hi = x.amin(0), x.amax(0)  # (T, F)
        self.span = torch.where(self.hi > self.lo, self.hi - self.lo, torch.ones_like(self.hi))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.lo) / self.span).float()


def tsb_loader(kind: str, background: str):
    def load(data_dir, train_size, test_size, run_train_size=UNSET) -> Data:
        # The scaler is fitted on the run's own training split, also when an evaluation asks for
        # only its test split.
        n_fit = (train_size if run_train_size is UNSET else run_train_size) or N_TRAIN
        xtr, ytr, gtr = make_tsb(kind, background, max(n_fit, train_size or 0), seed=1)
        xte, yte, gte = make_tsb(kind, background, test_size or N_TEST, seed=2)
        scale = MinMax(xtr[:n_fit])
        ntr = train_size or n_fit

        def sampler(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
            """n fresh background series, without a box, scaled as the data: (n, T, F)."""
            gen = generator if generator is not None else torch.Generator().manual_seed(torch.seed() % 2**63)
            seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            return scale(BACKGROUND_FNS[background](n, T_TSB, F_TSB, torch.Generator().manual_seed(seed)))

        return Data(scale(xtr[:ntr]), ytr[:ntr], scale(xte), yte, ["-1", "+1"], gtr[:ntr], gte,
                    extras={"background": sampler})

    return load


TSB_DEFAULTS = dict(model="tcn", epochs=20, batch_size=50, optimizer="adam", lr=1e-3)
for _kind in TSB_TYPES:
    for _bg in BACKGROUNDS:
        register_dataset(
            f"tsb-{_kind}-{_bg}", tsb_loader(_kind, _bg), layout="series", shape=(T_TSB, F_TSB), num_classes=2,
            defaults=TSB_DEFAULTS, attack=dict(eps=0.1, step_size=0.01, steps=20), bounds=None, has_gt=True,
            background=True, value_range=1.0,
            description=f"TSB synthetic: {_kind} box on a {_bg} background, with ground truth")
FAMILIES["tsb-TYPE-BACKGROUND"] = ({f"tsb-{k}-{b}" for k in TSB_TYPES for b in BACKGROUNDS},
                                   f"TYPE: {', '.join(TSB_TYPES)}; BACKGROUND: {', '.join(BACKGROUNDS)}")


# --------------------------------------------------------------------------- sequential MNIST


def _mnist_seq(data_dir, train_size, test_size) -> Data:
    d = load("mnist", data_dir, train_size, test_size)
    return Data(d.x_train[:, 0], d.y_train, d.x_test[:, 0], d.y_test, d.classes)  # (N, 28 rows, 28 pixels)


register_dataset("mnist-seq", _mnist_seq, layout="series", shape=(28, 28), num_classes=10,
                 defaults=dict(model="tcn", epochs=3, batch_size=128, optimizer="adam", lr=1e-3),
                 attack=dict(eps=0.1, step_size=0.01, steps=20), bounds=(0.0, 1.0),
                 description="MNIST as 28 steps x 28 features (rows, pixels)")

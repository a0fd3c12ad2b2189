"""Process-wide tuning for the `sgtool` command. Importing sgtool as a library changes nothing in
the process; the command (cli.main) calls `tune_process()` before torch is loaded, and so can
any script that wants the command's speed (the benchmarks do)."""

from __future__ import annotations

import os
import sys


def tune_malloc() -> bool:
    """Keep freed memory in the process instead of handing it back to the kernel (glibc only).

    A training step allocates and frees activations of tens to hundreds of MB. glibc serves
    blocks over 128 KB-32 MB with mmap and unmaps them on free, so every step page-faults all
    of its memory afresh: on mnist-cnn at batch 512 the kernel time equalled the compute, and
    raising the thresholds halved the step time (benchmarks/train_speed.py). The cost is that
    the process keeps its peak memory. SGTOOL_MALLOC=default opts out. Returns whether the
    settings took."""
    import ctypes

    if os.environ.get("SGTOOL_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False


def tune_process() -> None:
    """What the `sgtool` command does at start: passive OpenMP waiting and `tune_malloc`.

    With more busy threads than cores (2-core machines, parallel jobs), libgomp's default active
    spin-waiting made PGD and ASGT steps about 3x slower here; passive waiting costs nothing when
    the machine is idle. libgomp reads it when torch loads it, so this must run before `import
    torch`; a user's own OMP_WAIT_POLICY wins."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    tune_malloc()

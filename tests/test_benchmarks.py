"""The benchmark scripts run, in their quick modes: what they print has the figures it promises."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_benchmark_pages import page_matches

pytestmark = pytest.mark.processes


def test_train_speed_benchmark_prints_ratios_and_floor(shared_data, tmp_path):
    """benchmarks/train_speed.py runs end to end on real MNIST (tiny: batch 32, one step per mode)
    and its floor line is the formula it states, from the parts it prints; its --markdown page
    has the printed table's cells."""
    root = Path(__file__).resolve().parents[1]
    page = tmp_path / "results" / "train_speed.md"
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "train_speed.py"), "--data-dir", str(shared_data),
         "--batch-size", "32", "--repeats", "2", "--steps", "1", "--markdown", str(page)],
        capture_output=True, text=True, timeout=300, check=True).stdout
    assert out.startswith("machine: ")
    table = [line for line in out.splitlines() if line.startswith(("mode", "standard", "sgt"))]
    assert page_matches(page.read_text(), [[line[:14].strip(), *line[15:].split()] for line in table])
    rows = {line.split()[0] + (" " + line.split()[1] if line.startswith("sgt") else ""): line.split()
            for line in out.splitlines() if line.startswith(("standard", "sgt"))}
    assert set(rows) == {"standard", "sgt (eval)", "sgt (shared)"}
    assert float(rows["standard"][-3]) == 1.0  # its own ratio
    m = re.search(r"floor of sgt \(shared\): ([\d.]+) = 2 \+ \(saliency backward ([\d.]+) ms \+ masking "
                  r"([\d.]+) ms - optimiser step ([\d.]+) ms\) / standard ([\d.]+) ms", out)
    assert m, out
    floor, sal, msk, opt, std = (float(v) for v in m.groups())
    assert sal > 0 and std > 0
    # the parts are printed to 0.1 ms and the floor to 0.01
    assert floor == pytest.approx(2 + (sal + msk - opt) / std, abs=0.005 + 0.2 / std)


def test_gpu_suite_runs_on_the_cpu_in_smoke_mode(shared_data):
    """benchmarks/gpu_suite.py cannot rot while no GPU is lent: its smoke run prints every row."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_suite.py"), "--smoke", "--data-dir",
                          str(shared_data)], capture_output=True, text=True, timeout=300, check=True).stdout
    for row in ("mnist-cnn b8 SGT", "resnet20 b4 ASGT", "authors' SGT step", "mask-eval ig", "bf16 SGT masks",
                "PGD-3"):
        assert row in out, out

"""Sweeps that share a runs dir: two at once, shards, submitit's local executor, and a killed
job's cell resuming; the lock's fallback for filesystems without flock."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sgtool import sweep
from sgtool.errors import SgtoolError

pytestmark = pytest.mark.cluster

ENV = {**os.environ, "SGTOOL_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
GRID = """tiny:
  train: {dataset: synthetic, model: mlp, trainer: [standard, sgt], seed: [0, 1], train_size: 128, test_size: 32,
          epochs: 1, batch_size: 64}
  mask_eval: {methods: [grad, random], fractions: [0, 0.5], limit: 16}
"""


@pytest.fixture
def grid(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text(GRID)
    return p


RUNNER = ("import json, sys; from sgtool.sweep import run_sweep; "
          "rows = run_sweep(sys.argv[1], runs_dir=sys.argv[2], **json.loads(sys.argv[4])); "
          "json.dump(rows, open(sys.argv[3], 'w'))")


def start(grid, runs, out, **kw):
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(grid), str(runs), str(out), json.dumps(kw)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_two_sweeps_at_once_train_every_cell_once(grid, tmp_path):
    a, b = start(grid, tmp_path / "runs", tmp_path / "a.json"), start(grid, tmp_path / "runs", tmp_path / "b.json")
    for p in (a, b):
        assert p.wait(timeout=600) == 0, p.stdout.read()
    rows = json.loads((tmp_path / "a.json").read_text()) + json.loads((tmp_path / "b.json").read_text())
    trained = [r["run"] for r in rows if r["train"] == "trained"]
    assert sorted(trained) == sorted(set(trained)) and len(set(trained)) == 4  # each cell trained exactly once
    assert {r["train"] for r in rows} <= {"trained", "cached"}
    assert all(r["mask_eval"] in ("done", "cached") for r in rows)


def test_shards_cover_the_grid_exactly(grid, tmp_path):
    cells = [c.run_id for c in sweep.plan(grid, runs_dir=str(tmp_path))]
    parts = [sweep.run_sweep(grid, runs_dir=str(tmp_path), shard=f"{i}/2", dry_run=True) for i in range(2)]
    got = [r["run"] for part in parts for r in part]
    assert sorted(got) == sorted(cells) and len(got) == len(cells)
    for bad in ("2/2", "x", "1/0", "-1/2"):
        with pytest.raises(SgtoolError, match="--shard"):
            sweep.parse_shard(bad)


def test_submitit_local_executor_runs_a_sweep(grid, tmp_path):
    pytest.importorskip("submitit")
    rows = sweep.run_sweep(grid, runs_dir=str(tmp_path / "runs"), executor="local", jobs=2)
    assert len(rows) == 4 and {r["train"] for r in rows} == {"trained"} and {r["mask_eval"] for r in rows} == {"done"}
    again = sweep.run_sweep(grid, runs_dir=str(tmp_path / "runs"))  # the same results, found in the store
    assert {r["train"] for r in again} == {"cached"} and [r["test_acc"] for r in again] == [r["test_acc"] for r in rows]


def test_a_killed_local_job_resumes(tmp_path):
    pytest.importorskip("submitit")
    grid = tmp_path / "e.yaml"
    grid.write_text("slow:\n  train: {dataset: synthetic, model: small-cnn, trainer: sgt, train_size: 512,\n"
                    "          test_size: 32, epochs: 3, batch_size: 64}\n")
    runs = tmp_path / "runs"
    p = start(grid, runs, tmp_path / "x.json", executor="local")
    (cell,) = sweep.plan(grid, runs_dir=str(runs))
    metrics = runs / cell.run_id / "metrics.csv"
    deadline = time.time() + 300
    # Wait for epoch 1's checkpoint, written just after its metrics row: a kill between the two
    # leaves nothing to resume from, and the rerun rightly trains from the start.
    ckpt = runs / cell.run_id / "checkpoint.json"
    while not (ckpt.is_file() and metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert time.time() < deadline and p.poll() is None, p.stdout.read() if p.poll() is not None else "timeout"
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)  # the sweep and its job, mid-training
    p.wait(timeout=60)
    rows = sweep.run_sweep(grid, runs_dir=str(runs), executor="local")
    assert rows[0]["train"] == "resumed"
    assert len(metrics.read_text().splitlines()) == 4  # header and the three epochs, once each


def test_lock_falls_back_to_a_lock_file_where_flock_is_missing(tmp_path, monkeypatch):
    """Without flock (some NFS and Lustre mounts) the lock is a file holding host and pid: this
    host's stale one (its pid gone) is broken; another host's names the way out."""
    import filelock._native._unix as unix

    from sgtool import locks

    def no_flock(fd):
        raise OSError(errno.ENOSYS, "flock")

    monkeypatch.setattr(unix, "lock_fd_nonblocking", no_flock, raising=False)
    monkeypatch.setattr(unix.fcntl, "flock", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSYS, "no flock")))
    path = tmp_path / "run1" / "lock"
    path.parent.mkdir()
    with locks.held(path, "run run1", "trained"):
        assert (tmp_path / "run1" / "lock.soft").exists() and locks.is_held(path)
        with pytest.raises(SgtoolError, match="sgtool unlock run1"):
            with locks.held(path, "run run1"):
                pass
    assert not (tmp_path / "run1" / "lock.soft").exists()
    # a crashed process of this host: its pid is gone, its lock file is broken
    (tmp_path / "run1" / "lock.soft").write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": 2**22 + 7}))
    with locks.held(path, "run run1"):
        pass
    # another host's: left alone, and `sgtool unlock` breaks it
    (tmp_path / "run1" / "lock.soft").write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(SgtoolError, match="held by elsewhere, pid 1"):
        with locks.held(path, "run run1"):
            pass
    assert locks.unlock(path) and not locks.is_held(path)

import os
from pathlib import Path

import pytest
import torch

# No network in tests: a missing dataset must fail fast with the offline message.
os.environ["SGTOOL_OFFLINE"] = "1"
# Wide enough that rich never folds the ids and numbers the CLI tests look for.
os.environ["COLUMNS"] = "200"
torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real MNIST not found at {SHARED_DATA / 'mnist'}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """For the attack and ASGT modules (pytestmark): tiny tensors gain nothing from intra-op
    threads, and on a loaded machine the OpenMP barriers of two threads make each op wait for
    a time slice (100x slower here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def record_model_inputs(monkeypatch, module_name: str = "sgtool.evaluate.pipeline") -> list:
    """Wrap the models that `module_name` loads so that every input they see is appended (a
    detached copy) to the returned list."""
    import importlib

    module = importlib.import_module(module_name)
    seen, real_load = [], module.load_model

    class Recorder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.model(x)

    def load(run, device, **kw):
        model, cfg = real_load(run, device, **kw)
        return Recorder(model), cfg

    monkeypatch.setattr(module, "load_model", load)
    return seen


def train_standard_and_sgt(runs_dir: Path, *args: str) -> list[str]:
    """Train a standard and an SGT run through the CLI with `args` into runs_dir; their ids, sorted."""
    from typer.testing import CliRunner

    from sgtool.cli import app

    for trainer in ("standard", "sgt"):
        r = CliRunner().invoke(app, ["train", *args, "--trainer", trainer, "--runs-dir", str(runs_dir)])
        assert r.exit_code == 0, r.output
    return sorted(p.name for p in runs_dir.iterdir())


def exited_cleanly(r) -> bool:
    """Whether a CliRunner result ended without an uncaught exception. Typer's runner keeps such an
    exception in r.exception and prints no traceback, so the output alone cannot tell: an exit
    through typer.Exit (SystemExit) is clean, anything else is what a user would see as a traceback."""
    return r.exception is None or isinstance(r.exception, SystemExit)

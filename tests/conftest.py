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

"""Run under torchrun by tests/test_distributed.py: trains a run with the given flags and writes
this process's final parameters to OUT/rank<r>.safetensors."""

import sys

import sgtool
from sgtool.store import save_tensors

out, flags = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
ints = {"train_size", "test_size", "epochs", "batch_size", "seed"}
cfg = sgtool.make_config(**{k: int(v) if k in ints else v for k, v in flags.items()})
res = sgtool.train_run(cfg)
rank = __import__("torch").distributed.get_rank()
save_tensors(f"{out}/rank{rank}.safetensors", res["model"].state_dict())

"""Evaluations of stored runs. Each returns tidy rows (a list of dicts) and caches them under
the run directory, keyed by the hash of the evaluation's own config (config.eval_hash)."""

from __future__ import annotations

# === mask-eval (issue 3) ===

# === attack evaluation (issue 4) ===

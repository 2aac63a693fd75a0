"""Shared helpers for the tests: tiny configs that train in a second or two."""

from __future__ import annotations

import os
import subprocess
import sys

TINY = [
    "task.n_tokens=5",
    "task.input_len=4",
    "task.n_depths=3",
    "task.n_functions=2",
    "task.n_train_compositions=8",
    "task.eval_inputs=2",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.d_model=32",
    "train.batch_size=16",
    "train.steps=24",
    "train.warmup_steps=4",
    "train.eval_every=8",
    "train.checkpoint_every=8",
    "train.progress=never",
]


def caplab(*args: str, root=None, timeout: float = 300, env_extra=None) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONWARNINGS": "error", **(env_extra or {})}
    cmd = [sys.executable, "-m", "caplab.cli", *args]
    if root is not None:
        cmd += ["--root", str(root)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "eval_s")} for r in records]

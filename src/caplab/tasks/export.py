"""A task's samples as a Parquet file, for use outside caplab (pandas, HF `datasets`, DuckDB, Polars).

One row per sample. Columns: `inputs`, `targets` and `mask` as lists (token ids for a token task; an image
flattened in (C, H, W) order with its `shape` for an image task), and every per-sample label the task
attaches (parse annotations, concept values, ...) under `label.<name>`. The file's metadata records the
task config and the seed, so the same rows can be drawn again.

    caplab export RUN --data samples.parquet [--samples 10000] [--seed 0]
    datasets.load_dataset("parquet", data_files="samples.parquet")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from caplab.tasks.base import Task


def sample_table(task: Task, n: int, seed: int = 0, batch_size: int = 1024):
    """A pyarrow Table of `n` samples of `task`, drawn on the CPU from a generator seeded `seed`."""
    import pyarrow as pa

    generator = torch.Generator().manual_seed(seed)
    columns: dict[str, list] = {}
    drawn = 0
    while drawn < n:
        batch = task.sample(min(batch_size, n - drawn), generator, torch.device("cpu"))
        parts = {"inputs": batch.inputs, "targets": batch.targets, "mask": batch.mask,
                 **{f"label.{k}": v for k, v in batch.labels.items() if torch.is_tensor(v) and len(v) == len(batch.inputs)}}
        for name, tensor in parts.items():
            columns.setdefault(name, []).extend(tensor.reshape(len(tensor), -1).tolist() if tensor.dim() > 1 else tensor.tolist())
        if batch.inputs.dim() > 2:  # images: keep the shape beside the flattened pixels
            columns.setdefault("shape", []).extend([list(batch.inputs.shape[1:])] * len(batch.inputs))
        drawn += len(batch.inputs)
    return pa.table(columns)


def write_parquet(task: Task, path: Path, n: int, seed: int = 0, config: dict | None = None) -> Path:
    """Write `n` samples of `task` (seed `seed`) to the Parquet file `path`; return it."""
    import pyarrow.parquet as pq

    table = sample_table(task, n, seed)
    metadata = {b"caplab": json.dumps({"task": config or {}, "seed": seed, "samples": n}).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))
    return Path(path)

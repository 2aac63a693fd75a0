"""One directory per run, the source of truth for everything a run produced.

    <runs root>/<run_id>/
        run.json          id, recipe, status, timestamps, error
        config.json       the fully resolved ExperimentConfig
        task.json         facts about the task instance (split, vocabulary)
        manifest.json     per checkpoint: step, tokens, file, sha256 (+ optimizer file)
        checkpoints/step_XXXXXXXX.safetensors        model weights
        checkpoints/step_XXXXXXXX.state.safetensors  optimizer + RNG state (latest only by default)
        metrics.jsonl     one JSON object per evaluation
        summary.json      the study's headline numbers at the end
        figures/*.png, report.html

Every write goes to a temporary file that is then renamed over the target,
so a crash (even SIGKILL) never leaves a half-written file behind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from caplab.errors import CorruptCheckpoint, RunNotFound


def runs_root() -> Path:
    """`$CAPLAB_HOME/runs` when CAPLAB_HOME is set, else `./runs`."""
    home = os.environ.get("CAPLAB_HOME")
    return Path(home) / "runs" if home else Path("runs")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would give; mkstemp alone makes files private (0600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Path):
    return json.loads(Path(path).read_text())


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------ creation and lookup

    @staticmethod
    def new_run_id(recipe: str) -> str:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return f"{recipe}-{stamp}-{secrets.token_hex(2)}"

    @classmethod
    def create(cls, recipe: str, root: Optional[Path] = None, run_id: Optional[str] = None, files: Optional[dict] = None) -> "RunStore":
        """A new run directory with run.json, manifest.json and the given JSON `files`.

        The directory is assembled under a temporary name and renamed into place,
        so a run directory either exists whole or not at all.
        """
        root = Path(root) if root is not None else runs_root()
        run_id = run_id or cls.new_run_id(recipe)
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{run_id}."))
        try:
            atomic_write_json(staging / "run.json", {"run_id": run_id, "recipe": recipe, "status": "created", "created": now(), "updated": now(), "error": None})
            atomic_write_json(staging / "manifest.json", {"checkpoints": []})
            for name, obj in (files or {}).items():
                atomic_write_json(staging / name, obj)
            os.rename(staging, root / run_id)  # fails if the run already exists
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(root / run_id)

    @classmethod
    def open(cls, name: str, root: Optional[Path] = None) -> "RunStore":
        """A run by directory path, id, or unique id prefix; RunNotFound otherwise."""
        root = Path(root) if root is not None else runs_root()
        candidates = [Path(name), root / name]
        for candidate in candidates:
            if (candidate / "run.json").is_file():
                return cls(candidate)
        matches = sorted(p for p in root.glob(f"{name}*") if (p / "run.json").is_file()) if root.is_dir() else []
        if len(matches) == 1:
            return cls(matches[0])
        if len(matches) > 1:
            raise RunNotFound(f"run {name!r} is ambiguous: {', '.join(p.name for p in matches[:5])}")
        raise RunNotFound(f"no run named {name!r} under {root}")

    @property
    def run_id(self) -> str:
        return self.info()["run_id"]

    # ------------------------------------------------------------ small JSON files

    def info(self) -> dict:
        return read_json(self.path / "run.json")

    def set_status(self, status: str, error: Optional[str] = None, diverged: bool = False) -> dict:
        """`diverged`: the failure is a loss that became NaN or infinite (a result, not a fault)."""
        info = self.info()
        info.update(status=status, updated=now(), error=error, diverged=diverged)
        atomic_write_json(self.path / "run.json", info)
        return info

    def write_json(self, name: str, obj) -> None:
        atomic_write_json(self.path / name, obj)

    def read_json(self, name: str):
        return read_json(self.path / name)

    def config_dict(self) -> dict:
        return self.read_json("config.json")

    def summary(self) -> dict:
        path = self.path / "summary.json"
        return read_json(path) if path.is_file() else {}

    # ------------------------------------------------------------ metrics

    def metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log_metrics(self, record: dict) -> None:
        """Append one evaluation record (the file is rewritten atomically)."""
        self._write_metrics(self.metrics() + [record])

    def truncate_metrics(self, last_step: int) -> None:
        """Forget records after `last_step` (they are recomputed on resume)."""
        self._write_metrics([r for r in self.metrics() if r["step"] <= last_step])

    def _write_metrics(self, records: list[dict]) -> None:
        atomic_write_bytes(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())

    # ------------------------------------------------------------ checkpoints

    def manifest(self) -> dict:
        return self.read_json("manifest.json")

    def save_checkpoint(self, step: int, tokens: int, model: dict, extra: dict, meta: dict, keep_states: int = 1) -> None:
        """Write weights and optimizer/RNG state, then record both in the manifest.

        Only the newest `keep_states` optimizer states are kept (they are 2x the weights).
        """
        folder = self.path / "checkpoints"
        folder.mkdir(exist_ok=True)
        weights = folder / f"step_{step:08d}.safetensors"
        state = folder / f"step_{step:08d}.state.safetensors"
        self._save_tensors(weights, model, {"step": str(step), "tokens": str(tokens)})
        self._save_tensors(state, extra, {"meta": json.dumps(meta)})
        manifest = self.manifest()
        entries = [e for e in manifest["checkpoints"] if e["step"] != step]
        entries.append({"step": step, "tokens": tokens, "file": f"checkpoints/{weights.name}", "sha256": sha256_of(weights),
                        "state_file": f"checkpoints/{state.name}", "state_sha256": sha256_of(state)})
        entries.sort(key=lambda e: e["step"])
        stale = [e for e in entries if e.get("state_file")][:-keep_states] if keep_states > 0 else []
        for entry in stale:
            entry["state_file"] = entry["state_sha256"] = None
        atomic_write_json(self.path / "manifest.json", {"checkpoints": entries})
        for entry in stale:  # delete only once the manifest no longer points at them
            (folder / f"step_{entry['step']:08d}.state.safetensors").unlink(missing_ok=True)

    @staticmethod
    def _save_tensors(path: Path, tensors: dict, metadata: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def checkpoint_entry(self, step: Optional[int] = None, with_state: bool = False) -> dict:
        """Manifest entry at `step`, or the newest one (with optimizer state if asked)."""
        entries = self.manifest()["checkpoints"]
        if with_state:
            entries = [e for e in entries if e.get("state_file")]
        if step is not None:
            entries = [e for e in entries if e["step"] == step]
        if not entries:
            what = f"at step {step}" if step is not None else "with optimizer state" if with_state else ""
            raise CorruptCheckpoint(f"run {self.path.name} has no checkpoint {what}".rstrip())
        return entries[-1]

    def _verified_load(self, relative: str, expected_sha: str) -> tuple[dict, dict]:
        path = self.path / relative
        if not path.is_file():
            raise CorruptCheckpoint(f"checkpoint file {path} is missing")
        if sha256_of(path) != expected_sha:
            raise CorruptCheckpoint(f"checkpoint file {path} is corrupt (sha256 does not match the manifest)")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as exc:
            raise CorruptCheckpoint(f"checkpoint file {path} cannot be read: {exc}") from None

    def load_weights(self, step: Optional[int] = None) -> tuple[dict[str, torch.Tensor], dict]:
        """Model tensors of a checkpoint (hash-checked) and its manifest entry."""
        entry = self.checkpoint_entry(step)
        tensors, _ = self._verified_load(entry["file"], entry["sha256"])
        return tensors, entry

    def load_training_state(self) -> tuple[dict, dict, dict]:
        """(model tensors, optimizer + RNG tensors, metadata) of the newest resumable checkpoint."""
        entry = self.checkpoint_entry(with_state=True)
        model, _ = self._verified_load(entry["file"], entry["sha256"])
        extra, metadata = self._verified_load(entry["state_file"], entry["state_sha256"])
        return model, extra, json.loads(metadata["meta"])


def open_folder(name: str, root: Optional[Path], kind: str, marker: str) -> Path:
    """A sweep or study folder by path or by name under `<root>/<kind>/`, recognised by its `marker` file."""
    root = Path(root) if root is not None else runs_root()
    for candidate in (Path(name), root / kind / name):
        if (candidate / marker).is_file():
            return candidate
    raise RunNotFound(f"no {kind[:-1]} named {name!r} under {root / kind}")

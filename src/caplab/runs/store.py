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
import logging
import math
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from caplab.errors import CorruptCheckpoint, DamagedRun, RunNotFound
from caplab.names import SAFE_NAME, check_name

log = logging.getLogger(__name__)


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


def read_document(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """The JSON object in `path` with `keys`; DamagedRun (one line naming the file) if it is missing or damaged."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedRun(f"{path} is missing") from None
    except UnicodeDecodeError:
        raise DamagedRun(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise DamagedRun(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(obj, dict):
        raise DamagedRun(f"{path} should hold a JSON object, not {type(obj).__name__}")
    missing = [key for key in keys if key not in obj]
    if missing:
        raise DamagedRun(f"{path} lacks {', '.join(repr(k) for k in missing)}")
    return obj


def strict_record(record: dict) -> dict:
    """`record` as strict JSON: each non-finite float is null, and "nonfinite" maps its key to "nan", "inf" or
    "-inf" (so other tools read the file, and `loose_record` gives caplab the float back)."""
    bad = {k: str(v) for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)}
    if not bad:
        return record
    return {**{k: (None if k in bad else v) for k, v in record.items()}, "nonfinite": bad}


def loose_record(record: dict) -> dict:
    """The inverse of `strict_record`."""
    bad = record.get("nonfinite")
    if not isinstance(bad, dict):
        return record
    return {k: (float(bad[k]) if k in bad else v) for k, v in record.items() if k != "nonfinite"}


def read_or_note(read, default, damaged: list[str]):
    """`read()`, or `default` with the DamagedRun's message appended to `damaged` (for commands that show
    what they can of a damaged run)."""
    try:
        return read()
    except DamagedRun as exc:
        damaged.append(str(exc))
        return default


def warn(message: str) -> None:
    log.warning(f"caplab: warning: {message}")


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
        check_name(recipe, "recipe name")
        run_id = check_name(run_id or cls.new_run_id(recipe), "run id")
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{run_id}."))
        try:
            os.chmod(staging, 0o777 & ~_umask())  # what mkdir would give; mkdtemp alone makes it private (0700)
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
        """A run by directory path, id, or unique id prefix (a plain prefix, never a pattern); RunNotFound otherwise."""
        root = Path(root) if root is not None else runs_root()
        if not name:
            raise RunNotFound("no run named '' (give a run id or a run directory)")
        candidates = [Path(name)] + ([root / name] if SAFE_NAME.fullmatch(name) else [])
        for candidate in candidates:
            if (candidate / "run.json").is_file():
                return cls(candidate)
        matches = []
        if SAFE_NAME.fullmatch(name) and root.is_dir():
            matches = sorted(p for p in root.iterdir() if p.name.startswith(name) and (p / "run.json").is_file())
        if len(matches) == 1:
            return cls(matches[0])
        if len(matches) > 1:
            raise RunNotFound(f"run {name!r} is ambiguous: {', '.join(p.name for p in matches[:5])}")
        raise RunNotFound(f"no run named {name!r} under {root}")

    @property
    def run_id(self) -> str:
        return self.info()["run_id"]

    def remove_temporaries(self) -> None:
        """Delete the temporary files a killed writer left (`.NAME.*.tmp`); only the run's owner may call this."""
        for folder in (self.path, self.path / "checkpoints"):
            for leftover in folder.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)

    # ------------------------------------------------------------ small JSON files

    def info(self) -> dict:
        return read_document(self.path / "run.json", ("run_id", "recipe", "status", "created", "updated"))

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
        return read_document(self.path / "config.json")

    def experiment_config(self):
        """The run's ExperimentConfig, checked as a recipe is; DamagedRun naming config.json if it does not resolve."""
        from caplab.config import resolve
        from caplab.errors import ConfigError

        data = self.config_dict()
        try:
            return resolve(str(data.get("recipe", self.path.name)), data)
        except ConfigError as exc:
            raise DamagedRun(f"{self.path / 'config.json'} does not describe a valid run: {exc}") from None

    def summary(self) -> dict:
        path = self.path / "summary.json"
        return read_document(path) if path.is_file() else {}

    # ------------------------------------------------------------ metrics

    def metrics(self) -> list[dict]:
        """Every evaluation record. A damaged last line (what a crash mid-write by another tool leaves) is
        skipped with a warning; a damaged line before it is DamagedRun."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise DamagedRun(f"{path} is not UTF-8 text") from None
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError("not a record with a step")
            except ValueError:
                if number == len(lines):
                    warn(f"{path}: skipped its damaged last line {number} (a write cut short)")
                    break
                raise DamagedRun(f"{path} line {number} is not a metrics record") from None
            records.append(loose_record(record))
        return records

    def log_metrics(self, record: dict) -> None:
        """Append one evaluation record (the file is rewritten atomically)."""
        self._write_metrics(self.metrics() + [record])

    def truncate_metrics(self, last_step: int) -> None:
        """Forget records after `last_step` (they are recomputed on resume)."""
        self._write_metrics([r for r in self.metrics() if r["step"] <= last_step])

    def _write_metrics(self, records: list[dict]) -> None:
        text = "".join(json.dumps(strict_record(r), allow_nan=False) + "\n" for r in records)
        atomic_write_bytes(self.path / "metrics.jsonl", text.encode())

    # ------------------------------------------------------------ checkpoints

    def manifest(self) -> dict:
        manifest = read_document(self.path / "manifest.json", ("checkpoints",))
        entries = manifest["checkpoints"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("step"), int) for e in entries):
            raise DamagedRun(f"{self.path / 'manifest.json'}: 'checkpoints' should be a list of entries with a step")
        return manifest

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
            os.chmod(tmp, 0o666 & ~_umask())  # what open() would give; mkstemp makes files private (0600)
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
        tensors, metadata = self._verified_load(entry["file"], entry["sha256"])
        self._check_step(entry["file"], metadata.get("step"), entry["step"])
        return tensors, entry

    def _check_step(self, relative: str, stored, expected: int) -> None:
        """A checkpoint relabelled as another step (manifest edited, hash updated) is refused."""
        if str(stored) != str(expected):
            raise CorruptCheckpoint(f"checkpoint file {self.path / relative} holds step {stored}, "
                                    f"but the manifest says step {expected}")

    def load_training_state(self) -> tuple[dict, dict, dict]:
        """(model tensors, optimizer + RNG tensors, metadata) of the newest resumable checkpoint."""
        entry = self.checkpoint_entry(with_state=True)
        model, weights_meta = self._verified_load(entry["file"], entry["sha256"])
        self._check_step(entry["file"], weights_meta.get("step"), entry["step"])
        extra, metadata = self._verified_load(entry["state_file"], entry["state_sha256"])
        try:
            meta = json.loads(metadata["meta"])
        except (KeyError, ValueError):
            raise CorruptCheckpoint(f"checkpoint file {self.path / entry['state_file']} has no training metadata") from None
        self._check_step(entry["state_file"], meta.get("step"), entry["step"])
        return model, extra, meta


def open_folder(name: str, root: Optional[Path], kind: str, marker: str) -> Path:
    """A sweep or study folder by path or by name under `<root>/<kind>/`, recognised by its `marker` file."""
    root = Path(root) if root is not None else runs_root()
    for candidate in (Path(name), root / kind / name):
        if (candidate / marker).is_file():
            return candidate
    raise RunNotFound(f"no {kind[:-1]} named {name!r} under {root / kind}")

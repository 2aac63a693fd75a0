"""The layering of caplab's packages (pyproject's import-linter contract), checked as CI checks it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_layers_contract_holds(tmp_path):
    pytest.importorskip("importlinter")
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint, "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 kept, 0 broken" in result.stdout


def test_every_study_kind_offers_the_interface():
    from caplab.studies import KINDS, kind_module

    for kind in KINDS:
        module = kind_module(kind)
        assert all(callable(getattr(module, name, None)) for name in ("execute", "resume", "summary_lines")), kind

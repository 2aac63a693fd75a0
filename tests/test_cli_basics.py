"""What a new user meets first: a cheap, quiet `import caplab`, a fast --help, --version, pipes that end
quietly, reading commands that write nothing, and the config surprises of the user-facing issue."""

import os
import subprocess
import sys

import pytest

from caplab import ConfigError, load_config
from helpers import caplab


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_caplab_is_quiet_and_imports_neither_torch_nor_matplotlib():
    result = _python("import sys, caplab; print(sorted(m for m in ('torch', 'matplotlib', 'matplotlib.pyplot') if m in sys.modules))")
    assert result.returncode == 0 and result.stdout == "[]\n" and result.stderr == ""


def test_the_public_names_import_on_first_use():
    result = _python("import sys, caplab; caplab.GPT; print('torch' in sys.modules, 'matplotlib.pyplot' in sys.modules, "
                     "sorted(caplab.__all__) == sorted(dir(caplab)) or set(caplab.__all__) <= set(dir(caplab)))")
    assert result.stdout.split() == ["True", "False", "True"], result.stderr
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        __import__("caplab").nothing


def test_help_and_recipes_answer_without_torch():
    code = ("import sys, contextlib, io\nfrom caplab.cli import main\nfor argv in (['recipes'], ['--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n        try:\n            main(argv)\n"
            "        except SystemExit:\n            pass\nprint('torch' in sys.modules)")
    result = _python(code)
    assert result.stdout.strip() == "False", result.stderr


def test_version_is_the_package_metadata():
    from importlib.metadata import version

    result = caplab("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"caplab {version('caplab')}"


def test_a_closed_pipe_ends_quietly():
    read, write = os.pipe()
    os.close(read)  # the reader (`head`) is gone before caplab writes
    process = subprocess.run([sys.executable, "-m", "caplab", "recipes"], stdout=write, stderr=subprocess.PIPE, text=True,
                             timeout=60)
    os.close(write)
    assert process.returncode == 0 and process.stderr == ""


def test_listing_an_empty_root_creates_nothing(tmp_path):
    result = caplab("runs", root=tmp_path / "runs")
    assert result.returncode == 0 and not (tmp_path / "runs").exists()


def test_warmup_longer_than_training_is_a_clear_warning(caplog):
    from caplab.experiment import build

    from helpers import TINY

    with caplog.at_level("WARNING", logger="caplab"):
        build(load_config("demo", TINY + ["train.steps=3", "train.warmup_steps=500"]))[2].fit()
    assert "train.warmup_steps=500 is longer than train.steps=3: the learning rate never reaches" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="caplab"):
        build(load_config("demo", TINY + ["train.steps=3", "train.warmup_steps=3"]))[2].fit()
    assert caplog.text == ""
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config("demo", ["train.steps=1.5e2x"])


def test_resume_finds_sweeps_by_id(tmp_path):
    from helpers import TINY

    made = caplab("sweep", "demo", "--grid", "task.n_train_compositions=6", *[a for i in TINY + ["train.steps=4"]
                                                                            for a in ("--set", i)], root=tmp_path)
    assert made.returncode == 0, made.stderr
    sweep_id = next((tmp_path / "sweeps").iterdir()).name
    again = caplab("resume", sweep_id, root=tmp_path)
    assert again.returncode == 0 and sweep_id in again.stdout

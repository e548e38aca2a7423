"""scripts/setup_venv.sh on a copied checkout: `cp -a` keeps .venv, whose editable install points at the original.
The script must notice it and rebuild the venv for the copy — with the original still in place (it would silently run
the original's code) and with the original moved away (every command died with ModuleNotFoundError).

The checkout here is a miniature of the project's (the real setup script, a pyproject.toml, a `pipeline` package and
an empty requirements.txt), so the test installs one tiny package instead of the whole stack."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PYPROJECT = """[build-system]
requires = ["setuptools>=68,<81"]
build-backend = "setuptools.build_meta"

[project]
name = "sr-fusion-copy-probe"
version = "0.0.1"
requires-python = ">=3.11"

[tool.setuptools.packages.find]
include = ["pipeline*"]
"""


def _checkout(root: Path) -> Path:
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "scripts" / "setup_venv.sh", root / "scripts" / "setup_venv.sh")
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "requirements.txt").write_text("# nothing beyond the package itself\n")
    (root / "pipeline").mkdir()
    (root / "pipeline" / "__init__.py").write_text("")
    return root


def _setup(root: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(
        ["bash", str(root / "scripts" / "setup_venv.sh")], env=env, capture_output=True, text=True, timeout=600
    )


def _imports_from(root: Path) -> str:
    """Where ``root``'s venv imports ``pipeline`` from, asked from a neutral folder (``""``: it cannot)."""
    r = subprocess.run(
        [
            str(root / ".venv" / "bin" / "python"),
            "-I",
            "-c",
            "import pipeline, os; print(os.path.dirname(pipeline.__file__))",
        ],
        cwd="/",
        capture_output=True,
        text=True,
    )
    return r.stdout.strip() if r.returncode == 0 else ""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    if shutil.which("uv") is None and shutil.which("pip") is None:
        pytest.skip("needs uv or pip to build a venv")
    root = _checkout(tmp_path_factory.mktemp("venvs").resolve() / "orig")
    r = _setup(root)
    assert r.returncode == 0, r.stderr
    assert _imports_from(root) == str(root / "pipeline")
    return root


def test_copied_checkout_is_rebuilt_while_the_original_exists(installed, tmp_path):
    copy = tmp_path.resolve() / "copy"
    subprocess.run(["cp", "-a", str(installed), str(copy)], check=True)
    assert _imports_from(copy) == str(installed / "pipeline")  # the problem: the copy runs the original's code
    r = _setup(copy)
    assert r.returncode == 0, r.stderr
    assert f"imports the package from {installed}" in r.stdout and "rebuilding it for" in r.stdout
    assert _imports_from(copy) == str(copy / "pipeline")
    assert _setup(copy).stdout == ""  # up to date now: quiet, nothing reinstalled
    assert _imports_from(installed) == str(installed / "pipeline")  # the original's venv is untouched


def test_copied_checkout_is_rebuilt_after_the_original_moved(installed, tmp_path):
    copy, moved = tmp_path.resolve() / "copy", tmp_path.resolve() / "moved"
    subprocess.run(["cp", "-a", str(installed), str(copy)], check=True)
    shutil.move(installed, moved)
    try:
        assert _imports_from(copy) == ""  # ModuleNotFoundError: the editable install names the old folder
        r = _setup(copy)
        assert r.returncode == 0, r.stderr
        assert "imports the package from nowhere" in r.stdout
        assert _imports_from(copy) == str(copy / "pipeline")
        bin_dir = copy / ".venv" / "bin"
        assert all(
            str(moved) not in p.read_text(errors="replace") and str(installed) not in p.read_text(errors="replace")
            for p in bin_dir.iterdir()
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 100_000
        )  # no script of the rebuilt venv names the original's folder (shebangs, activate)
    finally:
        shutil.move(moved, installed)


def test_installed_packages_are_byte_compiled_once(installed):
    """Where PYTHONDONTWRITEBYTECODE=1 Python writes no .pyc itself: the setup compiles the venv once, so a process
    does not compile torch & co. from source at every start (issue 40: ~5 s each)."""
    site = next((installed / ".venv" / "lib").glob("python3*/site-packages"))
    assert list(site.rglob("__pycache__/*.pyc")), "nothing byte-compiled in the venv"
    again = _setup(installed)
    assert again.returncode == 0 and "byte-compiling" not in again.stdout  # once per install, not per run
    (installed / ".venv" / ".compiled-bytecode.sha256").unlink()
    redo = _setup(installed)  # a venv from before this step (no stamp) is compiled on the next run
    assert redo.returncode == 0 and "byte-compiling" in redo.stdout

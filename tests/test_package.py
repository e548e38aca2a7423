"""The toolkit as an installable package: the wheel declares its dependencies, carries the configs, the bundled
experts and the quickstart's fusion, and its console command ``sr-fusion`` lists the subcommands and runs them from
any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser

import pytest
from conftest import REPO_ROOT

from pipeline.app import COMMANDS, main

SOURCES = ("pyproject.toml", "README.md", "pipeline", "experts", "cache", "configs", "checkpoints/fusion_zoo_small")


def test_the_wheel_declares_dependencies_and_carries_configs_and_bundled_experts(tmp_path):
    """Built offline with the venv's setuptools (PEP 517 hooks, no isolation, no network) from a copy of the tree."""
    src = tmp_path / "src"
    for rel in SOURCES:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        if (REPO_ROOT / rel).is_dir():
            shutil.copytree(REPO_ROOT / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO_ROOT / rel, src / rel)
    out = tmp_path / "dist"
    code = "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = out / done.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode())
        entry_points = zf.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    requires = meta.get_all("Requires-Dist") or []
    plain = {r.split(";")[0].split(">")[0].split("<")[0].split("=")[0].strip() for r in requires if "extra" not in r}
    assert {"torch", "numpy", "h5py", "safetensors", "spandrel", "pyyaml", "pillow", "tqdm"} <= plain, requires
    assert any("pyiqa" in r and 'extra == "perceptual"' in r for r in requires), requires
    assert any("pytest" in r and 'extra == "dev"' in r for r in requires), requires
    assert "sr-fusion = pipeline.app:main" in entry_points
    for f in (REPO_ROOT / "configs").rglob("*.yaml"):
        assert f.relative_to(REPO_ROOT).as_posix() in names
    for f in (REPO_ROOT / "experts" / "zoo").rglob("*"):
        if f.is_file():
            assert f.relative_to(REPO_ROOT).as_posix() in names
    for f in ("model.safetensors", "config.json", "SHA256SUMS"):
        assert f"checkpoints/fusion_zoo_small/{f}" in names
    assert "pipeline/app.py" in names and "pipeline/commands/submit.py" in names
    assert not any(n.startswith(("scripts/", "tests/")) for n in names)


def test_sr_fusion_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("extract", "train", "submit", "evaluate", "compare", "fit", "export", "report", "make-lr"):
        assert name in COMMANDS and f"  {name} " in out
    assert {"run-experts", "quickstart"} <= set(COMMANDS)
    assert main([]) == 2 and "usage: sr-fusion" in capsys.readouterr().err
    assert main(["no-such"]) == 2 and "unknown subcommand 'no-such'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_help_names_the_console_command(name, capsys):
    assert main([name, "--help"]) == 0
    assert f"usage: sr-fusion {name}" in capsys.readouterr().out


@pytest.mark.slow  # a fresh interpreter (5 s): not in the --fast path
def test_sr_fusion_submit_help_works_from_another_folder(tmp_path):
    """As the installed console command runs it: a fresh interpreter, another working directory."""
    code = "import sys; from pipeline.app import main; sys.exit(main())"
    env_path = {"PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code, "submit", "--help"],
        cwd=tmp_path,
        env={**os.environ, **env_path},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: sr-fusion submit" in done.stdout and "--input" in done.stdout

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
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from pipeline.app import COMMANDS, main

SOURCES = ("pyproject.toml", "README.md", "pipeline", "experts", "cache", "configs", "checkpoints/fusion_zoo_small")
PACKAGES = ("pipeline", "experts", "cache")
BUNDLED = "pipeline/_bundled"  # the wheel's mirror of configs/, checkpoints/fusion_zoo_small/, experts/zoo/


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built once, offline, with the venv's setuptools (PEP 517 hooks, no isolation, no network) from a copy of the
    tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for rel in SOURCES:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        if (REPO_ROOT / rel).is_dir():
            shutil.copytree(REPO_ROOT / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO_ROOT / rel, src / rel)
    out = tmp / "dist"
    code = "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


def test_the_wheel_declares_dependencies_and_its_console_command(wheel):
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


def test_the_wheel_adds_only_the_three_packages_and_carries_the_bundled_files_inside_pipeline(wheel):
    """site-packages gains pipeline/, experts/, cache/ and the dist-info — no configs/ or checkpoints/ — and every
    module of the three packages (pyproject.toml lists them one by one); the bundled files mirror the repository's under
    pipeline/_bundled/, and nothing else of the tree travels (no scripts/, tests/, test helpers)."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == set(PACKAGES), sorted(top)
    modules = {f.relative_to(REPO_ROOT).as_posix() for p in PACKAGES for f in (REPO_ROOT / p).rglob("*.py")}
    modules = {m for m in modules if "__pycache__" not in m}
    assert modules <= names, sorted(modules - names)  # a new subpackage missing from pyproject.toml's list
    bundled = [
        *(REPO_ROOT / "configs").rglob("*.yaml"),
        *(f for f in (REPO_ROOT / "experts" / "zoo").rglob("*") if f.is_file()),
        *(
            REPO_ROOT / "checkpoints" / "fusion_zoo_small" / f
            for f in ("model.safetensors", "config.json", "SHA256SUMS")
        ),
    ]
    for f in bundled:
        assert f"{BUNDLED}/{f.relative_to(REPO_ROOT).as_posix()}" in names, f
    assert not any(n.startswith("experts/zoo/") for n in names)  # the zoo lives in the mirror only
    assert not any(n.startswith(("scripts/", "tests/")) for n in names)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked as pip installs a pure-Python wheel (its files into site-packages)."""
    site = tmp_path_factory.mktemp("site-packages")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def sr_fusion(site: Path, cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed console command, as ``sr-fusion ARGS`` runs it from ``cwd`` (the unpacked wheel comes first on
    the path: this tree's own packages are not the ones imported)."""
    code = (
        "import sys, pipeline; assert pipeline.__file__.startswith(sys.argv[1]), pipeline.__file__; "
        "from pipeline.app import main; sys.exit(main(sys.argv[2:]))"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, str(site), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow  # fresh interpreters (~5 s each)
def test_the_installed_list_names_every_bundled_file_where_it_lives(installed, tmp_path):
    done = sr_fusion(installed, tmp_path, "list")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    bundled = installed / "pipeline" / "_bundled"
    assert f"bundled files in {bundled}" in out
    for name, path in (
        ("zoo_small", bundled / "configs" / "experts" / "zoo_small.yaml"),
        ("fusion_zoo_small", bundled / "checkpoints" / "fusion_zoo_small"),
        ("quickstart", bundled / "configs" / "train" / "quickstart.yaml"),
        ("hat_s", bundled / "experts" / "zoo" / "hat_s"),
    ):
        assert any(line.split()[:2] == [name, str(path)] for line in out.splitlines()), (name, out)
    missing = sr_fusion(installed, tmp_path, "submit", "--run", "no_such_run", "--input", "LR", "--output", "OUT")
    assert missing.returncode == 2
    assert f"--run 'no_such_run': no such file or folder ({tmp_path / 'no_such_run'})" in missing.stderr
    assert "fusion_zoo_small" in missing.stderr  # the bundled names


@pytest.mark.slow  # the bundled experts on one small image, twice (~20 s)
def test_the_installed_commands_run_the_bundled_fusion_and_experts_by_name_from_an_empty_folder(installed, tmp_path):
    """Issue 39's acceptance: ``sr-fusion submit --run fusion_zoo_small`` and ``sr-fusion run-experts --config
    zoo_small`` from an empty folder, on an installed wheel."""
    from pipeline.core.imageio import write_image

    work = tmp_path / "empty"
    work.mkdir()
    write_image(work / "LR" / "0901x4.png", torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(5)))
    done = sr_fusion(installed, work, "submit", "--run", "fusion_zoo_small", "--input", "LR", "--output", "OUT")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "OUT" / "0901x4.png").is_file() and (work / "OUT" / "readme.txt").is_file()
    done = sr_fusion(installed, work, "run-experts", "--config", "zoo_small", "--input", "LR", "--output", "EXP")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (work / "EXP").iterdir() if p.is_dir()) == ["dat_s", "hat_s", "nafnet_sr_s"]
    assert (work / "EXP" / "hat_s" / "0901x4.png").is_file()


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


def test_every_usage_line_says_sr_fusion_and_holds_no_run_of_spaces():
    """Each subcommand's parser: ``usage: sr-fusion NAME`` however it is started, argparse's own wrapping only (no
    stray run of spaces inside a usage line, as a long program name or a hand-indented docstring left)."""
    from pipeline.app import module

    for name in COMMANDS:
        usage = module(name).parser().format_usage()
        assert usage.startswith(f"usage: sr-fusion {name}"), usage
        assert all("  " not in line.strip() for line in usage.splitlines()), usage


def test_docs_cli_md_is_generated_from_the_parsers():
    """docs/CLI.md is exactly what pipeline/commands/cli_docs.py renders from the parsers (so it cannot drift)."""
    from pipeline.commands.cli_docs import render

    current = (REPO_ROOT / "docs" / "CLI.md").read_text(encoding="utf-8")
    assert current == render(), "docs/CLI.md is stale: run python scripts/write_cli_docs.py"

"""scripts/export_ntire.py: the NTIRE code-submission layout, run in a fresh interpreter that cannot import this
repository, writes what scripts/submit.py writes; every bad input is refused before anything is written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import yaml
from conftest import program

from pipeline.core.imageio import read_image, write_image
from pipeline.inference.ntire_export import relative_imports
from pipeline.inference.submission import run_model_dir
from pipeline.model.io import ChecksumError

export_ntire = program("export_ntire")
submit = program("submit")

PKG = "team17_Name"

# Runs in the export folder as the organisers' eval.py would: repo root = cwd, on sys.path (PYTHONPATH), next to
# their own top-level `utils`. Started with -S, so the venv's .pth files — among them the editable install of this
# repository — are not processed; only the third-party packages' folder is appended by hand.
ISOLATED = """
import os, sys
sys.path += sys.argv[1].split(os.pathsep)
try:
    import pipeline
    raise SystemExit("this repository is importable: the test proves nothing")
except ModuleNotFoundError:
    pass
import torch
torch.set_num_threads(1)
import utils
from models.team17_Name import main
written = main(model_dir=os.path.join("model_zoo", "team17_Name"), input_path=sys.argv[2], output_path=sys.argv[3],
               device=torch.device("cpu"))
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("pipeline", "experts", "cache"))
assert not leaked, f"vendored code loaded under top-level names: {leaked}"
assert utils.ORGANISERS and sys.modules["utils"] is utils
print("written:", " ".join(p.name for p in written))
"""


def export(run: Path, out: Path, *extra: str, name: str = "Name", team: str = "17") -> int:
    return export_ntire.main(["--run", str(run), "--team-id", team, "--team-name", name, "--out", str(out), *extra])


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "ntire"
    assert export(trained_run, out) == 0
    return out


@pytest.fixture
def lr_dir(tmp_path) -> Path:
    d = tmp_path / "lr"
    g = torch.Generator().manual_seed(0)
    write_image(d / "0901x4.png", torch.rand(1, 3, 20, 26, generator=g))
    write_image(d / "0902x4.png", torch.rand(1, 3, 17, 23, generator=g))
    return d


def test_imports_become_relative_to_the_vendor_root():
    src = (
        '"""Usage:\n\n    from pipeline.x import y\n"""\nfrom pipeline import freq\nfrom experts.spec import (\n'
        "    A,\n)\nimport torch\n\n\ndef f():\n    from cache.dataset import augment\n    return augment\n"
    )
    out = relative_imports(src, "pipeline.model.blocks.edge", is_package=False)
    assert "\nfrom ....pipeline import freq\nfrom ....experts.spec import (\n" in out  # 4 levels deep: 4 dots
    assert "\n    from ....cache.dataset import augment\n" in out and "\nimport torch\n" in out
    assert "\n    from pipeline.x import y\n" in out  # the docstring is left as it is
    assert "from ..pipeline import freq" in relative_imports(src, "pipeline", is_package=True)


def test_layout(exported):
    zoo = exported / "model_zoo" / PKG
    assert sorted(str(p.relative_to(zoo)) for p in zoo.rglob("*") if p.is_file()) == [
        "SHA256SUMS",
        "config.json",
        "experts.yaml",
        "experts/calm.pth",
        "experts/noisy.pth",
        "model.safetensors",
    ]
    assert len((zoo / "SHA256SUMS").read_text().splitlines()) == 5  # every file but itself
    spec = yaml.safe_load((zoo / "experts.yaml").read_text())
    assert [(e["name"], e["checkpoint"]) for e in spec["experts"]] == [
        ("noisy", "experts/noisy.pth"),
        ("calm", "experts/calm.pth"),
    ]
    code = exported / "models" / PKG
    assert sorted(p.name for p in code.iterdir()) == ["README.md", "__init__.py", "_vendor", "requirements.txt"]
    assert not (exported / "models" / "__init__.py").exists()  # never shadow the organisers' models/
    vendored = {str(p.relative_to(code / "_vendor")) for p in (code / "_vendor").rglob("*.py")}
    assert {"pipeline/inference/submission.py", "pipeline/model/fusion_net.py", "experts/ensemble.py"} <= vendored
    assert not any(v.startswith(("scripts/", "pipeline/refiner/")) or v == "train.py" for v in vendored)
    reqs = [line.split()[0] for line in (code / "requirements.txt").read_text().splitlines() if line[:1] != "#"]
    assert {"torch", "spandrel", "safetensors", "numpy", "pillow", "pyyaml", "opencv-python-headless"} <= set(reqs)
    assert "diffusers" not in reqs
    assert f"from models.{PKG} import main" in (code / "README.md").read_text()


def run_isolated(export_dir: Path, lr_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """The organisers' call in a copy of ``export_dir`` (their repository root, with its own ``utils``) →
    ``tmp_path/sr``; asserts it succeeded."""
    repo = tmp_path / "repo"
    shutil.copytree(export_dir, repo)
    (repo / "utils").mkdir()
    (repo / "utils" / "__init__.py").write_text("ORGANISERS = True\n")
    site = os.pathsep.join(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-S", "-s", "-c", ISOLATED, site, str(lr_dir), str(tmp_path / "sr")],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.mark.slow  # ~12 s: the export runs in a fresh interpreter
def test_isolated_main_matches_submit(exported, trained_run, lr_dir, tmp_path):
    res = run_isolated(exported, lr_dir, tmp_path)
    assert "written: 0901x4.png 0902x4.png" in res.stdout
    assert sorted(p.name for p in (tmp_path / "sr").iterdir() if not p.name.startswith(".")) == [
        "0901x4.png",
        "0902x4.png",
    ]

    assert submit.main(["--run", str(trained_run), "--input", str(lr_dir), "--output", str(tmp_path / "sub")]) == 0
    for name in ("0901x4.png", "0902x4.png"):
        a, b = read_image(tmp_path / "sr" / name), read_image(tmp_path / "sub" / name)
        assert a.shape == b.shape and (a - b).abs().max() <= 1 / 255 + 1e-6


def test_exported_files_are_verified_at_load(exported, lr_dir, tmp_path):
    zoo = tmp_path / "zoo"
    shutil.copytree(exported / "model_zoo" / PKG, zoo)
    with open(zoo / "experts" / "calm.pth", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ChecksumError, match="calm.pth was modified"):
        run_model_dir(zoo, lr_dir, tmp_path / "sr")
    assert not (tmp_path / "sr").exists()


def test_tampered_checkpoints_are_refused_before_writing(trained_run, tiny_compact_experts, tmp_path, capsys):
    assert export(tmp_path / "no_run", tmp_path / "out") == 2
    assert "no such file or folder" in capsys.readouterr().err
    ckpt = tmp_path / "ckpt"
    shutil.copytree((trained_run / "ckpt" / "best").resolve(), ckpt)
    (ckpt / "config.json").write_text((ckpt / "config.json").read_text() + " ")
    assert export(ckpt, tmp_path / "out") == 2
    assert "config.json was modified" in capsys.readouterr().err

    experts = tmp_path / "experts"
    shutil.copytree(tiny_compact_experts["root"], experts, ignore=shutil.ignore_patterns("hr"))
    spec = yaml.safe_load((experts / "experts.yaml").read_text())
    for e in spec["experts"]:
        e["checkpoint"] = str(experts / Path(e["checkpoint"]).name)
    (experts / "experts.yaml").write_text(yaml.safe_dump(spec))
    with open(experts / "noisy.pth", "ab") as fh:
        fh.write(b"\0")
    (experts / "calm.pth").unlink()
    assert export(trained_run, tmp_path / "out", "--experts", str(experts / "experts.yaml")) == 2
    err = capsys.readouterr().err
    assert "'noisy'" in err and "sha256" in err and "'calm': checkpoint not found" in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "team, name, message",
    [
        ("17", "my-team", "--team-name 'my-team' must match"),
        ("17", "9lives", "must match"),
        ("0", "Name", "--team-id must be 1..99"),
        ("100", "Name", "--team-id must be 1..99"),
    ],
)
def test_bad_team_is_refused(trained_run, tmp_path, capsys, team, name, message):
    assert export(trained_run, tmp_path / "out", name=name, team=team) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_out_needs_overwrite(trained_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert export(trained_run, out) == 2
    assert "not empty (pass --overwrite" in capsys.readouterr().err and (out / "old.txt").exists()
    assert export(trained_run, out, "--overwrite") == 2  # --overwrite replaces an earlier export, never other files
    assert "refusing to replace it, even with --overwrite" in capsys.readouterr().err and (out / "old.txt").exists()
    (out / "old.txt").unlink()
    assert export(trained_run, out) == 0
    assert export(trained_run, out) == 2  # an earlier export: --overwrite replaces it
    assert export(trained_run, out, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["model_zoo", "models"]
    assert leftovers(tmp_path) == []


@pytest.mark.slow  # a fresh interpreter (5 s): not in the --fast path
def test_a_training_free_ensemble_exports_and_runs_isolated(tiny_compact_experts, lr_dir, tmp_path, capsys):
    """export_ntire --method zzpm|blend: ensembler.json + the pinned experts; the organisers' call writes exactly what
    submit.py --method writes; a weights file fitted for other experts is refused before anything is written."""
    from experts.ensemble import ExpertEnsemble
    from pipeline.inference.ensemblers import fit, load, save

    ensemble = ExpertEnsemble.from_yaml(tiny_compact_experts["yaml"])
    fps = [fp.to_dict() for fp in ensemble.fingerprints]
    hr = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    weights = save(
        fit("blend", [(ensemble(torch.nn.functional.avg_pool2d(hr, 4)).srs, hr)], experts=fps), tmp_path / "blend.json"
    )
    out = tmp_path / "ntire"
    yaml_path = str(tiny_compact_experts["yaml"])
    base = ["--team-id", "17", "--team-name", "Name", "--out", str(out), "--experts", yaml_path]
    assert export_ntire.main(["--method", "blend", "--weights", str(weights), *base]) == 0
    zoo = out / "model_zoo" / PKG
    assert sorted(p.name for p in zoo.iterdir()) == ["SHA256SUMS", "ensembler.json", "experts", "experts.yaml"]
    assert "training-free ensemble (blend" in (out / "models" / PKG / "README.md").read_text()
    run_isolated(out, lr_dir, tmp_path)
    assert (
        submit.main(
            [
                "--method",
                "blend",
                "--weights",
                str(weights),
                "--experts",
                yaml_path,
                "--input",
                str(lr_dir),
                "--output",
                str(tmp_path / "sub"),
            ]
        )
        == 0
    )
    for name in ("0901x4.png", "0902x4.png"):
        assert torch.equal(read_image(tmp_path / "sr" / name), read_image(tmp_path / "sub" / name))
    # a file fitted for other experts: refused, nothing written
    other = save(
        fit("zzpm", [], experts=[{"name": "noisy", "sha256": "0" * 64}, {"name": "calm", "sha256": "1" * 64}]),
        tmp_path / "other.json",
    )
    capsys.readouterr()
    assert (
        export_ntire.main(
            [
                "--method",
                "zzpm",
                "--weights",
                str(other),
                *base[:-2],
                "--out",
                str(tmp_path / "x"),
                "--experts",
                yaml_path,
            ]
        )
        == 2
    )
    assert "was fitted with" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # mean and zzpm have nothing to fit: exported without a file, pinned to the files' own sha256 (issue 39)
    mean_out = tmp_path / "mean"
    assert export_ntire.main(["--method", "mean", *base[:-4], "--out", str(mean_out), "--experts", yaml_path]) == 0
    exported = load(mean_out / "model_zoo" / PKG / "ensembler.json", experts=fps)
    assert exported.method == "mean" and exported.expert_names == tuple(fp["name"] for fp in fps)


CODE_ARCH = """
import torch.nn.functional as F
from torch import nn


class TeamSR(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.tail = nn.Conv2d(width, 48, 3, padding=1)

    def forward(self, x):
        return F.pixel_shuffle(self.tail(F.relu(self.head(x))), 4) + F.interpolate(x, scale_factor=4.0)
"""


@pytest.mark.slow  # a fresh interpreter (5 s): not in the --fast path
def test_an_export_of_code_file_experts_runs_isolated(lr_dir, tmp_path):
    """Experts defined by a team's Python file: the export carries the file (pinned in SHA256SUMS and experts.yaml) and
    the organisers' call imports it from model_zoo/ in a fresh interpreter, writing what submit.py --method writes."""
    from experts.ensemble import ExpertEnsemble
    from experts.loading import sha256_file
    from pipeline.inference.ensemblers import fit, save

    src = tmp_path / "team"
    src.mkdir()
    (src / "team_arch.py").write_text(CODE_ARCH)
    ns: dict = {}
    exec(compile(CODE_ARCH, "team_arch.py", "exec"), ns)
    experts = []
    for i, (name, width, data_range) in enumerate((("alpha", 8, 1), ("beta", 6, 255))):
        torch.manual_seed(i)
        weights = src / f"{name}.pth"
        model = ns["TeamSR"](width=width)
        torch.save({"params": {k: 0.1 * v for k, v in model.state_dict().items()}}, weights)
        experts.append(
            {
                "name": name,
                "checkpoint": str(weights),
                "sha256": sha256_file(weights),
                "scale": 4,
                "trust_code": True,
                "min_probe_psnr": 0,  # seeded random weights
                "checkpoint_key": "params",
                "code": {
                    "file": str(src / "team_arch.py"),
                    "sha256": sha256_file(src / "team_arch.py"),
                    "class_name": "TeamSR",
                    "kwargs": {"width": width},
                    "data_range": data_range,
                },
            }
        )
    yaml_path = src / "experts.yaml"
    yaml_path.write_text(yaml.safe_dump({"scale": 4, "experts": experts}))
    fps = [fp.to_dict() for fp in ExpertEnsemble.from_yaml(yaml_path).fingerprints]
    weights = save(fit("mean", [], experts=fps), tmp_path / "mean.json")
    out = tmp_path / "ntire"
    args = ["--team-id", "17", "--team-name", "Name", "--out", str(out), "--experts", str(yaml_path)]
    assert export_ntire.main(["--method", "mean", "--weights", str(weights), *args]) == 0
    zoo = out / "model_zoo" / PKG
    assert sorted(str(p.relative_to(zoo)) for p in (zoo / "experts").iterdir()) == [
        "experts/alpha.pth",
        "experts/alpha.py",
        "experts/beta.pth",
        "experts/beta.py",
    ]
    assert "experts/alpha.py" in (zoo / "SHA256SUMS").read_text()
    spec = yaml.safe_load((zoo / "experts.yaml").read_text())
    assert [(e["code"]["file"], e["trust_code"]) for e in spec["experts"]] == [
        ("experts/alpha.py", True),
        ("experts/beta.py", True),
    ]
    shutil.rmtree(src / "__pycache__", ignore_errors=True)
    run_isolated(out, lr_dir, tmp_path)
    argv = ["--method", "mean", "--weights", str(weights), "--experts", str(yaml_path), "--input", str(lr_dir)]
    assert submit.main([*argv, "--output", str(tmp_path / "sub")]) == 0
    for name in ("0901x4.png", "0902x4.png"):
        assert torch.equal(read_image(tmp_path / "sr" / name), read_image(tmp_path / "sub" / name))

"""Exporting a fusion run (or a fitted training-free ensemble) as an NTIRE 2025 ImageSR ×4 code submission: the
package ``models/team<ID>_<Name>/`` (``main(model_dir, input_path, output_path, device=None)`` over a vendored copy of
the modules ``pipeline.inference.submission`` needs, imports rewritten to relative ones) and ``model_zoo/`` (the
checkpoint, the pinned expert checkpoints, SHA256SUMS). The command line and the layout: scripts/export_ntire.py.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from experts.loading import sha256_file
from experts.spec import EnsembleSpec, ExpertSpec, load_ensemble_spec
from experts.spec import resolve_code_file as expert_code_file
from experts.spec import resolve_expert_checkpoint as expert_checkpoint
from pipeline.core.config import save_config
from pipeline.core.errors import ToolkitError
from pipeline.core.locks import FileLock, LockedError
from pipeline.inference.ensemblers import Ensembler
from pipeline.inference.ensemblers import load as load_ensembler
from pipeline.inference.ensemblers import save as save_ensembler
from pipeline.inference.methods import MethodChoice, chosen_ensembler
from pipeline.inference.pipeline import expert_spec
from pipeline.inference.submission import ENSEMBLER_FILE, EXPERTS_YAML
from pipeline.model.io import (
    CHECKSUMS,
    CONFIG_NAME,
    WEIGHTS_NAME,
    read_extra,
    verify_checksums,
)

REPO = Path(__file__).resolve().parents[2]  # the repository root (pipeline/inference/ntire_export.py)
VENDORED = ("pipeline", "experts", "cache")  # our top-level packages; the vendored copies import each other
ENTRY = "pipeline.inference.submission"  # the module whose run_model_dir is the package's main
_TEAM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")  # the package must be importable: models.team17_<name>
_DISTRIBUTIONS = {"cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml"}  # import name → pip name


class ExportError(ToolkitError, RuntimeError):
    """A problem found before anything was written."""


def package_name(team_id: int, team_name: str) -> str:
    if not 1 <= team_id <= 99:
        raise ExportError(f"--team-id must be 1..99 (team00 is the organisers' baseline), got {team_id}")
    if not _TEAM_NAME.fullmatch(team_name):
        raise ExportError(
            f"--team-name {team_name!r} must match {_TEAM_NAME.pattern}: the package "
            f"models.team{team_id:02d}_<name> has to be importable"
        )
    return f"team{team_id:02d}_{team_name}"


# ---------------------------------------------------------------------------------------------------------------------
# vendoring
# ---------------------------------------------------------------------------------------------------------------------
def _source(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _ours(module: str) -> bool:
    return module.split(".")[0] in VENDORED


def vendored_modules(entry: str = ENTRY) -> dict[str, Path]:
    """``entry`` and every module of ours it imports, transitively (with their parent packages): name → source."""
    found: dict[str, Path] = {}
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in found:
            continue
        path = _source(module)
        if path is None:
            raise ExportError(f"cannot vendor {module!r}: no {module.replace('.', '/')}.py in {REPO}")
        found[module] = path
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        package = parts if path.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import) and any(_ours(a.name) for a in node.names):
                raise ExportError(
                    f"{path}:{node.lineno}: `import {node.names[0].name}` cannot be vendored; use `from ... import ...`"
                )
            if not isinstance(node, ast.ImportFrom) or (node.level == 0 and not _ours(node.module)):
                continue
            base = node.module  # a relative import stays as it is; the modules it names are vendored too
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])])
            todo.append(base)
            todo += [f"{base}.{a.name}" for a in node.names if _source(f"{base}.{a.name}")]
    return found


def third_party(sources: Iterable[Path], *, module_level: bool = False) -> list[str]:
    """Top-level third-party modules imported by ``sources`` (stdlib and our packages excluded), sorted.
    ``module_level``: only the imports that run on import (a team file's ``if __name__ == "__main__":`` benchmark
    imports such as fvcore are not needed to run its model)."""
    names = set()
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = (
            [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))] if module_level else ast.walk(tree)
        )
        for node in nodes:
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return sorted(n for n in names if n not in VENDORED and n != "__future__" and n not in sys.stdlib_module_names)


def relative_imports(source: str, module: str, *, is_package: bool) -> str:
    """``source`` of vendored ``module`` with each ``from <ours>... import`` made relative to the vendor root."""
    package = module if is_package else module.rpartition(".")[0]
    dots = "." * (package.count(".") + 2)  # level 1 is the module's own package; one more per package level
    lines = source.splitlines(keepends=True)
    nodes = [
        n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.level == 0 and _ours(n.module)
    ]
    for node in sorted(nodes, key=lambda n: (n.lineno, n.col_offset), reverse=True):
        line = lines[node.lineno - 1]
        head = re.compile(rf"from\s+{re.escape(node.module)}\b")
        m = head.match(line, node.col_offset)
        if m is None:
            raise ExportError(f"{module}:{node.lineno}: cannot rewrite the import {line.strip()!r}")
        lines[node.lineno - 1] = f"{line[: m.start()]}from {dots}{node.module}{line[m.end() :]}"
    out = "".join(lines)
    left = [
        n.module for n in ast.walk(ast.parse(out)) if isinstance(n, ast.ImportFrom) and n.level == 0 and _ours(n.module)
    ]
    if left:
        raise ExportError(f"{module}: imports {left} are still absolute after rewriting")
    return out


def write_vendor(dest: Path) -> list[str]:
    """The vendored modules under ``dest`` (``dest/__init__.py`` included); returns their third-party imports."""
    modules = vendored_modules()
    for module, path in modules.items():
        target = dest / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            relative_imports(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py"),
            encoding="utf-8",
        )
    (dest / "__init__.py").write_text('"""Vendored sr-fusion source; imports are relative to this folder."""\n')
    return third_party(modules.values())


def requirements_text(imports: Iterable[str]) -> str:
    lines = ["# Python >= 3.11. Versions are those the export was made with.\n"]
    for name in imports:
        dist = _DISTRIBUTIONS.get(name, name)
        try:
            tested = f"  # tested with {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            tested = ""
        lines.append(f"{dist}{tested}\n")
    return "".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------------------
def checked_experts(ckpt: Path, experts_yaml: Path | None) -> tuple[EnsembleSpec, list[Path]]:
    """The experts ``ckpt`` was trained with and their checkpoint files, each verified against the recorded sha256."""
    spec = expert_spec(ckpt, read_extra(ckpt), experts_yaml=experts_yaml)
    files, problems = [], []
    for e in spec.experts:
        path = expert_checkpoint(e)
        files.append(path)
        if not path.is_file():
            problems.append(f"expert {e.name!r}: checkpoint not found: {path}")
        elif (digest := sha256_file(path)) != e.sha256:
            problems.append(
                f"expert {e.name!r}: {path} has sha256 {digest[:16]}…, the fusion was trained with {e.sha256[:16]}…"
            )
        problems += _code_problems(e)
    if problems:
        raise ExportError("; ".join(problems))
    return spec, files


def _code_problems(e: ExpertSpec) -> list[str]:
    """A code expert's model file must exist, be opted in and have its pinned sha256 (it is copied into the export)."""
    if e.code is None:
        return []
    path = expert_code_file(e)
    if not e.trust_code:
        return [f"expert {e.name!r}: {path} is imported only with `trust_code: true` in the expert YAML"]
    if not path.is_file():
        return [f"expert {e.name!r}: model code file not found: {path}"]
    if (digest := sha256_file(path)) != e.code.sha256:
        return [f"expert {e.name!r}: {path} has sha256 {digest[:16]}…, pinned {e.code.sha256[:16]}…"]
    return []


def checked_ensemble_experts(choice: MethodChoice) -> tuple[EnsembleSpec, list[Path], Ensembler]:
    """The experts of a training-free ensemble and its :class:`Ensembler`: the YAML's experts, in the ensembler file's
    order, each checkpoint verified against the sha256 the file was fitted for (and pinned to it in the export); a
    method with nothing to fit and no file (mean, zzpm) is pinned to the files' own sha256."""
    spec = load_ensemble_spec(choice.experts)
    digests = {}
    if choice.weights is not None:
        fitted = load_ensembler(choice.weights)
        if [e.name for e in spec.experts] != list(fitted.expert_names):
            raise ExportError(
                f"{choice.experts} lists experts {[e.name for e in spec.experts]}, {choice.weights} was fitted for "
                f"{list(fitted.expert_names)}"
            )
        digests = {str(fp["name"]): str(fp["sha256"]) for fp in fitted.experts}
    files, problems, pinned = [], [], []
    for e in spec.experts:
        path = expert_checkpoint(e)
        files.append(path)
        if not path.is_file():
            problems.append(f"expert {e.name!r}: checkpoint not found: {path}")
            continue
        digest = sha256_file(path)
        want = digests.get(e.name, e.sha256 or digest)
        if digest != want:
            source = f"{choice.weights} was fitted with" if e.name in digests else "the YAML pins"
            problems.append(f"expert {e.name!r}: {path} has sha256 {digest[:16]}…, {source} {want[:16]}…")
        problems += _code_problems(e)
        pinned.append(dataclasses.replace(e, sha256=want))
    if problems:
        raise ExportError("; ".join(problems))
    fingerprints = [{"name": e.name, "sha256": e.sha256, "architecture": e.architecture} for e in pinned]
    ens = chosen_ensembler(choice, fingerprints)
    return dataclasses.replace(spec, experts=tuple(pinned)), files, ens


def write_model_dir(
    dest: Path, ckpt: Path | None, spec: EnsembleSpec, files: list[Path], *, ensembler: Ensembler | None = None
) -> None:
    """model.safetensors + config.json (or, for a training-free ensemble, its ``ensembler.json``), the expert
    checkpoints under experts/, experts.yaml naming them relative to ``dest``, and SHA256SUMS of everything (the
    fusion's recorded digests, the experts' recorded sha256)."""
    dest.mkdir(parents=True)
    if ensembler is not None:
        save_ensembler(ensembler, dest / ENSEMBLER_FILE)
        sums = f"{sha256_file(dest / ENSEMBLER_FILE)}  {ENSEMBLER_FILE}\n"
    else:
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            shutil.copy2(ckpt / name, dest / name)
        sums = (ckpt / CHECKSUMS).read_text()
    experts = []
    for e, src in zip(spec.experts, files):
        rel = f"experts/{e.name}{src.suffix}"
        (dest / rel).parent.mkdir(exist_ok=True)
        shutil.copy2(src, dest / rel)
        sums += f"{e.sha256}  {rel}\n"
        changes: dict = {"checkpoint": rel, "device": "cpu"}  # main() sets the device
        if e.code is not None:  # the team's model file travels with its weights, pinned like them
            rel_code = f"experts/{e.name}.py"
            shutil.copy2(expert_code_file(e), dest / rel_code)
            sums += f"{e.code.sha256}  {rel_code}\n"
            changes["code"] = dataclasses.replace(e.code, file=rel_code)
        experts.append(dataclasses.replace(e, **changes))
    save_config(dataclasses.replace(spec, experts=tuple(experts)), dest / EXPERTS_YAML)
    sums += f"{sha256_file(dest / EXPERTS_YAML)}  {EXPERTS_YAML}\n"
    (dest / CHECKSUMS).write_text(sums)
    verify_checksums(dest)  # the copies are what was verified


README = """\
# {pkg}: multi-expert fusion for NTIRE 2025 ImageSR ×4

Frozen pretrained SR experts ({experts}) run on each LR image; a small fusion network trained on their outputs
and deep features fuses them into the ×4 result. Exported from {source}.

## Run

Copy `models/{pkg}/` and `model_zoo/{pkg}/` into the root of the organisers' repository, install the packages of
`requirements.txt` (Python >= 3.11), and add to `select_model` of its `eval.py` / `test.py`:

```python
    elif model_id == {team_id}:
        from models.{pkg} import main as {pkg}
        name = f"{{model_id:02}}_{name}"
        model_path = os.path.join("model_zoo", "{pkg}")
        model_func = {pkg}
```

It is then called as `main(model_dir=model_path, input_path=LR_DIR, output_path=OUT_DIR, device=device)`:
every image of `LR_DIR` is super-resolved into `OUT_DIR` as a PNG of the same file name (`0901x4.png` →
`0901x4.png`). `model_dir` may also name a file inside `model_zoo/{pkg}/`; `device=None` means CUDA when
available. Standalone, with the repository root as the current directory:

```bash
python -c "from models.{pkg} import main; main('model_zoo/{pkg}', 'LR_DIR', 'OUT_DIR', 'cuda')"
```

Inputs are checked before any work: a missing or empty folder, non-image files, or an image smaller than the
experts accept is an error.

## Integrity

`model_zoo/{pkg}/SHA256SUMS` lists the fusion checkpoint (`model.safetensors`, `config.json`), `experts.yaml` and
every expert checkpoint under `experts/`; all are verified on every load, and each expert is also pinned to the
sha256 recorded in `config.json` when the fusion was trained. A modified or missing file is an error, never a
silent fallback.

## Layout

`__init__.py` exposes `main`; the code is vendored under `_vendor/` (our packages `pipeline`, `experts`, `cache`,
only the modules `main` needs) with relative imports, so it loads as `models.{pkg}._vendor.*`: nothing is added to
`sys.path` and no top-level module name can collide with the repository's own (`utils`, `models`, ...).
"""

INIT = '''"""NTIRE 2025 ImageSR x4, {pkg}: ``main(model_dir, input_path, output_path, device=None)``. See README.md."""

from ._vendor.pipeline.inference.submission import run_model_dir as main

__all__ = ["main"]
'''


def build(
    tmp: Path,
    *,
    pkg: str,
    team_id: int,
    run: Path,
    ckpt: Path | None,
    spec: EnsembleSpec,
    files: list[Path],
    ensembler: Ensembler | None = None,
    ensembler_source: Path | None = None,
) -> None:
    code = tmp / "models" / pkg
    imports = write_vendor(code / "_vendor")
    code_files = [expert_code_file(e) for e in spec.experts if e.code is not None]
    imports = sorted(set(imports) | set(third_party(code_files, module_level=True)))
    (code / "__init__.py").write_text(INIT.format(pkg=pkg))
    (code / "requirements.txt").write_text(requirements_text(imports))
    experts = ", ".join(f"{e.name} ({e.architecture})" for e in spec.experts)
    if ckpt is not None:
        source = f"run `{run.name}/{ckpt.name}`"
    else:
        source = f"ensembler file `{ensembler_source.name}`" if ensembler_source is not None else "its experts"
    text = README.format(pkg=pkg, team_id=team_id, name=pkg.partition("_")[2], experts=experts, source=source)
    if ensembler is not None:  # a training-free ensemble: say so instead of describing a fusion network
        method = ensembler.method
        text = text.replace(
            "a small fusion network trained on their outputs\nand deep features fuses them into the ×4 result",
            f"a training-free ensemble ({method}, weights in `ensembler.json`)\ncombines them into the ×4 result",
        ).replace("the fusion checkpoint (`model.safetensors`, `config.json`)", "`ensembler.json`")
    (code / "README.md").write_text(text)
    write_model_dir(tmp / "model_zoo" / pkg, ckpt, spec, files, ensembler=ensembler)


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished ``tmp`` at ``out`` (renames; a previous ``out`` is removed only once ``tmp`` is in place)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def export_lock(out: Path) -> Iterator[None]:
    """One export into ``out`` at a time: a lock file beside it (``.NAME.lock``; the export replaces the folder
    itself, so the lock cannot live inside), deleted when the export is done."""
    lock = FileLock(out.parent / f".{out.name}.lock")
    try:
        lock.acquire()
    except LockedError as exc:
        raise ExportError(f"--out {out} is being exported right now by {exc.holder} (lock {lock.path})") from None
    try:
        yield
    finally:
        lock.release()


def check_export_out(out: Path, *, overwrite: bool) -> None:
    """``out`` must be missing, empty, or (with ``overwrite``) an earlier export holding only models/ and model_zoo/."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        content = {c.name for c in out.iterdir()}
        if not overwrite:
            raise ExportError(f"--out {out} exists and is not empty (pass --overwrite to replace it)")
        if not content <= {"models", "model_zoo"}:  # --overwrite replaces an earlier export, nothing else
            raise ExportError(
                f"--out {out} holds files an export does not make ({', '.join(sorted(content)[:5])}):"
                " refusing to replace it, even with --overwrite"
            )


def export(
    out: Path,
    *,
    pkg: str,
    team_id: int,
    run: Path | None,
    ckpt: Path | None,
    spec: EnsembleSpec,
    files: list[Path],
    ensembler: Ensembler | None = None,
    ensembler_source: Path | None = None,
) -> None:
    """Build the export in a temporary folder beside ``out`` and rename it into place (a failure leaves nothing)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would stay on the renamed folder
    try:
        build(
            tmp,
            pkg=pkg,
            team_id=team_id,
            run=run,
            ckpt=ckpt,
            spec=spec,
            files=files,
            ensembler=ensembler,
            ensembler_source=ensembler_source,
        )
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""Imports run one way (pipeline/README.md): pipeline.core → experts → cache → pipeline.model →
{training, inference, refiner} → {evaluation, report} → train.py, scripts/. A module imports only from layers to its
left (and from its own group); nothing outside scripts/ imports scripts; no module edits sys.path.

Every product module must sit in a layer's subpackage (``GROUPS``), so a new module cannot slip past the rule."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "experts", "cache", "scripts")

# group → (layer, module-name prefixes). Same layer, different group: may not import each other.
GROUPS: dict[str, tuple[int, tuple[str, ...]]] = {
    "core": (0, ("pipeline.core",)),
    "experts": (1, ("experts",)),
    "cache": (2, ("cache",)),
    "model": (3, ("pipeline.model",)),
    "training": (4, ("pipeline.training",)),
    "inference": (4, ("pipeline.inference",)),
    "refiner": (4, ("pipeline.refiner",)),
    "evaluation": (5, ("pipeline.evaluation",)),
    "report": (5, ("pipeline.report",)),
    "cli": (6, ("train", "scripts")),
}


def group_of(module: str) -> str | None:
    best = None
    for name, (_, prefixes) in GROUPS.items():
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (name, p)
    return best[0] if best else None


def product_modules() -> dict[str, Path]:
    mods = {"train": REPO / "train.py"}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            rel = f.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            if "zoo" in parts and pkg == "experts" and parts[-1] != "zoo":  # experts/zoo/<name>/ holds weights only
                continue
            mods[".".join(parts)] = f
    return mods


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = (
                    module.split(".")[: -node.level]
                    if not path.name == "__init__.py"
                    else module.split(".")[: len(module.split(".")) - node.level + 1]
                )
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            out += [(node.lineno, f"{name}.{a.name}") for a in node.names]  # `from pipeline import freq`
    return out


def violations() -> list[str]:
    mods = product_modules()
    found = []
    for module, path in sorted(mods.items()):
        if module == "pipeline":  # the namespace's empty __init__.py
            continue
        g = group_of(module)
        if g is None:
            found.append(f"{module}: in no layer (add it to GROUPS or move it into its subpackage)")
            continue
        layer = GROUPS[g][0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(
            isinstance(n, ast.Attribute) and n.attr == "path" and isinstance(n.value, ast.Name) and n.value.id == "sys"
            for n in ast.walk(tree)
        ):
            found.append(f"{path.relative_to(REPO)}: edits sys.path")
        for line, name in imports_of(path, module):
            top = name.split(".")[0]
            if top not in (*PACKAGES, "train"):
                continue
            if name not in mods and not any(m.startswith(name + ".") for m in mods):
                continue  # `from pipeline.x import y` also yields the name pipeline.x.y of a non-module
            h = group_of(name)
            if h is None or h == g:
                continue
            if top == "scripts" and g != "cli":
                found.append(f"{path.relative_to(REPO)}:{line}: imports {name} (scripts are not a library)")
            elif GROUPS[h][0] >= layer:
                found.append(
                    f"{path.relative_to(REPO)}:{line}: {g} (layer {layer}) imports {name} ({h}, layer {GROUPS[h][0]})"
                )
    return found


def test_imports_run_one_way():
    assert violations() == []

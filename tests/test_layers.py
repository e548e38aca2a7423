"""Imports run one way (pipeline/README.md): pipeline.core → experts → cache → pipeline.model →
{training, inference, refiner} → evaluation → report → train.py, scripts/. A module imports only from layers to its
left (and from its own group); no module edits sys.path. Programs (train.py, scripts/*.py) are never imported — not by
the library, not by each other, not by the tests (tests run them with conftest's ``program``); scripts/ is no package.

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
    "report": (6, ("pipeline.report",)),  # the report pairs and scores images as evaluation does
    "cli": (7, ("train", "scripts", "pipeline.app", "pipeline.commands")),  # the programs and the sr-fusion command
}

# (importer group, imported group) pairs forbidden although the layers would allow them, with the reason.
FORBIDDEN: dict[tuple[str, str], str] = {
    ("inference", "cache"): "inference runs the experts live and never reads a feature cache",
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


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def violations(mods: dict[str, Path] | None = None) -> list[str]:
    mods = product_modules() if mods is None else mods
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
            found.append(f"{_rel(path)}: edits sys.path")
        for line, name in imports_of(path, module):
            top = name.split(".")[0]
            if top not in (*PACKAGES, "train"):
                continue
            if top == "scripts" or name == "train":
                found.append(f"{_rel(path)}:{line}: imports the program {name} (programs are not modules)")
                continue
            if name not in mods and not any(m.startswith(name + ".") for m in mods):
                continue  # `from pipeline.x import y` also yields the name pipeline.x.y of a non-module
            h = group_of(name)
            if h is None or h == g:
                continue
            if (g, h) in FORBIDDEN:
                found.append(
                    f"{_rel(path)}:{line}: {g} imports {name}: the pair ({g}, {h}) is forbidden ({FORBIDDEN[g, h]})"
                )
            elif GROUPS[h][0] >= layer:
                found.append(f"{_rel(path)}:{line}: {g} (layer {layer}) imports {name} ({h}, layer {GROUPS[h][0]})")
    return found


def forbidden_pairs(found: list[str]) -> str:
    """The failure message: the (importer, imported) pairs that break the rule, one a line, then the details."""
    pairs = sorted(
        {(v.split(":")[0], v.split(" imports ")[1].split()[0].rstrip(":")) for v in found if " imports " in v}
    )
    return (
        "forbidden (importer, imported) pairs:\n"
        + "\n".join(f"  ({a}, {b})" for a, b in pairs)
        + "\n"
        + "\n".join(found)
    )


def test_imports_run_one_way():
    found = violations()
    assert found == [], forbidden_pairs(found)


def test_programs_are_not_imported_by_tests_and_scripts_is_no_package():
    assert not (REPO / "scripts" / "__init__.py").exists()
    found = []
    for f in sorted((REPO / "tests").glob("*.py")):
        for line, name in imports_of(f, f"tests.{f.stem}"):
            if name.split(".")[0] == "scripts" or name == "train":
                found.append(f"{f.relative_to(REPO)}:{line}: imports the program {name}")
    assert found == []


def test_the_rule_catches_what_it_forbids(tmp_path):
    """The checks above can fail: an upward import, a program import and a sys.path edit are each reported."""
    bad = tmp_path / "pipeline" / "core" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("import sys\nsys.path.insert(0, '.')\nfrom pipeline.inference.pipeline import load_pipeline\n")
    prog = tmp_path / "scripts" / "bad_cli.py"
    prog.parent.mkdir()
    prog.write_text("import train\nfrom scripts import submit\n")
    mods = {**product_modules(), "pipeline.core.bad": bad, "scripts.bad_cli": prog}
    found = [v.replace(str(tmp_path), "TMP") for v in violations(mods) if "bad" in v]
    assert any("edits sys.path" in v for v in found), found
    assert any("core (layer 0) imports pipeline.inference.pipeline" in v for v in found), found
    assert any("imports the program train" in v for v in found), found
    assert any("imports the program scripts.submit" in v for v in found), found


def test_inference_may_not_read_the_cache(tmp_path):
    """An inference module importing the cache layer fails the rule (the layers allow it; FORBIDDEN does not), and the
    failure message names the (importer, imported) pair."""
    bad = tmp_path / "pipeline" / "inference" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from cache.reader import CacheReader\n")
    found = [v for v in violations({**product_modules(), "pipeline.inference.bad": bad}) if "bad" in v]
    assert any("the pair (inference, cache) is forbidden" in v for v in found), found
    assert f"({bad}, cache.reader)" in forbidden_pairs(found)


# ---------------------------------------------------------------------------------------------------------------------
# no import circle; the ensemble method is chosen by name in one place
# ---------------------------------------------------------------------------------------------------------------------
LIBRARY = ("pipeline", "experts", "cache")


def import_graph(mods: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """module → the library modules it imports (anywhere in it: a function-level import counts too)."""
    mods = {m: p for m, p in (product_modules() if mods is None else mods).items() if m.split(".")[0] in LIBRARY}
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        edges = set()
        for _, name in imports_of(path, module):
            parts = name.split(".")
            target = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in mods), None)
            if target is not None and target != module and not module.startswith(target + "."):
                edges.add(target)  # (a module's own parent package is imported with it, not by it)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    """No two library modules import each other, directly or around a loop (function-level imports included)."""
    found = cycles(import_graph())
    assert found == [], "import circles:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_the_circle_check_can_fail(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from cache.zz_b import f\n")
    b.write_text("def f():\n    from cache.zz_a import g\n")
    found = cycles(import_graph({**product_modules(), "cache.zz_a": a, "cache.zz_b": b}))
    assert ["cache.zz_a", "cache.zz_b"] in found


def method_name_comparisons(mods: dict[str, Path] | None = None) -> list[str]:
    """Every comparison of a string with an ensemble method's name outside pipeline/inference/ensemblers/ (its
    registry is where a name becomes a class)."""
    import pipeline.inference.ensemblers as ensemblers

    names = set(ensemblers.METHODS)
    found = []
    for module, path in sorted((product_modules() if mods is None else mods).items()):
        if module.startswith("pipeline.inference.ensemblers") or module.split(".")[0] not in LIBRARY:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            consts = []
            for op, left, right in zip(node.ops, operands[:-1], operands[1:], strict=True):
                if isinstance(op, (ast.Eq, ast.NotEq, ast.Is, ast.IsNot)):  # m == "mean", "mean" != m
                    consts += [o for o in (left, right) if isinstance(o, ast.Constant)]
                elif isinstance(op, (ast.In, ast.NotIn)):  # m in ("mean", "zzpm"), "mean" in methods
                    consts += [left] if isinstance(left, ast.Constant) else []
                    consts += [e for e in getattr(right, "elts", []) if isinstance(e, ast.Constant)]
                # (an ordering or subset test, e.g. {"images", "mean"} <= payload.keys(), compares no name)
            hits = sorted({c.value for c in consts if isinstance(c.value, str) and c.value in names})
            if hits:
                found.append(f"{_rel(path)}:{node.lineno}: compares with the method name(s) {hits}")
    return found


def test_no_method_name_is_compared_outside_the_registry(tmp_path):
    found = method_name_comparisons()
    assert found == [], "\n".join(found)
    bad = tmp_path / "bad.py"
    bad.write_text("def f(m, d):\n    return m in ('mean', 'zzpm') or m == 'ensir' or 'blend' != m or {'mean'} <= d\n")
    assert len(method_name_comparisons({"pipeline.evaluation.bad": bad})) == 3


# a library file above MAX_LINES needs its reason here (none does)
LONG_FILES: dict[str, str] = {}
MAX_LINES = 450


def test_no_library_file_is_above_450_lines_without_a_stated_reason():
    long = {
        _rel(path): n
        for module, path in product_modules().items()
        if module.split(".")[0] in LIBRARY and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert {f: n for f, n in long.items() if f not in LONG_FILES} == {}, "split these (or state why in LONG_FILES)"

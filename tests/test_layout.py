"""The layout is the architecture: rooms import only what lies below them, and no cycles.

Reads every module of evalkit/, caches/ and trainer/ with `ast` (imports inside functions
count too: a lazy import is still a dependency) and checks the rules of README's Layout.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("evalkit", "caches", "trainer")

# room -> rooms it may import (besides itself). "leaf" = evalkit.errors, evalkit.cli.
ALLOWED = {
    "leaf": set(),
    "data": {"leaf"},
    "model": {"leaf"},
    "engine": {"leaf", "data", "model", "caches"},
    "strategies": {"leaf", "data", "model", "engine", "caches"},
    "flags": {"leaf", "data", "model", "engine", "strategies"},
    "audit": {"leaf", "flags", "data", "model", "engine", "strategies", "caches"},
    "ablate": {"leaf", "flags", "data", "model", "engine", "strategies", "caches"},
    "cli": {"leaf", "flags", "data", "model", "engine", "strategies", "caches", "audit", "ablate"},
    "caches": set(),
    "trainer": {"leaf", "data", "model", "engine", "caches"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Internal modules `name` imports (resolved to the longest known module name)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
                break
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    g = {m: imports_of(m, p, known) for m, p in mods.items()}
    # importing a.b runs a/__init__ first; that edge is implicit, not a dependency of the module
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in g.items()}


def room(mod: str) -> str:
    parts = mod.split(".")
    if parts[0] in ("caches", "trainer"):
        return parts[0]
    if len(parts) == 1:
        return "cli"  # the evalkit package itself (version only)
    if parts[1] in ("errors", "cli"):
        return "leaf"
    if parts[1] in ("score", "demo", "artifact"):
        return "cli"
    return parts[1]


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_rooms_import_only_what_lies_below():
    bad = []
    for m, deps in graph().items():
        r = room(m)
        for d in deps:
            rd = room(d)
            if rd != r and rd not in ALLOWED[r] and not (rd == "leaf" and "leaf" in ALLOWED[r] | {r}):
                bad.append(f"{m} ({r}) imports {d} ({rd})")
    assert not bad, "\n".join(sorted(bad))


def test_model_imports_only_errors_and_itself():
    for m, deps in graph().items():
        if room(m) == "model":
            assert all(room(d) == "model" or d == "evalkit.errors" for d in deps), (m, deps)


def test_caches_know_no_torch_and_no_evalkit():
    for name, path in modules().items():
        if not name.startswith("caches"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(x.split(".")[0] in ("torch", "evalkit", "trainer") for x in mods), (name, mods)


def test_evalkit_never_imports_trainer():
    for m, deps in graph().items():
        if m.startswith("evalkit"):
            assert not any(d.startswith("trainer") for d in deps), (m, deps)


def test_every_subpackage_says_what_lives_there():
    for init in (ROOT / "evalkit").rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init} needs a module docstring naming what lives there"
        if init.parent.name != "gallery" and init.parent != ROOT / "evalkit":
            assert "import" in doc.lower(), f"{init}: say what this room may import"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_module_imports_alone_in_a_fresh_interpreter(pkg):
    """Import each module first in a fresh interpreter: a cycle or an order dependence that
    the static graph missed (e.g. a registry filled on import) fails here."""
    names = sorted(m for m in modules() if m.split(".")[0] == pkg and not m.endswith("__main__"))
    code = ("import importlib, sys\n"
            "for n in sys.argv[1:]:\n"
            "    for k in [k for k in sys.modules if k.split('.')[0] in ('evalkit', 'caches', 'trainer')]:\n"
            "        del sys.modules[k]\n"
            "    importlib.import_module(n)\n")
    r = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

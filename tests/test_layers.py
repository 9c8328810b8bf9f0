"""The pipeline's one direction of flow, checked on the source: no module imports a
later stage (lazy imports inside functions count too) and there are no import cycles."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder on disk -> package name (suites/ and quantizers/ install as harness.suites / harness.quantizers)
PACKAGES = {ROOT / "harness": "harness", ROOT / "suites": "harness.suites", ROOT / "quantizers": "harness.quantizers"}

# Stage ranks: a module may import modules of its own rank or lower, never higher.
# Longest matching prefix wins.
LAYERS = {
    "harness.errors": 0, "harness.cache": 0, "harness.stats": 0, "harness.options": 0,
    "harness.data": 0,
    "harness.provenance": 1, "harness.runtime": 1,
    "harness.sources": 2,
    "harness.plan": 3, "harness.recipe": 3,
    "harness.quantizers": 4,
    "harness.recipes": 5,
    "harness.builder": 6,
    "harness.suite": 7,
    "harness.suites": 8,
    "harness.suites_registry": 9, "harness.score": 9,
    "harness.results": 10,
    "harness.runner": 11, "harness.distributed": 11,
    "harness.report": 12,
    "harness.cli": 13, "harness.__main__": 13, "harness": 13,  # the public API (package __init__)
}


def module_files() -> dict:
    out = {}
    for folder, package in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def rank(module: str) -> int:
    best = None
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            best = LAYERS[prefix]
            break
    if best is None:
        raise AssertionError(f"{module} has no stage in LAYERS: add it")
    return best


def imports_of(module: str, path: Path, known: set) -> set:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - (node.level - 1)]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        for name in names:
            # the longest known module that `name` refers to
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in known:
                    if candidate != module:
                        out.add(candidate)
                    break
    return out


def graph() -> dict:
    files = module_files()
    known = set(files)
    return {m: imports_of(m, p, known) for m, p in files.items()}


def test_no_upward_imports():
    bad = []
    for module, deps in graph().items():
        if module == "harness":  # the public API re-exports every stage (lazily)
            continue
        for dep in deps:
            if dep == "harness":
                bad.append(f"{module} imports the package root (import the stage module instead)")
            elif rank(dep) > rank(module):
                bad.append(f"{module} (stage {rank(module)}) imports {dep} (stage {rank(dep)})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = {m: {d for d in deps if d != "harness"} for m, deps in graph().items() if m != "harness"}
    seen, stack, cycles = set(), [], []

    def visit(node, on_path):
        if node in on_path:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        on_path.add(node)
        stack.append(node)
        for dep in sorted(g.get(node, ())):
            visit(dep, on_path)
        stack.pop()
        on_path.discard(node)

    for node in sorted(g):
        visit(node, set())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _plugin(name: str) -> str:
    """The plugin a module belongs to: the reasoning suite's helpers (`reasoning_rubric`, ...) are part of it,
    codegen_* modules of the code-suite base."""
    top = name.split(".")[0]
    return "reasoning" if top.startswith("reasoning_") else "codegen" if top.startswith("codegen_") else top


def test_plugins_do_not_import_each_other():
    bad = []
    for module, deps in graph().items():
        for family in ("harness.quantizers.", "harness.suites."):
            if module.startswith(family):
                own = _plugin(module[len(family):])
                for dep in deps:
                    # codegen (code-suite base) and omlx (omlx's protocol) are shared helpers, not suites
                    if dep.startswith(family) and _plugin(dep[len(family):]) not in (own, "codegen", "omlx"):
                        bad.append(f"{module} imports {dep}")
    assert not bad, "plugins importing other plugins:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", ["harness.errors", "harness.options", "harness.plan", "harness.recipe",
                                    "harness.suite", "harness.results"])
def test_low_stages_import_in_isolation(module):
    """A low stage imports without pulling in any later stage."""
    import subprocess
    import sys

    code = (f"import sys, {module}; "
            "later = sorted(m for m in sys.modules if m.startswith(('harness.report', 'harness.runner', "
            "'harness.cli', 'harness.suites.', 'harness.quantizers.')));"
            "print(','.join(later)); sys.exit(1 if later else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"{module} pulls in later stages: {proc.stdout}{proc.stderr}"

"""The layers of DESIGN.md, kept: no import goes up the table, no module under src/ is over 500
lines, and the definition API loads no heavy optional dependency. Static (the source is parsed,
not imported), except the last check, which imports in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "synthpipe"
MAX_LINES = 500

# Bottom to top, as in DESIGN.md's table. The first prefix that matches a module decides its layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("synthpipe.errors", "synthpipe._compat")),  # _compat: a table of names, imports nothing
    ("definition", ("synthpipe.pipeline", "synthpipe.steps.base", "synthpipe.steps.decorator",
                    "synthpipe.worker_context", "synthpipe.steps.output_shape")),
    ("durability", ("synthpipe.store",)),
    ("execution", ("synthpipe.runtime",)),
    ("models", ("synthpipe.models",)),
    ("library", ("synthpipe.steps",)),
    ("result", ("synthpipe.distiset", "synthpipe.distiset_hub")),
    ("ui", ("synthpipe.ui",)),
    ("run", ("synthpipe.run", "synthpipe.runner", "synthpipe.retry")),
    ("cli", ("synthpipe.cli", "synthpipe.__main__")),
    ("testing", ("synthpipe.testing",)),  # test helpers: above everything, never imported by the package
]
# Public import paths: re-exports, which may name any layer.
PUBLIC = {"synthpipe", "synthpipe.steps", "synthpipe.steps.tasks", "synthpipe.models", "synthpipe.steps.generators",
          # the distilabel-compatible paths (synthpipe/_compat.py resolves their names)
          "synthpipe.typing", "synthpipe.llms", "synthpipe.embeddings", "synthpipe.mixins",
          "synthpipe.mixins.runtime_parameters", "synthpipe.steps.typing", "synthpipe.steps.tasks.typing"}
PUBLIC_PACKAGES = ("synthpipe.models.llms", "synthpipe.models.embeddings")
# Declared exceptions: Pipeline.run() hands the pipeline to the run package; LoadDataFromDisk reads a
# saved Distiset (is_distiset=True) through the one class that knows its layout.
DECLARED = {("synthpipe.pipeline.base", "synthpipe.run"), ("synthpipe.pipeline.base", "synthpipe.run.stops"),
            ("synthpipe.pipeline.base", "synthpipe.run.estimate"),
            ("synthpipe.steps.generators.datasets_io", "synthpipe.distiset")}
HEAVY = ("torch", "transformers", "datasets", "pyarrow", "aiohttp", "openai", "anthropic", "ray")


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int | None:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(_matches(module, p) for p in prefixes):
            return rank
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every synthpipe import, at any depth, except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                found.append((child.lineno, base))
                # "from synthpipe.steps import base" names the module synthpipe.steps.base
                found.extend((child.lineno, f"{base}.{a.name}") for a in child.names
                             if (SRC / Path(*f"{base}.{a.name}".split("."))).with_suffix(".py").exists()
                             or (SRC / Path(*f"{base}.{a.name}".split("."))).is_dir())
            visit(child)

    visit(tree)
    return [(line, mod) for line, mod in found if _matches(mod, "synthpipe")]


def upward_imports(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path)
        if importer in PUBLIC:
            continue
        own = layer_of(importer)
        assert own is not None, f"{importer} is in no layer of DESIGN.md's table: add it to LAYERS"
        for line, imported in imports_of(path):
            if imported in PUBLIC and imported != "synthpipe":
                target = layer_of(imported)  # a public package's own layer (its __init__ re-exports)
            elif imported == "synthpipe":
                continue  # the package root is cheap and names no layer
            else:
                target = layer_of(imported)
            if target is None:
                continue
            if any(importer == a and _matches(imported, b) for a, b in DECLARED):
                continue
            if target > own:
                problems.append(f"{path.relative_to(SRC)}:{line}: {LAYERS[own][0]} module {importer} "
                                f"imports {imported} ({LAYERS[target][0]})")
    return problems


def test_no_import_goes_up_the_layers():
    problems = upward_imports()
    assert not problems, "imports that go up DESIGN.md's layer table:\n" + "\n".join(problems)


def _module_level_imports(path: Path) -> set[str]:
    """What importing ``path`` imports at once (not inside functions, not for type checkers)."""
    deps: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and _matches(node.module, "synthpipe"):
            deps.add(node.module)
            deps.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if _matches(a.name, "synthpipe"))
    return deps


def test_no_import_cycle():
    graph = {module_name(p): _module_level_imports(p) for p in PACKAGE.rglob("*.py")}
    graph = {mod: {d for d in deps if d in graph and d != mod} for mod, deps in graph.items()}
    done: set[str] = set()

    def visit(mod: str, path: list[str]) -> None:
        if mod in path:
            cycle = path[path.index(mod):] + [mod]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if mod in done:
            return
        for dep in sorted(graph[mod]):
            visit(dep, [*path, mod])
        done.add(mod)

    for mod in sorted(graph):
        visit(mod, [])


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(SRC)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


@pytest.mark.timeout(60)
def test_the_definition_api_loads_no_heavy_dependency():
    code = ("import sys, synthpipe.pipeline, synthpipe.steps\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"heavy modules loaded by the definition API: {out.stdout}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check itself can fail: a store module that imports the runtime is reported."""
    fake = tmp_path / "synthpipe" / "store"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from synthpipe.runtime import worker\n")
    global SRC
    saved = SRC
    SRC = tmp_path
    try:
        problems = upward_imports(tmp_path / "synthpipe")
    finally:
        SRC = saved
    assert len(problems) == 1 and "synthpipe.runtime" in problems[0], problems

"""The stage order, enforced: a module imports its own layer or lower ones, never higher, and no
two modules import each other (directly or round a longer loop).

Layers, lowest first (issue 10)::

    errors <- config <- util/run <- data <- models <- tasks <- train <- evaluate/predict
           <- export <- vis <- pipeline/cli

Every import counts, including those inside functions (a lazy import is still a dependency: it
only moves the failure to run time), ``from tfcnn import x`` forms, relative imports and
``importlib.import_module("tfcnn....")`` with a literal name. ``tfcnn/__init__.py`` is the public
API and sits on top with the CLI, but imports only inside functions (its PEP 562 ``__getattr__``),
never at module level, so ``import tfcnn`` (which runs before any ``import tfcnn.x``) stays free
of TensorFlow, of every stage and of import cycles.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "tfcnn"

# First part of the module name below ``tfcnn`` -> layer.
LAYERS: dict[str, int] = {
    "errors": 0,
    "config": 1,
    "util": 2,
    "run": 2,
    "data": 3,
    "models": 4,
    "tasks": 5,
    "train": 6,
    "evaluate": 7,
    "prediction": 7,
    "export": 8,
    "vis": 9,
    "pipeline": 10,
    "cli": 10,
    "tune": 10,
    "__main__": 10,
}
LAYER_NAMES = {
    0: "errors",
    1: "config",
    2: "util/run",
    3: "data",
    4: "models",
    5: "tasks",
    6: "train",
    7: "evaluate/predict",
    8: "export",
    9: "vis",
    10: "pipeline/cli",
}


@dataclass(frozen=True)
class Import:
    """One import statement of a tfcnn module, resolved to the tfcnn module it loads."""

    source: str  # importing module, e.g. "tfcnn.evaluate.stage"
    file: str  # path relative to the package's parent, e.g. "tfcnn/evaluate/stage.py"
    line: int
    text: str  # the statement as written
    target: str  # imported tfcnn module, e.g. "tfcnn.vis.plots"
    lazy: bool = False  # inside a function (runs when called, not when the module is imported)


# --------------------------------------------------------------------------- the checker


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package (``__init__`` = the package)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of ``name`` that is a module of the package (``tfcnn.vis.plots.save`` -> ``tfcnn.vis.plots``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return name.split(".")[0]


def _statement(node: ast.AST, source_text: str) -> str:
    return " ".join((ast.get_source_segment(source_text, node) or ast.dump(node)).split())


def imports_of(module: str, path: Path, modules: dict[str, Path], package_dir: Path) -> list[Import]:
    """Every import of a tfcnn module in one file, wherever it sits (module level or in a function)."""
    text = path.read_text()
    tree = ast.parse(text, filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    rel = str(path.relative_to(package_dir.parent))
    root = package_dir.name
    out: list[Import] = []

    spans = [(f.lineno, f.end_lineno or f.lineno) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]

    def add(node: ast.AST, target: str) -> None:
        if target == root or target.startswith(root + "."):
            lazy = any(a <= node.lineno <= b for a, b in spans)
            out.append(Import(module, rel, node.lineno, _statement(node, text), target, lazy))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node, _resolve(alias.name, modules))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            for alias in node.names:
                # `from tfcnn.vis import plots` loads tfcnn.vis.plots; `from tfcnn.vis.plots import f` loads tfcnn.vis.plots.
                add(node, _resolve(f"{stem}.{alias.name}", modules))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                value = node.args[0].value
                if isinstance(value, str):
                    add(node, _resolve(value, modules))
    return sorted(set(out), key=lambda i: (i.line, i.target))


def all_imports(package_dir: Path) -> list[Import]:
    modules = module_files(package_dir)
    return [imp for module, path in modules.items() for imp in imports_of(module, path, modules, package_dir)]


def layer_of(module: str) -> int | None:
    """The layer of a tfcnn module by its path; None for the package itself (``tfcnn/__init__.py``)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return LAYERS.get(parts[1])


def layer_violations(package_dir: Path) -> list[str]:
    """One line per import that runs against the stage order (or from ``tfcnn/__init__.py`` at module level)."""
    modules = module_files(package_dir)
    problems = [f"{p.relative_to(package_dir.parent)}: module {m!r} has no layer; add it to LAYERS in tests/test_layering.py"
                for m, p in modules.items() if len(m.split(".")) > 1 and layer_of(m) is None]
    for imp in all_imports(package_dir):
        if imp.target == imp.source:
            continue
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is None:
            if not imp.lazy:
                problems.append(
                    f"{imp.file}:{imp.line}: `{imp.text}`: the package's __init__ may import tfcnn modules only inside "
                    "functions (its lazy __getattr__), so `import tfcnn.x` never loads every stage"
                )
        elif dst is not None and dst > src:
            problems.append(
                f"{imp.file}:{imp.line}: `{imp.text}`: {LAYER_NAMES[src]} (layer {src}) imports "
                f"{imp.target} from {LAYER_NAMES[dst]} (layer {dst})"
            )
    return problems


def _graph(package_dir: Path) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in module_files(package_dir)}
    for imp in all_imports(package_dir):
        if imp.target != imp.source and imp.target in graph:
            graph[imp.source].add(imp.target)
    return graph


def import_cycles(package_dir: Path) -> list[list[str]]:
    """One loop (start -> ... -> start) per group of modules that import each other."""
    graph = _graph(package_dir)
    return [_loop(g, graph) for g in _groups(package_dir)]


def _groups(package_dir: Path) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan), each sorted."""
    graph = _graph(package_dir)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def _loop(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete loop through a strongly connected group, start -> ... -> start (breadth-first)."""
    start = group[0]
    members = set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return group + [start]  # pragma: no cover - a strongly connected group always has a loop


def cycle_report(package_dir: Path) -> list[str]:
    imports = all_imports(package_dir)
    lines = []
    for loop in import_cycles(package_dir):
        steps = []
        for a, b in zip(loop, loop[1:]):
            where = next(i for i in imports if i.source == a and i.target == b)
            steps.append(f"{where.file}:{where.line} `{where.text}`")
        members = sorted(set(loop))
        group = next(g for g in _groups(package_dir) if members[0] in g)
        more = f" [all of {', '.join(group)} import each other]" if len(group) > len(members) else ""
        lines.append(" -> ".join(loop) + "  (" + "; ".join(steps) + ")" + more)
    return lines


# --------------------------------------------------------------------------- the real package


def test_imports_follow_the_stage_order():
    problems = layer_violations(PACKAGE_DIR)
    assert not problems, "imports against the stage order:\n" + "\n".join(problems)


def test_no_import_cycles():
    cycles = cycle_report(PACKAGE_DIR)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


# --------------------------------------------------------------------------- the checker can fail


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "tfcnn" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "tfcnn"


@pytest.fixture
def fake_package(tmp_path: Path) -> Path:
    return _tree(tmp_path, {
        "__init__.py": '"""ok: nothing from tfcnn."""\nimport os\n',
        "errors.py": "class TfcnnError(Exception):\n    pass\n",
        "run.py": "from tfcnn.errors import TfcnnError\n",
        "evaluate/__init__.py": "",
        "evaluate/x.py": """
            from tfcnn.run import Run  # allowed: lower layer


            def figures():
                from tfcnn.vis import plots  # lazy, still a back-import
                return plots
            """,
        "evaluate/y.py": "from . import x  # same package, relative\n",
        "vis/__init__.py": "",
        "vis/plots.py": "from ..run import Run  # relative, two levels up\n",
        "train/__init__.py": "",
        "train/core.py": "def train():\n    from tfcnn.train import tape\n",
        "train/tape.py": "from tfcnn.train.core import train\n",
    })


def test_checker_reports_a_lazy_back_import_with_file_and_line(fake_package):
    problems = layer_violations(fake_package)
    assert len(problems) == 1, problems
    assert problems[0].startswith("tfcnn/evaluate/x.py:6: `from tfcnn.vis import plots`")
    assert "evaluate/predict (layer 7)" in problems[0] and "tfcnn.vis.plots" in problems[0] and "vis (layer 9)" in problems[0]


def test_checker_resolves_relative_and_dynamic_imports(fake_package):
    (fake_package / "run.py").write_text("import importlib\nimportlib.import_module('tfcnn.evaluate.y')\n")
    (fake_package / "data").mkdir()
    (fake_package / "data" / "__init__.py").write_text("from ..train import core\n")
    imports = {(i.source, i.target) for i in all_imports(fake_package)}
    assert ("tfcnn.evaluate.y", "tfcnn.evaluate.x") in imports and ("tfcnn.vis.plots", "tfcnn.run") in imports
    problems = layer_violations(fake_package)
    assert any(p.startswith("tfcnn/run.py:2: `importlib.import_module('tfcnn.evaluate.y')`") for p in problems), problems
    assert any(p.startswith("tfcnn/data/__init__.py:1: `from ..train import core`") for p in problems), problems


def test_checker_refuses_imports_in_the_package_init_and_unknown_modules(fake_package):
    (fake_package / "__init__.py").write_text("from tfcnn.errors import TfcnnError\n")
    (fake_package / "extra.py").write_text("")
    problems = layer_violations(fake_package)
    assert any("tfcnn/__init__.py:1" in p and "only inside functions" in p for p in problems), problems
    (fake_package / "__init__.py").write_text("def __getattr__(name):\n    from tfcnn.vis.plots import f\n    return f\n")
    assert not [p for p in layer_violations(fake_package) if "__init__" in p]  # lazy public API: allowed
    assert any("'tfcnn.extra' has no layer" in p for p in problems), problems


def test_checker_reports_a_cycle_through_a_lazy_import(fake_package):
    cycles = cycle_report(fake_package)
    assert len(cycles) == 1, cycles
    assert cycles[0].startswith("tfcnn.train.core -> tfcnn.train.tape -> tfcnn.train.core")
    assert "tfcnn/train/core.py:2 `from tfcnn.train import tape`" in cycles[0]
    assert "tfcnn/train/tape.py:1 `from tfcnn.train.core import train`" in cycles[0]

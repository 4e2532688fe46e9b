"""The house rules of issue 14, kept by a test: no import cycle among the package's modules (imports inside functions
count too), and no module over 500 lines except the model file (docs/architecture.md)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modeling_scbert", "tokenization")
MAX_LINES = 500
EXEMPT = {"modeling_scbert/modeling_scbert.py"}  # the model, as transformers keeps one file per model


def _modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            for candidate in (target, f"{target}.__init__"):
                # A module importing its own package's __init__ is a re-export, not a dependency between jobs.
                own_init = candidate.endswith("__init__") and name.startswith(candidate[: -len("__init__")])
                if candidate in known and candidate != name and not own_init:
                    found.add(candidate)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycle_among_the_package_modules():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert len(graph) > 20 and any(graph.values())  # the walk found the package and its imports
    assert _cycles(graph) == []


def test_the_cycle_check_sees_imports_inside_functions():
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    source = ROOT / "modeling_scbert" / "cli.py"
    assert "modeling_scbert.training" in _imports("modeling_scbert.cli", source, set(_modules()))


def test_no_module_over_500_lines_except_the_model_file():
    long = {
        str(path.relative_to(ROOT)): lines
        for path in _modules().values()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
        and str(path.relative_to(ROOT)) not in EXEMPT
    }
    assert long == {}

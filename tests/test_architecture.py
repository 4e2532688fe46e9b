"""The house rules (docs/architecture.md), kept by a test: no import cycle among the packages' modules (imports inside
functions count too); every name a module exports in ``__all__`` is defined there (``__init__.py`` files excepted:
they give a package's names); ``tokenization`` never imports ``modeling_scbert``; and no module over 800 lines unless
the allow-list below names it with its reason."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modeling_scbert", "tokenization")
MAX_LINES = 800
# Longer modules, each with its reason.
LONG_MODULES = {
    "modeling_scbert/modeling_scbert.py": "the model: transformers keeps one file per model, read top to bottom",
}


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
    assert "modeling_scbert.training.workflows" in _imports("modeling_scbert.cli", source, set(_modules()))


def test_no_module_over_800_lines_but_those_allowed_with_a_reason():
    long = {
        str(path.relative_to(ROOT)): lines
        for path in _modules().values()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
        and str(path.relative_to(ROOT)) not in LONG_MODULES
    }
    assert long == {}


def _defined_and_exported(path: Path) -> tuple[set[str], list[str] | None]:
    defined, exported = set(), None
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    defined.add(target.id)
                    if target.id == "__all__":
                        exported = [ast.literal_eval(element) for element in node.value.elts]
    return defined, exported


def test_every_exported_name_is_defined_in_the_module_that_exports_it():
    elsewhere = {}
    for name, path in _modules().items():
        if path.name == "__init__.py":
            continue
        defined, exported = _defined_and_exported(path)
        if missing := [n for n in exported or [] if n not in defined]:
            elsewhere[name] = missing
    assert elsewhere == {}


def test_the_export_check_sees_a_re_export(tmp_path):
    module = tmp_path / "shim.py"
    module.write_text('from os import path\n\n\ndef f():\n    pass\n\n\n__all__ = ["f", "path"]\n')
    defined, exported = _defined_and_exported(module)
    assert [n for n in exported if n not in defined] == ["path"]


def test_tokenization_never_imports_modeling_scbert():
    modules = _modules()
    upward = {
        name: sorted(target for target in _imports(name, path, set(modules)) if target.startswith("modeling_scbert"))
        for name, path in modules.items()
        if name.startswith("tokenization")
    }
    assert {name: targets for name, targets in upward.items() if targets} == {}


def test_the_packages_lazy_names_resolve_to_the_modules_that_define_them():
    import importlib

    for package in (
        "modeling_scbert",
        "modeling_scbert.training",
        "modeling_scbert.annotation",
        "modeling_scbert.hub",
    ):
        module = importlib.import_module(package)
        for name in module._LAZY:
            value = getattr(module, name)
            assert getattr(value, "__module__", module._LAZY[name]) == module._LAZY[name], (package, name)

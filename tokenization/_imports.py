"""Two import mechanisms of the packages' ``__init__`` files: names imported on first use, and old module paths.

:func:`lazy_attributes` gives a package the ``__getattr__`` / ``__dir__`` of PEP 562, so that its ``__init__`` can
offer the names of its modules without importing them (and without the import cycles that eager re-exports make
between subpackages that use each other's modules).

:func:`install_moved_modules` keeps old module paths importable for one release, with a ``FutureWarning`` that names
the new place.

The packages were regrouped by job (docs/architecture.md): ``modeling_scbert.annotate`` became
``modeling_scbert.annotation.annotate``, ``tokenization.cell_encoding`` merged into ``tokenization.tokenization_scbert``,
and so on. An import of an old path gets a stand-in module that finds each name in the modules that now define it and
warns once; nothing else of the old layout is kept. ``install_moved_modules`` is called by each package's
``__init__``; the stand-ins go away in the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

__all__ = ["install_moved_modules", "lazy_attributes"]


class _MovedModule(ModuleType):
    """Stands in for an old module: every attribute comes from the first new module that defines it."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name, f"Moved: import from {', '.join(targets)}.")
        self.__targets = tuple(targets)

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        for target in self.__targets:
            module = importlib.import_module(target)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(
            f"{self.__name__!r} moved (to {', '.join(self.__targets)}), and none of them defines {attribute!r}."
        )

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for target in self.__targets:
            names.update(getattr(importlib.import_module(target), "__all__", ()))
        return sorted(names)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, moved: Mapping[str, Sequence[str]]) -> None:
        self.moved = dict(moved)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.moved:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        targets = self.moved[spec.name]
        warnings.warn(
            f"{spec.name} has moved: import from {' or '.join(targets)} (the old path goes in the next release).",
            FutureWarning,
            stacklevel=_caller_level(),
        )
        return _MovedModule(spec.name, targets)

    def exec_module(self, module: ModuleType) -> None:
        return None


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside importlib and this file: the user's import statement."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename == __file__ or "importlib" in frame.f_code.co_filename):
        level, frame = level + 1, frame.f_back
    return level


class _KeepsNames(ModuleType):
    """A package whose own names (e.g. the verb ``annotate``) are never replaced by the stand-in of an old module of
    the same name, which the import system would otherwise set as an attribute of the package."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not isinstance(value, _MovedModule):
            super().__setattr__(name, value)


def install_moved_modules(moved: Mapping[str, Sequence[str]]) -> None:
    """Make each old module path in ``moved`` importable as a stand-in over its new modules (searched in order).

    The stand-ins live in ``sys.modules`` only, never as attributes of their package.
    """
    for name in moved:
        package = sys.modules.get(name.rpartition(".")[0])
        if package is not None and type(package) is ModuleType:
            package.__class__ = _KeepsNames
    for finder in sys.meta_path:
        if isinstance(finder, _MovedModuleFinder):
            finder.moved.update(moved)
            return
    sys.meta_path.append(_MovedModuleFinder(moved))


def lazy_attributes(
    package: str, names: Mapping[str, str], eager: Mapping[str, Any], moved: Mapping[str, str] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose ``names`` (name -> module) are imported on first use.

    ``eager`` is the package's ``globals()``, listed by ``__dir__`` beside the lazy names. ``moved`` (name -> module)
    are names the package gave before 0.2 that belong elsewhere: they still resolve, with a ``FutureWarning``.
    """
    moved = dict(moved or {})

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        if name in moved:
            warnings.warn(
                f"{package}.{name} has moved: import it from {moved[name]} (the old place goes in the next release).",
                FutureWarning,
                stacklevel=2,
            )
            return getattr(importlib.import_module(moved[name]), name)
        if f"{package}.{name}" in sys.modules:  # an old module path imported through its stand-in
            return sys.modules[f"{package}.{name}"]
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(eager) | set(names))

    return __getattr__, __dir__

"""The methods registry (timm-style): ``register``, ``get(name)``, ``names()``.

A method is one module in this package holding a :class:`methods.base.Method` subclass decorated
with ``@register``. Every module here except the shared pieces (``_SHARED_MODULES``: ``base``,
``meta``, ``jvp``, ``curves``, ``losses``, ``drw``) is imported on first use, so adding a method
is adding a file (README, "Adding a method"). A module that fails to import is a one-line error
naming it, for every command, since the registry cannot be trusted without it.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings

from bench.errors import BenchError

_REGISTRY: dict[str, type] = {}
_SHARED_MODULES = {"base", "meta", "jvp", "curves", "losses", "drw"}
_discovered = False
_SILENT: set[str] = set()  # modules already warned about


def register(cls: type) -> type:
    """Class decorator: make ``cls`` available as ``get(cls.name)``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"method {name!r} registered twice ({_REGISTRY[name].__module__}, {cls.__module__})")
    _REGISTRY[name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SHARED_MODULES and not info.name.startswith("_"):
            module = f"{__name__}.{info.name}"
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - a syntax error, a missing import ...
                where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
                raise BenchError(f"methods/{info.name}.py cannot be imported{where}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
            if module not in _SILENT and not any(cls.__module__ == module for cls in _REGISTRY.values()):
                warnings.warn(f"methods/{info.name}.py registers no method (a Method subclass without "
                              "@register?); shared code belongs in _SHARED_MODULES", stacklevel=2)
                _SILENT.add(module)
    _discovered = True


def names() -> list[str]:
    """Registered method names, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get(name: str) -> type:
    """The method class registered as ``name``; a BenchError listing the names otherwise."""
    _discover()
    if name not in _REGISTRY:
        raise BenchError(f"unknown method {name!r}; registered methods: {', '.join(names())}")
    return _REGISTRY[name]

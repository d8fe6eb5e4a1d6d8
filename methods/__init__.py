"""The methods registry (timm-style): ``register``, ``get(name)``, ``names()``.

A method is one module in this package holding a :class:`methods.base.Method` subclass decorated
with ``@register``. Every module here except the shared pieces (``_SHARED_MODULES``: ``base``,
``meta``, ``jvp``, ``curves``, ``losses``, ``drw``) is imported on first use, so adding a method
is adding a file (README, "Adding a method"). A module that fails to import is a one-line error
naming it, for every command, since the registry cannot be trusted without it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import warnings

from bench.errors import BenchError

_REGISTRY: dict[str, type] = {}
_SHARED_MODULES = {"base", "meta", "jvp", "curves", "losses", "drw"}
_discovered = False
_SILENT: set[str] = set()  # modules already warned about


def register(cls: type) -> type:
    """Class decorator: make ``cls`` available as ``get(cls.name)``.

    Checks what the harness relies on, so that a new method file's slip is one line naming it:
    ``Params`` is a dataclass, and ``display_name``, ``inert_settings`` and ``check_spec`` stay
    classmethods.
    """
    where = f"{_file(cls.__module__)}: {cls.__name__}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise BenchError(f"{where} needs a class attribute name = '...' (the --methods name)")
    if not dataclasses.is_dataclass(cls.Params):
        raise BenchError(f"{where}.Params must be a @dataclass (every field with a default)")
    for hook in ("display_name", "inert_settings", "check_spec"):
        if not isinstance(inspect.getattr_static(cls, hook), classmethod):
            raise BenchError(f"{where}.{hook} must be a @classmethod (it is called on the class)")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise BenchError(f"{_file(_REGISTRY[name].__module__)} and {_file(cls.__module__)} both register "
                         f"the method name {name!r}; rename one")
    _REGISTRY[name] = cls
    return cls


def _file(module: str) -> str:
    return module.replace(".", "/") + ".py"


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SHARED_MODULES and not info.name.startswith("_"):
            module = f"{__name__}.{info.name}"
            try:
                importlib.import_module(module)
            except BenchError:  # register's own check: it names the file
                raise
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
    """The method class registered as ``name``; a BenchError listing the names otherwise (and the
    one meant, where :func:`suggestion` finds it: ``CurveNet`` or ``MW-Net`` as tables write them)."""
    _discover()
    if name not in _REGISTRY:
        guess = suggestion(name)
        raise BenchError(f"unknown method {name!r}; " + (f"did you mean {guess!r}? " if guess else "")
                         + f"registered methods: {', '.join(names())}")
    return _REGISTRY[name]


def _plain(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def suggestion(text: str) -> str | None:
    """The registered name a user most likely meant by ``text``: the one whose name, or whose
    name in tables (``display_name`` with its default parameters: CurveNet, MW-Net(noise),
    O2U-Net, Class-Balanced), equals ``text`` with case, hyphens and spaces aside (a table's
    variant in brackets too); else the closest name by ``difflib``; None if nothing is close."""
    import difflib

    _discover()
    wanted, bare = _plain(text), _plain(text.split("(")[0])
    for name, cls in sorted(_REGISTRY.items()):
        try:
            shown = cls.display_name(dataclasses.asdict(cls.Params()))
        except Exception:  # a method's display_name is its own code: the suggestion must not fail
            shown = name
        if wanted in (_plain(name), _plain(shown)) or bare in (_plain(name), _plain(shown.split("(")[0])):
            return name
    close = difflib.get_close_matches(text.lower(), names(), n=1, cutoff=0.6)
    return close[0] if close else None

"""Finding what modules declare: the composition root imports the configured modules and collects
the functions that ``@handles`` and ``@on_every_node`` marked. Declaring registers nothing
anywhere; only the process that asks for a module's handlers gets them."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Iterator
from types import FunctionType, ModuleType
from typing import Any


def import_modules(names: Iterable[str]) -> list[ModuleType]:
    """Import each module, and every submodule of each package; return them all."""
    modules: list[ModuleType] = []
    for name in names:
        module = importlib.import_module(name)
        modules.append(module)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=f"{name}."):
            modules.append(importlib.import_module(info.name))
    return modules


def marked(modules: Iterable[ModuleType], attribute: str) -> Iterator[Any]:
    """Every value of ``attribute`` on the module-level functions and classes of ``modules`` that
    carry it themselves (read from their own ``__dict__``: no proxy or lazy object is ever touched,
    and a subclass does not repeat its base's mark)."""
    for module in modules:
        for value in list(vars(module).values()):
            if isinstance(value, (FunctionType, type)) and attribute in value.__dict__:
                yield value.__dict__[attribute]

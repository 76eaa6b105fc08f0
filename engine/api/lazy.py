"""Names an api module re-exports without importing them yet (PEP 562): a module that imports torch is loaded the
first time one of its names is asked for, so importing the api stays cheap for the studio's start-up."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(namespace: dict[str, Any], table: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `table` (name -> the module that defines it); `namespace` is the api module's
    globals(), where a name found once is kept so that later lookups do not come back here."""
    module_name = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        source = table.get(name)
        if source is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        namespace[name] = value
        return value

    return __getattr__

"""Lazy public names for a package (PEP 562): each name is imported from its owning module on first use.

The package root, ``attnlab.probes`` and ``attnlab.viz`` list their public names with the module that owns each;
importing the package stays cheap (the CLI's ``--help`` never pays for torch or plotly it does not use).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, owners: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names live in other modules.

    Args:
        package: the package's ``__name__``.
        owners: ``{public name: owning module}``; a module name without a dot is taken relative to ``package``.
            An owner equal to ``package.<name>`` exports that submodule itself (``attnlab.viz``).

    Returns:
        The two module-level functions: an unknown name raises ``AttributeError`` listing the public ones; a
        resolved name is cached on the package, so the owner is imported once.
    """
    public = sorted(owners)

    def module_getattr(name: str) -> object:
        owner = owners.get(name)
        if owner is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}; public names: {', '.join(public)}")
        module = importlib.import_module(owner if "." in owner else f"{package}.{owner}")
        value = module if owner == f"{package}.{name}" else getattr(module, name)
        setattr(sys.modules[package], name, value)
        return value

    def module_dir() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(public))

    return module_getattr, module_dir

"""Loading Krill's C extension ``krill._goflate`` with an error that says what is missing.

The ELF transform (elf.py) and the HDIFF13 applier (hdiff.py) each need it for
one kind of op; a node without it gets its op's error, naming the fix.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["load_goflate"]


def load_goflate(error: type[Exception], needed_for: str) -> ModuleType:
    """``krill._goflate``, or ``error`` saying it is not built and what it is ``needed_for``."""
    try:
        return importlib.import_module("krill._goflate")
    except ImportError as exc:
        raise error(
            f"Krill's C extension krill._goflate is not built here ({exc}); "
            f"reinstall Krill (pip install -e .) to {needed_for}"
        ) from exc

"""Import a module of ``scripts/`` in a test, the way the scripts import each other.

The bench scripts are not a package: each puts ``scripts/`` on ``sys.path`` and
imports its siblings by name. Tests that check a script's pieces do the same, so
the module they test is the one the script runs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def script_module(name: str) -> ModuleType:
    """``scripts/<name>.py``, imported by name with ``scripts/`` on the path."""
    if str(SCRIPTS) not in sys.path:
        sys.path.append(str(SCRIPTS))
    return importlib.import_module(name)

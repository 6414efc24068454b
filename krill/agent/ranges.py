"""HTTP ``Range`` headers for the agent's blob GETs.

The parser is shared with the origin (``krill.registry_params``) so both
answer the same range with the same 206 or 416 RANGE_INVALID; this module
keeps the agent's import path.
"""

from __future__ import annotations

from krill.registry_params import ByteRange, parse_range

__all__ = ["ByteRange", "parse_range"]

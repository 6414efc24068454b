"""The project's one zstd binding: Python 3.14's ``compression.zstd`` or its backport.

``backports.zstd`` exposes libzstd's prefix mode (``ZstdDict(..., is_raw=True).as_prefix``),
which the delta codec needs; see docs/deltas.md for the measurement behind the choice.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

__all__ = ["zstd"]

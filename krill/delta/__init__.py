"""The Krill delta codec: rebuild a layer's exact bytes from an older layer.

Library entry points (other services call these, never the submodules):

* ``create_delta(base_blob, target_blob, out, options=None) -> EncodeResult``
* ``apply_delta(base_blob, delta, out) -> ApplyResult``
* ``rebuild_layer(base_blob, delta, out_dir) -> RebuildResult`` (agent side)
* ``read_delta_header(delta) -> DeltaHeader``
* ``detect_recipe(blob, tar) -> Recipe`` / ``RecipeError``

See docs/deltas.md for the format and the measurements behind it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from krill.delta.apply import (
        ApplyResult,
        RebuildResult,
        apply_delta,
        read_delta_header,
        rebuild_layer,
    )
    from krill.delta.detect import detect_recipe
    from krill.delta.encode import EncodeOptions, EncodeResult, create_delta
    from krill.delta.format import MEDIA_TYPE, DeltaFormatError, DeltaHeader
    from krill.delta.recipes import (
        Recipe,
        RecipeError,
        gzip_recipe,
        zstd_recipe,
    )

# Where each name lives. The submodules load on first use (PEP 562), not with the package:
# `krill delta apply` is timed by its users (a delta must beat a download on a fast link,
# issue 15), and the encoder, the ELF normaliser and hdiffpatch cost it ~60 ms of imports
# it never runs.
_HOMES = {
    "ApplyResult": "apply",
    "RebuildResult": "apply",
    "apply_delta": "apply",
    "read_delta_header": "apply",
    "rebuild_layer": "apply",
    "EncodeOptions": "encode",
    "EncodeResult": "encode",
    "create_delta": "encode",
    "MEDIA_TYPE": "format",
    "DeltaFormatError": "format",
    "DeltaHeader": "format",
    "Recipe": "recipes",
    "RecipeError": "recipes",
    "detect_recipe": "detect",
    "gzip_recipe": "recipes",
    "zstd_recipe": "recipes",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


__all__ = [
    "MEDIA_TYPE",
    "ApplyResult",
    "DeltaFormatError",
    "DeltaHeader",
    "EncodeOptions",
    "EncodeResult",
    "RebuildResult",
    "Recipe",
    "RecipeError",
    "apply_delta",
    "create_delta",
    "detect_recipe",
    "gzip_recipe",
    "read_delta_header",
    "rebuild_layer",
    "zstd_recipe",
]

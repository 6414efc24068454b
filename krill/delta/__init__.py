"""The Krill delta codec: rebuild a layer's exact bytes from an older layer.

Library entry points (other services call these, never the submodules):

* ``create_delta(base_blob, target_blob, out, options=None) -> EncodeResult``
* ``apply_delta(base_blob, delta, out) -> ApplyResult``
* ``rebuild_layer(base_blob, delta, out_dir) -> RebuildResult`` (agent side)
* ``read_delta_header(delta) -> DeltaHeader``
* ``detect_recipe(blob, tar) -> Recipe`` / ``RecipeError``

See docs/deltas.md for the format and the measurements behind it.
"""

from krill.delta.apply import (
    ApplyResult,
    RebuildResult,
    apply_delta,
    read_delta_header,
    rebuild_layer,
)
from krill.delta.encode import EncodeOptions, EncodeResult, create_delta
from krill.delta.format import MEDIA_TYPE, DeltaFormatError, DeltaHeader
from krill.delta.recipes import Recipe, RecipeError, detect_recipe, gzip_recipe, zstd_recipe

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

"""Build of Krill's C extension; the package metadata lives in pyproject.toml.

krill._goflate (krill/_native/goflate.c) reproduces Go's compress/flate output
byte for byte, for the ``gzip-go`` recompression recipe (krill/delta/gogzip.py).
krill._zdeflate (krill/_native/zdeflate*.c) reproduces zlib 1.2.13's deflate at levels
4-9 bit for bit, faster, for the zlib-made ``gzip`` recipe (krill/delta/zlibrestarts.py).
krill._announcequery (krill/_native/announcequery.c) parses the tracker's
ordinary announce queries (krill/tracker/announce.py).
An editable install builds it only at install time: scripts/lib/setup.sh
reinstalls when this file or krill/_native/* change.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "krill._goflate",
            sources=[
                "krill/_native/goflate.c",  # Go-compatible deflate: the Python type
                "krill/_native/gohuff.c",
                "krill/_native/gobits.c",
                "krill/_native/golevels.c",
                "krill/_native/gofast.c",
                "krill/_native/goreuse.c",  # base tokens reused where the layers repeat
                "krill/_native/elfnorm.c",  # the ELF-aware delta transform
                "krill/_native/elfscan.c",
                "krill/_native/elffields.c",
                "krill/_native/elflabels.c",
                "krill/_native/elfx86.c",
                "krill/_native/zblocks.c",  # deflate block boundaries, for zlib restarts
                "krill/_native/hdiffapply.c",  # HDIFF13 patches without the hdiffpatch binding
            ],
            # -O2 as the issue asks; -fno-strict-overflow keeps Go's wrapping int arithmetic
            # from being assumed away where C would call it undefined.
            extra_compile_args=["-O2", "-std=c11", "-fno-strict-overflow"],
        ),
        # zlib 1.2.13's deflate_slow, bit for bit but faster, for the ``gzip`` (zlib-made)
        # recompression recipe (krill/delta/zlibrestarts.py).
        Extension(
            "krill._zdeflate",
            sources=[
                "krill/_native/zdeflate_py.c",  # the Python type
                "krill/_native/zdeflate_match.c",  # window, hash chains, lazy matching
                "krill/_native/zdeflate_trees.c",  # Huffman trees, blocks, bits
            ],
            extra_compile_args=["-O2", "-std=c11"],
        ),
        # The tracker's parse of an ordinary announce query; krill.tracker.announce falls back
        # to its Python parse when the extension is not built.
        Extension(
            "krill._announcequery",
            sources=["krill/_native/announcequery.c"],
            extra_compile_args=["-O2", "-std=c11"],
        ),
    ],
)

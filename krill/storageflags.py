"""The object-storage flags ``krill origin`` and ``krill up`` both take.

One definition, so the two commands spell and explain them the same way;
each passes its own help for ``--storage`` (for ``up`` the default is the
``--data`` directory, for the origin ``--data`` becomes the local cache).
"""

from __future__ import annotations

import argparse

__all__ = ["add_storage_flags"]


def add_storage_flags(parser: argparse.ArgumentParser, storage_help: str) -> None:
    """``--storage URL``, ``--s3-endpoint URL`` and ``--s3-region REGION``."""
    parser.add_argument("--storage", metavar="URL", help=storage_help)
    parser.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible store's base URL")
    parser.add_argument("--s3-region", metavar="REGION", help="S3 region (default us-east-1)")

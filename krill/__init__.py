"""Krill: peer-to-peer container-layer distribution that ships only what changed.

The ``krill`` package holds what the services share: digests, the blob store,
OCI types and errors, metainfo, the swarm engine, the delta codec, config and
the command line. Service packages (``origin``, ``tracker``, ``agent``) import
from here and never from each other.
"""

__version__ = "0.1.0"

"""The Krill agent: a node-local, pull-only registry endpoint containerd uses as a mirror.

Blobs come from the BitTorrent swarm (``krill.swarm``) and, when the swarm
cannot start delivering in time, from the origin over HTTP; manifests come
from the origin. Everything fetched lands in a node cache with a disk budget.
"""

"""TorrentTable's index by torrent name: how every piece alert finds its torrent.

A real libtorrent session holds the torrent; the table must answer a name (the
blob's hex digest, as ``alert.torrent_name`` gives it) with the infohash while
the torrent is in it, and with nothing once its removal has begun.
"""

from __future__ import annotations

import os
from pathlib import Path

import libtorrent as lt

from krill.blobstore import BlobStore
from krill.metainfo import make_metainfo
from krill.swarm.torrents import Torrent, TorrentTable, torrent_info
from tests.clocks import ManualClock


async def test_a_torrent_is_found_by_its_name_until_its_removal_begins(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    digest = store.put_bytes(os.urandom(200_000))
    info_hash, ti = torrent_info(make_metainfo(store.path(digest), digest), digest)
    session = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False})
    params = lt.add_torrent_params()
    params.ti, params.save_path = ti, str(store.path(digest).parent)
    handle = session.add_torrent(params)
    assert handle.status().name == digest.hex  # what alert.torrent_name carries

    table = TorrentTable(ManualClock(), removal_begun=lambda: None)
    table.session = session
    assert table.info_hash_named(digest.hex) is None
    table.add(info_hash, Torrent(handle, digest, b"", None, 0.0))
    assert table.info_hash_named(digest.hex) == info_hash

    assert table.begin_removal(info_hash) is not None
    assert table.info_hash_named(digest.hex) is None
    table.add(info_hash, Torrent(handle, digest, b"", None, 0.0))  # added again
    assert table.info_hash_named(digest.hex) == info_hash
    table.drop_all()
    assert table.info_hash_named(digest.hex) is None

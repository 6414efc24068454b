"""A pod's own replica URL written from ``$(POD_IP)``: IPv6 gets its brackets.

The chart sets ``--replica-url=http://$(POD_IP):PORT``; on an IPv6 cluster that
expands to ``http://fd00::5:5000``, which no URL parser reads as meant. The
origin brackets it, and leaves every other spelling alone.
"""

from __future__ import annotations

import pytest
from yarl import URL

from krill.origin.config import OriginConfig
from krill.replicas import bracket_ipv6_host


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("http://fd00::5:5000", "http://[fd00::5]:5000"),
        ("https://2001:db8::17:443/", "https://[2001:db8::17]:443/"),
        ("http://[fd00::5]:5000", "http://[fd00::5]:5000"),
        ("http://10.0.0.7:5000", "http://10.0.0.7:5000"),
        ("http://origin-0.krill:5000", "http://origin-0.krill:5000"),
        ("http://fd00::5", "http://fd00::5"),  # no port: not guessed at
        ("http://not:an:address:5000", "http://not:an:address:5000"),
    ],
)
def test_an_unbracketed_ipv6_host_is_bracketed_and_nothing_else_changes(
    written: str, meant: str
) -> None:
    assert bracket_ipv6_host(written) == meant


def test_the_origin_reads_its_own_ipv6_url_as_the_others_list_it() -> None:
    config = OriginConfig(
        storage="s3://bucket",
        s3_endpoint="http://127.0.0.1:1",
        replicas="dns+http://krill-origin-replicas:5000",
        replica_url="http://fd00::5:5000",
    )
    assert config.replica_url == "http://[fd00::5]:5000"
    url = URL(config.replica_url)
    assert (url.host, url.port) == ("fd00::5", 5000)

"""Upstream credentials never reach a log line, a metric or an error body (issue 19).

A mirror origin with upstream credentials pulls through a registry behind a
proxy that wants them, by a Bearer token (skopeo through the origin) and by
Basic, and then with a wrong password; everything Python logged during the
run (every logger, at debug, aiohttp's access log included), the origin's
``/metrics`` and the error answers are searched for the password, its Basic
value and the upstream's token. (Node passwords and announce keys:
tests/test_security_nodes.py; users' passwords and tokens:
tests/test_origin_auth_process.py; a client's pull secret through an agent:
tests/test_security_private.py.)
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp.pytest_plugin import AiohttpServer

from tests.components import skopeo
from tests.fixtures_origin import StartOrigin
from tests.imagebuild import build_image, random_files
from tests.test_origin_pullthrough import (
    PASSWORD,
    SKOPEO_FLAGS,
    TOKEN,
    USER,
    basic_header,
    mirror_of,
    push_upstream,
    registry,
    running_proxy,
)

__all__ = ["registry"]  # the fixture


@pytest.mark.slow
async def test_upstream_credentials_stay_out_of_logs_metrics_and_errors(
    tmp_path: Path,
    registry: str,
    aiohttp_server: AiohttpServer,
    start_origin: StartOrigin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    image = build_image([random_files(8, 1, 4096)])
    await push_upstream(tmp_path, registry, image, "mirror/creds:v1", "src")
    bodies: list[str] = []
    async with running_proxy(registry, aiohttp_server) as (_, token_upstream):
        origin = await mirror_of(start_origin, token_upstream)
        ref = f"docker://127.0.0.1:{origin.port}/mirror/creds:v1"
        await asyncio.to_thread(skopeo, "copy", *SKOPEO_FLAGS, ref, f"oci:{tmp_path / 'o'}:v1")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{origin.port}/metrics") as resp:
                bodies.append(await resp.text())
    async with running_proxy(registry, aiohttp_server, basic=True) as (_, basic_upstream):
        wrong = await start_origin(
            upstream=f"http://127.0.0.1:{basic_upstream.port}",
            upstream_username=USER,
            upstream_password=PASSWORD + "-wrong",
        )
        base = f"http://127.0.0.1:{wrong.port}/v2/mirror/creds"
        async with aiohttp.ClientSession() as session:
            # Not in the store the two origins share here: each asks the upstream.
            for path in ("/manifests/v2", f"/blobs/sha256:{'1' * 64}"):
                async with session.get(base + path) as resp:
                    assert resp.status >= 400
                    bodies.append(await resp.text())
    text = caplog.text + "\n".join(bodies)
    assert "mirror/creds" in caplog.text  # the run was logged
    for secret in (PASSWORD, PASSWORD + "-wrong", basic_header().split()[1], TOKEN):
        assert secret not in text

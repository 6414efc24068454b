"""``krill.errortext.error_text``: an aiohttp error in a log line or /ready detail reads
as what happened, not as its constructor's arguments (new-user review, stop 39)."""

from __future__ import annotations

import aiohttp
import pytest

from krill.errortext import error_text


async def test_a_refused_connection_names_the_host_not_the_connection_key() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.get("http://127.0.0.1:1/")
    text = error_text(caught.value)
    assert text.startswith("ClientConnectorError: Cannot connect to host 127.0.0.1:1")
    assert "ConnectionKey" not in text


def test_an_exception_with_no_message_is_its_kind() -> None:
    assert error_text(TimeoutError()) == "TimeoutError"
    assert error_text(OSError(28, "No space left on device")) == (
        "OSError: [Errno 28] No space left on device"
    )

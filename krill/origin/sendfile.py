"""The origin's blob responses send with ``krill.sendfile`` (shared with the agent)."""

from __future__ import annotations

from krill.sendfile import BURST_LIMIT, ThreadedFileResponse, send_burst, send_file_range

__all__ = ["BURST_LIMIT", "ThreadedFileResponse", "send_burst", "send_file_range"]

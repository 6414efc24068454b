"""The tracker's hand-written compact answer is exactly what ``bencode.encode`` makes.

``compact_answer`` writes the bencoded bytes directly (a fifth of the generic
encoder's cost on the announce path), so it must never drift from the
encoder: same key order, same integers, ``peers6`` only when there are any.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from krill import bencode
from krill.tracker.announce import compact_answer

counts = st.integers(0, 2**40)


@settings(max_examples=300, deadline=None)
@given(counts, counts, counts, counts, st.binary(max_size=120), st.binary(max_size=180))
def test_the_compact_answer_is_the_bencoded_dict(
    interval: int, min_interval: int, complete: int, incomplete: int, v4: bytes, v6: bytes
) -> None:
    answer: dict[str, object] = {
        "interval": interval, "min interval": min_interval,
        "complete": complete, "incomplete": incomplete, "peers": v4,
    }  # fmt: skip
    if v6:
        answer["peers6"] = v6
    assert compact_answer(interval, min_interval, complete, incomplete, v4, v6) == (
        bencode.encode(answer)
    )

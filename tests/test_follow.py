"""_follow.later_position: the later of two log positions, by the storage contract's order."""

from __future__ import annotations

import pytest

from omniq_observe._follow import later_position
from omniq_observe.backend.base import Position


@pytest.mark.parametrize(("a", "b", "later"), [
    (None, None, None),
    (None, 7, 7),
    (7, None, 7),
    (7, 12, 12),
    (12, 7, 12),
    ("1700000000000-9", "1700000000000-10", "1700000000000-10"),  # not text order
    ("999-5", "1000-0", "1000-0"),
    ("1000-1", "1000", "1000-1"),  # a stream id without its sequence is sequence 0
    ("5-0", "5-0", "5-0"),
])
def test_later_position(a: Position | None, b: Position | None, later: Position | None) -> None:
    assert later_position(a, b) == later

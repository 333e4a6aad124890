"""Hypothesis fuzzes ``TaskEvent`` construction and the wire form (#16, Proof).

Any input either builds an event whose wire form round-trips byte for byte (through
``decode_event`` and through every storage backend), or raises ``InvalidEventError``;
nothing else is ever raised.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from _server_backends import BACKEND_FACTORIES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniq_observe.backend import BaseEventStorage
from omniq_observe.exceptions import InvalidEventError
from omniq_observe.models.event import (
    MAX_DETAILS_DEPTH,
    EventType,
    TaskEvent,
    decode_event,
    decode_events,
    encode_event,
)


class _Int(int):
    pass


class _Float(float):
    pass


class _Str(str):
    pass


class _Color(enum.IntEnum):
    RED = 1


# Text with and without lone surrogates, whitespace, NUL and astral characters.
any_text = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(blacklist_categories=()), max_size=12),
    st.sampled_from(["", " ", "\n", "\x00", " STARTED", "FAILED\n", "\tdone ", "ß", "\u2028"]),
)
keys = st.one_of(any_text, any_text.map(_Str), st.integers(-3, 3), st.none())
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),  # nan and infinities included: refused
    st.floats(allow_nan=False, allow_infinity=False).map(_Float),
    st.integers(-5, 5).map(_Int),
    any_text,
    any_text.map(_Str),
    st.sampled_from([EventType.FAILED, _Color.RED, -0.0, 1e20, 1.7976931348623157e308, 5e-324]),
    st.binary(max_size=3),  # refused
    st.sets(st.integers(0, 3), max_size=2),  # refused
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(keys, inner, max_size=3),
    ),
    max_leaves=12,
)


def nested(depth: int) -> dict[str, Any]:
    inner: Any = "x"
    for _ in range(depth - 1):
        inner = [inner]
    return {"deep": inner}


details = st.one_of(
    st.dictionaries(keys, values, max_size=4),
    st.integers(MAX_DETAILS_DEPTH - 2, MAX_DETAILS_DEPTH + 2).map(nested),
    values,  # mostly not a mapping: refused
)
offsets = st.builds(
    timezone, st.timedeltas(min_value=-timedelta(hours=23, minutes=59),
                            max_value=timedelta(hours=23, minutes=59))
)
timestamps = st.one_of(
    st.datetimes(),
    st.datetimes(timezones=offsets),
    st.datetimes(max_value=datetime(1, 1, 2), timezones=offsets),
    st.datetimes(min_value=datetime(9999, 12, 30), timezones=offsets),
    st.sampled_from([None, 0, "2024-01-01T00:00:00Z"]),
)
ids = st.one_of(any_text, any_text.map(_Str), st.text(min_size=500, max_size=520), st.none())
event_types = st.one_of(any_text, any_text.map(_Str), st.sampled_from(list(EventType)), st.none())
contexts = st.one_of(st.dictionaries(any_text, any_text, max_size=2), st.just({"k": 1}))


@st.composite
def event_fields(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {"task_id": draw(ids), "event_type": draw(event_types)}
    for name, strategy in (
        ("timestamp", timestamps),
        ("details", details),
        ("event_id", ids),
        ("trace_context", contexts),
    ):
        if draw(st.booleans()):
            fields[name] = draw(strategy)
    return fields


def build(fields: dict[str, Any]) -> TaskEvent | None:
    """The event ``fields`` make, or None when construction refuses them (only ever with
    InvalidEventError: anything else propagates and fails the test)."""
    try:
        return TaskEvent(**fields)
    except InvalidEventError:
        return None


def assert_round_trips(event: TaskEvent) -> bytes:
    wire = encode_event(event)
    back = decode_event(wire)
    assert encode_event(back) == wire
    assert encode_event(TaskEvent(**{f: getattr(back, f) for f in back.__struct_fields__})) == wire
    assert [encode_event(e) for e in decode_events(b"[" + wire + b"]")] == [wire]
    return wire


@settings(max_examples=300, deadline=None)
@given(event_fields())
def test_construction_builds_a_round_tripping_event_or_refuses(fields: dict[str, Any]) -> None:
    event = build(fields)
    if event is not None:
        assert_round_trips(event)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)
WIRE_FIELDS = ["v", "task_id", "event_type", "timestamp", "details", "event_id", "trace_context"]


@st.composite
def wire_forms(draw: st.DrawFn) -> bytes:
    """A valid wire form with fields changed, dropped or added; or any bytes at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=60))
    body: dict[str, Any] = json.loads(
        encode_event(TaskEvent(task_id="t", event_type="X", details={"a": [1]}, event_id="e"))
    )
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*WIRE_FIELDS, "extra"]))
        if draw(st.booleans()):
            body.pop(name, None)
        else:
            body[name] = draw(st.one_of(json_values, any_text, st.sampled_from(
                ["2024-01-01T00:00:00", "2024-01-01T00:00:00+05:00", "0001-01-01T00:00:00+14:00",
                 " STARTED", "started", "", 2, 0])))
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=None)
@given(wire_forms())
def test_decoding_gives_a_valid_event_or_invalid_event_error(data: bytes) -> None:
    try:
        event = decode_event(data)
    except InvalidEventError:
        return
    assert_round_trips(event)  # what decodes is what construction would have made


@pytest.fixture(params=sorted(BACKEND_FACTORIES))
def loop_and_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[asyncio.AbstractEventLoop, BaseEventStorage]]:
    """A backend on a loop of its own, so that hypothesis can drive it from a sync test."""
    loop = asyncio.new_event_loop()
    storage = BACKEND_FACTORIES[request.param](tmp_path)
    try:
        yield loop, storage
    finally:
        loop.run_until_complete(storage.close())
        loop.close()


def test_every_backend_round_trips_every_event_byte_for_byte(
    loop_and_backend: tuple[asyncio.AbstractEventLoop, BaseEventStorage],
) -> None:
    loop, storage = loop_and_backend
    last: list[Any] = [None]
    seen: set[str] = set()  # appends are idempotent by event_id: store each id once

    async def store_and_read(events: list[TaskEvent]) -> list[bytes]:
        await storage.append(events)
        stored = await storage.read_after(last[0], len(events) + 1)
        last[0] = stored[-1].position
        return [encode_event(s.event) for s in stored]

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(event_fields(), min_size=1, max_size=4))
    def round_trip(many: list[dict[str, Any]]) -> None:
        events = []
        for event in map(build, many):
            if event is not None and event.event_id not in seen:
                seen.add(event.event_id)
                events.append(event)
        if not events:
            return
        for event in events:
            assert_round_trips(event)
        assert loop.run_until_complete(store_and_read(events)) == [encode_event(e) for e in events]

    round_trip()

"""Validation at the edge of what the wire form carries (#16 items 6, 7, 8, 11, 12).

Whatever ``TaskEvent`` accepts, ``encode_event``/``decode_event`` carry exactly; whatever
``decode_event`` reads is checked as construction checks it, and every refusal is an
:class:`InvalidEventError` naming the field.
"""

from __future__ import annotations

import collections
import enum
import types
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from omniq_observe.exceptions import InvalidEventError
from omniq_observe.models.event import (
    MAX_DETAILS_DEPTH,
    MAX_ID_LENGTH,
    TaskEvent,
    decode_event,
    decode_events,
    encode_event,
)

UTC = timezone.utc
TS = "2024-01-01T00:00:00Z"


def make(**fields: Any) -> TaskEvent:
    return TaskEvent(**{"task_id": "t", "event_type": "X", **fields})


def round_trips(event: TaskEvent) -> bool:
    wire = encode_event(event)
    return encode_event(decode_event(wire)) == wire and decode_events(b"[" + wire + b"]") == [
        decode_event(wire)
    ]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (" COMPLETED", "COMPLETED"),
        ("COMPLETED ", "COMPLETED"),
        ("FAILED\n", "FAILED"),
        ("\tFAILED", "FAILED"),
        (" Started ", "STARTED"),
        ("\r\n retried \t", "RETRIED"),
        ("\u2028TIMEOUT\u3000", "TIMEOUT"),  # Unicode line separator, ideographic space
        ("cancelled\x0b", "CANCELLED"),
        ("my custom\n", "MY CUSTOM"),  # inner whitespace is kept
    ],
)
def test_every_event_type_is_stripped_of_all_surrounding_whitespace(
    given: str, stored: str
) -> None:
    event = make(event_type=given)
    assert event.event_type == stored
    assert type(event.event_type) is str
    assert decode_event(encode_event(event)).event_type == stored


@pytest.mark.parametrize("blank", ["", " ", "\n", "\t\r\n ", "\u2028\u3000"])
def test_event_type_empty_after_strip_names_the_field(blank: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        make(event_type=blank)
    assert info.value.field == "event_type"
    assert info.value.value == blank
    assert f"event_type must be a non-empty string or EventType, got {blank!r}" == str(info.value)


class _Int(int):
    pass


class _Float(float):
    pass


class _Str(str):
    def __str__(self) -> str:  # a subclass that lies about itself: the plain value is kept
        return "not me"


class _Color(enum.IntEnum):
    RED = 1


class _Flag(enum.IntFlag):
    A = 1
    B = 2


class _Kind(str, enum.Enum):
    BIG = "big"


def test_subclasses_of_plain_values_are_stored_as_their_plain_value() -> None:
    event = make(
        task_id=_Str("task-1"),
        event_type=_Str("started"),
        event_id=_Str("id-1"),
        details={
            "int": _Int(7),
            "float": _Float(2.5),
            "str": _Str("text"),
            "enum": _Color.RED,
            "flag": _Flag.A | _Flag.B,
            "kind": _Kind.BIG,
            _Str("key"): [_Int(1), (_Float(0.5), {"deep": _Str("x")})],
            "mapping": types.MappingProxyType({"k": collections.OrderedDict(a=_Int(1))}),
        },
    )
    assert (event.task_id, event.event_type, event.event_id) == ("task-1", "STARTED", "id-1")
    assert [type(v) for v in (event.task_id, event.event_type, event.event_id)] == [str] * 3
    assert event.details == {
        "int": 7,
        "float": 2.5,
        "str": "text",
        "enum": 1,
        "flag": 3,
        "kind": "big",
        "key": [1, [0.5, {"deep": "x"}]],
        "mapping": {"k": {"a": 1}},
    }
    assert [type(v) for v in event.details.values()][:6] == [int, float, str, int, int, str]
    assert type(event.details["mapping"]["k"]) is dict
    assert round_trips(event)


def test_plain_details_are_kept_as_given() -> None:
    details = {"queue_name": "emails", "nested": {"list": [1, 2.5, None, True]}, "t": (1, 2)}
    event = make(details=details)
    assert event.details is details


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"task_id": "task-\ud800"}, "task_id"),
        ({"event_type": "\udfffSTARTED"}, "event_type"),
        ({"event_id": "id-\udc80"}, "event_id"),
        ({"details": {"error": "bad \ud83d byte"}}, "details['error']"),
        ({"details": {"a": [{"b": "\udcff"}]}}, "details['a'][0]['b']"),
        ({"details": {"key\ud800": 1}}, "details['key\\ud800']"),
        ({"trace_context": {"traceparent": "\ud800"}}, "trace_context"),
    ],
)
def test_lone_surrogates_are_refused_where_they_are(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        make(**fields)
    assert info.value.field == field
    assert field in str(info.value)


def test_task_id_of_512_characters_is_the_limit() -> None:
    assert MAX_ID_LENGTH == 512
    longest = make(task_id="t" * 512, event_id="e" * 512, event_type="X" * 512)
    assert round_trips(longest)
    for field in ("task_id", "event_id", "event_type"):
        with pytest.raises(InvalidEventError) as info:
            make(**{field: "x" * 513})
        assert info.value.field == field
        assert str(info.value) == (
            f"{field} is 513 characters long ({'x' * 40!r}...); the limit is 512"
            if field != "event_type"
            else f"{field} is 513 characters long ({'X' * 40!r}...); the limit is 512"
        )


def nested(depth: int) -> dict[str, Any]:
    """``details`` whose containers nest ``depth`` deep (``details`` itself is 1)."""
    inner: Any = 1
    for level in range(depth - 1):
        inner = [inner] if level % 2 else {"k": inner}
    return {"k": inner} if depth > 1 else {"k": 1}


def test_details_nesting_depth_is_limited() -> None:
    assert MAX_DETAILS_DEPTH == 64
    assert round_trips(make(details=nested(64)))
    with pytest.raises(InvalidEventError) as info:
        make(details=nested(65))
    assert info.value.field.startswith("details['k']")
    assert str(info.value).endswith(
        f"is nested deeper than {MAX_DETAILS_DEPTH} levels; details must be at most that deep"
    )
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    with pytest.raises(InvalidEventError, match="nested deeper than 64"):
        make(details=cycle)


def test_timestamps_not_representable_in_utc_are_refused() -> None:
    for ts in (
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-14))),
    ):
        with pytest.raises(InvalidEventError) as info:
            make(timestamp=ts)
        assert info.value.field == "timestamp"
        assert "is not representable in UTC" in str(info.value)


class _Stamp(datetime):
    pass


def test_datetime_subclass_is_stored_as_a_plain_utc_datetime() -> None:
    event = make(timestamp=_Stamp(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=1))))
    assert type(event.timestamp) is datetime
    assert event.timestamp == datetime(2024, 1, 2, 2, 4, 5, 6, tzinfo=UTC)
    assert round_trips(event)


def wire(**fields: Any) -> bytes:
    import json

    body: dict[str, Any] = {"v": 1, "task_id": "t", "event_type": "X", "timestamp": TS}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not _MISSING}).encode()


_MISSING = object()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (wire(v=_MISSING), "Object missing required field `v`"),
        (wire(v=0), "unknown wire version"),
        (wire(v=2), "Invalid value 2"),
        (wire(event_type=""), "event_type '' is not stripped and upper-case"),
        (wire(event_type="completed"), "event_type 'completed' is not stripped and upper-case"),
        (wire(event_type=" COMPLETED"), "event_type ' COMPLETED' is not stripped"),
        (wire(event_type="FAILED\n"), "event_type 'FAILED\\n' is not stripped"),
        (wire(event_id=""), "event_id must be a non-empty string, got ''"),
        (wire(task_id=""), "task_id must be a non-empty string, got ''"),
        (wire(task_id="x" * 513), "task_id is 513 characters long"),
        (wire(timestamp="2024-01-01T00:00:00"), "timestamp 2024-01-01T00:00:00 is not UTC"),
        (wire(timestamp="2024-01-01T00:00:00+05:00"), "is not UTC"),
        (wire(timestamp="0001-01-01T00:00:00+14:00"), "is not UTC"),
        (wire(details=nested(65)), "is nested deeper than 64 levels"),
        (b'{"v":1,"task_id":"t","event_type":"X","timestamp":"' + TS.encode() + b'",'
         b'"details":{"a":' + b"[" * 3000 + b"]" * 3000 + b"}}", "RecursionError"),
        (wire(details={"a": "\\ud800"}).replace(b"\\\\ud800", b"\\ud800"), "not valid JSON"),
        (b'{"v":1,"task_id":"t","event_type":"X","timestamp":"' + TS.encode() + b'",'
         b'"details":{"n":1e400}}', "Number out of range"),
        (b"null", "Expected `object`, got `null`"),
        (b"", "Input data was truncated"),
    ],
)
def test_decoding_validates_exactly_as_construction(data: bytes, problem: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        decode_event(data)
    assert info.value.field == "wire"
    assert problem in str(info.value)
    with pytest.raises(InvalidEventError):
        decode_events(b"[" + (data or b"{}") + b"]")


@pytest.mark.parametrize("data", [None, 12, 1.5, ["x"], {"v": 1}])
def test_decoding_what_is_not_bytes_raises_invalid_event_error(data: Any) -> None:
    with pytest.raises(InvalidEventError) as info:
        decode_event(data)
    assert info.value.field == "wire"
    assert "not a valid wire form" in str(info.value)
    assert info.value.value == data
    with pytest.raises(InvalidEventError):
        decode_events(data)


def test_a_utc_offset_of_zero_decodes_to_the_same_event() -> None:
    event = decode_event(wire(timestamp="2024-01-01T00:00:00+00:00", event_id="e"))
    assert event == make(timestamp=datetime(2024, 1, 1, tzinfo=UTC), event_id="e")

"""TaskEvent and EventType: construction as in the seed, normalisation, validation, wire form."""

from __future__ import annotations

import json
import socket
import types
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from omniq_observe.exceptions import InvalidEventError, OmniqObserveError
from omniq_observe.models.event import (
    EventType,
    TaskEvent,
    decode_event,
    decode_events,
    encode_event,
    epoch_us,
    new_event_id,
)

UTC = timezone.utc


def test_seed_construction_keeps_every_field() -> None:
    ts = datetime(2024, 5, 1, 12, 30, 45, 123456)  # naive, as datetime.utcnow() gives
    event = TaskEvent(
        task_id="task_abc", event_type="ENQUEUED", timestamp=ts, details={"queue": "default"}
    )
    assert event.task_id == "task_abc"
    assert event.event_type == "ENQUEUED"
    assert event.timestamp == datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)
    assert event.details == {"queue": "default"}
    assert event.queue == "default"


def test_defaults_details_empty_and_timestamp_now() -> None:
    before = datetime.now(UTC)
    event = TaskEvent(task_id="t", event_type="STARTED")
    after = datetime.now(UTC)
    assert event.details == {}
    assert event.trace_context == {}
    assert before <= event.timestamp <= after
    assert event.timestamp.tzinfo is UTC
    other = TaskEvent(task_id="t", event_type="STARTED")
    assert other.details is not event.details  # no shared mutable default


def test_event_ids_are_unique_and_sort_by_creation_time() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == 20_000
    assert ids == sorted(ids)
    events = [TaskEvent(task_id="t", event_type="STARTED") for _ in range(100)]
    assert [e.event_id for e in events] == sorted(e.event_id for e in events)
    assert all(len(i) == 36 and i[14] == "7" for i in ids[:10])  # UUIDv7 layout


def test_given_event_id_is_kept() -> None:
    assert TaskEvent(task_id="t", event_type="X", event_id="my-id").event_id == "my-id"


def test_event_type_is_a_str_enum() -> None:
    assert isinstance(EventType.COMPLETED, str)
    assert EventType.COMPLETED == "COMPLETED"
    assert str(EventType.FAILED) == "FAILED"
    assert [t.value for t in EventType] == [
        "ENQUEUED", "STARTED", "COMPLETED", "FAILED", "RETRIED", "CANCELLED", "TIMEOUT"
    ]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (EventType.COMPLETED, "COMPLETED"),
        ("COMPLETED", "COMPLETED"),
        ("completed", "COMPLETED"),
        (" Started ", "STARTED"),
        ("EXPIRED", "EXPIRED"),
        ("expired", "EXPIRED"),
    ],
)
def test_event_type_takes_enum_or_str_and_is_upper_cased(given: object, stored: str) -> None:
    event = TaskEvent(task_id="t", event_type=given)  # type: ignore[arg-type]
    assert event.event_type == stored
    assert type(event.event_type) is str


def test_naive_timestamp_is_utc_and_aware_is_converted() -> None:
    naive = TaskEvent(task_id="t", event_type="X", timestamp=datetime(2024, 1, 2, 3, 4, 5, 6))
    assert naive.timestamp == datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    aware = TaskEvent(
        task_id="t", event_type="X", timestamp=datetime(2024, 1, 2, 5, 4, 5, 999999, plus_two)
    )
    assert aware.timestamp.tzinfo is UTC
    assert aware.timestamp == datetime(2024, 1, 2, 3, 4, 5, 999999, tzinfo=UTC)
    assert aware.timestamp.microsecond == 999999


def test_timestamp_ns_and_epoch_us_are_exact() -> None:
    event = TaskEvent(
        task_id="t", event_type="X", timestamp=datetime(2038, 1, 19, 3, 14, 8, 654321)
    )
    assert epoch_us(event.timestamp) == 2_147_483_648_654_321
    assert event.timestamp_ns == 2_147_483_648_654_321_000
    old = datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC)
    assert epoch_us(old) == -999_999


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"task_id": ""}, "task_id", ""),
        ({"task_id": None}, "task_id", None),
        ({"task_id": 42}, "task_id", 42),
        ({"event_type": ""}, "event_type", ""),
        ({"event_type": "   "}, "event_type", "   "),
        ({"event_type": None}, "event_type", None),
        ({"event_type": 7}, "event_type", 7),
        ({"timestamp": "2024-01-01T00:00:00"}, "timestamp", "2024-01-01T00:00:00"),
        ({"timestamp": 1700000000.0}, "timestamp", 1700000000.0),
        ({"timestamp": None}, "timestamp", None),
        ({"details": ["a"]}, "details", ["a"]),
        ({"details": "text"}, "details", "text"),
        ({"details": None}, "details", None),
        ({"details": {1: "a"}}, "details[1]", 1),
        ({"details": {"a": {2: "b"}}}, "details['a'][2]", 2),
        ({"event_id": ""}, "event_id", ""),
        ({"trace_context": {"traceparent": 1}}, "trace_context", {"traceparent": 1}),
        ({"trace_context": "00-abc"}, "trace_context", "00-abc"),
    ],
)
def test_invalid_fields_raise_invalid_event_error_naming_field_and_value(
    kwargs: dict[str, object], field: str, value: object
) -> None:
    fields: dict[str, object] = {"task_id": "t", "event_type": "STARTED", **kwargs}
    with pytest.raises(InvalidEventError) as info:
        TaskEvent(**fields)  # type: ignore[arg-type]
    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, OmniqObserveError)
    assert error.field == field
    assert error.value == value
    assert field in str(error)
    assert repr(value) in str(error) or type(value).__name__ in str(error)


def test_unstorable_detail_names_key_path_and_type() -> None:
    with socket.socket() as sock, pytest.raises(InvalidEventError) as info:
        TaskEvent(task_id="t", event_type="COMPLETED", details={"result": sock})
    assert info.value.field == "details['result']"
    assert info.value.value is sock
    assert str(info.value).startswith("details['result'] is a socket (")
    assert str(info.value).endswith("); details must be JSON values")


@pytest.mark.parametrize(
    ("details", "path", "kind"),
    [
        ({"a": [1, {"b": object()}]}, "details['a'][1]['b']", "object"),
        ({"raw": b"bytes"}, "details['raw']", "bytes"),
        ({"when": datetime(2024, 1, 1)}, "details['when']", "datetime"),
        ({"tags": {"x", "y"}}, "details['tags']", "set"),
        ({"t": (1, 2, {3})}, "details['t'][2]", "set"),
    ],
)
def test_nested_unstorable_values_are_rejected(
    details: dict[str, object], path: str, kind: str
) -> None:
    with pytest.raises(InvalidEventError) as info:
        TaskEvent(task_id="t", event_type="X", details=details)
    assert info.value.field == path
    assert f"{path} is a {kind} (" in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_rejected_not_coerced(bad: float) -> None:
    with pytest.raises(InvalidEventError) as info:
        TaskEvent(task_id="t", event_type="TIMEOUT", details={"limits": {"seconds": bad}})
    assert info.value.field == "details['limits']['seconds']"
    assert str(info.value) == (
        f"details['limits']['seconds'] is {bad!r}; details floats must be finite "
        f"(JSON has no {bad!r})"
    )


def test_details_mapping_is_copied_to_a_dict_and_tuples_are_allowed() -> None:
    proxy = types.MappingProxyType({"queue_name": "emails", "pair": (1, 2)})
    event = TaskEvent(task_id="t", event_type="ENQUEUED", details=proxy)  # type: ignore[arg-type]
    assert type(event.details) is dict
    assert event.details == {"queue_name": "emails", "pair": (1, 2)}
    # JSON has arrays, not tuples: the stored form reads back as a list
    assert decode_event(encode_event(event)).details == {"queue_name": "emails", "pair": [1, 2]}


def test_str_enum_detail_values_are_stored_as_their_value() -> None:
    event = TaskEvent(task_id="t", event_type="X", details={"kind": EventType.FAILED})
    assert decode_event(encode_event(event)).details == {"kind": "FAILED"}


RICH_DETAILS: dict[str, object] = {
    "unicode": "héllo wörld ✓ 日本語 🚀",
    "escapes": 'quote " backslash \\ newline \n tab \t nul \x00 bell \x07',
    "nested": {"list": [1, 2.5, None, True, False, {"deep": ["x", {"y": -3}]}], "empty": {}},
    "big": 2**70,
    "negative": -(2**63),
    "small": 0.1,
    "huge": 1e300,
    "tiny": 5e-324,
    "zero": -0.0,
    "none": None,
    "": "empty key",
}


def test_wire_form_is_versioned_json() -> None:
    event = TaskEvent(
        task_id="t1",
        event_type="COMPLETED",
        timestamp=datetime(2024, 1, 2, 3, 4, 5, 678901),
        details={"result": "ok"},
        event_id="id-1",
    )
    data = encode_event(event)
    assert json.loads(data) == {
        "v": 1,
        "task_id": "t1",
        "event_type": "COMPLETED",
        "timestamp": "2024-01-02T03:04:05.678901Z",
        "details": {"result": "ok"},
        "event_id": "id-1",
        "trace_context": {},
    }


def test_wire_round_trip_is_lossless() -> None:
    event = TaskEvent(
        task_id="tâche-✓",
        event_type="custom_type",
        timestamp=datetime(2024, 2, 29, 23, 59, 59, 1),
        details=RICH_DETAILS,
        trace_context={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    )
    back = decode_event(encode_event(event))
    assert back == event
    assert back.details == RICH_DETAILS
    assert back.timestamp.microsecond == 1
    assert str(back.details["zero"]) == "-0.0"
    assert decode_events(b"[" + encode_event(event) + b"," + encode_event(event) + b"]") == [
        event,
        event,
    ]
    assert decode_event(encode_event(event).decode()) == event  # str input too


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"v": 2, "task_id": "t", "event_type": "X", "timestamp": "2024-01-01T00:00:00Z"}',
        b'{"v": 1, "task_id": "", "event_type": "X", "timestamp": "2024-01-01T00:00:00Z"}',
        b'{"v": 1, "task_id": "t", "event_type": "X", "timestamp": "yesterday"}',
    ],
)
def test_decoding_bad_wire_data_raises_invalid_event_error(data: bytes) -> None:
    with pytest.raises(InvalidEventError) as info:
        decode_event(data)
    assert info.value.field == "wire"
    assert info.value.value == data[:200]


def test_decoded_events_are_validated_like_constructed_ones() -> None:
    # decoding skips only the details walk; an empty task_id is still refused
    with pytest.raises(InvalidEventError):
        decode_events(b'[{"v":1,"task_id":"","event_type":"X","timestamp":"2024-01-01T00:00:00Z"}]')


def test_events_compare_by_value_and_are_msgspec_structs() -> None:
    ts = datetime(2024, 1, 1, tzinfo=UTC)
    a = TaskEvent(task_id="t", event_type="X", timestamp=ts, event_id="e")
    b = TaskEvent(task_id="t", event_type="x", timestamp=ts, event_id="e")
    assert a == b
    assert isinstance(a, msgspec.Struct)

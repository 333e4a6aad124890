"""The task lifecycle event: :class:`TaskEvent` and the well-known :class:`EventType` values.

Normalisation and validation rules:

* ``task_id`` must be a non-empty string.
* ``event_type`` is an :class:`EventType` or any non-empty string; it is stripped and
  upper-cased, so ``"completed"`` and ``EventType.COMPLETED`` both become ``"COMPLETED"``
  and a custom type such as ``"expired"`` becomes ``"EXPIRED"``.
* ``timestamp`` must be a ``datetime``: a naive one is taken as UTC (the seed passes
  ``datetime.utcnow()``), an aware one is converted to UTC; the stored value is always an
  aware UTC datetime, microseconds kept. Defaults to now.
* ``details`` must be a mapping with string keys whose values are JSON values: ``str``,
  ``int``, finite ``float``, ``bool``, ``None``, and lists, tuples and string-keyed mappings
  of those. Tuples come back as lists and other mappings as dicts; nothing else is coerced.
  Non-finite floats (``nan``, ``inf``) are **rejected**, not stored as ``null``: JSON cannot
  hold them and a silent ``null`` would lose data. Anything else (a socket, bytes, a
  datetime, a set, ...) is rejected too; the error names the key path and the type.
* ``event_id`` defaults to a new UUIDv7 string: unique, and in this process strictly
  increasing, so ids sort by creation time.

Every invalid field raises :class:`~omniq_observe.exceptions.InvalidEventError` (a
``ValueError``) naming the field and the value.

The wire form is versioned JSON (``{"v": 1, "task_id": ..., ...}``), see
:func:`encode_event` / :func:`decode_event`; a round trip is lossless.
"""

from __future__ import annotations

import enum
import math
import random
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar

import msgspec

from omniq_observe.exceptions import InvalidEventError

__all__ = [
    "FAILED_TYPES",
    "FINAL_TYPES",
    "FINISHED_TYPES",
    "QUEUEING_TYPES",
    "TERMINAL_STATUS",
    "TERMINAL_TYPES",
    "WIRE_VERSION",
    "EventType",
    "TaskEvent",
    "decode_event",
    "decode_events",
    "encode_event",
    "epoch_us",
    "new_event_id",
]

WIRE_VERSION = 1
_T = TypeVar("_T")
_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)


class EventType(str, enum.Enum):
    """The lifecycle event types OmniQ emits. Any other non-empty string is allowed too."""

    ENQUEUED = "ENQUEUED"
    STARTED = "STARTED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    RETRIED = "RETRIED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"

    def __str__(self) -> str:
        return self.value


#: The event types that end one attempt of a task.
TERMINAL_TYPES = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"})
#: The ``status`` an attempt ended by each terminal type gets (RETRIED gives "retried").
TERMINAL_STATUS = {"COMPLETED": "completed", "FAILED": "failed", "TIMEOUT": "timeout",
                   "CANCELLED": "cancelled"}
#: Terminal types after which a task is not retried: its lifecycle is over.
FINAL_TYPES = frozenset({"COMPLETED", "CANCELLED"})
#: Terminal types that count as a failed attempt.
FAILED_TYPES = frozenset({"FAILED", "TIMEOUT"})
#: The attempts the success ratio counts: success = COMPLETED / (COMPLETED + FAILED +
#: TIMEOUT). CANCELLED is left out: a cancellation is the caller's decision.
FINISHED_TYPES = frozenset({"COMPLETED", "FAILED", "TIMEOUT"})
#: Event types that make a task wait in its queue (the wait runs to the next STARTED).
QUEUEING_TYPES = frozenset({"ENQUEUED", "RETRIED"})

_rand = random.getrandbits  # the random module reseeds itself in forked children
_last_stamp = 0  # (milliseconds << 12 | counter) of the last id made in this process


def new_event_id() -> str:
    """Return a new UUIDv7 string: unique, and sortable by creation time.

    The 48-bit millisecond time and a 12-bit counter make ids from one process strictly
    increasing (even within one millisecond, or if the clock steps back); 62 random bits
    keep ids from different processes apart.
    """
    global _last_stamp
    stamp = (time.time_ns() // 1_000_000) << 12
    if stamp <= _last_stamp:
        stamp = _last_stamp + 1
    _last_stamp = stamp
    ms = stamp >> 12
    rand = _rand(62)
    return "%08x-%04x-7%03x-%04x-%012x" % (  # noqa: UP031 - the fastest formatting here
        ms >> 16,
        ms & 0xFFFF,
        stamp & 0xFFF,
        0x8000 | (rand >> 48),
        rand & 0xFFFFFFFFFFFF,
    )


def _utcnow() -> datetime:
    return datetime.now(_UTC)


def _normalize_type(value: Any) -> str:
    if isinstance(value, EventType):
        return value.value
    if not isinstance(value, str) or not value.strip():
        msg = f"event_type must be a non-empty string or EventType, got {value!r}"
        raise InvalidEventError(msg, field="event_type", value=value)
    return value.strip().upper()


def _find_unstorable(value: Any, path: str) -> tuple[str, Any, str] | None:
    """Return (key path, value, problem) of the first value in ``value`` JSON cannot hold."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return None
    if kind is float:
        return None if math.isfinite(value) else (path, value, "not finite")
    if kind is dict or isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return (f"{path}[{key!r}]", key, "key")
            found = _find_unstorable(item, f"{path}[{key!r}]")
            if found is not None:
                return found
        return None
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            found = _find_unstorable(item, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    if isinstance(value, (str, int)) and not isinstance(value, enum.Flag):
        return None  # subclasses such as str enums are stored as their plain value
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value, "not finite")
    return (path, value, "type")


_PLAIN = frozenset({str, int, bool, type(None)})


def _check_details(value: Any) -> dict[str, Any]:
    """Validate that ``details`` is storable; return it as a plain dict."""
    details: dict[str, Any] = value
    if type(value) is not dict:
        if not isinstance(value, Mapping):
            msg = (
                f"details must be a mapping with string keys, got "
                f"{type(value).__name__} {value!r:.200}"
            )
            raise InvalidEventError(msg, field="details", value=value)
        details = dict(value)
    plain = _PLAIN
    for key, item in details.items():  # the common case: flat details of plain values
        if type(key) is not str or type(item) not in plain:
            break
    else:
        return details
    found = _find_unstorable(details, "details")
    if found is None:
        return details
    path, bad, problem = found
    kind = type(bad).__name__
    if problem == "key":
        msg = f"{path}: key {bad!r} is a {kind}; details keys must be strings"
    elif problem == "not finite":
        msg = f"{path} is {bad!r}; details floats must be finite (JSON has no {bad!r})"
    else:
        msg = f"{path} is a {kind} ({bad!r:.100}); details must be JSON values"
    raise InvalidEventError(msg, field=path, value=bad)


# Set while decode_event runs in this thread: stored data was validated when it was made,
# and JSON cannot hold what the details check looks for, so decoding skips that check.
class _DecodingFlag(threading.local):
    active = False  # the class default makes the flag readable in every thread


_decoding = _DecodingFlag()


# gc=False: an event refers only to strings, a datetime and (validated) JSON values, never
# back to itself, so it is never part of a reference cycle; untracked, the pages of events
# a processor decodes no longer trigger and lengthen garbage collections.
class TaskEvent(msgspec.Struct, kw_only=True, tag_field="v", tag=WIRE_VERSION, gc=False):
    """One lifecycle event of one task.

    Args:
        task_id: the task's identifier; a non-empty string.
        event_type: an :class:`EventType` or any non-empty string (upper-cased).
        timestamp: when it happened; naive means UTC. Defaults to now.
        details: JSON-compatible context, e.g. ``{"queue_name": "emails"}``.
        event_id: unique id; a time-sortable UUIDv7 is generated when absent.
        trace_context: W3C ``traceparent``/``tracestate``/``baggage`` of the producer,
            filled in by the logger from the caller's current context.

    Raises:
        InvalidEventError: a field is invalid; the message names the field and the value.
    """

    task_id: str
    event_type: str
    timestamp: datetime = msgspec.field(default_factory=_utcnow)
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    event_id: str = msgspec.field(default_factory=new_event_id)
    trace_context: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        task_id = self.task_id
        if type(task_id) is not str or not task_id:
            if not isinstance(task_id, str) or not task_id:
                msg = f"task_id must be a non-empty string, got {task_id!r}"
                raise InvalidEventError(msg, field="task_id", value=task_id)
            self.task_id = str(task_id)
        if _decoding.active:
            return
        event_type = self.event_type
        if type(event_type) is not str or not event_type.isupper() or event_type[-1] == " ":
            self.event_type = _normalize_type(event_type)
        ts = self.timestamp
        if not isinstance(ts, datetime):
            msg = f"timestamp must be a datetime, got {type(ts).__name__} {ts!r}"
            raise InvalidEventError(msg, field="timestamp", value=ts)
        if ts.tzinfo is None:
            self.timestamp = ts.replace(tzinfo=_UTC)
        elif ts.tzinfo is not _UTC:
            self.timestamp = ts.astimezone(_UTC)
        details = self.details
        if details or type(details) is not dict:
            self.details = _check_details(details)
        event_id = self.event_id
        if type(event_id) is not str or not event_id:
            msg = f"event_id must be a non-empty string, got {event_id!r}"
            raise InvalidEventError(msg, field="event_id", value=event_id)
        context = self.trace_context
        if type(context) is not dict or (
            context and not all(type(k) is str and type(v) is str for k, v in context.items())
        ):
            msg = f"trace_context must be a dict of strings, got {context!r}"
            raise InvalidEventError(msg, field="trace_context", value=context)

    @property
    def timestamp_ns(self) -> int:
        """The timestamp as integer nanoseconds since the epoch (exact to the microsecond)."""
        return epoch_us(self.timestamp) * 1000

    @property
    def queue(self) -> str | None:
        """The queue named in ``details`` (``queue_name``, else ``queue``), if any."""
        details = self.details
        queue = details.get("queue_name")
        if not isinstance(queue, str) or not queue:
            queue = details.get("queue")
        return queue if isinstance(queue, str) and queue else None


def epoch_us(ts: datetime) -> int:
    """Return an aware datetime as integer microseconds since the epoch (exact)."""
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TaskEvent)
_list_decoder = msgspec.json.Decoder(list[TaskEvent])


def encode_event(event: TaskEvent) -> bytes:
    """Encode an event to its versioned JSON wire form (``{"v": 1, ...}``)."""
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> TaskEvent:
    """Decode the JSON wire form back to a :class:`TaskEvent`.

    Raises:
        InvalidEventError: the data is not a valid wire form of a known version.
    """
    return decode_wire(_decoder, data)


def decode_events(array: bytes | str) -> list[TaskEvent]:
    """Decode a JSON array of wire forms (``[{"v": 1, ...}, ...]``) in one call.

    Raises:
        InvalidEventError: an element is not a valid wire form of a known version.
    """
    return decode_wire(_list_decoder, array)


def decode_wire(decoder: msgspec.json.Decoder[_T], data: bytes | str) -> _T:
    """Decode stored JSON that holds wire forms of events (a storage backend's page of
    rows, say) with ``decoder``; the events skip the checks they passed when made.

    Raises:
        InvalidEventError: an event is not a valid wire form of a known version.
    """
    _decoding.active = True
    try:
        return decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _wire_error(exc, data) from exc
    finally:
        _decoding.active = False


def _wire_error(exc: Exception, data: bytes | str) -> InvalidEventError:
    if isinstance(exc, msgspec.ValidationError):
        msg = f"stored event is not a valid wire form (v{WIRE_VERSION}): {exc}"
    else:
        msg = f"stored event is not valid JSON: {exc}"
    return InvalidEventError(msg, field="wire", value=data[:200])

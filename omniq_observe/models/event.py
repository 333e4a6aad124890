"""The task lifecycle event: :class:`TaskEvent` and the well-known :class:`EventType` values.

Normalisation and validation rules:

* ``task_id`` must be a non-empty string of at most ``MAX_ID_LENGTH`` (512) characters.
* ``event_type`` is an :class:`EventType` or any non-empty string; every surrounding
  whitespace character (spaces, tabs, newlines) is stripped and the rest upper-cased, so
  ``"completed"``, ``" COMPLETED"``, ``"COMPLETED\\n"`` and ``EventType.COMPLETED`` all become
  ``"COMPLETED"`` and a custom type such as ``"expired"`` becomes ``"EXPIRED"``. Nothing left
  after the strip is an error; at most 512 characters.
* ``timestamp`` must be a ``datetime``: a naive one is taken as UTC (the seed passes
  ``datetime.utcnow()``), an aware one is converted to UTC; the stored value is always an
  aware UTC datetime, microseconds kept. Defaults to now. A time that does not exist in
  UTC (year 1 at +14:00) is an error.
* ``details`` must be a mapping with string keys whose values are JSON values: ``str``,
  ``int``, finite ``float``, ``bool``, ``None``, and lists, tuples and string-keyed mappings
  of those, nested at most ``MAX_DETAILS_DEPTH`` (64) deep. Subclasses of ``str``, ``int``
  and ``float`` (enums, say) are stored as their plain value, other mappings as dicts;
  tuples come back as lists. Non-finite floats (``nan``, ``inf``) are **rejected**, not
  stored as ``null``: JSON cannot hold them and a silent ``null`` would lose data. Strings
  with a lone surrogate (UTF-8 cannot encode them) and anything else (a socket, bytes, a
  datetime, a set, ...) are rejected too; the error names the key path and the type.
* ``event_id`` defaults to a new UUIDv7 string: unique, and in this process strictly
  increasing, so ids sort by creation time. At most 512 characters.

Every invalid field raises :class:`~omniq_observe.exceptions.InvalidEventError` (a
``ValueError``) naming the field and the value. What construction accepts, the wire form
carries exactly.

The wire form is versioned JSON (``{"v": 1, "task_id": ..., ...}``), see
:func:`encode_event` / :func:`decode_event`; a round trip is lossless. Decoding checks
exactly what construction checks and refuses what construction would have changed (a
missing ``v``, a lower-case or padded ``event_type``, a naive or non-UTC timestamp).
"""

from __future__ import annotations

import enum
import random
import threading
import time
from datetime import datetime, timezone
from typing import Any, TypeVar

import msgspec

from omniq_observe.exceptions import InvalidEventError
from omniq_observe.models._wire_values import (
    MAX_DETAILS_DEPTH,
    MAX_ID_LENGTH,
    check_decoded_details,
    check_text,
    clean_details,
    has_surrogate,
)

__all__ = [
    "FAILED_TYPES",
    "FINAL_TYPES",
    "FINISHED_TYPES",
    "MAX_DETAILS_DEPTH",
    "MAX_ID_LENGTH",
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
    """Return ``value`` stripped of surrounding whitespace and upper-cased.

    Raises:
        InvalidEventError: it is not a string, or nothing is left after the strip.
    """
    if isinstance(value, EventType):
        return value.value
    if isinstance(value, str):
        normalized = str.__str__(value).strip().upper().strip()
        if normalized:
            return check_text(normalized, "event_type")
    msg = f"event_type must be a non-empty string or EventType, got {value!r:.200}"
    raise InvalidEventError(msg, field="event_type", value=value)


def _is_canonical_type(value: str) -> bool:
    """Whether a decoded ``event_type`` is what construction would have made of it."""
    if value and value.isupper() and not value[0].isspace() and not value[-1].isspace():
        return len(value) <= MAX_ID_LENGTH
    try:
        return _normalize_type(value) == value
    except InvalidEventError:
        return False


def _utc_timestamp(value: Any) -> datetime:
    """Return ``ts`` as a plain aware UTC datetime (naive means UTC).

    Raises:
        InvalidEventError: it is not a datetime, or not representable in UTC.
    """
    if not isinstance(value, datetime):
        msg = f"timestamp must be a datetime, got {type(value).__name__} {value!r:.200}"
        raise InvalidEventError(msg, field="timestamp", value=value)
    ts: datetime = value
    if type(ts) is not datetime:  # a subclass (pendulum, pandas): keep the plain value
        ts = datetime(
            ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.microsecond,
            ts.tzinfo, fold=ts.fold,
        )
    try:
        if ts.utcoffset() is None:
            return ts.replace(tzinfo=_UTC)
        return ts.astimezone(_UTC)
    except (OverflowError, ValueError) as exc:
        msg = f"timestamp {ts!r} is not representable in UTC ({exc})"
        raise InvalidEventError(msg, field="timestamp", value=ts) from exc


# Set while decode_event runs in this thread: stored data was validated when it was made,
# and JSON cannot hold what the details check looks for, so decoding skips that check.
class _DecodingFlag(threading.local):
    active = False  # the class default makes the flag readable in every thread


_decoding = _DecodingFlag()
_CONTAINERS = frozenset({dict, list})


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
        if _decoding.active:
            # the cheap test of every decoded event; the full one only when it may fail
            task_id, event_type, event_id = self.task_id, self.event_type, self.event_id
            if (
                not task_id
                or len(task_id) > MAX_ID_LENGTH
                or not event_type.isupper()
                or event_type.strip() is not event_type  # CPython: the same str if unstripped
                or len(event_type) > MAX_ID_LENGTH
                or self.timestamp.tzinfo is not _UTC
                or not event_id
                or len(event_id) > MAX_ID_LENGTH
                or (self.details and not _CONTAINERS.isdisjoint(map(type, self.details.values())))
            ):
                self._check_decoded()
            return
        task_id = self.task_id
        if type(task_id) is not str or not task_id.isascii() or len(task_id) > MAX_ID_LENGTH:
            self.task_id = check_text(task_id, "task_id")
        elif not task_id:
            check_text(task_id, "task_id")
        event_type = self.event_type
        if (
            type(event_type) is not str
            or not event_type.isupper()
            or event_type[0].isspace()
            or event_type[-1].isspace()
            or not event_type.isascii()
            or len(event_type) > MAX_ID_LENGTH
        ):
            self.event_type = _normalize_type(event_type)
        ts = self.timestamp
        if type(ts) is not datetime or ts.tzinfo is not _UTC:
            self.timestamp = _utc_timestamp(ts)
        details = self.details
        if details or type(details) is not dict:
            self.details = clean_details(details)
        event_id = self.event_id
        if type(event_id) is not str or not event_id.isascii() or len(event_id) > MAX_ID_LENGTH:
            self.event_id = check_text(event_id, "event_id")
        elif not event_id:
            check_text(event_id, "event_id")
        context = self.trace_context
        if type(context) is not dict or (
            context
            and not all(
                type(k) is str and type(v) is str and not has_surrogate(k + v)
                for k, v in context.items()
            )
        ):
            msg = f"trace_context must be a dict of strings, got {context!r:.200}"
            raise InvalidEventError(msg, field="trace_context", value=context)

    def _check_decoded(self) -> None:
        """Refuse a decoded event that construction would have refused or changed."""
        if not self.task_id or len(self.task_id) > MAX_ID_LENGTH:
            check_text(self.task_id, "task_id")
        if not _is_canonical_type(self.event_type):
            msg = f"event_type {self.event_type!r:.200} is not stripped and upper-case"
            raise InvalidEventError(msg, field="event_type", value=self.event_type)
        if self.timestamp.tzinfo is not _UTC:
            msg = f"timestamp {self.timestamp.isoformat()} is not UTC"
            raise InvalidEventError(msg, field="timestamp", value=self.timestamp)
        if self.details:
            check_decoded_details(self.details)
        if not self.event_id or len(self.event_id) > MAX_ID_LENGTH:
            check_text(self.event_id, "event_id")

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


class _OtherVersion(msgspec.Struct, tag_field="v", tag=0):
    """Makes ``v`` required: msgspec checks the tag of a union's members only."""


_decoder = msgspec.json.Decoder(TaskEvent | _OtherVersion)
_list_decoder = msgspec.json.Decoder(list[TaskEvent | _OtherVersion])


def encode_event(event: TaskEvent) -> bytes:
    """Encode an event to its versioned JSON wire form (``{"v": 1, ...}``)."""
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> TaskEvent:
    """Decode the JSON wire form back to a :class:`TaskEvent`.

    Raises:
        InvalidEventError: the data is not a valid wire form of a known version.
    """
    event = decode_wire(_decoder, data)
    if type(event) is not TaskEvent:
        error = msgspec.ValidationError(f"unknown wire version, v{WIRE_VERSION} expected")
        raise _wire_error(error, data)
    return event


def decode_events(array: bytes | str) -> list[TaskEvent]:
    """Decode a JSON array of wire forms (``[{"v": 1, ...}, ...]``) in one call.

    Raises:
        InvalidEventError: an element is not a valid wire form of a known version.
    """
    events = decode_wire(_list_decoder, array)
    for event in events:
        if type(event) is not TaskEvent:
            error = msgspec.ValidationError(f"unknown wire version, v{WIRE_VERSION} expected")
            raise _wire_error(error, array)
    return events  # type: ignore[return-value]  # checked just above


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
    except (TypeError, RecursionError, OverflowError, ValueError) as exc:
        # not bytes or str (None, say), nested deeper than the decoder goes, or a date
        # out of range: still an invalid wire form
        raise _wire_error(msgspec.ValidationError(f"{type(exc).__name__}: {exc}"), data) from exc
    finally:
        _decoding.active = False


def _wire_error(exc: Exception, data: bytes | str) -> InvalidEventError:
    if isinstance(exc, msgspec.ValidationError):
        msg = f"stored event is not a valid wire form (v{WIRE_VERSION}): {exc}"
    else:
        msg = f"stored event is not valid JSON: {exc}"
    value = data[:200] if isinstance(data, (bytes, str)) else data
    return InvalidEventError(msg, field="wire", value=value)

"""OTelMetricsHandler: task metrics for any OpenTelemetry MeterProvider.

Instruments (OpenTelemetry messaging semantic conventions, ``messaging.system="omniq"``):

| name | kind | unit | recorded |
|---|---|---|---|
| ``messaging.process.duration`` | histogram | s | once per attempt that ended: STARTED to its end |
| ``messaging.client.consumed.messages`` | counter | {message} | once per STARTED (a delivery) |
| ``omniq.task.queue_wait.duration`` | histogram | s | ENQUEUED (or RETRIED) to STARTED |
| ``omniq.task.events`` | counter | {event} | once per event, by ``omniq.event.type`` |

Attributes: ``messaging.system``, ``messaging.destination.name`` (the queue),
``messaging.operation.name`` (``"process"``; ``"send"`` for ENQUEUED in
``omniq.task.events``), ``error.type`` on failures (FAILED: the error's type; TIMEOUT:
``"timeout"``), and on the duration ``omniq.task.status`` (completed, failed, timeout,
cancelled: the Prometheus ``status`` label's values; an attempt ended by RETRIED is
``failed``, with ``error.type`` from its details or ``"retried"``).

Pairing (durations, queue wait, duplicates, restarts) is the Prometheus handler's: on one
processor both read the same shared :class:`~omniq_observe.pairing.TaskPairing`, so
their counts and sums agree and each event is paired once.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from opentelemetry.metrics import MeterProvider
from opentelemetry.util.types import AttributeValue

from omniq_observe._details import error_type_of, truncate
from omniq_observe._otel import (
    ERROR_TYPE,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_OPERATION_NAME,
    MESSAGING_SYSTEM,
    OMNIQ_EVENT_TYPE,
    OMNIQ_TASK_STATUS,
    SYSTEM,
    get_meter,
)
from omniq_observe._validate import positive_int
from omniq_observe.models.event import TaskEvent
from omniq_observe.pairing import Attempt, Observation, PairedHandler

__all__ = ["DURATION_BUCKETS", "QUEUE_WAIT_BUCKETS", "OTelMetricsHandler"]

#: The semantic conventions' advice for ``messaging.process.duration`` (seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: Queue waits run longer than processing: the same buckets, then up to an hour.
QUEUE_WAIT_BUCKETS = (*DURATION_BUCKETS, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0)

_Attrs = dict[str, AttributeValue]
_MAX_CACHED = 10_000


class OTelMetricsHandler(PairedHandler):
    """Records task metrics on a MeterProvider's instruments; see the module docstring.

    Args:
        meter_provider: the provider to use; the global one when ``None`` (this handler
            never sets a global).
        ttl: seconds (event time) an attempt may stay open before it is given up.
        reorder_window: seconds of event time an event may arrive late and pair exactly.
        max_attribute_length: queue names and error types are cut to this length.

    Raises:
        ConfigurationError: a setting is invalid.
    """

    name = "otel_metrics"

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        *,
        ttl: float = 3600.0,
        reorder_window: float = 10.0,
        max_attribute_length: int = 256,
    ) -> None:
        self.max_attribute_length = positive_int("max_attribute_length", max_attribute_length)
        super().__init__(ttl=ttl, reorder_window=reorder_window)
        meter = get_meter(meter_provider)
        self._duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of processing operation.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Number of messages that were delivered to the application.",
        )
        self._queue_wait = meter.create_histogram(
            "omniq.task.queue_wait.duration",
            unit="s",
            description="Time a task waited in its queue before a worker started it.",
            explicit_bucket_boundaries_advisory=QUEUE_WAIT_BUCKETS,
        )
        self._events = meter.create_counter(
            "omniq.task.events",
            unit="{event}",
            description="Task lifecycle events, by event type.",
        )
        self._base: dict[str, _Attrs] = {}
        self._by_type: dict[tuple[str, str, str], _Attrs] = {}
        self._by_status: dict[tuple[str, str, str], _Attrs] = {}

    def __call__(self, event: TaskEvent) -> Awaitable[None] | None:
        """Record one event; returns an awaitable only when storage must be read."""
        obs = self._pairing.try_observe(event, self)
        if obs is None:
            return self._handle_later(event)
        self._record(obs)
        if obs.released:
            for other in obs.released:
                self._record(other)
        return None

    def handle(self, obs: Observation) -> None:
        """Record one observation."""
        self._record(obs)

    def _record(self, obs: Observation) -> None:
        if obs.duplicate:
            return
        event = obs.event
        kind = event.event_type
        queue = obs.queue
        error_type = ""
        if kind == "FAILED":
            error_type = error_type_of(event.details)
        elif kind == "TIMEOUT":
            error_type = "timeout"
        # Each attribute set is looked up here and built by the _*_attrs method on a miss:
        # this runs for every event.
        counted = obs.counted
        if counted:
            attrs = self._by_type.get((queue, kind, error_type))
            self._events.add(1, attrs or self._event_attrs(queue, kind, error_type))
        wait = obs.queue_wait
        if (counted and kind == "STARTED") or wait is not None:
            base = self._base.get(queue) or self._base_attrs(queue)
            if counted and kind == "STARTED":
                self._consumed.add(1, base)
            if wait is not None:
                self._queue_wait.record(wait, base)
        closed = obs.closed
        if closed is not None and closed.start is not None:
            status = closed.status
            attrs = None
            if status == "completed" or status == "cancelled":
                attrs = self._by_status.get((closed.queue, status, ""))
            self._duration.record(closed.duration, attrs or self._duration_attrs(closed))

    # -- attribute sets, built once per combination ---------------------------------
    def _base_attrs(self, queue: str) -> _Attrs:
        attrs = self._base.get(queue)
        if attrs is None:
            attrs = {
                MESSAGING_SYSTEM: SYSTEM,
                MESSAGING_OPERATION_NAME: "process",
                MESSAGING_DESTINATION_NAME: truncate(queue, self.max_attribute_length),
            }
            self._cache(self._base, queue, attrs)
        return attrs

    def _event_attrs(self, queue: str, kind: str, error_type: str) -> _Attrs:
        key = (queue, kind, error_type)
        attrs = self._by_type.get(key)
        if attrs is None:
            attrs = {
                **self._base_attrs(queue),
                MESSAGING_OPERATION_NAME: "send" if kind == "ENQUEUED" else "process",
                OMNIQ_EVENT_TYPE: truncate(kind, self.max_attribute_length),
            }
            if error_type:
                attrs[ERROR_TYPE] = truncate(error_type, self.max_attribute_length)
            self._cache(self._by_type, key, attrs)
        return attrs

    def _duration_attrs(self, attempt: Attempt) -> _Attrs:
        status = attempt.status
        error_type = ""
        end = attempt.end_event
        if status == "failed" and end is not None:
            error_type = error_type_of(end.details)
        elif status == "timeout":
            error_type = "timeout"
        elif status == "retried" and end is not None:  # ended without success: failed
            given = "error" in end.details or "error_type" in end.details
            error_type = error_type_of(end.details) if given else "retried"
            status = "failed"
        key = (attempt.queue, status, error_type)
        attrs = self._by_status.get(key)
        if attrs is None:
            attrs = {**self._base_attrs(attempt.queue), OMNIQ_TASK_STATUS: status}
            if error_type:
                attrs[ERROR_TYPE] = truncate(error_type, self.max_attribute_length)
            self._cache(self._by_status, key, attrs)
        return attrs

    @staticmethod
    def _cache(table: dict[Any, _Attrs], key: Any, attrs: _Attrs) -> None:
        if len(table) >= _MAX_CACHED:
            table.clear()  # unbounded label values: start over rather than grow
        table[key] = attrs

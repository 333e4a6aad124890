"""Prometheus metrics from task events: :class:`PrometheusHandler`.

Register it on a processor like any handler; it pairs events per task (see
:mod:`omniq_observe.pairing`) and keeps counters, duration and queue-wait histograms and
an in-progress gauge, plus self-metrics of the processor it is attached to. Serve the
registry with :mod:`omniq_observe.exporter`.

Decisions worth knowing (also in the README):

* ``registry=None`` registers on ``prometheus_client.REGISTRY`` when the handler is
  created (never at import), as prometheus_client's own instrumentations do. A second
  handler with the same prefix on the same registry raises ConfigurationError: give it
  its own ``CollectorRegistry`` or another prefix.
* An attempt closed by RETRIED (no terminal event in between) is recorded as a
  ``failed`` duration: the attempt ended without success and its time was spent.
  ``failures_total`` counts FAILED events only (TIMEOUT has its own event type).
* Duplicates (same ``event_id``) count nowhere except
  ``omniq_observe_unpaired_events_total{reason="duplicate"}``.
* Self-metrics are refreshed from ``processor.stats`` when a new batch starts and at every
  scrape of the registry; the lag is ``ProcessorStats.lag_seconds()``: 0 while the
  processor has read everything, else now minus the event time of the last handled event.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from omniq_observe._details import error_type_of
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.handlers._prom_metrics import (
    CAPPED_LABELS,
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_QUEUE_WAIT_BUCKETS,
    KNOWN_EVENT_TYPES,
    OVERFLOW,
    QUEUE_SHAPE,
    SERIES_FAMILIES,
    UNPAIRED_REASONS,
    LabelCap,
    Metrics,
    QueueSeries,
    SeriesCap,
)
from omniq_observe.models.event import TaskEvent
from omniq_observe.pairing import Attempt, Observation, PairedHandler
from omniq_observe.pairing._shared import checked_ttl

__all__ = ["DEFAULT_DURATION_BUCKETS", "DEFAULT_QUEUE_WAIT_BUCKETS", "PrometheusHandler"]


class _Refresh(Collector):
    """Brings the self-metrics up to date just before the registry is collected."""

    def __init__(self, handler: PrometheusHandler) -> None:
        self._handler = handler

    def describe(self) -> Iterable[Any]:
        return ()

    def collect(self) -> Iterable[Any]:
        self._handler.refresh()
        return ()


class PrometheusHandler(PairedHandler):
    """Turns task events into Prometheus metrics (names in docs/reference.md).

    Args:
        registry: where the metrics are registered; ``None``: ``prometheus_client.REGISTRY``.
        prefix: the metric name prefix (``omniq`` gives ``omniq_task_events_total``).
        duration_buckets: histogram bounds of attempt durations, seconds.
        queue_wait_buckets: histogram bounds of queue waits, seconds.
        static_labels: labels added to every series, e.g. ``{"env": "prod"}``.
        max_label_values: the most distinct values any one label takes; more become
            ``__overflow__`` and are counted in ``<prefix>_observe_label_overflow_total``.
        max_series: the most label sets (children) of any one task metric; events that
            would make more are recorded with every label ``__overflow__`` and counted in
            ``<prefix>_observe_label_overflow_total{label="series:<family>"}``.
        ttl: seconds (event time) after which a start that never ended expires.
        reorder_window: seconds of event time an event may arrive late and still pair
            exactly (see :mod:`omniq_observe.pairing`).

    Raises:
        ConfigurationError: a setting is invalid or the metrics are already registered.
    """

    name = "prometheus"

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        prefix: str = "omniq",
        duration_buckets: Iterable[float] = DEFAULT_DURATION_BUCKETS,
        queue_wait_buckets: Iterable[float] = DEFAULT_QUEUE_WAIT_BUCKETS,
        static_labels: Mapping[str, str] | None = None,
        max_label_values: int = 1000,
        *,
        max_series: int = 10_000,
        ttl: float = 3600.0,
        reorder_window: float = 10.0,
    ) -> None:
        for setting, limit in (("max_label_values", max_label_values), ("max_series", max_series)):
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                msg = f"{setting} must be a positive integer, got {limit!r}"
                raise ConfigurationError(msg, setting=setting, value=limit)
        ttl = checked_ttl(ttl)  # before anything is registered
        self.registry = prometheus_client.REGISTRY if registry is None else registry
        self.ttl = ttl
        self._lock = threading.Lock()
        self._refresher = _Refresh(self)
        self.registry.register(self._refresher)  # before the metrics: collected first
        try:
            self.metrics = m = Metrics(
                self.registry, prefix, list(duration_buckets), list(queue_wait_buckets),
                static_labels,
            )
        except BaseException:
            self.registry.unregister(self._refresher)
            raise
        extra = m.static_values
        self._overflow = {label: m.overflow.labels(label, *extra) for label in CAPPED_LABELS}
        self._unpaired = {r: m.unpaired.labels(r, *extra) for r in UNPAIRED_REASONS}
        caps = {
            label: LabelCap(label, max_label_values, child.inc)
            for label, child in self._overflow.items()
        }
        self._queue_cap, self._type_cap = caps["queue"], caps["event_type"]
        self._error_cap, self._processor_cap = caps["error_type"], caps["processor"]
        self._handler_cap = caps["handler"]
        for event_type in KNOWN_EVENT_TYPES:
            self._type_cap.admit(event_type)
        self._series_caps = {
            family: SeriesCap(short, max_series, m.overflow.labels(f"series:{short}", *extra).inc)
            for family, short in SERIES_FAMILIES.items()
        }
        self._all_overflow: dict[str, Any] = {}
        self._series: dict[str, QueueSeries] = {}  # by queue name as the pairing gives it
        super().__init__(ttl=ttl, reorder_window=reorder_window)
        self._processor: Any = None
        self._stats: Any = None
        self._synced_batches = -1
        self._synced_processed = 0
        self._synced_undecodable = 0
        self._undecodable_child: Any = None
        self._synced_errors: dict[str, int] = {}
        self._processed_child: Any = None
        self._lag_child: Any = None
        self._error_children: dict[str, Any] = {}

    # -- the handler contract -----------------------------------------------------------
    def attach(self, processor: Any) -> None:
        """Called by ``register_handler``: recover pairs from the processor's storage and
        export its stats."""
        self._processor = processor
        super().attach(processor)
        self._stats = getattr(processor, "stats", None)
        name = getattr(processor, "name", None)
        if isinstance(name, str):
            label = self._processor_cap.admit(name)
            extra = self.metrics.static_values
            self._processed_child = self.metrics.processed.labels(label, *extra)
            self._lag_child = self.metrics.lag.labels(label, *extra)
            self._undecodable_child = self.metrics.undecodable.labels(label, *extra)
        self.refresh()

    def __call__(self, event: TaskEvent) -> Awaitable[None] | None:
        """Record one event; returns an awaitable only when storage must be read."""
        obs = self._pairing.try_observe(event, self)
        if obs is None:
            return self._handle_later(event)
        self._record(obs)
        if obs.released:
            for other in obs.released:
                self._record(other)
        stats = self._stats
        if stats is not None and stats.batches != self._synced_batches:
            self.refresh()
        return None

    def handle(self, obs: Observation) -> None:
        """Record one observation."""
        self._record(obs)

    def close(self) -> None:
        """Unregister every metric of this handler from its registry."""
        self.metrics.unregister()
        with contextlib.suppress(KeyError):
            self.registry.unregister(self._refresher)

    # -- recording ----------------------------------------------------------------------
    def _record(self, obs: Observation) -> None:
        if obs.duplicate:
            self._unpaired["duplicate"].inc()
            return
        event = obs.event
        series = self._series.get(obs.queue)
        if series is None:
            series = self._new_series(obs.queue)
        kind = event.event_type
        counted = obs.counted
        if counted:
            child = series.events.get(kind)
            if child is None:
                child = self._event_child(series, kind)
            child.inc()
        if obs.waiting:
            series.waiting.inc(obs.waiting)
        if obs.queue_wait is not None:
            series.wait.observe(obs.queue_wait)
        if obs.opened:
            series.in_progress.inc()
        closed = obs.closed
        if closed is not None:
            end, start = closed.end, closed.start
            if closed.queue == obs.queue and end is not None and start is not None:  # _end
                duration = series.duration.get(closed.status)
                if duration is not None:
                    duration.observe(end - start if end > start else 0.0)
                if closed.was_open:
                    series.in_progress.dec()
            else:
                self._end(closed, None)
        if counted and kind == "FAILED":
            self._failure(series, event)
        elif counted and kind == "RETRIED":
            series.retries.inc()
        if obs.unpaired:
            unpaired = self._unpaired
            for reason in obs.unpaired:
                unpaired[reason].inc()
        if obs.expired:
            superseded = kind == "STARTED" and "superseded" in obs.unpaired
            for attempt in obs.expired:
                if superseded and attempt.task_id == event.task_id:
                    self._end(attempt, None)  # counted as superseded above
                    continue
                self._unpaired[attempt.status].inc()
                if attempt.status == "expired":
                    self._end(attempt, None)

    def _end(self, attempt: Attempt, series: QueueSeries | None) -> None:
        """An attempt ended: observe its duration, take it out of in-progress."""
        if series is None:
            series = self._series.get(attempt.queue)
            if series is None:
                series = self._new_series(attempt.queue)
        if attempt.end is not None:
            child = series.duration.get(attempt.status)
            if child is not None:
                child.observe(attempt.duration)
        if attempt.was_open:
            series.in_progress.dec()

    def _failure(self, series: QueueSeries, event: TaskEvent) -> None:
        error_type = error_type_of(event.details)
        child = series.failures.get(error_type)
        if child is None:
            child = self._failure_child(series, error_type)
        child.inc()

    def _failure_child(self, series: QueueSeries, error_type: str) -> Any:
        label = self._error_cap.admit(error_type)
        child = series.failures.get(label)  # (queue, __overflow__) may exist already
        if child is None:
            if not self._series_caps["failures"].take():
                return self._overflow_child("failures")
            child = self.metrics.failures.labels(series.queue, label, *self.metrics.static_values)
            series.failures[label] = child
        return child

    def _new_series(self, queue: str) -> QueueSeries:
        label = self._queue_cap.admit(queue)
        series = self._series.get(label)
        if series is None and label != OVERFLOW and not self._take_queue_room():
            label = OVERFLOW
            series = self._series.get(label)
        if series is None:
            series = self._series[label] = QueueSeries(self.metrics, label)
        if label == queue:
            self._series[queue] = series
        return series

    def _take_queue_room(self) -> bool:
        """Reserve a new queue's label sets in every per-queue family (all or none)."""
        caps = self._series_caps
        for family, n in QUEUE_SHAPE.items():
            if not caps[family].room(n):
                return caps[family].take(n)  # counts the refusal
        for family, n in QUEUE_SHAPE.items():
            caps[family].take(n)
        return True

    def _event_child(self, series: QueueSeries, kind: str) -> Any:
        label = self._type_cap.admit(kind)
        child = series.events.get(label)
        if child is None:
            if not self._series_caps["events"].take():
                return self._overflow_child("events")
            child = self.metrics.events.labels(label, series.queue, *self.metrics.static_values)
            series.events[label] = child
        return child

    def _overflow_child(self, family: str) -> Any:
        """The label set of ``family`` (events or failures: two labels of their own) with
        every label ``__overflow__``."""
        child = self._all_overflow.get(family)
        if child is None:
            metric = getattr(self.metrics, family)
            child = metric.labels(OVERFLOW, OVERFLOW, *self.metrics.static_values)
            self._all_overflow[family] = child
        return child

    # -- self-metrics -------------------------------------------------------------------
    def refresh(self) -> None:
        """Bring the self-metrics up to date from the processor's stats (thread-safe)."""
        stats = self._stats
        if stats is None or not self._lock.acquire(blocking=False):
            return
        try:
            self._synced_batches = stats.batches
            if self._processed_child is not None:
                delta = stats.processed - self._synced_processed
                if delta > 0:
                    self._processed_child.inc(delta)
                    self._synced_processed = stats.processed
                self._lag_child.set(stats.lag_seconds())
                undecodable = getattr(stats, "undecodable", 0)
                if undecodable > self._synced_undecodable:
                    self._undecodable_child.inc(undecodable - self._synced_undecodable)
                    self._synced_undecodable = undecodable
            names = getattr(self._processor, "handler_names", ())
            for name in (*names, *stats.handler_errors):
                child = self._error_children.get(name)
                if child is None:
                    label = self._handler_cap.admit(name)
                    child = self.metrics.handler_errors.labels(
                        label, *self.metrics.static_values
                    )
                    self._error_children[name] = child
                errors = stats.handler_errors.get(name, 0)
                delta = errors - self._synced_errors.get(name, 0)
                if delta > 0:
                    child.inc(delta)
                    self._synced_errors[name] = errors
        finally:
            self._lock.release()

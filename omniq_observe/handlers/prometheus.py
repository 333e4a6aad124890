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
* Self-metrics are read from ``processor.stats`` by a collector at every scrape (in
  multiprocess mode: copied into counters when a new batch starts, and by ``refresh()``);
  the lag is ``ProcessorStats.lag_seconds()``: 0 while the processor has read everything,
  else now minus the event time of the last handled event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry

from omniq_observe._details import error_type_of
from omniq_observe._validate import positive_int
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
from omniq_observe.handlers._prom_processor import ProcessorStatsReader, multiprocess_mode
from omniq_observe.models.event import TaskEvent
from omniq_observe.pairing import Attempt, Observation, PairedHandler

__all__ = ["DEFAULT_DURATION_BUCKETS", "DEFAULT_QUEUE_WAIT_BUCKETS", "PrometheusHandler"]


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
        positive_int("max_label_values", max_label_values)
        positive_int("max_series", max_series)
        super().__init__(ttl=ttl, reorder_window=reorder_window)  # checked before registering
        self.registry = prometheus_client.REGISTRY if registry is None else registry
        self.metrics = m = Metrics(
            self.registry, prefix, list(duration_buckets), list(queue_wait_buckets),
            static_labels,
        )
        self._unpaired = {r: m.unpaired.labels(r, *m.static_values) for r in UNPAIRED_REASONS}
        caps = self._label_caps(max_label_values)
        self._queue_cap, self._type_cap = caps["queue"], caps["event_type"]
        self._error_cap = caps["error_type"]
        self._series_caps = {
            family: SeriesCap(short, max_series,
                              m.overflow.labels(f"series:{short}", *m.static_values).inc)
            for family, short in SERIES_FAMILIES.items()
        }
        self._all_overflow: dict[str, Any] = {}
        self._series: dict[str, QueueSeries] = {}  # by queue name as the pairing gives it
        self._stats_reader = ProcessorStatsReader(caps["processor"].admit, caps["handler"].admit)
        self._copier = m.add_processor_metrics(self._stats_reader, copy=multiprocess_mode())

    def _label_caps(self, max_label_values: int) -> dict[str, LabelCap]:
        """A cap for each capped label, counting refusals in the overflow counter."""
        m = self.metrics
        caps = {
            label: LabelCap(label, max_label_values, m.overflow.labels(label, *m.static_values).inc)
            for label in CAPPED_LABELS
        }
        for event_type in KNOWN_EVENT_TYPES:
            caps["event_type"].admit(event_type)
        return caps

    # -- the handler contract -----------------------------------------------------------
    def attach(self, processor: Any) -> None:
        """Called by ``register_handler``: share the processor's pairing (which recovers
        pairs from its storage) and export the processor's stats."""
        super().attach(processor)
        self._stats_reader.watch(processor)
        self.refresh()

    def refresh(self) -> None:
        """Multiprocess mode: write the processor's self-metrics now, rather than when the
        next batch starts. Outside multiprocess mode a collector reads them at every scrape,
        and this does nothing. Thread-safe."""
        if self._copier is not None:
            self._copier.copy()

    def close(self) -> None:
        """Unregister every metric of this handler from its registry."""
        self.metrics.unregister()

    # -- recording ----------------------------------------------------------------------
    def handle(self, obs: Observation) -> None:
        """Record what one observation says, in its queue's series."""
        copier = self._copier
        if copier is not None and copier.behind():
            copier.copy()
        if obs.duplicate:
            self._unpaired["duplicate"].inc()
            return
        series = self._series.get(obs.queue)
        if series is None:
            series = self._new_series(obs.queue)
        if obs.counted:
            self._count(series, obs.event)
        if obs.waiting:
            series.waiting.inc(obs.waiting)
        if obs.queue_wait is not None:
            series.wait.observe(obs.queue_wait)
        if obs.opened:
            series.in_progress.inc()
        if obs.closed is not None:
            self._end(obs.closed)
        if obs.unpaired:
            for reason in obs.unpaired:
                self._unpaired[reason].inc()
        if obs.expired:
            self._give_up(obs)

    def _count(self, series: QueueSeries, event: TaskEvent) -> None:
        """Count one event, and a failure or a retry."""
        event_type = event.event_type
        child = series.events.get(event_type)
        if child is None:
            child = self._event_child(series, event_type)
        child.inc()
        if event_type == "FAILED":
            self._failure(series, event)
        elif event_type == "RETRIED":
            series.retries.inc()

    def _end(self, attempt: Attempt) -> None:
        """An attempt ended: observe its duration, take it out of in-progress."""
        series = self._series.get(attempt.queue)
        if series is None:
            series = self._new_series(attempt.queue)
        if attempt.end is not None:
            child = series.duration.get(attempt.status)
            if child is not None:
                child.observe(attempt.duration)
        if attempt.was_open:
            series.in_progress.dec()

    def _give_up(self, obs: Observation) -> None:
        """Attempts given up: superseded by this STARTED (counted in ``obs.unpaired``), or
        expired (no end within ``ttl``)."""
        event = obs.event
        superseded = event.event_type == "STARTED" and "superseded" in obs.unpaired
        for attempt in obs.expired:
            if superseded and attempt.task_id == event.task_id:
                self._end(attempt)
                continue
            self._unpaired[attempt.status].inc()
            if attempt.status == "expired":
                self._end(attempt)

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

    def _event_child(self, series: QueueSeries, event_type: str) -> Any:
        label = self._type_cap.admit(event_type)
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

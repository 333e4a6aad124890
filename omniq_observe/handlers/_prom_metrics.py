"""The metric families of :class:`~omniq_observe.handlers.PrometheusHandler`, their label
caps and the per-queue cache of label children."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from omniq_observe.exceptions import ConfigurationError
from omniq_observe.handlers._prom_processor import (
    PROCESSOR_FAMILIES,
    ProcessorStatsCollector,
    ProcessorStatsCopier,
    ProcessorStatsReader,
)
from omniq_observe.models.event import TERMINAL_STATUS, EventType

__all__ = [
    "DEFAULT_DURATION_BUCKETS",
    "DEFAULT_QUEUE_WAIT_BUCKETS",
    "KNOWN_EVENT_TYPES",
    "OVERFLOW",
    "QUEUE_SHAPE",
    "SERIES_FAMILIES",
    "STATUSES",
    "UNPAIRED_REASONS",
    "LabelCap",
    "Metrics",
    "QueueSeries",
    "SeriesCap",
    "check_buckets",
]

#: Attempt durations: 5 ms to 1 h.
DEFAULT_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
)
#: Queue waits: 50 ms to 1 h.
DEFAULT_QUEUE_WAIT_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
)
KNOWN_EVENT_TYPES = tuple(t.value for t in EventType)
STATUSES = tuple(TERMINAL_STATUS.values())
UNPAIRED_REASONS = ("clock_skew", "duplicate", "expired", "late", "no_start", "superseded")
CAPPED_LABELS = ("queue", "event_type", "error_type", "processor", "handler")
OVERFLOW = "__overflow__"
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_PROCESSOR_METRICS = "the processor's self-metrics"
_OWN_LABELS = frozenset(
    {"event_type", "queue", "status", "error_type", "processor", "handler", "reason", "label"}
)


def check_buckets(setting: str, buckets: Iterable[float]) -> tuple[float, ...]:
    """Return ``buckets`` as a sorted tuple of positive finite bounds.

    Raises:
        ConfigurationError: empty, unsorted, or not positive finite numbers.
    """
    try:
        bounds = tuple(float(b) for b in buckets)
    except (TypeError, ValueError):
        msg = f"{setting} must be numbers, got {buckets!r}"
        raise ConfigurationError(msg, setting=setting, value=buckets) from None
    if (
        not bounds
        or any(not (0 < b < float("inf")) for b in bounds)
        or list(bounds) != sorted(set(bounds))
    ):
        msg = f"{setting} must be increasing positive finite bounds, got {buckets!r}"
        raise ConfigurationError(msg, setting=setting, value=buckets)
    return bounds


class LabelCap:
    """Admits at most ``limit`` distinct values of one label; later ones become
    ``__overflow__`` and are counted."""

    __slots__ = ("_admitted", "_count", "label", "limit")

    def __init__(self, label: str, limit: int, count: Callable[[], None]) -> None:
        self.label = label
        self.limit = limit
        self._admitted: set[str] = set()
        self._count = count

    def admit(self, value: str) -> str:
        """Return ``value`` if it is (or can still be) a label value, else ``__overflow__``."""
        admitted = self._admitted
        if value in admitted:
            return value
        if len(admitted) < self.limit:
            admitted.add(value)
            return value
        self._count()
        return OVERFLOW


class SeriesCap:
    """Admits at most ``limit`` label sets (children) of one metric family; a refused one
    is counted, and the caller records into the family's all-``__overflow__`` set."""

    __slots__ = ("_count", "family", "limit", "used")

    def __init__(self, family: str, limit: int, count: Callable[[], None]) -> None:
        self.family = family
        self.limit = limit
        self.used = 0
        self._count = count

    def room(self, n: int = 1) -> bool:
        """True if ``n`` more label sets fit."""
        return self.used + n <= self.limit

    def take(self, n: int = 1) -> bool:
        """Reserve ``n`` new label sets; False (and counted) when they do not fit."""
        if self.used + n > self.limit:
            self._count()
            return False
        self.used += n
        return True


#: The families of one queue's label sets and how many each queue creates.
QUEUE_SHAPE = {
    "events": len(KNOWN_EVENT_TYPES), "duration": len(STATUSES), "queue_wait": 1,
    "in_progress": 1, "retries": 1,
}
#: The capped families (Metrics attribute -> name without prefix, used in the overflow count).
SERIES_FAMILIES = {
    "events": "task_events", "duration": "task_duration_seconds",
    "queue_wait": "task_queue_wait_seconds", "in_progress": "tasks_in_progress",
    "retries": "task_retries", "failures": "task_failures",
}


class QueueSeries:
    """The label children of one queue, created at zero when the queue is first seen."""

    __slots__ = ("duration", "events", "failures", "in_progress", "queue", "retries", "wait",
                 "waiting")

    def __init__(self, metrics: Metrics, queue: str) -> None:
        extra = metrics.static_values
        self.queue = queue
        self.events: dict[str, Any] = {
            t: metrics.events.labels(t, queue, *extra) for t in KNOWN_EVENT_TYPES
        }
        self.duration = {s: metrics.duration.labels(queue, s, *extra) for s in STATUSES}
        self.duration["retried"] = self.duration["failed"]  # a retry ends a failed attempt
        self.wait = metrics.queue_wait.labels(queue, *extra)
        self.in_progress = metrics.in_progress.labels(queue, *extra)
        self.waiting = metrics.waiting.labels(queue, *extra)
        self.retries = metrics.retries.labels(queue, *extra)
        self.failures: dict[str, Any] = {}


class Metrics:
    """Creates and registers the handler's metric families (the processor's self-metrics
    with :meth:`add_processor_metrics`).

    Raises:
        ConfigurationError: the prefix, static labels or buckets are invalid, or metrics
            with this prefix are already registered on ``registry``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        prefix: str,
        duration_buckets: Sequence[float],
        queue_wait_buckets: Sequence[float],
        static_labels: Mapping[str, str] | None,
    ) -> None:
        self.prefix = _checked_prefix(prefix)
        self.static_labels = _checked_static_labels(static_labels)
        self.static_values = tuple(self.static_labels.values())
        self.registry = registry
        self.collectors: list[Any] = []
        durations = check_buckets("duration_buckets", duration_buckets)
        waits = check_buckets("queue_wait_buckets", queue_wait_buckets)
        self._make_task_families(durations, waits)
        self.unpaired = self._make(Counter, "observe_unpaired_events",
                                   "Events that completed no pair, by reason.", ("reason",))
        self.overflow = self._make(Counter, "observe_label_overflow",
                                   "Label values replaced by __overflow__ (max_label_values; "
                                   "label=series:<family> for max_series).", ("label",))

    def _make_task_families(
        self, durations: tuple[float, ...], waits: tuple[float, ...]
    ) -> None:
        make = self._make
        self.events = make(Counter, "task_events", "Task events by type and queue.",
                           ("event_type", "queue"))
        self.duration = make(Histogram, "task_duration_seconds",
                             "Attempt duration: STARTED to its terminal event.",
                             ("queue", "status"), buckets=durations)
        self.queue_wait = make(Histogram, "task_queue_wait_seconds",
                               "Queue wait: ENQUEUED (or RETRIED) to STARTED.", ("queue",),
                               buckets=waits)
        self.in_progress = make(Gauge, "tasks_in_progress", "Attempts started and not ended.",
                                ("queue",), multiprocess_mode="livesum")
        self.waiting = make(Gauge, "tasks_waiting",
                            "Tasks enqueued (or re-enqueued by RETRIED) and not yet started.",
                            ("queue",), multiprocess_mode="livesum")
        self.failures = make(Counter, "task_failures", "FAILED events by error type.",
                             ("queue", "error_type"))
        self.retries = make(Counter, "task_retries", "RETRIED events.", ("queue",))

    def add_processor_metrics(
        self, reader: ProcessorStatsReader, *, copy: bool
    ) -> ProcessorStatsCopier | None:
        """Register the processor's self-metrics, read by ``reader``: a collector, or with
        ``copy`` (multiprocess mode, where a collector's families are not seen) metrics
        of their own and the copier that fills them, which is returned."""
        if not copy:
            self.register(ProcessorStatsCollector(reader, self.prefix, self.static_labels),
                          _PROCESSOR_METRICS)
            return None
        copier = ProcessorStatsCopier(reader, self.static_values)
        self.register(copier, _PROCESSOR_METRICS)  # before the metrics: copies first
        for family in PROCESSOR_FAMILIES:
            if family.metric_type == "counter":
                metric = self._make(Counter, family.name, family.documentation, (family.label,))
            else:
                metric = self._make(Gauge, family.name, family.documentation, (family.label,),
                                    multiprocess_mode=family.multiprocess_mode)
            copier.families[family.key] = metric
        return copier

    def register(self, collector: Any, name: str) -> None:
        """Register ``collector`` (whose families ``name`` stands for) with the metrics."""
        try:
            self.registry.register(collector)
        except ValueError as exc:
            self._refuse(name, exc)
        self.collectors.append(collector)

    def unregister(self) -> None:
        """Remove every metric of this handler from its registry."""
        for collector in self.collectors:
            with contextlib.suppress(KeyError):
                self.registry.unregister(collector)
        self.collectors.clear()

    def _make(
        self, metric_class: Any, name: str, doc: str, labels: tuple[str, ...], **kw: Any
    ) -> Any:
        full_name = f"{self.prefix}_{name}"
        names = (*labels, *self.static_labels)
        try:
            metric = metric_class(full_name, doc, names, registry=self.registry, **kw)
        except ValueError as exc:
            self._refuse(full_name, exc)
        self.collectors.append(metric)
        return metric

    def _refuse(self, name: str, exc: ValueError) -> NoReturn:
        self.unregister()
        msg = f"cannot register {name} on the registry (prefix {self.prefix!r}): {exc}"
        raise ConfigurationError(msg, setting="prefix", value=self.prefix) from exc


def _checked_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not _NAME.match(prefix):
        msg = f"prefix must be a valid Prometheus metric name prefix, got {prefix!r}"
        raise ConfigurationError(msg, setting="prefix", value=prefix)
    return prefix


def _checked_static_labels(static_labels: Mapping[str, str] | None) -> dict[str, str]:
    static = dict(static_labels or {})
    for name, value in static.items():
        if not isinstance(name, str) or not _LABEL.match(name) or name.startswith("__"):
            msg = f"static_labels: {name!r} is not a valid label name"
            raise ConfigurationError(msg, setting="static_labels", value=name)
        if name in _OWN_LABELS:
            msg = f"static_labels: {name!r} is a label the handler sets itself"
            raise ConfigurationError(msg, setting="static_labels", value=name)
        if not isinstance(value, str):
            msg = f"static_labels[{name!r}] must be a string, got {value!r}"
            raise ConfigurationError(msg, setting="static_labels", value=value)
    return static

"""The processor's self-metrics of :class:`~omniq_observe.handlers.PrometheusHandler`,
read from its ``ProcessorStats``.

A :class:`ProcessorStatsCollector` yields them straight from the stats at every scrape,
as prometheus_client's ``gc_collector`` does for the garbage collector. In multiprocess
mode a collector cannot do that: ``MultiProcessCollector`` reads only the values that
metrics wrote to files, so there a :class:`ProcessorStatsCopier` copies the stats into
real counters and a gauge instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import metrics as prometheus_metrics
from prometheus_client import values as prometheus_values
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = [
    "PROCESSOR_FAMILIES",
    "ProcessorFamily",
    "ProcessorStatsCollector",
    "ProcessorStatsCopier",
    "ProcessorStatsReader",
    "multiprocess_mode",
]


@dataclass(frozen=True)
class ProcessorFamily:
    """One self-metric family: its name after the prefix, help text, label and type."""

    key: str
    name: str
    documentation: str
    label: str
    metric_type: str  # "counter" or "gauge"
    multiprocess_mode: str = ""


PROCESSOR_FAMILIES = (
    ProcessorFamily("processed", "observe_events_processed", "Events the processor handled.",
                    "processor", "counter"),
    ProcessorFamily("undecodable", "observe_undecodable_events",
                    "Stored entries that did not decode (dead-lettered, skipped).",
                    "processor", "counter"),
    ProcessorFamily("handler_errors", "observe_handler_errors",
                    "Handler failures (each failed try).", "handler", "counter"),
    ProcessorFamily("lag", "observe_processor_lag_seconds",
                    "Now minus the event time of the last handled event; 0 when caught up.",
                    "processor", "gauge", multiprocess_mode="livemax"),
)

#: Values by family key, then by label value.
Reading = dict[str, dict[str, float]]


def multiprocess_mode() -> bool:
    """True when prometheus_client writes metric values to files (``PROMETHEUS_MULTIPROC_DIR``
    was set when it was imported)."""
    return prometheus_values.ValueClass is not prometheus_values.MutexValue


class ProcessorStatsReader:
    """Reads a processor's stats as the values of the self-metric families.

    Args:
        admit_processor: the label value of a processor name (the handler's label cap:
            a name past it reads as ``__overflow__``, counted once).
        admit_handler: the label value of a handler name, likewise; the values of names
            that share a label value are added up.
    """

    def __init__(
        self, admit_processor: Callable[[str], str], admit_handler: Callable[[str], str]
    ) -> None:
        self._admit_processor = admit_processor
        self._admit_handler = admit_handler
        self._processor: Any = None
        self.stats: Any = None
        self._processor_label: str | None = None
        self._handler_labels: dict[str, str] = {}

    def watch(self, processor: Any) -> None:
        """Read ``processor``'s stats from now on."""
        self._processor = processor
        self.stats = getattr(processor, "stats", None)
        name = getattr(processor, "name", None)
        if isinstance(name, str):
            self._processor_label = self._admit_processor(name)

    def read(self) -> Reading:
        """The current value of every family, by label value (empty before ``watch``)."""
        reading: Reading = {family.key: {} for family in PROCESSOR_FAMILIES}
        stats = self.stats
        if stats is None:
            return reading
        label = self._processor_label
        if label is not None:
            reading["processed"][label] = stats.processed
            reading["undecodable"][label] = getattr(stats, "undecodable", 0)
            reading["lag"][label] = stats.lag_seconds()
        errors = dict(stats.handler_errors)  # a copy: the processor's thread adds to it
        names = dict.fromkeys((*getattr(self._processor, "handler_names", ()), *errors))
        by_handler = reading["handler_errors"]
        for name in names:
            label = self._handler_label(name)
            by_handler[label] = by_handler.get(label, 0) + errors.get(name, 0)
        return reading

    def _handler_label(self, name: str) -> str:
        label = self._handler_labels.get(name)
        if label is None:
            label = self._handler_labels[name] = self._admit_handler(name)
        return label


class ProcessorStatsCollector:
    """Yields the self-metric families straight from the processor's stats.

    Args:
        reader: what reads the stats.
        prefix: the metric name prefix.
        static_labels: the handler's ``static_labels`` (names and values).
    """

    def __init__(
        self, reader: ProcessorStatsReader, prefix: str, static_labels: dict[str, str]
    ) -> None:
        self._reader = reader
        self._prefix = prefix
        self._static_names = tuple(static_labels)
        self._static_values = tuple(static_labels.values())
        self._created: dict[tuple[str, str], float] = {}

    def describe(self) -> Iterable[Metric]:
        """The families without samples: the registry checks their names are free."""
        return [self._family(family) for family in PROCESSOR_FAMILIES]

    def collect(self) -> Iterable[Metric]:
        """The families with the stats' current values."""
        reading = self._reader.read()
        families = []
        for family in PROCESSOR_FAMILIES:
            metric = self._family(family)
            for label, value in reading[family.key].items():
                self._add(metric, family, label, value)
            families.append(metric)
        return families

    def _family(self, family: ProcessorFamily) -> Any:
        metric_class = CounterMetricFamily if family.metric_type == "counter" else GaugeMetricFamily
        return metric_class(f"{self._prefix}_{family.name}", family.documentation,
                    labels=(family.label, *self._static_names))

    def _add(self, metric: Any, family: ProcessorFamily, label: str, value: float) -> None:
        labels = (label, *self._static_values)
        if family.metric_type == "gauge":
            metric.add_metric(labels, value)
            return
        created = None
        if prometheus_metrics._use_created:  # as a Counter child shows ``_created``
            created = self._created.setdefault((family.key, label), time.time())
        metric.add_metric(labels, value, created=created)


class ProcessorStatsCopier:
    """Multiprocess mode: copies the processor's stats into the self-metric counters and
    gauge (which write to files), adding what grew since the last copy.

    It copies when the processor starts a new batch (:meth:`behind`, checked by the
    handler on each event) and when its registry is collected (it is registered before
    the metrics, so collecting copies first).

    Args:
        reader: what reads the stats.
        static_values: the handler's static label values.

    Attributes:
        families: the metric of each family, by ``PROCESSOR_FAMILIES`` key (to be filled
            in once they are registered, after this copier).
    """

    def __init__(self, reader: ProcessorStatsReader, static_values: Sequence[str]) -> None:
        self._reader = reader
        self.families: dict[str, Any] = {}
        self._static_values = tuple(static_values)
        self._lock = threading.Lock()
        self._batches = -1
        self._copied: dict[tuple[str, str], float] = {}
        self._children: dict[tuple[str, str], Any] = {}

    def describe(self) -> Iterable[Metric]:
        """Nothing: the metrics it copies into are registered on their own."""
        return ()

    def collect(self) -> Iterable[Metric]:
        """Copy the stats (the registry is being collected); yields nothing itself."""
        self.copy()
        return ()

    def behind(self) -> bool:
        """True when the processor started a batch since the last copy."""
        stats = self._reader.stats
        return stats is not None and stats.batches != self._batches

    def copy(self) -> None:
        """Bring the metrics up to date with the stats (thread-safe; a copy already
        under way in another thread is enough)."""
        stats = self._reader.stats
        if stats is None or not self._lock.acquire(blocking=False):
            return
        try:
            self._batches = stats.batches
            reading = self._reader.read()
            for family in PROCESSOR_FAMILIES:
                for label, value in reading[family.key].items():
                    self._copy_one(family, label, value)
        finally:
            self._lock.release()

    def _copy_one(self, family: ProcessorFamily, label: str, value: float) -> None:
        key = (family.key, label)
        child = self._children.get(key)
        if child is None:
            metric = self.families[family.key]
            child = self._children[key] = metric.labels(label, *self._static_values)
        if family.metric_type == "gauge":
            child.set(value)
            return
        delta = value - self._copied.get(key, 0)
        if delta > 0:
            child.inc(delta)
            self._copied[key] = value

"""The benchmark harness: each row runs its own code and a raw baseline, interleaved, in the
same run, and reports medians and the ratio. Machines here have 2 noisy cores: medians of
several interleaved repeats, never a single timing."""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Bench", "Growth", "Result", "run_bench"]

# A timed function runs the workload once and returns the seconds its timed part took
# (setup excluded). It is given the number of events to process.
Timed = Callable[[int], float]


@dataclass
class Bench:
    """One table row: ``run`` versus ``baseline`` over ``events`` events.

    ``target_ratio`` / ``target_rate`` are the issue's targets (``None``: no target).
    ``baseline_name`` says what the raw baseline is.
    """

    name: str
    events: int
    run: Timed
    baseline: Timed | None = None
    baseline_name: str = ""
    target_ratio: float | None = None
    target_rate: float | None = None
    repeats: int = 5
    note: str = ""


@dataclass
class Result:
    """Medians of one row."""

    bench: Bench
    rates: list[float] = field(default_factory=list)
    baseline_rates: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def baseline_rate(self) -> float | None:
        return statistics.median(self.baseline_rates) if self.baseline_rates else None

    @property
    def ratio(self) -> float | None:
        base = self.baseline_rate
        return self.rate / base if base else None

    @property
    def ok(self) -> bool:
        b = self.bench
        if b.target_rate is not None and self.rate < b.target_rate:
            return False
        ratio = self.ratio
        return not (b.target_ratio is not None and (ratio is None or ratio < b.target_ratio))


def run_bench(bench: Bench, scale: float = 1.0) -> Result:
    """Run ``bench`` (and its baseline, interleaved) ``repeats`` times; return the rates."""
    events = max(1, int(bench.events * scale))
    result = Result(bench)
    bench.run(max(1, events // 10))  # warm-up
    if bench.baseline is not None:
        bench.baseline(max(1, events // 10))
    for _ in range(bench.repeats):
        gc.collect()  # each side starts without the garbage the other side left
        result.rates.append(events / bench.run(events))
        if bench.baseline is not None:
            gc.collect()
            result.baseline_rates.append(events / bench.baseline(events))
    return result


@dataclass
class Growth:
    """One row of the growth table: a measure at several stored-history sizes.

    ``values`` maps the history size (events) to the measure in ``unit``; ``ok`` is
    whether the issue's ``target`` was met (``None``: no target).
    """

    name: str
    unit: str
    values: dict[int, float] = field(default_factory=dict)
    target: str = "-"
    ok: bool | None = None

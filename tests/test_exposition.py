"""The cached renderer writes exactly what prometheus_client's encoders write."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from test_prometheus_handler import Rig, ev, failing_tasks

from omniq_observe._exposition import CachedEncoder, cached_encoder

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
ENCODERS = {"text": "text/plain;version=0.0.4", "openmetrics": PROMETHEUS_ACCEPT}


class Custom:
    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("omniq_custom_bytes", 'Bytes "held"\nhere.', labels=["k"],
                                   unit="bytes")
        family.add_metric(["a\\b"], 2.5)
        return [family]


def rich_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    events = Counter("omniq_t_events", 'Doc with "quotes", \\ and\nnewline.', ["queue", "kind"],
                     registry=registry)
    events.labels('q"1', "A").inc(3)
    events.labels("q\\2\nz", "ü").inc(1e21)
    events.labels("x", "zz")  # at zero
    Gauge("omniq_t_plain", "A gauge without labels.", registry=registry).set(-0.125)
    signs = Gauge("omniq_t_values", "Values that format differently.", ["k"], registry=registry)
    for key, number in {"neg_zero": -0.0, "zero": 0.0, "int": 42, "big": 1234567.0,
                        "small": 999999.0, "frac": 0.1, "inf": float("inf"),
                        "nan": float("nan"), "neg": -3.0}.items():
        signs.labels(key).set(number)
    hist = Histogram("omniq_t_seconds", "Durations.", ["queue"], buckets=(0.5, 1, 2.5e7),
                     registry=registry)
    hist.labels("a").observe(0.25)
    hist.labels("a").observe(3e7)
    hist.labels("b")
    Histogram("omniq_t_unlabelled_seconds", "Unlabelled.", registry=registry).observe(1)
    Summary("omniq_t_summary", "A summary.", ["q"], registry=registry).labels("s").observe(4)
    Info("omniq_t_build", "Build info.", registry=registry).info({"version": "1.2"})
    Enum("omniq_t_state", "State.", states=["up", "down"], registry=registry).state("down")
    Gauge("omniq_t_empty", "A family with no children yet.", ["x"], registry=registry)
    registry.register(Custom())
    return registry


@pytest.mark.parametrize("fmt", sorted(ENCODERS))
def test_a_rich_registry_renders_byte_for_byte(fmt: str) -> None:
    encoder, _ = choose_encoder(ENCODERS[fmt])
    assert isinstance(cached_encoder(encoder), CachedEncoder)
    rendered: list[str] = []

    def spy(registry: Any) -> bytes:
        rendered.append(type(registry).__name__)
        return encoder(registry)

    cached = CachedEncoder(spy, openmetrics_format=fmt == "openmetrics")
    registry = rich_registry()
    first = cached(registry)
    assert first == encoder(registry)
    assert "CollectorRegistry" not in rendered  # no fall-back: the cached path rendered it
    Counter("omniq_t_later", "Registered after a render.", ["q"], registry=registry).labels(
        "n").inc()
    assert cached(registry) == encoder(registry)  # cached prefixes and new series alike


@pytest.mark.parametrize("fmt", sorted(ENCODERS))
async def test_the_handlers_metrics_render_byte_for_byte(fmt: str) -> None:
    rig = Rig(static_labels={"env": "ci"})
    await rig.run(*failing_tasks(5, 3))
    encoder, _ = choose_encoder(ENCODERS[fmt])
    cached = cached_encoder(encoder)
    assert cached is not None
    assert cached(rig.registry) == encoder(rig.registry)
    await rig.run(ev("t0-0", "RETRIED", 3), ev("t0-0", "STARTED", 4))
    assert cached(rig.registry) == encoder(rig.registry)
    assert b"omniq_task_failures_total{env=\"ci\",error_type=\"E2\",queue=\"q4\"} 1.0" in (
        cached(rig.registry)
    )


def test_unsupported_encoders_and_registries_fall_back() -> None:
    assert cached_encoder(functools.partial(openmetrics.generate_latest,
                                            escaping=openmetrics.ALLOWUTF8)) is None
    encoder = CachedEncoder(generate_latest, openmetrics_format=False)
    registry = rich_registry()
    restricted = registry.restricted_registry(["omniq_t_plain"])
    assert encoder(restricted) == generate_latest(restricted) == (
        b"# HELP omniq_t_plain A gauge without labels.\n# TYPE omniq_t_plain gauge\n"
        b"omniq_t_plain -0.125\n"
    )
    registry.set_target_info({"service": "x"})
    assert encoder(registry) == generate_latest(registry)


def test_exemplars_fall_back_to_the_encoder() -> None:
    registry = CollectorRegistry()
    Counter("omniq_t_ex", "With an exemplar.", registry=registry).inc(1, {"trace_id": "abc"})
    encoder, _ = choose_encoder(PROMETHEUS_ACCEPT)
    cached = cached_encoder(encoder)
    assert cached is not None
    output = cached(registry)
    assert output == encoder(registry)
    assert b'# {trace_id="abc"} 1.0' in output

"""The package's one entry point: ``from omniq_observe import ...`` and ``__version__``."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

import omniq_observe
from omniq_observe import backend, events, exporter, handlers
from omniq_observe.models import event

HOMES = {
    "TaskEvent": event, "EventType": event,
    "AsyncEventLogger": events, "EventLogger": events,
    "AsyncEventProcessor": events, "EventProcessor": events,
    "BaseEventStorage": backend, "MemoryBackend": backend, "SQLiteBackend": backend,
    "RedisBackend": backend, "PostgresBackend": backend, "from_url": backend,
    "PrometheusHandler": handlers, "StructlogHandler": handlers,
    "TracingHandler": handlers, "OTelMetricsHandler": handlers, "OTelLogsHandler": handlers,
    "start_http_server": exporter,
}


def test_all_is_sorted_and_complete() -> None:
    assert omniq_observe.__all__ == sorted(omniq_observe.__all__)
    assert set(omniq_observe.__all__) == {*HOMES, "__version__"}


@pytest.mark.parametrize("name", sorted(HOMES))
def test_each_name_is_the_object_of_its_module(name: str) -> None:
    assert getattr(omniq_observe, name) is getattr(HOMES[name], name)


def test_version_comes_from_the_package_metadata() -> None:
    assert omniq_observe.__version__ == version("omniq-observe")


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="'omniq_observe' has no attribute 'Nope'"):
        omniq_observe.Nope  # noqa: B018


def test_star_import_in_a_fresh_interpreter() -> None:
    code = "from omniq_observe import *; print(TaskEvent.__name__, RedisBackend.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout == "TaskEvent RedisBackend\n"

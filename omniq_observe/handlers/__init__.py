"""Handlers that turn task events into metrics, logs and traces."""

from omniq_observe.handlers.logs import StructlogHandler
from omniq_observe.handlers.otel_logs import OTelLogsHandler
from omniq_observe.handlers.otel_metrics import OTelMetricsHandler
from omniq_observe.handlers.prometheus import PrometheusHandler
from omniq_observe.handlers.tracing import TracingHandler

__all__ = [
    "OTelLogsHandler",
    "OTelMetricsHandler",
    "PrometheusHandler",
    "StructlogHandler",
    "TracingHandler",
]

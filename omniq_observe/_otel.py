"""omniq-observe's OpenTelemetry conventions: attribute names, scopes and the span shapes.

Every OpenTelemetry name the package emits is spelled here once. Stable semantic-convention
names come from ``opentelemetry.semconv``; the messaging conventions are still in
development there (``_incubating``, renamed from one release to the next), so their names
are fixed here at the version :data:`SCHEMA_URL` states. ``omniq.*`` names are our own.
"""

from __future__ import annotations

import functools
import importlib.metadata

from opentelemetry import metrics, trace
from opentelemetry._logs import Logger, LoggerProvider, get_logger_provider
from opentelemetry.context import Context
from opentelemetry.metrics import Meter, MeterProvider
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue

from omniq_observe._details import truncate
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.models.event import TaskEvent

__all__ = [
    "ERROR_TYPE",
    "EXCEPTION_MESSAGE",
    "EXCEPTION_STACKTRACE",
    "EXCEPTION_TYPE",
    "INSTRUMENTATION_NAME",
    "LINK_MODES",
    "MESSAGING_DESTINATION_NAME",
    "MESSAGING_MESSAGE_ID",
    "MESSAGING_OPERATION_NAME",
    "MESSAGING_OPERATION_TYPE",
    "MESSAGING_SYSTEM",
    "OMNIQ_DETAILS_PREFIX",
    "OMNIQ_EVENT_ID",
    "OMNIQ_EVENT_TYPE",
    "OMNIQ_LINK_REASON",
    "OMNIQ_TASK_ATTEMPT",
    "OMNIQ_TASK_ID",
    "OMNIQ_TASK_MAX_ATTEMPTS",
    "OMNIQ_TASK_STATUS",
    "OMNIQ_WORKER_ID",
    "SCHEMA_URL",
    "SYSTEM",
    "check_link_mode",
    "event_name",
    "get_logger",
    "get_meter",
    "get_tracer",
    "process_attributes",
    "start_producer_span",
    "version",
]

INSTRUMENTATION_NAME = "omniq_observe"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"  # messaging.operation.type's first
#: The value of ``messaging.system``.
SYSTEM = "omniq"
LINK_MODES = ("parent", "link")

# Messaging semantic conventions (development status; as of SCHEMA_URL).
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"

# omniq-observe's own attributes.
OMNIQ_TASK_ID = "omniq.task.id"
OMNIQ_TASK_ATTEMPT = "omniq.task.attempt"
OMNIQ_TASK_MAX_ATTEMPTS = "omniq.task.max_attempts"
OMNIQ_TASK_STATUS = "omniq.task.status"
OMNIQ_EVENT_ID = "omniq.event.id"
OMNIQ_EVENT_TYPE = "omniq.event.type"
OMNIQ_WORKER_ID = "omniq.worker.id"
OMNIQ_LINK_REASON = "omniq.link.reason"
#: A primitive details value ``key`` becomes the attribute ``omniq.details.<key>``.
OMNIQ_DETAILS_PREFIX = "omniq.details."


@functools.cache
def version() -> str:
    """The installed omniq-observe version (``"0"`` when not installed): the scopes' version."""
    try:
        return importlib.metadata.version("omniq-observe")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def get_tracer(tracer_provider: TracerProvider | None) -> Tracer:
    """Return omniq-observe's tracer from ``tracer_provider`` (the global one when ``None``)."""
    return trace.get_tracer(INSTRUMENTATION_NAME, version(), tracer_provider, SCHEMA_URL)


def get_meter(meter_provider: MeterProvider | None) -> Meter:
    """Return omniq-observe's meter from ``meter_provider`` (the global one when ``None``)."""
    return metrics.get_meter(INSTRUMENTATION_NAME, version(), meter_provider, SCHEMA_URL)


def get_logger(logger_provider: LoggerProvider | None) -> Logger:
    """Return omniq-observe's OpenTelemetry logger from ``logger_provider`` (the global one
    of ``opentelemetry._logs`` when ``None``; a global set later is still followed)."""
    provider = get_logger_provider() if logger_provider is None else logger_provider
    return provider.get_logger(INSTRUMENTATION_NAME, version(), SCHEMA_URL)


def event_name(event_type: str) -> str:
    """The span-event and log-event name of a task event: ``omniq.task.<type, lower case>``."""
    return f"omniq.task.{event_type.lower()}"


def check_link_mode(link_mode: str) -> str:
    """Return ``link_mode`` if valid.

    Raises:
        ConfigurationError: it is neither ``"parent"`` nor ``"link"``.
    """
    if link_mode not in LINK_MODES:
        msg = f"link_mode must be one of {LINK_MODES}, got {link_mode!r}"
        raise ConfigurationError(msg, setting="link_mode", value=link_mode)
    return link_mode


def process_attributes(
    queue: str, task_id: str, worker_id: str | None, attempt: int | None, limit: int
) -> dict[str, AttributeValue]:
    """The attributes of a ``process <queue>`` span (primitive values, strings cut)."""
    attrs: dict[str, AttributeValue] = {
        MESSAGING_SYSTEM: SYSTEM,
        MESSAGING_OPERATION_TYPE: "process",
        MESSAGING_OPERATION_NAME: "process",
        MESSAGING_DESTINATION_NAME: truncate(queue, limit),
        MESSAGING_MESSAGE_ID: truncate(task_id, limit),
    }
    if worker_id is not None:
        attrs[OMNIQ_WORKER_ID] = truncate(worker_id, limit)
    if attempt is not None and attempt > 0:
        attrs[OMNIQ_TASK_ATTEMPT] = attempt
    return attrs


def start_producer_span(
    tracer: Tracer, event: TaskEvent, queue: str, context: Context, limit: int
) -> Span:
    """Start the ``send <queue>`` PRODUCER span of an ENQUEUED event, at the event's time.

    The caller ends it (``span.end(end_time=event.timestamp_ns)``), after adding what it
    wants on it. Strings are cut to ``limit`` characters.
    """
    name = truncate(queue, limit)
    return tracer.start_span(
        f"send {name}",
        context=context,
        kind=SpanKind.PRODUCER,
        attributes={
            MESSAGING_SYSTEM: SYSTEM,
            MESSAGING_OPERATION_TYPE: "send",
            MESSAGING_OPERATION_NAME: "send",
            MESSAGING_DESTINATION_NAME: name,
            MESSAGING_MESSAGE_ID: truncate(event.task_id, limit),
        },
        start_time=event.timestamp_ns,
    )

"""What a processor has done (:class:`ProcessorStats`), shared by the processor and its
dispatcher."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["ProcessorStats"]


@dataclass
class ProcessorStats:
    """What a processor has done, for self-metrics and health checks.

    ``last_event_timestamp`` is the event time (epoch seconds) of the last event handled;
    ``caught_up`` is True once a read came back short (nothing more to read), and False
    from the start and while full batches come in (a backlog); ``heartbeat`` is the
    ``time.monotonic()`` of the loop's last sign of life; ``undecodable`` counts stored
    entries that did not decode (dead-lettered with their raw bytes, then skipped).
    """

    processed: int = 0
    batches: int = 0
    handler_errors: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
    storage_errors: int = 0
    undecodable: int = 0
    last_event_timestamp: float | None = None
    caught_up: bool = False
    running: bool = False
    heartbeat: float = field(default_factory=time.monotonic)

    def lag_seconds(self, now: float | None = None) -> float:
        """Seconds the processor is behind: 0 when caught up (or before it handled any
        event), else now minus the event time of the last handled event, so a catch-up
        of old events shows as lag until the processor has read everything."""
        if self.caught_up or self.last_event_timestamp is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.last_event_timestamp)

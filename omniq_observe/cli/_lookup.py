"""Turning what a person typed into what storage holds: event types and task id prefixes."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from omniq_observe._summary import EVENT_TYPES
from omniq_observe.backend import BaseEventStorage, Position
from omniq_observe.cli._common import CommandError

__all__ = ["MIN_PREFIX", "check_event_types", "resolve_task", "suggestion"]

#: The shortest task id prefix that ``tail --task`` resolves (``top`` shows 8 characters).
MIN_PREFIX = 6
_LISTED = 10
_PAGE = 5000


def suggestion(value: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'X'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


async def check_event_types(storage: BaseEventStorage, types: Iterable[str]) -> None:
    """Refuse an event type that is neither a standard one nor present in storage.

    Raises:
        CommandError: names the type, lists the valid ones and suggests the closest.
    """
    for event_type in sorted(types):
        if event_type in EVENT_TYPES:
            continue
        page = await storage.query(event_types=[event_type], limit=1)
        if page.events:
            continue  # a custom type that events really have
        msg = (
            f"--type {event_type!r} is not an event type; valid: {', '.join(EVENT_TYPES)}"
            f"{suggestion(event_type, EVENT_TYPES)}"
        )
        raise CommandError(msg)


async def resolve_task(storage: BaseEventStorage, task: str) -> str:
    """The task id ``task`` names: itself when stored, else the one task it is a prefix of.

    A prefix must be at least :data:`MIN_PREFIX` characters long; shorter ones and ids
    with no events are returned unchanged (and match nothing).

    Raises:
        CommandError: the prefix matches several tasks; the message lists them.
    """
    if len(task) < MIN_PREFIX or await storage.task_history(task, limit=1):
        return task
    matches = await _ids_starting_with(storage, task, event_types=["ENQUEUED"])
    if not matches:
        matches = await _ids_starting_with(storage, task, event_types=None)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        return task
    many = len(matches) > _LISTED
    shown = ", ".join(matches[:_LISTED]) + (", ..." if many else "")
    count = f"more than {_LISTED}" if many else str(len(matches))
    msg = f"--task {task!r} matches {count} tasks: {shown}; give more characters"
    raise CommandError(msg)


async def _ids_starting_with(
    storage: BaseEventStorage, prefix: str, event_types: list[str] | None
) -> list[str]:
    """Distinct task ids starting with ``prefix``, in order of first appearance."""
    found: dict[str, None] = {}
    after: Position | None = None
    while len(found) <= _LISTED:
        page = await storage.query(event_types=event_types, limit=_PAGE, after=after)
        for stored in page.events:
            if stored.event.task_id.startswith(prefix):
                found[stored.event.task_id] = None
        if page.next_cursor is None:
            break
        after = page.next_cursor
    return list(found)

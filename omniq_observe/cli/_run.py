"""What the inspection commands share: opening storage, running until a signal, consoles."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone

from rich.console import Console, RenderableType

from omniq_observe.backend import BaseEventStorage, SQLiteBackend, from_url
from omniq_observe.backend._url import safe_url
from omniq_observe.cli._common import CommandError, stdout_is_terminal
from omniq_observe.exceptions import BackendUnavailableError

__all__ = [
    "CONNECT_TIMEOUT",
    "check_reachable",
    "format_age",
    "format_time",
    "make_console",
    "open_storage",
    "print_table",
    "require_existing_store",
    "run_until_signal",
    "safe_url",
]

#: Seconds ``open_storage`` waits for the backend to answer its health check.
CONNECT_TIMEOUT = 10.0


async def check_reachable(storage: BaseEventStorage, url: str, timeout: float) -> None:
    """Fail fast, in one line, when ``storage`` does not answer its health check.

    Raises:
        BackendUnavailableError: no answer within ``timeout`` seconds, or not healthy.
    """
    try:
        health = await asyncio.wait_for(storage.health(), timeout)
    except asyncio.TimeoutError:
        msg = f"storage {safe_url(url)} did not answer within {timeout:g}s"
        raise BackendUnavailableError(msg) from None
    except Exception as exc:
        text = str(exc).strip()
        msg = f"cannot reach storage {safe_url(url)}: {text.splitlines()[0] if text else exc!r}"
        raise BackendUnavailableError(msg) from exc
    if not health.ok:
        detail = health.detail.splitlines()[0] if health.detail else "unavailable"
        msg = f"cannot reach storage {safe_url(url)}: {detail}"
        raise BackendUnavailableError(msg)


def require_existing_store(storage: BaseEventStorage) -> None:
    """Refuse a SQLite file that does not exist, so that reading never creates a store.

    Raises:
        CommandError: the file (or its folder) is missing; the message says what to do.
    """
    if not isinstance(storage, SQLiteBackend) or str(storage.path) == ":memory:":
        return
    path = storage.path
    if path.exists():
        return
    shown = str(path) if path.is_absolute() else f"./{path}"
    hint = "run `omniq-observe demo` or pass --storage / set OMNIQ_OBSERVE_STORAGE"
    folder = path.parent
    if not folder.is_dir():
        msg = f"no event store at {shown}: its folder {folder} does not exist; {hint}"
    else:
        msg = f"no event store at {shown}; {hint}"
    raise CommandError(msg)


@contextlib.asynccontextmanager
async def open_storage(
    url: str, timeout: float = CONNECT_TIMEOUT, *, create: bool = False
) -> AsyncIterator[BaseEventStorage]:
    """Build the backend ``url`` names, check that it answers, close it afterwards.

    Args:
        url: the storage URL.
        timeout: seconds to wait for the backend's health check.
        create: make a SQLite file that does not exist yet (``demo``); read commands
            leave this off and fail instead of creating an empty store.

    Raises:
        InvalidURLError: the URL is malformed or its scheme unsupported.
        CommandError: the SQLite file does not exist and ``create`` is off.
        BackendUnavailableError: the backend does not answer within ``timeout`` seconds.
    """
    storage = from_url(url)
    if not create:
        require_existing_store(storage)
    try:
        await check_reachable(storage, url, timeout)
        yield storage
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(storage.close(), timeout)


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``main(stop)`` in a new event loop; SIGINT and SIGTERM set ``stop``.

    A second signal while stopping interrupts at once (KeyboardInterrupt, exit 130).
    A closed stdout (``| head``) ends the command quietly with exit code 0.
    """

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
            stop.set()

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
                pass
        try:
            return await main(stop)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(runner())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    except BrokenPipeError:
        # The reader went away: stop writing, and keep Python from complaining at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def make_console(*, stderr: bool = False) -> Console:
    """A console that colours only a terminal; piped output is plain and never wrapped."""
    terminal = sys.stderr.isatty() if stderr else stdout_is_terminal()
    if terminal:
        return Console(stderr=stderr, highlight=False)
    return Console(
        stderr=stderr,
        highlight=False,
        color_system=None,
        force_terminal=False,
        width=int(os.environ.get("COLUMNS", "0") or 0) or 200,
        soft_wrap=True,
    )


def format_time(value: datetime | float) -> str:
    """``2025-06-01T12:00:00.123Z``: UTC, milliseconds."""
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, timezone.utc)
    value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def format_age(seconds: float | None) -> str:
    """A short duration: ``850ms``, ``12.3s``, ``4m05s``, ``2h03m``, ``3d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def print_table(console: Console, renderable: RenderableType) -> None:
    """Print a table; on a pipe without the padding rich leaves at line ends."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as capture:
        console.print(renderable)
    lines = capture.get().splitlines()
    console.file.write("".join(line.rstrip() + "\n" for line in lines))

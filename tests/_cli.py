"""Helpers for the CLI tests: run ``omniq-observe`` as a real subprocess or in-process,
fixed events."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from _helpers import IN_CI

from omniq_observe.backend import SQLiteBackend
from omniq_observe.cli import main
from omniq_observe.models.event import TaskEvent


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0,
        **options: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m omniq_observe ARGS``; stdout and stderr are captured (not a tty)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_OBSERVE_")}
    full_env.pop("COLUMNS", None)
    full_env.update(env or {})
    options.setdefault("stdin", subprocess.DEVNULL)
    if "stdout" not in options:
        options["capture_output"] = True
    return subprocess.run(
        [sys.executable, "-m", "omniq_observe", *args],
        text=True, env=full_env, timeout=timeout, **options,
    )


def run_main(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``omniq-observe ARGS`` through ``main(argv)`` in this process, like :func:`cli`.

    For argument and storage errors, which end before any work starts: no interpreter to
    spawn, the same exit code, stdout and stderr.
    """
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith("OMNIQ_OBSERVE_")]:
            patch.delenv(name)
        patch.setenv("COLUMNS", "80")  # argparse wraps help as it would without a terminal
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["omniq-observe", *args], code, out.getvalue(),
                                       err.getvalue())


def popen(*args: str, **options: Any) -> subprocess.Popen[str]:
    """Start ``python -m omniq_observe ARGS`` with piped stdout/stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_OBSERVE_")}
    env["PYTHONUNBUFFERED"] = "1"
    options.setdefault("stdin", subprocess.DEVNULL)
    options.setdefault("stdout", subprocess.PIPE)
    options.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, "-m", "omniq_observe", *args], text=True, env=env, **options
    )


def url(path: Path) -> str:
    """The ``sqlite:///`` URL of an absolute path."""
    return f"sqlite:///{path}"


def base_time() -> datetime:
    """Two minutes ago, on a whole second (so formatted times are exact)."""
    return (datetime.now(timezone.utc) - timedelta(seconds=120)).replace(microsecond=0)


# (task, type, seconds after t0, details): five tasks on two queues, every event type.
FIXTURE: list[tuple[str, str, float, dict[str, Any]]] = [
    ("task-a", "ENQUEUED", 0.0, {"queue_name": "emails"}),
    ("task-a", "STARTED", 1.0, {"worker_id": "worker-1", "attempt": 1}),
    ("task-b", "ENQUEUED", 2.0, {"queue_name": "emails"}),
    ("task-b", "STARTED", 2.5, {"worker_id": "worker-2", "attempt": 1}),
    ("task-a", "COMPLETED", 3.0, {"result": {"sent": True}}),
    ("task-c", "ENQUEUED", 3.0, {"queue_name": "reports"}),
    ("task-d", "ENQUEUED", 4.0, {"queue_name": "reports"}),
    ("task-b", "FAILED", 4.5, {"error": "ValueError: bad address", "error_type": "ValueError",
                               "traceback": "Traceback ...\nValueError: bad address"}),
    ("task-b", "RETRIED", 5.0, {"attempt": 2, "max_attempts": 3}),
    ("task-c", "STARTED", 5.0, {"worker_id": "worker-1", "attempt": 1}),
    ("task-b", "STARTED", 6.0, {"worker_id": "worker-3", "attempt": 2}),
    ("task-d", "CANCELLED", 6.0, {"reason": "user asked"}),
    ("task-b", "COMPLETED", 7.0, {"result": None}),
    ("task-e", "ENQUEUED", 10.0, {"queue_name": "reports"}),
    ("task-e", "STARTED", 11.0, {"worker_id": "worker-2", "attempt": 1}),
    ("task-c", "TIMEOUT", 15.0, {"timeout_seconds": 10}),
]


def fixture_events(t0: datetime) -> list[TaskEvent]:
    """The fixture's events, timestamps from ``t0``."""
    return [
        TaskEvent(task_id=task, event_type=kind, timestamp=t0 + timedelta(seconds=dt),
                  details=dict(details))
        for task, kind, dt, details in FIXTURE
    ]


def store(path: Path, events: list[TaskEvent]) -> None:
    """Append ``events`` to the SQLite file at ``path``."""

    async def write() -> None:
        async with SQLiteBackend(path) as storage:
            await storage.append(events)

    asyncio.run(write())


def require_serve() -> None:
    """Skip until ``omniq_observe.cli.serve.run_server`` exists; under CI=true, fail."""
    try:
        from omniq_observe.cli.serve import run_server  # noqa: F401
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"omniq_observe.cli.serve is missing: {exc}")
        pytest.skip(f"omniq_observe.cli.serve is not written yet: {exc}")

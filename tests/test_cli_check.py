"""``omniq-observe check`` as a subprocess: schema, counts, processor positions and lag."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path

from _cli import base_time, cli, fixture_events, store, url
from _helpers import REDIS_URL, free_port, require_server, wait_until

from omniq_observe.backend import SQLiteBackend


def _fmt(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _commit(path: Path, group: str, position: int) -> None:
    async def commit() -> None:
        async with SQLiteBackend(path) as storage:
            await storage.commit_position(group, position)

    asyncio.run(commit())


def test_check_without_processors(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    t0 = base_time()
    events = fixture_events(t0)
    store(db, events)
    result = cli("check", "--storage", url(db))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        f"storage         {url(db)}",
        f"backend         sqlite ({db})",
        "status          ok",
        "schema version  2",
        f"events          16 (oldest {_fmt(t0)}, newest {_fmt(events[-1].timestamp)})",
        "dead letters    0",
        "processors: none has committed a position yet (run omniq-observe serve)",
    ]


def test_check_shows_each_processor_position_and_lag(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    t0 = base_time()
    events = fixture_events(t0)
    store(db, events)
    _commit(db, "default", 10)
    _commit(db, "caught-up", 16)
    before = time.time()
    result = cli("check", "--storage", url(db), "--json")
    after = time.time()
    report = json.loads(result.stdout)
    assert {k: report[k] for k in ("backend", "ok", "schema_version", "events", "last_position",
                                   "dead_letters")} == {
        "backend": "sqlite", "ok": True, "schema_version": 2, "events": 16, "last_position": 16,
        "dead_letters": 0,
    }
    caught_up, default = report["processors"]
    assert caught_up == {"name": "caught-up", "position": 16, "behind": 0,
                         "behind_capped": False, "lag_seconds": 0.0}
    assert (default["name"], default["position"], default["behind"]) == ("default", 10, 6)
    # lag: the age of the oldest event not handled yet, the 11th (task-b's STARTED, t0+6s).
    oldest_unhandled = events[10].timestamp.timestamp()
    assert before - oldest_unhandled <= default["lag_seconds"] <= after - oldest_unhandled

    text = cli("check", "--storage", url(db)).stdout.splitlines()
    assert text[-4:-1] == [
        "",
        "processor  position  behind    lag",
        "caught-up        16       0      0",
    ]
    # task-b's STARTED is at t0+6s, t0 two minutes ago: the lag reads 1m54s or a bit more.
    assert re.fullmatch(r"default          10       6  1m5\ds", text[-1]), text[-1]


def test_check_over_redis(tmp_path: Path) -> None:
    require_server("redis", "127.0.0.1", 6379)
    storage = f"{REDIS_URL}?prefix=omniq-cli-{uuid.uuid4().hex[:8]}"
    written = json.loads(cli("demo", "--storage", storage, "--tasks", "30", "--seed", "5",
                             "--json").stdout)
    report = json.loads(cli("check", "--storage", storage, "--json").stdout)
    assert (report["backend"], report["events"], report["schema_version"]) == (
        "redis", written["events"], 2,
    )
    assert isinstance(report["last_position"], str)
    tail = cli("tail", "--storage", storage, "--since", "1d", "--json")
    assert len(tail.stdout.splitlines()) == written["events"]


_NOTHING_KEPT = ('Redis keeps nothing on disk (appendonly no, save ""): a restart loses every '
                 "event; set appendonly yes")


def _private_redis(tmp_path: Path, *config: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    tmp_path.mkdir()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(tmp_path), *config], stdout=subprocess.DEVNULL)
    wait_until(lambda: _answers(port) or proc.poll() is not None, timeout=10,
               what="redis-server answering")
    assert proc.poll() is None, "redis-server did not start"
    return proc, f"redis://127.0.0.1:{port}/0"


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16) == b"+PONG\r\n"
    return False


def test_check_warns_when_redis_keeps_nothing_on_disk(tmp_path: Path) -> None:
    bare, bare_url = _private_redis(tmp_path / "bare", "--appendonly", "no", "--save", "")
    kept, kept_url = _private_redis(tmp_path / "kept", "--appendonly", "yes", "--save", "")
    try:
        result = cli("check", "--storage", bare_url)
        assert (result.returncode, result.stderr) == (0, "")
        assert f"warning         {_NOTHING_KEPT}" in result.stdout.splitlines()
        assert json.loads(cli("check", "--storage", bare_url, "--json").stdout)["warnings"] == [
            _NOTHING_KEPT]
        assert json.loads(cli("check", "--storage", kept_url, "--json").stdout)["warnings"] == []
    finally:
        for proc in (bare, kept):
            proc.terminate()
            proc.wait(timeout=10)

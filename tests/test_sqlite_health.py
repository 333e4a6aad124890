"""SQLite health on a damaged file, ``check --integrity``, and failed opens."""

from __future__ import annotations

import gc
import os
import sqlite3
from pathlib import Path

import pytest
from _cli import cli, url

from omniq_observe.backend import SQLiteBackend
from omniq_observe.exceptions import StorageError
from omniq_observe.models.event import TaskEvent


async def _damaged(path: Path) -> None:
    """3,000 events, then the second half of the file overwritten with garbage."""
    async with SQLiteBackend(path) as backend:
        await backend.append([
            TaskEvent(task_id=f"t{i}", event_type="STARTED", details={"pad": "x" * 200})
            for i in range(3000)
        ])
    _overwrite_second_half(path)


def _overwrite_second_half(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 2)
        f.write(b"\xa5" * (size - size // 2))


async def test_health_is_not_ok_on_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    await _damaged(path)
    backend = SQLiteBackend(path)
    try:
        health = await backend.health()
        assert (health.ok, health.backend) == (False, "sqlite")
        assert "database disk image is malformed" in health.detail
        with pytest.raises(StorageError, match="malformed"):
            await backend.count()
        problems = await backend.integrity_problems()
        assert problems[0] == "*** in database main ***"
        assert any("btreeInitPage() returns error code 11" in p for p in problems[1:])
    finally:
        await backend.close()


async def test_health_is_ok_and_integrity_clean_on_a_sound_file(tmp_path: Path) -> None:
    async with SQLiteBackend(tmp_path / "sound.db") as backend:
        await backend.append([TaskEvent(task_id="t", event_type="STARTED")])
        health = await backend.health()
        assert (health.ok, health.detail, health.schema_version) == (
            True, str(tmp_path / "sound.db"), 2
        )
        assert await backend.integrity_problems() == []


async def test_check_integrity_reports_damage_with_exit_code_1(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    await _damaged(path)
    result = cli("check", "--integrity", "--storage", url(path))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("integrity: ")
    assert lines[0].endswith(" problem(s) found by PRAGMA quick_check:")
    assert int(lines[0].split()[1]) == len(lines) - 1
    assert lines[1] == "  *** in database main ***"
    # Without --integrity, check refuses the damaged file as unhealthy (exit 2).
    plain = cli("check", "--storage", url(path))
    assert plain.returncode == 2
    assert "database disk image is malformed" in plain.stderr


def test_check_integrity_ok_on_a_sound_file(tmp_path: Path) -> None:
    path = tmp_path / "sound.db"
    missing = cli("check", "--integrity", "--storage", url(path))
    assert missing.returncode == 2
    assert "no event store at" in missing.stderr
    assert not path.exists()  # checking never creates a store
    backend = SQLiteBackend(path)
    backend.append_blocking([TaskEvent(task_id="t", event_type="STARTED")])
    backend.close_blocking()
    result = cli("check", "--integrity", "--storage", url(path))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0] == "integrity: ok (PRAGMA quick_check)"
    as_json = cli("check", "--integrity", "--json", "--storage", url(path))
    assert as_json.returncode == 0
    assert '"integrity": "ok"' in as_json.stdout


def _open_fds_to(path: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


async def test_a_failed_open_closes_its_connection_at_once(tmp_path: Path) -> None:
    path = tmp_path / "not-a-database.db"
    path.write_bytes(b"this is not an SQLite file at all" * 200)
    backend = SQLiteBackend(path)
    gc.disable()
    try:
        with pytest.raises(StorageError) as info:
            await backend.append([TaskEvent(task_id="t", event_type="STARTED")])
        assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
        assert "file is not a database" in str(info.value)
        # The exception (and its traceback's frames) are still alive, and the garbage
        # collector is off: only an explicit close can have released the file.
        assert _open_fds_to(path) == []
        assert (await backend.health()).ok is False
        assert _open_fds_to(path) == []
    finally:
        gc.enable()
        await backend.close()

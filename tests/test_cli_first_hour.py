"""The first hour of a new user, through real subprocesses: Ctrl-C, read commands that
never create a store, typos, task id prefixes, bind errors, an unreachable PostgreSQL,
a quiet `serve`, --help, and a demo that looks healthy (issue "First hour")."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from _cli import base_time, cli, fixture_events, popen, store, url
from _helpers import free_port, wait_until

from omniq_observe.cli._main import build_parser
from omniq_observe.models.event import TaskEvent

HINT = "run `omniq-observe demo` or pass --storage / set OMNIQ_OBSERVE_STORAGE"
READ_COMMANDS = {
    "tail": [], "top": ["--once"], "stats": [], "check": [],
    "prune": ["--older-than", "7d", "--yes"],
}


def _stored(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM omniq_events").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


# 1. Ctrl-C while demo writes its history


def test_ctrl_c_stops_demo_history_reports_and_exits_130(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    proc = popen("demo", "--tasks", "300000", "--seed", "3", "--json", "--storage", url(db))
    try:
        wait_until(lambda: db.exists() and _stored(db) > 0, timeout=60, what="first writes")
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, err) == (130, "")
    report = json.loads(out)
    assert report["interrupted"] is True
    assert report["events"] == _stored(db)  # the report is exactly what was written
    assert 0 < report["tasks"] < 300000
    assert report["tasks"] == report["by_type"]["ENQUEUED"]
    # Half a second to stop writing; the rest is the interpreter's own exit on a busy box.
    assert took < 3.0, f"demo took {took:.2f}s to stop after SIGINT"


# 2. Read commands never create a store


@pytest.mark.parametrize("command", sorted(READ_COMMANDS))
def test_read_command_in_an_empty_folder_creates_nothing(command: str, tmp_path: Path) -> None:
    result = cli(command, *READ_COMMANDS[command], cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"omniq-observe {command}: error: no event store at ./omniq-events.db; {HINT}\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["stats", "tail"])
def test_a_missing_parent_folder_is_named(command: str, tmp_path: Path) -> None:
    db = tmp_path / "no-such-folder" / "events.db"
    result = cli(command, "--storage", url(db))
    assert result.returncode == 2
    assert result.stderr == (
        f"omniq-observe {command}: error: no event store at {db}: its folder "
        f"{db.parent} does not exist; {HINT}\n"
    )
    assert not db.parent.exists()


# 3. Typos


def test_tail_type_typo_lists_the_types_and_suggests(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store(db, fixture_events(base_time()))
    result = cli("tail", "--type", "faild", "--storage", url(db))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "omniq-observe tail: error: --type 'FAILD' is not an event type; valid: ENQUEUED, "
        "STARTED, COMPLETED, FAILED, RETRIED, CANCELLED, TIMEOUT; did you mean FAILED?\n"
    )


def test_tail_type_accepts_a_custom_type_that_events_have(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store(db, [TaskEvent(task_id="t-custom", event_type="EXPIRED")])
    result = cli("tail", "--type", "expired", "--storage", url(db))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.split()[1:4] == ["EXPIRED", "unknown", "t-custom"]


def test_tail_unknown_queue_notes_the_queues_seen(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store(db, fixture_events(base_time()))
    result = cli("tail", "--queue", "email", "--storage", url(db))
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == "note: no events on queue 'email'; queues seen: emails, reports\n"
    known = cli("tail", "--queue", "emails", "--storage", url(db))
    assert (known.returncode, known.stderr) == (0, "")
    assert len(known.stdout.splitlines()) == 9  # task-a 3, task-b 6


def test_a_command_typo_suggests_the_command() -> None:
    result = cli("stat")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.endswith("; did you mean 'stats'?\n")
    assert result.stderr.startswith("omniq-observe: error: argument COMMAND: invalid choice: "
                                    "'stat'")


# 4. tail --task takes what top shows


def test_tail_task_resolves_a_unique_prefix_and_refuses_an_ambiguous_one(
    tmp_path: Path,
) -> None:
    db = tmp_path / "events.db"
    t0 = base_time()
    store(db, [
        TaskEvent(task_id="6855dabc-1111", event_type="ENQUEUED", timestamp=t0,
                  details={"queue_name": "emails"}),
        TaskEvent(task_id="6855dabc-1111", event_type="STARTED", timestamp=t0),
        TaskEvent(task_id="6855dacd-2222", event_type="ENQUEUED", timestamp=t0,
                  details={"queue_name": "emails"}),
        TaskEvent(task_id="6855dacd-3333", event_type="ENQUEUED", timestamp=t0,
                  details={"queue_name": "emails"}),
    ])
    unique = cli("tail", "--task", "6855dabc", "--storage", url(db))
    assert (unique.returncode, unique.stderr) == (0, "")
    assert [line.split()[1:4] for line in unique.stdout.splitlines()] == [
        ["ENQUEUED", "emails", "6855dabc-1111"], ["STARTED", "emails", "6855dabc-1111"],
    ]
    ambiguous = cli("tail", "--task", "6855da", "--storage", url(db))
    assert (ambiguous.returncode, ambiguous.stdout) == (2, "")
    assert ambiguous.stderr == (
        "omniq-observe tail: error: --task '6855da' matches 3 tasks: 6855dabc-1111, "
        "6855dacd-2222, 6855dacd-3333; give more characters\n"
    )
    short = cli("tail", "--task", "6855d", "--storage", url(db))  # under 6: no lookup
    assert (short.returncode, short.stdout, short.stderr) == (0, "", "")


# 5. serve bind errors name the address


def test_serve_on_a_busy_port_names_the_address(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store(db, [])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("serve", "--storage", url(db), "--port", str(port))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"omniq-observe serve: error: cannot serve on 127.0.0.1:{port}: address already in "
        "use; pick another --port\n"
    )


def test_serve_on_an_address_of_another_machine(tmp_path: Path) -> None:
    result = cli("serve", "--storage", url(tmp_path / "e.db"), "--host", "192.0.2.1",
                 "--port", "9464")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "omniq-observe serve: error: cannot serve on 192.0.2.1:9464: cannot assign the "
        "address (it is not one of this machine's); pick another --host\n"
    )


def test_serve_on_a_privileged_port_without_the_privilege(tmp_path: Path) -> None:
    command = ["serve", "--storage", url(tmp_path / "e.db"), "--port", "81"]
    if os.geteuid() == 0:  # root may bind port 81: drop that one capability for real
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop CAP_NET_BIND_SERVICE")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_OBSERVE_")}
        result = subprocess.run(
            ["setpriv", "--bounding-set=-net_bind_service", os.sys.executable,
             "-m", "omniq_observe", *command],
            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
        )
    else:
        result = cli(*command)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "omniq-observe serve: error: cannot serve on 127.0.0.1:81: permission denied (ports "
        "below 1024 need privileges); pick another --port\n"
    )


# 6. An unreachable PostgreSQL: one line, fast


@pytest.mark.parametrize("command", ["check", "stats"])
def test_unreachable_postgresql_is_one_line_within_connect_timeout(command: str) -> None:
    port = free_port()
    target = f"postgresql://postgres@127.0.0.1:{port}/test"
    started = time.monotonic()
    result = cli(command, "--storage", target)
    took = time.monotonic() - started
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        f"omniq-observe {command}: error: cannot reach storage {target}: PostgreSQL at "
        f"{target} unreachable: connection failed:"
    )
    assert took < 5.0  # the default connect_timeout; connection refused needs no wait


# 7. serve logs its lifecycle, not every event


def _serve_log(db: Path, name: str, *flags: str) -> list[dict[str, object]]:
    port = free_port()
    proc = popen("serve", "--storage", url(db), "--port", str(port), "--log-format", "json",
                 "--name", name, *flags)
    try:
        def caught_up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                return False
            return f'omniq_observe_events_processed_total{{processor="{name}"}} 16.0' in text

        wait_until(caught_up, timeout=60, what="serve to process the 16 events")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, err) == (0, "")
    return [json.loads(line) for line in out.splitlines()]


def test_serve_logs_only_its_lifecycle_by_default(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store(db, fixture_events(base_time()))
    quiet = _serve_log(db, "quiet")
    assert [line["event"] for line in quiet] == ["omniq.serve_started", "omniq.serve_stopped"]
    loud = _serve_log(db, "loud", "--log-events")
    assert [line["event"] for line in loud][1:-1] == [
        f"task.{e.event_type.lower()}" for e in fixture_events(base_time())
    ]
    debug = _serve_log(db, "debug", "--log-level", "debug")
    assert len([line for line in debug if str(line["event"]).startswith("task.")]) == 16


# 9. --help: plain text, every default, examples


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no commands")


@pytest.mark.parametrize("command", ["serve", "demo", "tail", "top", "stats", "prune", "check"])
def test_help_is_plain_text_with_examples_and_every_default(command: str) -> None:
    result = cli(command, "--help")
    assert (result.returncode, result.stderr) == (0, "")
    assert "``" not in result.stdout
    assert f"examples:\n  omniq-observe {command}" in result.stdout
    for action in _subparsers()[command]._actions:
        if action.dest in ("help", "debug") or action.required:
            continue
        assert "default" in (action.help or ""), f"{command} {action.option_strings}"


# 11. A healthy demo, an incident on request, and a store that already holds a demo


def _failure_ratios(report: dict[str, object]) -> dict[str, float]:
    ratios = {}
    for queue, counts in report["by_queue"].items():  # type: ignore[attr-defined]
        failed = counts["FAILED"] + counts["TIMEOUT"]
        ratios[queue] = failed / (failed + counts["COMPLETED"])
    return ratios


def test_demo_is_healthy_by_default_and_incident_breaks_one_queue(tmp_path: Path) -> None:
    healthy = json.loads(cli("demo", "--tasks", "3000", "--seed", "5", "--json",
                             "--storage", url(tmp_path / "a.db")).stdout)
    ratios = _failure_ratios(healthy)
    assert sorted(ratios) == ["emails", "images", "payments", "reports"]
    assert max(ratios.values()) < 0.07  # the alert fires above 0.10
    incident = json.loads(cli("demo", "--tasks", "3000", "--seed", "5", "--json", "--incident",
                              "--storage", url(tmp_path / "b.db")).stdout)
    ratios = _failure_ratios(incident)
    assert ratios["payments"] > 0.25  # 60 % of attempts from halfway through
    assert max(r for q, r in ratios.items() if q != "payments") < 0.07


def test_demo_on_a_store_with_demo_history_asks_for_append_or_fresh(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    first = json.loads(cli("demo", "--tasks", "20", "--seed", "1", "--json",
                           "--storage", url(db)).stdout)
    again = cli("demo", "--tasks", "20", "--storage", url(db))
    assert (again.returncode, again.stdout) == (2, "")
    assert again.stderr == (
        f"omniq-observe demo: error: {url(db)} already holds {first['events']} events, from "
        "an earlier demo; pass --append to add to them, or --fresh to start a new file\n"
    )
    assert _stored(db) == first["events"]
    added = json.loads(cli("demo", "--tasks", "20", "--seed", "2", "--json", "--append",
                           "--storage", url(db)).stdout)
    assert _stored(db) == first["events"] + added["events"]
    fresh = json.loads(cli("demo", "--tasks", "20", "--seed", "3", "--json", "--fresh",
                           "--storage", url(db)).stdout)
    assert _stored(db) == fresh["events"]


def test_demo_fresh_refuses_a_server_backend() -> None:
    result = cli("demo", "--fresh", "--storage", "redis://127.0.0.1:1/0")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "omniq-observe demo: error: --fresh deletes a SQLite file; redis://127.0.0.1:1/0 is "
        "not one (use `omniq-observe prune`, or another prefix or schema)\n"
    )


# 10. top for people: a key line, a total row, age and id apart, 80 columns


def _top_screens(db: Path, widths: list[int]) -> list[list[str]]:
    """``top`` in a real terminal (tmux) of each width; the screens once drawn."""
    import sys
    import uuid

    if shutil.which("tmux") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("tmux is not installed (CI=true)")
        pytest.skip("tmux is not installed")
    # The pane is the terminal: LINES/COLUMNS left from elsewhere would override its size.
    command = f"env -u LINES -u COLUMNS {sys.executable} -m omniq_observe top --storage {url(db)}"
    sessions = [f"omniq-first-{uuid.uuid4().hex[:8]}" for _ in widths]
    # All sessions live until the end: a tmux server whose last session ends exits, and a
    # session started meanwhile would find it gone.
    try:
        for session, width in zip(sessions, widths, strict=True):
            subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(width),
                            "-y", "12", command], check=True)
        return [_drawn(session) for session in sessions]
    finally:
        for session in sessions:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def _drawn(session: str) -> list[str]:
    def screen() -> list[str]:
        done = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                              capture_output=True, text=True)
        return [line for line in done.stdout.splitlines() if line.strip()]

    def ready() -> list[str] | None:
        lines = screen()
        return lines if lines and lines[-1].startswith("q quit") else None

    found: list[str] = wait_until(ready, timeout=60, interval=0.2, what="the top screen")
    return found


def test_top_fits_80_columns_and_drops_columns_when_narrower(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    events = fixture_events(base_time())
    events.append(TaskEvent(task_id="long-queue-task", event_type="ENQUEUED",
                            details={"queue_name": "search-index"}))
    events.append(TaskEvent(task_id="long-queue-task", event_type="STARTED"))
    store(db, events)
    wide, narrow = _top_screens(db, [80, 50])
    assert wide[1].split() == ["queue", "ev/s", "run", "done/s", "fail/s", "p50", "p95",
                               "wait95", "oldest", "task"]
    assert [line.split()[0] for line in wide[2:-1]] == [
        "emails", "reports", "search-index", "total",
    ]
    assert wide[-1] == (
        "q quit   fail/s = FAILED+TIMEOUT per second   oldest, task = longest running"
    )
    assert all(len(line) <= 80 for line in wide)
    # At 50 columns p50, ev/s, wait95 and done/s are dropped.
    assert narrow[1].split() == ["queue", "run", "fail/s", "p95", "oldest", "task"]
    assert all(len(line) <= 50 for line in narrow)
    assert [line.split()[0] for line in narrow[2:-1]] == [
        "emails", "reports", "search-index", "total",
    ]


def test_readme_top_capture_matches_the_current_layout() -> None:
    from omniq_observe.cli.top import COLUMNS, KEY_LINE

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("```\nomniq-observe top  sqlite:///omniq-events.db")
    block = readme[start + 4 : readme.index("```", start + 4)].splitlines()
    assert block[1].split() == list(COLUMNS)
    assert block[-2].split()[0] == "total"
    assert block[-1] == KEY_LINE
    assert all(len(line) <= 80 for line in block)

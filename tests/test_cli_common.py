"""What every command shares: --help with examples, one-line errors with exit code 2,
tracebacks only with --debug, settings from OMNIQ_OBSERVE_* variables.

Argument and storage errors run in-process through ``main(argv)`` (``run_main``); the
tests at the end, and one of each kind of error, run the real ``python -m omniq_observe``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cli import cli, run_main, url

COMMANDS = ["demo", "tail", "top", "stats", "prune", "check"]
# The extra arguments a command needs to get as far as opening storage.
NEEDS = {"prune": ["--older-than", "7d", "--yes"]}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples(command: str) -> None:
    result = run_main(command, "--help")
    assert result.returncode == 0
    assert "examples:\n  omniq-observe " + command in result.stdout
    assert "--storage URL" in result.stdout
    assert "OMNIQ_OBSERVE_STORAGE" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_bad_url_is_one_line_and_exit_2(command: str) -> None:
    result = run_main(command, "--storage", "mysql://db/events", *NEEDS.get(command, []))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"omniq-observe {command}: error: storage URL 'mysql://db/events' has unsupported "
        "scheme 'mysql'; supported: memory://, sqlite:///relative.db, "
        "sqlite:////absolute/path.db, redis://host:6379/0, postgresql://user@host/db\n"
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_unreachable_server_is_one_line_and_exit_2(command: str) -> None:
    result = run_main(command, "--storage", "redis://127.0.0.1:1/0", *NEEDS.get(command, []))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"omniq-observe {command}: error: cannot reach storage redis://127.0.0.1:1/0: "
        "Redis at redis://127.0.0.1:1/0 unavailable"
    )
    assert result.stderr.count("\n") == 1


def test_password_is_not_printed() -> None:
    result = run_main("check", "--storage", "redis://:hunter2@127.0.0.1:1/0")
    assert result.returncode == 2
    assert "hunter2" not in result.stderr
    assert "redis://:***@127.0.0.1:1/0" in result.stderr


@pytest.mark.parametrize(
    ("command", "flag"),
    [("tail", "--since"), ("stats", "--since"), ("top", "--window"), ("top", "--since"),
     ("prune", "--older-than")],
)
def test_bad_duration_is_one_line_and_exit_2(command: str, flag: str) -> None:
    result = run_main(command, flag, "10 parsecs")
    assert result.returncode == 2
    setting = flag.lstrip("-")
    assert result.stderr.splitlines()[-1] == (
        f"omniq-observe {command}: error: argument {flag}: {setting} '10 parsecs' is not a "
        "duration; use e.g. 30s, 10m, 1h, 7d"
    )


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--failure-rate", "1.5", "failure rate '1.5' is not a number between 0 and 1"),
        ("--tasks", "many", "tasks 'many' is not a non-negative integer"),
        ("--queues", "0", "queues '0' is not a positive integer"),
        ("--rate", "-1", "rate '-1' is not a number of tasks per second (0 to 1000000)"),
    ],
)
def test_demo_bad_numbers(flag: str, value: str, message: str) -> None:
    result = run_main("demo", flag, value)
    assert result.returncode == 2
    expected = f"omniq-observe demo: error: argument {flag}: {message}"
    assert result.stderr.splitlines()[-1] == expected


def test_debug_shows_the_traceback() -> None:
    args = ("demo", "--tasks", "1", "--storage", "sqlite:////nonexistent-dir/x.db")
    quiet = cli(*args)
    assert quiet.returncode == 2
    assert "Traceback" not in quiet.stderr
    assert quiet.stderr == (
        "omniq-observe demo: error: cannot reach storage sqlite:////nonexistent-dir/x.db: "
        "cannot open SQLite database '/nonexistent-dir/x.db': unable to open database file\n"
    )
    loud = cli("--debug", *args)
    assert loud.returncode == 2
    assert "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.endswith(quiet.stderr)
    after = cli(*args, "--debug")  # a global option after the command works the same
    assert after.returncode == 2
    assert "Traceback (most recent call last)" in after.stderr
    assert after.stderr.endswith(quiet.stderr)


def test_storage_from_the_environment(tmp_path: Path) -> None:
    db = tmp_path / "from-env.db"
    env = {"OMNIQ_OBSERVE_STORAGE": url(db)}
    wrote = json.loads(cli("demo", "--tasks", "5", "--seed", "1", "--json", env=env).stdout)
    assert wrote["storage"] == url(db)
    report = json.loads(cli("check", "--json", env=env).stdout)
    assert (report["storage"], report["events"]) == (url(db), wrote["events"])
    # A flag wins over the environment (and a read command never creates the file).
    other = tmp_path / "flag.db"
    result = cli("check", "--json", "--storage", url(other), env=env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"omniq-observe check: error: no event store at {other};")
    assert not other.exists()


def test_default_storage_is_the_sqlite_file_in_the_current_directory(tmp_path: Path) -> None:
    result = cli("demo", "--tasks", "3", "--seed", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith(" tasks to sqlite:///omniq-events.db")
    assert (tmp_path / "omniq-events.db").exists()


@pytest.mark.parametrize(
    "args",
    [("tail", "--help"), ("stats", "--since", "10 parsecs"),
     ("check", "--storage", "mysql://db/events"), ("check", "--storage", "redis://127.0.0.1:1/0")],
)
def test_in_process_runs_match_the_real_command(args: tuple[str, ...]) -> None:
    real, in_process = cli(*args), run_main(*args)
    assert (in_process.returncode, in_process.stdout, in_process.stderr) == (
        real.returncode, real.stdout, real.stderr
    )

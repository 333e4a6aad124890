"""The examples run as users run them: as subprocesses, with their exact output checked."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMESTAMP = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}\+00:00"


def test_quickstart_prints_every_event_in_order() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    expected = [
        r"",
        r"Processing events\.\.\.",
        rf"Custom Handler: ENQUEUED for task task_abc at {TIMESTAMP}",
        rf"Custom Handler: STARTED for task task_abc at {TIMESTAMP}",
        rf"Custom Handler: COMPLETED for task task_abc at {TIMESTAMP}",
        r"  Result: success",
        rf"Custom Handler: ENQUEUED for task task_xyz at {TIMESTAMP}",
        rf"Custom Handler: STARTED for task task_xyz at {TIMESTAMP}",
        rf"Custom Handler: FAILED for task task_xyz at {TIMESTAMP}",
        r"  Error: DivisionByZero",
    ]
    lines = result.stdout.splitlines()
    assert len(lines) == len(expected), result.stdout
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    stamps = re.findall(TIMESTAMP, result.stdout)
    assert len(stamps) == 6
    assert stamps == sorted(stamps)  # logged in order, one after the other

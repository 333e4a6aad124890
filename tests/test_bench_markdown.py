"""``python bench/run.py --markdown``: the table, the machine and the date in a Markdown file."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_markdown_file_has_the_date_the_machine_and_the_table(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    # --only with no matching row runs nothing, so only the writing is tested here.
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--only", "no such row", "--markdown", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# Benchmark results"
    assert lines[2].startswith(f"- Date: {datetime.now(timezone.utc):%Y-%m-%d} ")
    assert lines[3].startswith("- Machine: ") and " cores" in lines[3]
    assert lines[5].startswith("- Load average at the end (1, 5, 15 min): ")
    assert lines[4] == (
        f"- Command: `python bench/run.py --only 'no such row' --markdown {out}`"
    )
    assert lines[-2:] == [
        "| benchmark | events/s (median) | raw baseline/s | ratio | target | ok | baseline |",
        "|---|---|---|---|---|---|---|",
    ]


def test_rows_are_markdown_table_rows(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from _markdown import write_markdown
    finally:
        sys.path.remove(str(ROOT / "bench"))
    out = tmp_path / "r.md"
    write_markdown(out, ("a", "b"), [("x", "1,000"), ("y", "0.50")], ["--quick"])
    text = out.read_text(encoding="utf-8")
    assert "- Command: `python bench/run.py --quick`" in text
    assert text.endswith("| a | b |\n|---|---|\n| x | 1,000 |\n| y | 0.50 |\n")

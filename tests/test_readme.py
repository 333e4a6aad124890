"""README.md is true and runnable: every complete ``python`` block runs as written.

A fenced ``python`` block is a complete program unless its first line is
``# fragment: <what it needs>``; complete ones run here as a subprocess in an empty folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FRAGMENT = "# fragment:"
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Every fenced ``python`` block of ``text`` as (line number of its fence, code)."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))
COMPLETE = [(line, code) for line, code in BLOCKS if not code.startswith(FRAGMENT)]


def test_the_readme_has_complete_blocks_and_marked_fragments() -> None:
    assert len(BLOCKS) >= 7
    assert len(COMPLETE) >= 6
    for line, code in BLOCKS:
        if code.startswith(FRAGMENT):
            need = code.splitlines()[0][len(FRAGMENT):].strip()
            assert need, f"README.md:{line}: a fragment must say what it needs"


def test_block_extraction_finds_fragments_and_programs() -> None:
    text = "x\n```python\nprint(1)\n```\n```bash\nls\n```\n```python\n# fragment: x\ny\n```\n"
    assert python_blocks(text) == [(2, "print(1)\n"), (8, "# fragment: x\ny\n")]


@pytest.mark.parametrize(("line", "code"), COMPLETE, ids=[f"line{n}" for n, _ in COMPLETE])
def test_readme_block_runs(line: int, code: str, tmp_path: Path) -> None:
    script = tmp_path / f"readme_line{line}.py"
    script.write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_OBSERVE_")}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"README.md:{line} failed:\n{result.stderr}"


def test_readme_points_only_inside_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    assert "CONTRACT" not in text
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" in target:
            continue
        assert not target.startswith(".."), target
        assert (ROOT / target).exists(), f"README links to a missing file: {target}"

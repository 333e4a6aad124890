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


def test_the_prometheus_command_is_safe_to_paste_and_runs(tmp_path: Path) -> None:
    """It binds 127.0.0.1, keeps its data in a new temporary folder, and loads the rules."""
    import shutil
    import signal
    import urllib.request

    from _helpers import IN_CI, free_port, wait_until

    text = README.read_text(encoding="utf-8")
    [line] = [ln for ln in text.splitlines() if ln.startswith("prometheus --config.file=")]
    assert "--web.listen-address=127.0.0.1:9090" in line
    assert '--storage.tsdb.path="$(mktemp -d)"' in line
    if shutil.which("prometheus") is None:
        if IN_CI:
            pytest.fail("prometheus is not installed (CI=true)")
        pytest.skip("prometheus is not installed")
    port = free_port()
    command = line.replace("127.0.0.1:9090", f"127.0.0.1:{port}")
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # mktemp -d makes its folder in here
    proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def rules() -> list[str]:
            try:
                url = f"http://127.0.0.1:{port}/api/v1/rules"
                with urllib.request.urlopen(url, timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                return []
            return re.findall(r'"name":"(Omniq\w+)"', body)

        names = wait_until(rules, timeout=60, what="Prometheus to load the rules")
        assert "OmniqTaskFailureRatioHigh" in names
        [data] = list(tmp_path.iterdir())  # the TSDB is in the temporary folder
        assert data.is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_start_fresh_command_removes_every_file_of_the_demo_store(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    [command] = re.findall(r"`(rm -f omniq-events\.db[^`]*)`", text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_OBSERVE_")}
    wrote = subprocess.run([sys.executable, "-m", "omniq_observe", "demo", "--tasks", "5"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert wrote.returncode == 0, wrote.stderr
    assert (tmp_path / "omniq-events.db").exists()
    subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True, timeout=30)
    assert list(tmp_path.iterdir()) == []

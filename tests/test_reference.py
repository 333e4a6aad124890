"""docs/reference.md lists every public name that exists: Python API, metrics, CLI options."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

import omniq_observe
from omniq_observe.cli._main import build_parser
from omniq_observe.handlers import PrometheusHandler

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference.md"
TEXT = REFERENCE.read_text(encoding="utf-8")


def test_every_top_level_name_is_listed() -> None:
    missing = [n for n in omniq_observe.__all__ if n != "__version__" and f"`{n}`" not in TEXT]
    assert missing == [], f"add these names to docs/reference.md: {missing}"


def test_every_prometheus_metric_is_listed() -> None:
    registry = CollectorRegistry()
    handler = PrometheusHandler(registry=registry)
    try:
        names = {
            metric.name + ("_total" if metric.type == "counter" else "")
            for metric in registry.collect()
        }
    finally:
        handler.close()
    assert len(names) >= 11
    missing = sorted(n for n in names if f"`{n}`" not in TEXT)
    assert missing == [], f"add these metrics to docs/reference.md: {missing}"


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_cli_option_is_listed_in_its_command_row() -> None:
    commands = _commands()
    assert set(commands) >= {"serve", "demo", "tail", "top", "stats", "prune", "check"}
    for name, parser in commands.items():
        row = re.search(rf"^\| `{name}` \|(.*)$", TEXT, re.MULTILINE)
        assert row, f"docs/reference.md has no row for the command {name!r}"
        options = {
            opt for action in parser._actions for opt in action.option_strings
            if opt.startswith("--") and opt not in {"--help", "--storage", "--debug"}
        }
        missing = sorted(o for o in options if f"`{o}`" not in row.group(1))
        assert missing == [], f"document {missing} of {name!r} in docs/reference.md"


def test_reference_points_only_inside_the_repository_and_readme_links_it() -> None:
    assert "CONTRACT" not in TEXT
    assert "shared/" not in TEXT
    for target in re.findall(r"\]\(([^)#]+)\)", TEXT):
        assert "://" in target or (REFERENCE.parent / target).resolve().exists(), target
    assert "](docs/reference.md)" in (ROOT / "README.md").read_text(encoding="utf-8")

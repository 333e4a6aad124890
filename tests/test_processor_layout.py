"""The package layout: no import circles anywhere in the package, and the blocking
``EventProcessor`` names every keyword of ``AsyncEventProcessor``."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import omniq_observe
from omniq_observe.backend import MemoryBackend
from omniq_observe.events import AsyncEventProcessor, EventProcessor
from omniq_observe.exceptions import ConfigurationError

PACKAGE = Path(omniq_observe.__file__).parent


def _imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``TYPE_CHECKING`` and function-level
    imports too); a package stands for its ``__init__``. ``from a.b import c`` imports the
    module ``a.b.c`` when there is one, else ``a.b``."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    module = f"{node.module}.{alias.name}"
                    found.add(module if module in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules} - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == 1:
                return [*path[path.index(other):], other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circles() -> None:
    graph = _imports()
    assert len(graph) > 90  # every module of the package, subpackages included
    assert "omniq_observe.events._dispatch" in graph["omniq_observe.events.processor"]
    assert "omniq_observe.backend.base" in graph["omniq_observe.backend.redis._groups"]
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_event_processor_names_the_keywords_of_the_async_one() -> None:
    blocking = inspect.signature(EventProcessor).parameters
    async_ = inspect.signature(AsyncEventProcessor).parameters
    assert list(blocking) == list(async_)
    for name, parameter in async_.items():
        assert blocking[name].kind == parameter.kind
        assert blocking[name].default == parameter.default


def test_event_processor_passes_its_keywords_on() -> None:
    storage = MemoryBackend()
    with EventProcessor(
        storage, "named", batch_size=7, max_handler_attempts=2, idle_timeout=0.5, member="m1"
    ) as processor:
        inner = processor._async
        assert (inner.name, inner.batch_size, inner.max_handler_attempts) == ("named", 7, 2)
        assert (inner.idle_timeout, inner.consumer.member) == (0.5, "m1")
    with pytest.raises(ConfigurationError, match="batch_size must be a positive integer, got 0"):
        EventProcessor(storage, batch_size=0)

"""What the wire form can carry, checked once: strings, ``details`` values and their depth.

:class:`~omniq_observe.models.event.TaskEvent` calls these when it is made, and again on the
values ``decode_event`` reads back, so that an event is either storable exactly or refused
with :class:`~omniq_observe.exceptions.InvalidEventError` naming the field and the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from omniq_observe.exceptions import InvalidEventError

__all__ = [
    "MAX_DETAILS_DEPTH",
    "MAX_ID_LENGTH",
    "check_decoded_details",
    "check_text",
    "clean_details",
]

#: The longest ``task_id``, ``event_id`` and ``event_type``, in characters (every backend
#: indexes them; PostgreSQL cannot index much more than 2.7 KB).
MAX_ID_LENGTH = 512
#: How deep containers may nest inside ``details`` (``{"a": [1]}`` is 2 deep). Deeper
#: JSON is slow to decode and, near 1,000 levels, cannot be decoded at all.
MAX_DETAILS_DEPTH = 64

_PLAIN = frozenset({str, int, bool, type(None)})


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate, which UTF-8 (and so JSON) cannot carry."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_text(value: Any, field: str, *, limit: int | None = MAX_ID_LENGTH) -> str:
    """Return ``value`` as a plain, non-empty ``str`` of at most ``limit`` characters.

    Raises:
        InvalidEventError: it is not a string, empty, too long, or holds a lone surrogate.
    """
    if not isinstance(value, str) or not value:
        msg = f"{field} must be a non-empty string, got {value!r:.200}"
        raise InvalidEventError(msg, field=field, value=value)
    text: str = value if type(value) is str else str.__str__(value)  # a plain copy
    if limit is not None and len(text) > limit:
        msg = f"{field} is {len(text)} characters long ({text[:40]!r}...); the limit is {limit}"
        raise InvalidEventError(msg, field=field, value=text)
    if has_surrogate(text):
        msg = f"{field} holds a lone surrogate ({text!r:.200}); UTF-8 cannot encode it"
        raise InvalidEventError(msg, field=field, value=text)
    return text


def clean_details(value: Any) -> dict[str, Any]:
    """Return ``details`` as a dict the wire form carries exactly.

    Subclasses of ``str``, ``int`` and ``float`` (enums, say) become their plain value,
    other mappings become dicts and sequence subclasses lists; anything JSON cannot hold
    exactly is refused.

    Raises:
        InvalidEventError: a key or value cannot be stored; names its key path.
    """
    if type(value) is dict:
        for key, item in value.items():  # the common case: flat details of plain values
            if (
                type(key) is not str
                or not key.isascii()
                or type(item) not in _PLAIN
                or (type(item) is str and not item.isascii())
            ):
                break
        else:
            return value
    elif not isinstance(value, Mapping):
        kind = type(value).__name__
        msg = f"details must be a mapping with string keys, got {kind} {value!r:.200}"
        raise InvalidEventError(msg, field="details", value=value)
    cleaned: dict[str, Any] = _clean(value, "details", 1)
    return cleaned


def _clean(value: Any, path: str, depth: int) -> Any:
    """``value`` made plain (a new container only where something changed)."""
    kind = type(value)
    if kind is str:
        if has_surrogate(value):
            _refuse(path, value, "a lone surrogate")
        return value
    if kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else _refuse(path, value, "not finite")
    if isinstance(value, (Mapping, list, tuple)):
        if depth > MAX_DETAILS_DEPTH:
            _refuse(path, value, "too deep")
        return _clean_container(value, path, depth)
    if isinstance(value, str):
        return _clean(str.__str__(value), path, depth)
    if isinstance(value, int):  # int subclasses: IntEnum, IntFlag, numpy-like ints
        return int.__int__(value)
    if isinstance(value, float):
        return _clean(float.__float__(value), path, depth)
    return _refuse(path, value, "type")


def _clean_container(value: Any, path: str, depth: int) -> Any:
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                _refuse(f"{path}[{key!r}]", key, "key")
            result[_clean(key, f"{path}[{key!r}]", depth)] = _clean(
                item, f"{path}[{key!r}]", depth + 1
            )
        return value if type(value) is dict and _same(result, value) else result
    items = [_clean(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)]
    if type(value) in (list, tuple) and all(a is b for a, b in zip(items, value, strict=True)):
        return value
    return items


def _same(result: dict[str, Any], value: dict[str, Any]) -> bool:
    return all(
        a is b and ka is kb
        for (ka, a), (kb, b) in zip(result.items(), value.items(), strict=True)
    )


def _refuse(path: str, bad: Any, problem: str) -> Any:
    kind = type(bad).__name__
    if problem == "key":
        msg = f"{path}: key {bad!r:.100} is a {kind}; details keys must be strings"
    elif problem == "not finite":
        msg = f"{path} is {bad!r}; details floats must be finite (JSON has no {bad!r})"
    elif problem == "too deep":
        msg = (
            f"{path:.200} is nested deeper than {MAX_DETAILS_DEPTH} levels; "
            "details must be at most that deep"
        )
        bad = kind
    elif problem == "a lone surrogate":
        msg = f"{path} holds a lone surrogate ({bad!r:.100}); UTF-8 cannot encode it"
    else:
        msg = f"{path} is a {kind} ({bad!r:.100}); details must be JSON values"
    raise InvalidEventError(msg, field=path, value=bad)


def check_decoded_details(details: dict[str, Any]) -> None:
    """Refuse decoded ``details`` that construction would refuse: nested too deep.
    (msgspec refuses the rest: lone surrogates, numbers out of range, NaN.)

    Raises:
        InvalidEventError: as :func:`clean_details` would.
    """
    if not _shallow(details, 1):
        _clean(details, "details", 1)  # raises, naming the path


def _shallow(value: Any, depth: int) -> bool:
    """Whether the containers in decoded ``value`` nest at most ``MAX_DETAILS_DEPTH`` deep."""
    items = value.values() if type(value) is dict else value
    for item in items:
        kind = type(item)
        if (kind is dict or kind is list) and (
            depth >= MAX_DETAILS_DEPTH or not _shallow(item, depth + 1)
        ):
            return False
    return True

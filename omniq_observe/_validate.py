"""One home for the numeric setting checks: counts, limits and seconds.

Each function returns the checked value (seconds as a ``float``) or raises
:class:`~omniq_observe.exceptions.ConfigurationError` naming the setting and the value.
``bool`` is refused wherever a number is asked for (``True`` is not a count), and so are
NaN and, unless the function says otherwise, infinity.
"""

from __future__ import annotations

import math
from typing import TypeGuard

from omniq_observe.exceptions import ConfigurationError

__all__ = [
    "at_least",
    "between",
    "fraction",
    "non_negative_int",
    "non_negative_seconds",
    "optional_non_negative_int",
    "optional_positive_int",
    "positive_int",
    "positive_seconds",
]


def _refuse(setting: str, value: object, wanted: str) -> ConfigurationError:
    msg = f"{setting} must be {wanted}, got {value!r}"
    return ConfigurationError(msg, setting=setting, value=value)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer_words(low: int) -> str:
    return {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")


def at_least(setting: str, value: object, low: int) -> int:
    """Return ``value`` when it is an integer >= ``low``.

    Raises:
        ConfigurationError: ``value`` is not an ``int`` (a ``bool`` is not) or is below ``low``.
    """
    if not _is_int(value) or value < low:
        raise _refuse(setting, value, _integer_words(low))
    return value


def positive_int(setting: str, value: object) -> int:
    """Return ``value`` when it is an integer >= 1 (a count or a size that cannot be 0).

    Raises:
        ConfigurationError: ``value`` is not a positive integer.
    """
    return at_least(setting, value, 1)


def non_negative_int(setting: str, value: object) -> int:
    """Return ``value`` when it is an integer >= 0 (e.g. a number of retries).

    Raises:
        ConfigurationError: ``value`` is not an integer >= 0.
    """
    return at_least(setting, value, 0)


def optional_positive_int(setting: str, value: object) -> int | None:
    """Return ``value`` when it is ``None`` (no limit) or an integer >= 1.

    Raises:
        ConfigurationError: ``value`` is neither ``None`` nor a positive integer.
    """
    if value is not None and (not _is_int(value) or value < 1):
        raise _refuse(setting, value, "a positive integer or None")
    return value


def optional_non_negative_int(setting: str, value: object) -> int | None:
    """Return ``value`` when it is ``None`` (no limit) or an integer >= 0.

    Raises:
        ConfigurationError: ``value`` is neither ``None`` nor an integer >= 0.
    """
    if value is not None and (not _is_int(value) or value < 0):
        raise _refuse(setting, value, "an integer >= 0 or None")
    return value


def between(setting: str, value: object, low: int, high: int) -> int:
    """Return ``value`` when it is an integer from ``low`` to ``high`` inclusive.

    Raises:
        ConfigurationError: ``value`` is not an integer in that range.
    """
    if not _is_int(value) or not low <= value <= high:
        raise _refuse(setting, value, f"an integer between {low} and {high}")
    return value


def fraction(setting: str, value: object) -> float:
    """Return ``value`` as a float when it is a number from 0 to 1 inclusive (a rate).

    Raises:
        ConfigurationError: ``value`` is not a number between 0 and 1 (NaN is not).
    """
    if not _is_number(value) or not 0 <= value <= 1:
        raise _refuse(setting, value, "a number between 0 and 1")
    return float(value)


def positive_seconds(setting: str, value: object, *, infinite: bool = False) -> float:
    """Return ``value`` as seconds when it is a number > 0.

    Args:
        setting: the setting's name, for the message.
        value: the value given.
        infinite: accept ``math.inf`` ("never"), e.g. for a time-to-live.

    Raises:
        ConfigurationError: ``value`` is not a positive number (NaN is not; infinity only
            with ``infinite``).
    """
    if not _is_number(value) or not value > 0:
        raise _refuse(setting, value, "a positive number of seconds")
    if not infinite and not math.isfinite(value):
        raise _refuse(setting, value, "a finite positive number of seconds")
    return float(value)


def non_negative_seconds(setting: str, value: object) -> float:
    """Return ``value`` as seconds when it is a finite number >= 0 (0: no wait).

    Raises:
        ConfigurationError: ``value`` is negative, NaN, infinite or not a number.
    """
    if not _is_number(value) or not (value >= 0 and math.isfinite(value)):
        raise _refuse(setting, value, "a finite number of seconds >= 0")
    return float(value)

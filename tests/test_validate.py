"""The numeric setting checks in omniq_observe._validate: what they accept and refuse."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from omniq_observe import _validate
from omniq_observe.exceptions import ConfigurationError

NAN = float("nan")


def refused(check: Callable[[str, object], object], value: object) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        check("knob", value)
    assert info.value.setting == "knob"
    assert info.value.value is value
    assert isinstance(info.value, ValueError)
    return info.value


@pytest.mark.parametrize("value", [True, False, NAN, 0, -1, 1.0, 2.5, "3", None, math.inf])
def test_positive_int_refuses(value: object) -> None:
    error = refused(_validate.positive_int, value)
    assert str(error) == f"knob must be a positive integer, got {value!r}"


@pytest.mark.parametrize("value", [1, 2, 10**12])
def test_positive_int_accepts(value: int) -> None:
    assert _validate.positive_int("knob", value) == value


@pytest.mark.parametrize("value", [True, False, NAN, -1, 0.0, "0", None])
def test_non_negative_int_refuses(value: object) -> None:
    error = refused(_validate.non_negative_int, value)
    assert str(error) == f"knob must be a non-negative integer, got {value!r}"


@pytest.mark.parametrize("value", [0, 1, 7])
def test_non_negative_int_accepts(value: int) -> None:
    assert _validate.non_negative_int("knob", value) == value


def test_at_least_names_its_bound() -> None:
    assert _validate.at_least("knob", 5, 5) == 5
    with pytest.raises(ConfigurationError) as info:
        _validate.at_least("knob", 4, 5)
    assert str(info.value) == "knob must be an integer >= 5, got 4"


@pytest.mark.parametrize("value", [True, NAN, 0, -1, 1.5, "10"])
def test_optional_positive_int_refuses(value: object) -> None:
    error = refused(_validate.optional_positive_int, value)
    assert str(error) == f"knob must be a positive integer or None, got {value!r}"


def test_optional_positive_int_accepts_none_and_counts() -> None:
    assert _validate.optional_positive_int("knob", None) is None
    assert _validate.optional_positive_int("knob", 1) == 1


@pytest.mark.parametrize("value", [True, False, NAN, -1, 0.5, "0"])
def test_optional_non_negative_int_refuses(value: object) -> None:
    error = refused(_validate.optional_non_negative_int, value)
    assert str(error) == f"knob must be an integer >= 0 or None, got {value!r}"


def test_optional_non_negative_int_accepts_none_and_zero() -> None:
    assert _validate.optional_non_negative_int("knob", None) is None
    assert _validate.optional_non_negative_int("knob", 0) == 0


@pytest.mark.parametrize("value", [True, NAN, 0, -1, 11, 1.0, "5"])
def test_between_refuses(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        _validate.between("knob", value, 1, 10)
    assert info.value.value is value
    assert str(info.value) == f"knob must be an integer between 1 and 10, got {value!r}"


def test_between_accepts_both_ends() -> None:
    assert [_validate.between("knob", v, 1, 10) for v in (1, 10)] == [1, 10]


@pytest.mark.parametrize("value", [True, False, NAN, -0.1, 1.5, -1, math.inf, "0.5"])
def test_fraction_refuses(value: object) -> None:
    error = refused(_validate.fraction, value)
    assert str(error) == f"knob must be a number between 0 and 1, got {value!r}"


def test_fraction_accepts_ints_and_floats_as_float() -> None:
    values = [_validate.fraction("knob", v) for v in (0, 0.25, 1)]
    assert values == [0.0, 0.25, 1.0]
    assert all(type(v) is float for v in values)


@pytest.mark.parametrize("value", [True, False, NAN, 0, 0.0, -1, -0.5, -math.inf, "1", None])
def test_positive_seconds_refuses(value: object) -> None:
    error = refused(_validate.positive_seconds, value)
    assert str(error) == f"knob must be a positive number of seconds, got {value!r}"


def test_positive_seconds_refuses_infinity_unless_asked() -> None:
    error = refused(_validate.positive_seconds, math.inf)
    assert str(error) == "knob must be a finite positive number of seconds, got inf"
    assert _validate.positive_seconds("knob", math.inf, infinite=True) == math.inf
    with pytest.raises(ConfigurationError):
        _validate.positive_seconds("knob", NAN, infinite=True)


def test_positive_seconds_returns_a_float() -> None:
    assert _validate.positive_seconds("knob", 3) == 3.0
    assert type(_validate.positive_seconds("knob", 3)) is float
    assert _validate.positive_seconds("knob", 0.001) == 0.001


@pytest.mark.parametrize("value", [True, False, NAN, -1, -0.001, math.inf, "0", None])
def test_non_negative_seconds_refuses(value: object) -> None:
    error = refused(_validate.non_negative_seconds, value)
    assert str(error) == f"knob must be a finite number of seconds >= 0, got {value!r}"


def test_non_negative_seconds_accepts_zero() -> None:
    assert _validate.non_negative_seconds("knob", 0) == 0.0
    assert _validate.non_negative_seconds("knob", 2.5) == 2.5

"""What every command shares: settings from flags or ``OMNIQ_OBSERVE_*``, errors, durations."""

from __future__ import annotations

import argparse
import errno
import os
import re
import socket
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from omniq_observe.exceptions import ConfigurationError

__all__ = [
    "DEFAULT_STORAGE",
    "TCP_PORT",
    "AddressError",
    "CommandError",
    "add_storage_argument",
    "address_error",
    "bounded",
    "env_default",
    "parse_duration",
    "stdout_is_terminal",
]

DEFAULT_STORAGE = "sqlite:///omniq-events.db"
ENV_PREFIX = "OMNIQ_OBSERVE_"
_N = TypeVar("_N", int, float)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


class CommandError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


class AddressError(CommandError, OSError):
    """An address to listen on that cannot be bound; the message names it and what to do."""


_BIND_ADVICE = {
    errno.EADDRINUSE: "address already in use; pick another --port",
    errno.EACCES: "permission denied (ports below 1024 need privileges); pick another --port",
    errno.EADDRNOTAVAIL: "cannot assign the address (it is not one of this machine's); "
    "pick another --host",
}


def address_error(host: str, port: int, exc: OSError) -> AddressError:
    """The error for failing to listen on ``host:port``: what happened and what to do."""
    if isinstance(exc, socket.gaierror):
        reason = f"unknown host ({exc.strerror or exc}); pick another --host"
    else:
        reason = _BIND_ADVICE.get(exc.errno or 0, str(exc.strerror or exc))
    shown = f"[{host}]" if ":" in host else host
    return AddressError(f"cannot serve on {shown}:{port}: {reason}")


def env_default(name: str, default: Any = None) -> Any:
    """Return ``OMNIQ_OBSERVE_<NAME>`` if set, else ``default``."""
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def env_flag(name: str) -> bool:
    """Return whether ``OMNIQ_OBSERVE_<NAME>`` is set to something other than empty, 0 or false."""
    return str(env_default(name, "")).strip().lower() not in ("", "0", "false")


def add_storage_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--storage URL`` (env ``OMNIQ_OBSERVE_STORAGE``, default the SQLite file)."""
    parser.add_argument(
        "--storage",
        default=env_default("storage", DEFAULT_STORAGE),
        metavar="URL",
        help=f"storage URL (env {ENV_PREFIX}STORAGE; default {DEFAULT_STORAGE})",
    )


def parse_duration(value: str, setting: str = "duration") -> timedelta:
    """Parse ``90s``, ``10m``, ``1h``, ``7d``, ``2w`` or plain seconds.

    Raises:
        ConfigurationError: the value is not a duration; the message names it.
    """
    match = _DURATION.match(str(value))
    if not match:
        msg = f"{setting} {value!r} is not a duration; use e.g. 30s, 10m, 1h, 7d"
        raise ConfigurationError(msg, setting=setting, value=value)
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def duration_type(setting: str) -> Callable[[str], timedelta]:
    """An argparse ``type=`` that parses a duration and names ``setting`` on error."""

    def parse(value: str) -> timedelta:
        try:
            return parse_duration(value, setting)
        except ConfigurationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def bounded(
    setting: str, kind: Callable[[str], _N], low: _N, high: _N, description: str
) -> Callable[[str], _N]:
    """An argparse ``type=`` parsing ``kind`` within ``[low, high]``.

    The error names the setting and the value: ``port 'x' is not a TCP port (0-65535)``.
    """

    def parse(value: str) -> _N:
        try:
            number: _N | None = kind(value)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            msg = f"{setting} {value!r} is not {description}"
            raise argparse.ArgumentTypeError(msg)
        return number

    return parse


#: ``type=`` for a TCP port argument.
TCP_PORT = bounded("port", int, 0, 65535, "a TCP port (0-65535)")


def stdout_is_terminal() -> bool:
    """True when stdout is a terminal (colour and progress bars are shown only then)."""
    return sys.stdout.isatty()

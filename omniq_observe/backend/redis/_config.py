"""Settings of :mod:`omniq_observe.backend.redis`: URL options, their checks, and what the
server's persistence settings mean for stored events."""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from omniq_observe.backend.redis._core import id_str
from omniq_observe.exceptions import ConfigurationError

__all__ = ["URL_OPTIONS", "check_settings", "persistence_warning"]

# URL query parameters that are ours (the rest go to redis-py) and their types.
URL_OPTIONS: dict[str, type] = {
    "prefix": str,
    "max_len": int,
    "history_ttl": float,
    "claim_idle": float,
    "claim_interval": float,
    "retries": int,
    "socket_timeout": float,
    "connect_timeout": float,
    "max_batch": int,
    "client_name": str,
    "max_connections": int,
    "dedup_window": int,
    "partitions": int,
}


def check_settings(*, prefix: Any, max_len: Any, partitions: Any, **settings: Any) -> None:
    """Check the backend's settings (seconds are positive, counts are integers).

    Raises:
        ConfigurationError: a setting is invalid, named with its value.
    """
    if not isinstance(prefix, str) or not prefix:
        msg = f"prefix must be a non-empty string, got {prefix!r}"
        raise ConfigurationError(msg, setting="prefix", value=prefix)
    for setting, value, most in (("max_len", max_len, None), ("partitions", partitions, 1024)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
            or (most is not None and value > most)
        ):
            bound = "" if most is None else f" (at most {most})"
            msg = f"{setting} must be a positive integer{bound} or None, got {value!r}"
            raise ConfigurationError(msg, setting=setting, value=value)
    for setting, value in settings.items():
        if URL_OPTIONS[setting] is float:
            if not isinstance(value, (int, float)) or value <= 0:
                msg = f"{setting} must be a positive number of seconds, got {value!r}"
                raise ConfigurationError(msg, setting=setting, value=value)
        elif not isinstance(value, int) or value < (0 if setting == "retries" else 1):
            kind = "non-negative" if setting == "retries" else "positive"
            msg = f"{setting} must be a {kind} integer, got {value!r}"
            raise ConfigurationError(msg, setting=setting, value=value)


async def persistence_warning(client: Any) -> str | None:
    """A warning when the server has neither an append-only file nor RDB snapshots."""
    try:
        config = await client.config_get("appendonly")
        config.update(await client.config_get("save"))
    except RedisError:  # CONFIG may be disabled or renamed: nothing to say
        return None
    appendonly, save = id_str(config.get("appendonly", "")), id_str(config.get("save", ""))
    if appendonly == "no" and not save.strip():
        return ("Redis keeps nothing on disk (appendonly no, save \"\"): a restart loses "
                "every event; set appendonly yes")
    return None

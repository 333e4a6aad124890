"""Events in Redis Streams, shared by processors in task-routed groups (see ``_backend``).

The parts depend on the small core ``_core`` (keys, stream ids, entries), never on each
other both ways: ``_scripts`` (Lua), ``_config`` (settings), ``_log`` (the streams read as
one log: merged reads, query, prune), ``_groups`` (processor groups), and ``_backend``,
which joins them into :class:`RedisBackend`.
"""

from omniq_observe.backend.redis._backend import SCHEMA_VERSION, RedisBackend

__all__ = ["SCHEMA_VERSION", "RedisBackend"]

"""Events in PostgreSQL, shared by processors on many machines (:class:`PostgresBackend`).

The modules, each depending only on the core ``_schema`` (and on :mod:`..base`):

* ``_schema``: the core, the schema and its migrations, the row encoding of appends;
* ``_pool``: the connection pool, retries and error translation;
* ``_listen``: ``LISTEN`` on a connection of its own, waking waiting processors;
* ``_groups``: processor groups, task-routed partitions leased in the database;
* ``_backend``: :class:`PostgresBackend`, which puts them together.
"""

from __future__ import annotations

from omniq_observe.backend.postgres._backend import SCHEMA_VERSION, PostgresBackend

__all__ = ["SCHEMA_VERSION", "PostgresBackend"]

"""Embedded storage in one SQLite file: the default backend (:class:`SQLiteBackend`).

The modules, each depending only on the core ``_sql`` (and on :mod:`..base`):

* ``_sql``: the core, the schema, the connection's pragmas and the hot-path statements;
* ``_writer``: the group-commit writer thread and its checkpoints;
* ``_groups``: processor groups, task-routed partitions leased in the file;
* ``_prune``: pruning in chunks;
* ``_backend``: :class:`SQLiteBackend`, which puts them together.
"""

from __future__ import annotations

from omniq_observe.backend.sqlite._backend import SCHEMA_VERSION, SQLiteBackend

__all__ = ["SCHEMA_VERSION", "SQLiteBackend"]

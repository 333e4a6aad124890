"""The ``omniq-observe`` command line."""

from omniq_observe.cli._main import main

__all__ = ["main"]

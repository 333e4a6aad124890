"""Task-queue integrations, one module per framework, each behind the extra of its name.

``omniq_observe.integrations.celery``, ``.rq``, ``.dramatiq``, ``.arq`` and ``.taskiq``;
import the one you use (``pip install 'omniq-observe[celery]'``).
"""

from __future__ import annotations

__all__: list[str] = []

"""``python -m omniq_observe`` runs the ``omniq-observe`` command line."""

from omniq_observe.cli import main

raise SystemExit(main())

"""``python -m broker``: run the broker daemon (same as ``zmqdask-broker``)."""

from __future__ import annotations

from broker.cli import main

raise SystemExit(main())

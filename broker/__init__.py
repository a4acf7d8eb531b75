"""The zmqdask broker: one ROUTER socket routing tasks and data between clients and workers.

:class:`~broker.state.BrokerState` is the sans-I/O state machine, :class:`~broker.server.BrokerServer`
the socket loop around it, and :func:`broker.cli.main` the ``zmqdask-broker`` command.
"""

from __future__ import annotations

from broker.server import BrokerServer
from broker.state import BrokerCounters, BrokerState

__all__ = ["BrokerCounters", "BrokerServer", "BrokerState"]

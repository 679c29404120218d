"""Operating tlsgate: the admin HTTP API, Prometheus ``/metrics`` and the dashboard page.

``AdminService(node)`` is a node service (see ``tlsgate.server.node.Node._make_services``);
``tlsgate.ctl`` is the command-line client of the same API.
"""

from __future__ import annotations

from .server import AdminService

__all__ = ["AdminService"]

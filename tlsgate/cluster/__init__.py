"""The cluster: tlsgate nodes that behave as one service (SPEC §7).

``ClusterService(node)`` is a node service (``tlsgate.server.node.Node._make_services`` adds it
when ``[cluster] enable = true``). Modules, each owning one thing:

* ``protocol`` -- frames and messages, sans-IO (documented there);
* ``channel`` -- mutual-TLS connections between nodes;
* ``membership`` -- members, heartbeats, up/down, sans-IO;
* ``replication`` -- last-writer-wins replicated tables and anti-entropy, sans-IO;
* ``service`` -- the node service that wires them to the node's state (PSK table, bans, the
  OCSP/CRL fetcher) and answers the admin API's cluster views.
"""

from __future__ import annotations

from .service import ClusterError, ClusterService

__all__ = ["ClusterError", "ClusterService"]

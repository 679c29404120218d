"""The node's session-ticket secret, and how a cluster agrees on one.

Every worker of a node derives its listeners' ticket keys from one secret
(tlsgate.tls.context.ticket_key), so a client resumes on any worker. Nodes of a cluster behind
one load balancer should share it too, so a client resumes on any *node*; an operator can give
every node the same ``node.session_ticket_secret_file``, and without one the cluster agrees on a
secret itself: it is one replicated entry (namespace ``tickets``, tlsgate.cluster.replication),
and the rule is that the secret of the node that has been up longest wins. The entry's version
is ``(-start time, node name)`` and replication keeps the greatest version, so:

* a cluster forming for the first time settles on its oldest node's secret;
* a node that restarts (a new random secret, a later start) adopts the cluster's -- tickets its
  clients got before the restart resume anywhere, and its own restart invalidates nothing;
* the secret changes only when every node that held it is gone.

The secret travels inside the cluster's mutual-TLS channel (as PSK secrets do) and is never
logged. A node with ``session_ticket_secret_file`` keeps its file's secret and takes no part.
"""

from __future__ import annotations

from collections.abc import Callable

#: Bytes of a ticket secret (what tlsgate.tls.context.ticket_key takes).
SECRET_LEN = 32

Version = tuple[float, str]


class NodeTicketSecret:
    def __init__(self, secret: bytes, node: str, started: float) -> None:
        if len(secret) != SECRET_LEN:
            raise ValueError(f"a ticket secret is {SECRET_LEN} bytes")
        self.secret = secret
        #: The greatest wins: the earliest start, then the greater node name.
        self.version: Version = (-started, node)
        #: Called with the new secret when another node's replaced ours.
        self.on_change: list[Callable[[bytes], None]] = []

    def apply_remote(self, secret: bytes, version: Version) -> bool:
        """Another node's secret; True (and on_change called) when it replaces ours."""
        if len(secret) != SECRET_LEN:
            raise ValueError(f"a ticket secret is {SECRET_LEN} bytes")
        if version <= self.version:
            return False
        changed = secret != self.secret
        self.secret, self.version = secret, version
        if changed:
            for cb in self.on_change:
                cb(secret)
        return True

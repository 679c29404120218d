"""What every connection of one listener shares: settings, the current TLS context, limits,
counters, and the admission hooks other features plug in (authentication, bans, revocation).

A reload replaces ``context`` (and the settings) atomically between two accepts; connections in
flight keep what they started with.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config.schema import ListenerBase, MqttConfig, UpstreamConfig
from ..config.types import split_hostport
from .handshakes import HandshakeBatcher
from .policy import AccessRules, Cidrs, RateLimiter

if TYPE_CHECKING:
    from ..mqtt import Connect, Refusal
    from .record import ConnRecord
    from .registry import Registry

#: Handshake duration histogram bucket bounds (seconds), Prometheus style.
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class ListenerStats:
    """Plain counters (no locks, no per-chunk work); exported by the metrics collector."""

    accepted: int = 0
    connections_total: int = 0     # admitted to the relay
    handshakes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (result, version)
    ciphers: Counter[str] = field(default_factory=Counter)
    groups: Counter[str] = field(default_factory=Counter)                   # key exchange
    resumed: int = 0               # successful handshakes that resumed a session
    tickets_refreshed: int = 0     # session tickets sent to live connections (gateway.tickets)
    handshake_failures: Counter[str] = field(default_factory=Counter)       # reason class
    #: handshake steps run in a batch (True) or at once (False): node.handshake_batch_window
    handshake_steps: Counter[bool] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)                 # reason
    bytes_in: int = 0
    bytes_out: int = 0
    hs_buckets: list[int] = field(default_factory=lambda: [0] * (len(HANDSHAKE_BUCKETS) + 1))
    hs_sum: float = 0.0
    hs_count: int = 0

    def observe_handshake(self, seconds: float) -> None:
        self.hs_buckets[bisect.bisect_left(HANDSHAKE_BUCKETS, seconds)] += 1
        self.hs_sum += seconds
        self.hs_count += 1


#: An admission check runs after the CONNECT is parsed and before the broker is dialled; it
#: returns None to let the client through, or (refusal, reason for the log).
AdmissionCheck = Callable[["ConnRecord", "Connect"], Awaitable["tuple[Refusal, str] | None"]]


class ListenerRuntime:
    def __init__(self, kind: str, name: str, cfg: ListenerBase, mqtt: MqttConfig,
                 upstream: UpstreamConfig, context: Any, registry: Registry) -> None:
        #: The event loop (cached: asyncio.get_running_loop() costs a getpid() syscall here).
        self.loop = asyncio.get_running_loop()
        self.kind = kind
        self.name = name
        self.key = f"listeners.{kind}.{name}"
        self.label = f"{kind}:{name}"
        self.registry = registry
        self.stats = ListenerStats()
        self.active = 0
        self.context = context
        self.admission: list[AdmissionCheck] = []
        # Hook for the PSK module: returns the identity a finished session used, or None.
        self.psk_identity_of: Callable[[Any], str | None] | None = None
        #: Client TLS context towards the broker (``[upstreams.<name>.ssl]``), or None.
        self.upstream_tls: Any = None
        #: The worker's RevocationRuntime (live-connection index for close_revoked_connections).
        self.revocation: Any = None
        #: Runs handshake steps (the gateway installs the worker's shared one; this default
        #: runs every step at once).
        self.handshakes = HandshakeBatcher(self.loop, 0.0)
        self.apply(cfg, mqtt, upstream, context)

    def apply(self, cfg: ListenerBase, mqtt: MqttConfig, upstream: UpstreamConfig,
              context: Any) -> None:
        """Install (new) settings; called at start and on reload."""
        self.cfg = cfg
        self.mqtt = mqtt
        self.upstream = upstream
        #: ``upstream.address`` as (host, port), parsed here instead of per connection.
        self.upstream_addr = split_hostport(upstream.address)
        self.context = context
        self.access = AccessRules(cfg.access_rules)
        self.trusted_proxies = Cidrs(cfg.proxy_protocol_trusted)
        self.rate = RateLimiter(cfg.max_conn_rate)
        #: Beyond max_connections, clients still get a CONNACK refusal (after a handshake);
        #: beyond this, sockets are closed at accept, so a flood cannot buy TLS state.
        self.hard_limit = cfg.max_connections + max(64, cfg.max_connections // 4)
        self.handshake_timeout: float = context.opts.handshake_timeout
        self.alpn = bool(getattr(context.opts, "alpn", None))

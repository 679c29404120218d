"""The cluster as a node service (``node.services``): channel + membership + replication +
shared fetches + cluster-wide views. Everything here runs in the node process, once per node.

What it wires together:

* **Links.** It accepts on ``cluster.listen`` and dials every seed and every member it learns
  of, with back-off (0.2 s doubling to 5 s, with jitter) while a peer is unreachable. One link
  per pair of nodes: when two nodes dial each other at once, both keep the link opened by the
  node whose name sorts first (a link from a peer that restarted -- a new ``boot`` -- replaces
  the old one at once). A link starts with a hello exchange: another cluster name, a node
  claiming our own name, or no common protocol version is refused, with a log line on both
  sides. Dialing our own address (a seed list shared by every node) is noticed and dropped.
* **Membership** (``membership.py``): heartbeats every ``heartbeat_interval`` on every link
  carry this node's stats (connection count, workers, uptime) and the members it knows;
  ``down_after`` of silence reports a node down (log line, admin API) and closes its link.
* **Replication** (``replication.py``): the PSK overlay (``node.psk``) and the ban list
  (``node.bans``) -- deltas at once, digests on every new link and when heartbeat hashes keep
  differing. A ban received from a peer is pushed to the workers at once, which cut the
  matching live connections.
* **Fetches** (``tlsgate.server.fetch``): each OCSP/CRL request key has an owner, the member
  with the highest rendezvous hash among the nodes up; a node asks the owner, which fetches
  once for everybody (or answers from its cache), and falls back to fetching itself when the
  owner cannot answer. Every worker still validates what it receives.
* **Views** for the admin API: :meth:`nodes`, :meth:`find_connections`,
  :meth:`connection`, :meth:`kick`.

Reload: a change of any ``[cluster]`` setting takes effect at the next restart (logged); the
certificate files of ``[cluster.ssl]`` are re-read on reload and used for new links.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import itertools
import logging
import math
import os
import random
import secrets
import socket
import ssl
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from .. import __version__
from ..config import Config, ConfigError, Problem
from ..config.types import split_hostport
from .channel import Link, LinkClosed, build_contexts, explain_tls_error
from .membership import DOWN, UP, Event, Membership
from .protocol import (
    PROTO_MAX,
    PROTO_MIN,
    Bye,
    Digest,
    Entries,
    Entry,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    Refuse,
    Request,
    Response,
    negotiate,
)
from .replication import (
    BanNamespace,
    PskNamespace,
    Replicator,
    SyncState,
    TicketSecretNamespace,
    chunk_entries,
)

log = logging.getLogger("tlsgate.cluster")

HANDSHAKE_TIMEOUT = 5.0
HELLO_TIMEOUT = 5.0
DIAL_TIMEOUT = 5.0
BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0
#: How long a fetch at start-up waits for the first contact with the seeds.
JOIN_WAIT = 3.0
MAX_HANDSHAKES = 64          # concurrent inbound handshakes
RPC_TIMEOUT = 10.0
#: Clock difference to a peer above which a warning is logged (LWW depends on clocks).
SKEW_WARN = 5.0
#: Log replicated changes one by one up to this many per message, then a summary.
LOG_EACH = 10
#: The same refusal from the same address is logged as a warning at most this often (a
#: misconfigured node retries every few seconds; a TCP health check probes the port).
REPEAT_LOG_S = 60.0


class ClusterError(Exception):
    pass


def _fmt_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _unspecified(host: str) -> bool:
    return host.strip("[]") in ("", "0.0.0.0", "::", "*")


def rendezvous_owner(members: list[str], key: bytes) -> str:
    """The member with the highest hash of (name, key): every node that sees the same member
    set picks the same owner, and a member leaving moves only its own keys."""
    return max(members, key=lambda m: hashlib.sha256(m.encode() + b"\0" + key).digest())


class ClusterService:
    def __init__(self, node: Any) -> None:
        self.node = node
        config: Config = node.config
        self.cfg = config.cluster
        self.name = config.node.name
        self.boot = secrets.token_hex(8)
        self.membership = Membership(self.name, self.cfg.down_after)
        self.links: dict[str, Link] = {}
        self.addr_names: dict[str, str] = {}
        self.self_addrs: set[str] = set()
        self.listen_host, self.listen_port = split_hostport(self.cfg.listen)
        self._server_ctx: ssl.SSLContext | None = None
        self._ssl_sig: tuple[Any, ...] = ()
        self._client_ctx: ssl.SSLContext | None = None
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dialers: dict[str, asyncio.Task[None]] = {}
        self._dial_errors: dict[str, str] = {}
        self._first_attempts: set[str] = set()
        self._settled = asyncio.Event()
        self._handshakes = 0
        self._ids = itertools.count(1)
        self._stopping = False
        self._started = False
        self._seq = 0
        self._stats: dict[str, Any] = {}
        self._ban_push: asyncio.Task[None] | None = None
        self._ban_push_again = False
        self._skew_warned: set[str] = set()
        self._warned: dict[str, float] = {}
        self._psk_hooked: Any = None
        #: For /metrics: remote changes applied here, by namespace; membership events by kind.
        self.applied: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.replicator = Replicator([PskNamespace(lambda: getattr(node, "psk", None)),
                                      BanNamespace(lambda: getattr(node, "bans", None)),
                                      TicketSecretNamespace(
                                          getattr(node, "cluster_ticket_secret",
                                                  lambda: None))])
        # the bans: the admin service made the list when the dashboard is on; else we do
        bans = getattr(node, "bans", None)
        if bans is None:
            from ..admin.banstore import NodeBans

            bans = NodeBans(node)
            node.bans = bans
            hooks = getattr(node, "on_worker_started", None)
            if hooks is not None:
                hooks.append(bans.push_to)
        bans.replicated = True
        bans.on_local_change.append(self._ban_changed)
        node.cluster = self
        fetcher = getattr(node, "fetcher", None)
        if fetcher is not None:
            fetcher.cluster = self.fetch

    # ================================================================== lifecycle
    async def start(self) -> None:
        source = self.node.path or "<config>"
        self._server_ctx, self._client_ctx = build_contexts(self.cfg, source)
        self._ssl_sig = _files_sig(self.cfg)
        host = self.listen_host.strip("[]")
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self.listen_port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ConfigError(source, [Problem("cluster.listen", f"cannot listen on "
                                               f"{self.cfg.listen}: {exc.strerror or exc}")]
                              ) from None
        self._sock = sock
        self.listen_port = sock.getsockname()[1]
        self._started = True
        self._hook_psk()
        self._spawn(self._accept_loop(), "cluster accept")
        self._spawn(self._tick_loop(), "cluster heartbeat")
        self._spawn(self._stats_loop(), "cluster stats")
        seeds = list(dict.fromkeys(self.cfg.static.seeds))
        for seed in seeds:
            self._ensure_dialer(seed)
        if not seeds:
            self._settled.set()
        else:
            self._spawn(self._settle_after(JOIN_WAIT), "cluster settle")
        log.info("cluster %r: node %s on %s (mutual TLS), seeds: %s", self.cfg.name, self.name,
                 _fmt_addr(host, self.listen_port), ", ".join(seeds) or "none")

    async def stop(self) -> None:
        self._stopping = True
        for link in list(self.links.values()):
            link.try_send(Bye("node stopping"))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*(lnk.drain() for lnk in self.links.values())),
                                   1.0)
        for link in list(self.links.values()):
            link.close("this node is stopping")
        for t in list(self._tasks) + list(self._dialers.values()):
            t.cancel()
        for t in list(self._tasks) + list(self._dialers.values()):
            with contextlib.suppress(BaseException):
                await t
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        fetcher = getattr(self.node, "fetcher", None)
        if fetcher is not None and fetcher.cluster == self.fetch:
            fetcher.cluster = None

    def config_changed(self, old: Config, new: Config) -> list[str]:
        """Called by the node after a successful reload: what the reload means for us."""
        out: list[str] = []
        o, n = old.cluster, new.cluster
        if (o.model_dump(exclude={"ssl"}) != n.model_dump(exclude={"ssl"})
                or old.node.name != new.node.name
                or (o.ssl is None) != (n.ssl is None)):
            log.warning("cluster settings changed: they take effect at the next restart of "
                        "this node (the cluster keeps running as started)")
            out.append("cluster: settings changed, restart needed")
        elif n.ssl is not None and n.enable and _files_sig(n) != self._ssl_sig:
            try:
                self._server_ctx, self._client_ctx = build_contexts(n, self.node.path or
                                                                    "<config>")
            except ConfigError as exc:
                log.error("cluster: the new [cluster.ssl] cannot be used (%s); new links keep "
                          "the previous certificates", "; ".join(map(str, exc.problems)))
            else:
                self._ssl_sig = _files_sig(n)
                log.info("cluster: [cluster.ssl] files changed; new links use them")
                out.append("cluster: certificates re-read for new links")
        return out

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _warn(self, key: str, msg: str, *args: Any, level: int = logging.WARNING) -> None:
        """Log a refusal once per REPEAT_LOG_S for the same ``key`` (peer host and reason),
        then at debug level."""
        now = time.monotonic()
        if now - self._warned.get(key, -REPEAT_LOG_S) >= REPEAT_LOG_S:
            self._warned[key] = now
            if len(self._warned) > 1000:
                self._warned = {k: t for k, t in self._warned.items()
                                if now - t < REPEAT_LOG_S}
            log.log(level, msg, *args)
        else:
            log.debug(msg, *args)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._stopping:
            log.error("cluster task %s failed: %r", task.get_name(), task.exception())

    async def _settle_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._settled.set()

    def _attempted(self, addr: str) -> None:
        self._first_attempts.add(addr)
        if all(s in self._first_attempts for s in self.cfg.static.seeds):
            self._settled.set()

    # ================================================================== links
    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as exc:
                log.error("cluster: accept failed: %s", exc.strerror or exc)
                await asyncio.sleep(0.5)
                continue
            if self._handshakes >= MAX_HANDSHAKES:
                conn.close()
                log.warning("cluster: too many handshakes in progress; dropped a connection "
                            "from %s", addr[0])
                continue
            self._spawn(self._inbound(conn, addr), f"cluster inbound {addr[0]}")

    async def _inbound(self, conn: socket.socket, addr: Any) -> None:
        loop = asyncio.get_running_loop()
        where = _fmt_addr(str(addr[0]), int(addr[1]))
        reader = asyncio.StreamReader(limit=2 ** 20)
        proto = asyncio.StreamReaderProtocol(reader)
        self._handshakes += 1
        try:
            assert self._server_ctx is not None
            transport, _ = await loop.connect_accepted_socket(
                lambda: proto, conn, ssl=self._server_ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except Exception as exc:
            conn.close()
            why = explain_tls_error(exc)
            self._warn(f"{addr[0]}|{why}", "cluster: refused a connection from %s: %s", where,
                       why)
            return
        finally:
            self._handshakes -= 1
        writer = asyncio.StreamWriter(transport, proto, reader, loop)
        link = Link(reader, writer, outbound=False, address=where, peer_ip=str(addr[0]))
        if await self._hello(link):
            await self._serve(link)

    async def _dial(self, addr: str) -> Link | None:
        host, port = split_hostport(addr)
        assert self._client_ctx is not None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), port, ssl=self._client_ctx,
                                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                                    limit=2 ** 20), DIAL_TIMEOUT)
        peer = writer.get_extra_info("peername")
        link = Link(reader, writer, outbound=True, address=addr,
                    peer_ip=str(peer[0]) if peer else host)
        if not await self._hello(link):
            return None
        self._spawn(self._serve(link), f"cluster link {link.peer}")
        return link

    def _ensure_dialer(self, addr: str) -> None:
        if addr in self._dialers or addr in self.self_addrs or self._stopping:
            return
        task = asyncio.get_running_loop().create_task(self._dial_loop(addr),
                                                      name=f"cluster dial {addr}")
        self._dialers[addr] = task

    async def _dial_loop(self, addr: str) -> None:
        delay = BACKOFF_MIN
        while not self._stopping and addr not in self.self_addrs:
            name = self.addr_names.get(addr)
            link = self.links.get(name) if name else None
            if link is not None:
                await link.closed.wait()
                delay = BACKOFF_MIN
                continue
            try:
                link = await self._dial(addr)
            except Exception as exc:
                self._dial_failed(addr, explain_tls_error(exc))
                link = None
            self._attempted(addr)
            if link is not None:
                delay = BACKOFF_MIN
                self._dial_errors.pop(addr, None)
                await link.closed.wait()
                continue
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_MAX)
        self._dialers.pop(addr, None)

    def _dial_failed(self, addr: str, why: str) -> None:
        """Log a failure when it differs from the last one for this address (no log storm
        while a peer stays down)."""
        if self._dial_errors.get(addr) != why:
            self._dial_errors[addr] = why
            name = self.addr_names.get(addr)
            who = f"node {name} at {addr}" if name else addr
            log.warning("cluster: cannot connect to %s: %s (retrying with back-off)", who, why)
        else:
            log.debug("cluster: cannot connect to %s: %s", addr, why)

    async def _hello(self, link: Link) -> bool:
        """Exchange hellos and decide; True when the link is registered and ready."""
        host = "" if _unspecified(self.listen_host) else self.listen_host.strip("[]")
        ours = Hello(cluster=self.cfg.name, node=self.name, boot=self.boot, listen_host=host,
                     listen_port=self.listen_port, version=__version__,
                     proto=(PROTO_MIN, PROTO_MAX))
        who = f"{'node at ' if link.outbound else 'connection from '}{link.address}"
        try:
            link.send(ours)
            msg = await link.read(timeout=HELLO_TIMEOUT)
        except ProtocolError as exc:
            self._warn(f"{link.peer_ip}|{exc}", "cluster: %s sent a bad frame (%s); closed", who,
                       exc)
            link.close("protocol error")
            return False
        except (TimeoutError):
            self._warn(f"{link.peer_ip}|no hello", "cluster: %s sent no hello within %.0fs; "
                       "closed", who, HELLO_TIMEOUT)
            link.close("no hello")
            return False
        except LinkClosed:
            self._hello_failed(link, who, "it closed the connection before its hello")
            return False
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            self._hello_failed(link, who, explain_tls_error(exc))
            return False
        if msg is None:
            self._hello_failed(link, who, "it closed the connection before its hello")
            return False
        if isinstance(msg, Refuse):
            self._warn(f"{link.address}|{msg.reason}", "cluster: refused by %s: %s", who,
                       msg.reason)
            if link.outbound:
                self._dial_errors[link.address] = f"refused: {msg.reason}"
            link.close("refused by peer")
            return False
        if not isinstance(msg, Hello):
            self._warn(f"{link.peer_ip}|before hello", "cluster: %s sent %r before its hello; "
                       "closed", who, msg.T)
            link.close("protocol error")
            return False
        return self._admit(link, msg, who)

    def _hello_failed(self, link: Link, who: str, why: str) -> None:
        link.close(why)
        if link.outbound:
            # TLS 1.3: the server checks our certificate after our side finished the
            # handshake, so its refusal shows up here, as a closed connection.
            if "refused our certificate" not in why:
                why += " -- it may have refused our certificate"
            self._dial_failed(link.address, f"{why} (is cluster.ssl.certfile from the cluster "
                                            "CA?)")
        else:
            self._warn(f"{link.peer_ip}|{why}", "cluster: %s: %s", who, why)

    def _refuse(self, link: Link, reason: str) -> None:
        link.try_send(Refuse(reason))
        link.close(reason)

    def _admit(self, link: Link, hello: Hello, who: str) -> bool:
        if hello.cluster != self.cfg.name:
            self._warn(f"{link.peer_ip}|{hello.node}|cluster", "cluster: refused node %s (%s): "
                       "it belongs to cluster %r, "
                       "this node to %r (cluster.name)", hello.node, who, hello.cluster,
                       self.cfg.name)
            self._refuse(link, f"cluster name {hello.cluster!r} differs from {self.cfg.name!r}")
            return False
        if negotiate((PROTO_MIN, PROTO_MAX), hello.proto) is None:
            self._warn(f"{link.peer_ip}|{hello.node}|proto", "cluster: refused node %s (%s): "
                       "it speaks protocol "
                       "versions %d-%d, this node %d-%d", hello.node, who, *hello.proto,
                       PROTO_MIN, PROTO_MAX)
            self._refuse(link, "no common protocol version")
            return False
        if hello.node == self.name:
            if hello.boot == self.boot:  # we dialed ourselves (a shared seed list)
                if link.outbound:
                    self.self_addrs.add(link.address)
                link.close("self")
                return False
            self._warn(f"{link.peer_ip}|same name", "cluster: refused %s: it calls itself %r "
                       "like this node; "
                       "node.name must be unique in the cluster", who, hello.node,
                       level=logging.ERROR)
            self._refuse(link, f"node name {hello.node!r} is already taken")
            return False
        peer_host = hello.listen_host or link.peer_ip
        dial_addr = _fmt_addr(peer_host, hello.listen_port)
        link.peer, link.boot = hello.node, hello.boot
        link.sync = SyncState()
        old = self.links.get(hello.node)
        if old is not None and not old.closed.is_set():
            if not self._prefer(link, old):
                log.debug("cluster: dropping a second link to %s", hello.node)
                self._refuse(link, "duplicate link")
                return False
            old.close("replaced by a newer link")
        self.links[hello.node] = link
        self.addr_names[dial_addr] = hello.node
        if link.outbound:
            self.addr_names[link.address] = hello.node
        now, wall = time.monotonic(), time.time()
        events = self.membership.heard(hello.node, now, wall, boot=hello.boot,
                                       address=dial_addr)
        self._report(events, link)
        log.debug("cluster: link to %s up (%s, certificate %s)", hello.node, who, link.subject)
        self._ensure_dialer(dial_addr)
        # anti-entropy: tell the peer what we have; it sends back what we lack, and vice versa
        for d in self.replicator.digests():
            link.try_send(d)
        self._send_heartbeat(link)
        return True

    def _prefer(self, new: Link, old: Link) -> bool:
        """Of two links to the same node, keep the one opened by the node whose name sorts
        first (both ends decide the same); a restarted peer's new link always wins."""
        if new.boot != old.boot:
            return True
        first = min(self.name, new.peer)

        def opener(lnk: Link) -> str:
            return self.name if lnk.outbound else lnk.peer

        if opener(new) == first and opener(old) != first:
            return True
        # same opener: a reconnect, the old one is stale
        return not (opener(old) == first and opener(new) != first)

    async def _serve(self, link: Link) -> None:
        name = link.peer
        try:
            while not link.closed.is_set():
                try:
                    msg = await link.read()
                except ProtocolError as exc:
                    log.warning("cluster: node %s sent a bad frame (%s); closing the link", name,
                                exc)
                    link.close("protocol error")
                    break
                if msg is None:
                    link.close("closed by peer")
                    break
                if self.links.get(name) is not link:
                    break
                events = self.membership.heard(name, time.monotonic(), time.time())
                self._report(events, link)
                await self._dispatch(link, msg)
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            link.close(explain_tls_error(exc))
        finally:
            link.close()
            if self.links.get(name) is link:
                del self.links[name]
                if not self._stopping:
                    log.info("cluster: link to %s closed%s", name,
                             f" ({link.close_reason})" if link.close_reason else "")

    # ================================================================== messages
    async def _dispatch(self, link: Link, msg: Message) -> None:
        if isinstance(msg, Heartbeat):
            self._on_heartbeat(link, msg)
        elif isinstance(msg, Entries):
            self._on_entries(link, msg)
        elif isinstance(msg, Digest):
            for m in self.replicator.answer_digest(msg, link.sync):
                link.try_send(m)
                await link.drain()
        elif isinstance(msg, Request):
            self._spawn(self._answer(link, msg), f"cluster rpc {msg.op}")
        elif isinstance(msg, Response):
            fut = link.pending.pop(msg.id, None)
            if fut is not None and not fut.done():
                if msg.ok:
                    fut.set_result(msg.result)
                else:
                    fut.set_exception(ClusterError(f"node {link.peer}: {msg.error}"))
        elif isinstance(msg, Bye):
            self._report(self.membership.left(link.peer, time.time(), msg.reason), link)
            link.close(f"it left: {msg.reason}")
        elif isinstance(msg, Refuse):
            log.warning("cluster: node %s closed the link: %s", link.peer, msg.reason)
            link.close(msg.reason)
        elif isinstance(msg, Hello):
            log.warning("cluster: node %s sent a second hello; closing the link", link.peer)
            link.close("protocol error")

    def _on_heartbeat(self, link: Link, hb: Heartbeat) -> None:
        m = self.membership.members.get(link.peer)
        if m is not None:
            m.stats = _clean_stats(hb.stats)
            skew = hb.sent_at - time.time()
            m.stats["clock_skew_s"] = round(skew, 3)
            if abs(skew) > SKEW_WARN and link.peer not in self._skew_warned:
                self._skew_warned.add(link.peer)
                log.warning("cluster: node %s's clock is %.1fs %s ours: replicated changes are "
                            "ordered by time, keep the clocks in sync (NTP)", link.peer,
                            abs(skew), "ahead of" if skew > 0 else "behind")
        for name, addr in hb.members:
            if self.membership.learn(name, addr):
                log.info("cluster: learned of node %s at %s from %s", name, addr, link.peer)
            if name != self.name and name not in self.links:
                self._ensure_dialer(addr)
        for ns in self.replicator.heartbeat_hashes(hb.hashes, link.sync):
            log.info("cluster: %s state differs from node %s; synchronising", ns, link.peer)
            for d in self.replicator.digest_for(ns):
                link.try_send(d)

    def _on_entries(self, link: Link, msg: Entries) -> None:
        changed = self.replicator.apply(msg, link.peer)
        if not changed:
            return
        self.applied[msg.ns] += len(changed)
        self._log_changes(msg.ns, changed, link.peer)
        if msg.ns == "bans":
            self._schedule_ban_push()
        # flood onwards: peers that already have it stop there (it does not change them)
        for out in chunk_entries(msg.ns, changed):
            for name, other in list(self.links.items()):
                if name != link.peer:
                    other.try_send(out)

    def _log_changes(self, ns: str, changed: list[Entry], origin: str) -> None:
        if len(changed) > LOG_EACH:
            log.info("cluster: %d %s change(s) from node %s", len(changed), ns, origin)
            return
        for e in changed:
            what = "removed" if e.value is None else "added/changed"
            if ns == "psk":
                try:
                    ident = bytes.fromhex(e.key).decode("utf-8", "replace")
                except ValueError:
                    ident = "?"
                log.info("cluster: PSK identity %r %s (change made on node %s, via %s)", ident,
                         what, e.node, origin)
            elif ns == "bans":
                kind, _, value = e.key.partition(":")
                log.info("cluster: ban %s %r %s (change made on node %s, via %s)", kind, value,
                         what, e.node, origin)

    # -- local changes -> deltas --------------------------------------------------------------
    def _broadcast(self, ns: str, entry: Entry) -> None:
        self.replicator.dirty(ns)
        msg = Entries(ns, (entry,))
        for link in list(self.links.values()):
            link.try_send(msg)

    def _psk_changed(self, ident: bytes, entry: Any) -> None:
        self._broadcast("psk", Entry(ident.hex(), entry.secret.hex()
                                     if entry.secret is not None else None, entry.ts,
                                     entry.node))

    def _ban_changed(self, entry: Any) -> None:
        self._broadcast("bans", Entry(f"{entry.kind}:{entry.value}",
                                      entry.ban.as_dict() if entry.ban is not None else None,
                                      entry.ts, entry.node))

    def _hook_psk(self) -> None:
        """``node.psk`` is replaced when PSK is enabled on reload: follow it."""
        store = getattr(self.node, "psk", None)
        if store is self._psk_hooked:
            return
        if store is not None and self._psk_changed not in store.on_local_change:
            store.on_local_change.append(self._psk_changed)
            store.file_changes_to_overlay = True
        self._psk_hooked = store
        self.replicator.dirty("psk")

    def _schedule_ban_push(self) -> None:
        if self._ban_push is not None and not self._ban_push.done():
            self._ban_push_again = True
            return
        self._ban_push = self._spawn(self._push_bans(), "cluster ban push")

    async def _push_bans(self) -> None:
        bans = getattr(self.node, "bans", None)
        while bans is not None:
            self._ban_push_again = False
            res = await bans.push()
            if res.get("closed"):
                log.info("cluster: closed %d live connection(s) named by a replicated ban",
                         len(res["closed"]))
            if not self._ban_push_again:
                break

    # ================================================================== heartbeats
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_interval)
            self._hook_psk()
            for link in list(self.links.values()):
                self._send_heartbeat(link)
            events = self.membership.tick(time.monotonic(), time.time())
            for ev in events:
                self._report([ev], None)
                silent = self.links.get(ev.name)
                if silent is not None:
                    silent.close("silent for down_after")

    def _send_heartbeat(self, link: Link) -> None:
        self._seq += 1
        link.try_send(Heartbeat(seq=self._seq, sent_at=time.time(), stats=self._stats,
                                members=tuple(self.membership.gossip()),
                                hashes=self.replicator.hashes()))

    async def _stats_loop(self) -> None:
        while True:
            self._stats = await self._local_stats()
            await asyncio.sleep(max(self.cfg.heartbeat_interval, 0.5))

    async def _local_stats(self) -> dict[str, Any]:
        node = self.node
        conns = 0
        alive = 0
        with contextlib.suppress(Exception):
            for _i, res in await node.ask_workers("status", timeout=5.0):
                if isinstance(res, dict):
                    conns += int(res.get("connections", 0))
                    alive += 1
        return {"connections": conns, "workers": len(getattr(node, "workers", {})),
                "workers_alive": alive, "version": __version__,
                "started_at": float(getattr(node, "started_at", 0.0)),
                "uptime_s": round(time.time() - float(getattr(node, "started_at", time.time())),
                                  1)}

    def _report(self, events: list[Event], link: Link | None) -> None:
        for ev in events:
            self.events[ev.kind] += 1
            if ev.kind == "joined":
                log.info("cluster: node %s joined (%s, certificate %s)", ev.name,
                         self.membership.members[ev.name].address,
                         link.subject if link else "?")
            elif ev.kind == "back":
                log.info("cluster: node %s is back%s", ev.name,
                         f" ({ev.detail})" if ev.detail else "")
            elif ev.kind == "restarted":
                log.info("cluster: node %s restarted", ev.name)
            elif ev.kind == "down":
                log.warning("cluster: node %s is down (%s)", ev.name, ev.detail)

    # ================================================================== RPC
    async def request(self, name: str, op: str, args: dict[str, Any] | None = None, *,
                      timeout: float = RPC_TIMEOUT) -> Any:
        """Ask node ``name`` to run ``op``; its result. ClusterError / TimeoutError."""
        link = self.links.get(name)
        if link is None or not self.membership.is_up(name):
            raise ClusterError(f"node {name} is not connected")
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        link.pending[rid] = fut
        try:
            link.send(Request(rid, op, args or {}))
            return await asyncio.wait_for(fut, timeout)
        except (LinkClosed, ValueError) as exc:
            raise ClusterError(str(exc)) from None
        finally:
            link.pending.pop(rid, None)

    async def _answer(self, link: Link, req: Request) -> None:
        try:
            result = await self._handle(req.op, req.args)
            resp = Response(req.id, True, result=result)
        except Exception as exc:
            resp = Response(req.id, False, error=(str(exc) or type(exc).__name__)[:1000])
        try:
            link.send(resp)
        except ValueError as exc:  # too large for a frame (e.g. a huge CRL)
            link.try_send(Response(req.id, False, error=str(exc)[:1000]))
        except LinkClosed:
            pass

    async def _handle(self, op: str, args: dict[str, Any]) -> Any:
        if op == "fetch":
            fetcher = self.node.fetcher
            kind, url = str(args["kind"]), str(args["url"])
            if kind not in ("ocsp", "crl") or not url.lower().startswith(("http://",
                                                                          "https://")):
                raise ValueError("fetch: kind must be ocsp or crl and url http(s)")
            body = base64.b64decode(str(args.get("body") or ""), validate=True)
            timeout = _bounded(args.get("timeout"), 0.1, 120.0, "timeout")
            window = _bounded(args.get("window"), 0.0, 7 * 86400.0, "window")
            data, age = await fetcher.fetch_shared(kind, url, body, timeout, window)
            return {"body": base64.b64encode(data).decode(), "age": age}
        if op == "conn_query":
            filters = args.get("filters") or {}
            if not isinstance(filters, dict):
                raise ValueError("conn_query: filters must be an object")
            return await self._local_connections(filters, int(args.get("first", 100)))
        if op == "connection":
            return await self._local_connection(str(args["id"]))
        if op == "kick":
            return await self._local_kick(str(args["id"]), str(args.get("reason") or
                                                                "kicked by operator"))
        raise ValueError(f"unknown cluster operation {op!r}")

    # ================================================================== fetches
    def owner_of(self, kind: str, url: str, body: bytes) -> str:
        up = [n for n in self.membership.up() if n in self.links]
        key = kind.encode() + b"\0" + url.encode() + b"\0" + hashlib.sha256(body).digest()
        return rendezvous_owner([self.name, *up], key)

    async def fetch(self, kind: str, url: str, body: bytes, timeout: float, window: float
                    ) -> tuple[bytes, float]:
        """``NodeFetcher.cluster``: the answer from the URL's owner, or our own fetch."""
        if not self._settled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), JOIN_WAIT + 1.0)
        owner = self.owner_of(kind, url, body)
        if owner != self.name:
            try:
                r = await self.request(owner, "fetch", {
                    "kind": kind, "url": url, "body": base64.b64encode(body).decode(),
                    "timeout": timeout, "window": window}, timeout=timeout + 5.0)
                data = base64.b64decode(str(r["body"]), validate=True)
                age = float(r["age"])
                if not math.isfinite(age) or age < 0:
                    raise ValueError("bad age")
                log.debug("cluster: %s %s answered by node %s (age %.1fs)", kind, url, owner,
                          age)
                return data, age
            except (ClusterError, TimeoutError, KeyError, TypeError,
                    ValueError, binascii.Error) as exc:
                log.info("cluster: node %s could not give %s %s (%s); fetching it here", owner,
                         kind, url, exc)
        result: tuple[bytes, float] = await self.node.fetcher.fetch_shared(kind, url, body,
                                                                          timeout, window)
        return result

    # ================================================================== views
    def metrics(self) -> dict[str, Any]:
        """What /metrics shows about the cluster (cheap, synchronous: no peer is asked)."""
        now_m = time.monotonic()
        members = [{"name": name, "state": m.state,
                    "heartbeat_age_s": (now_m - m.last_heard) if m.last_heard else None}
                   for name, m in sorted(self.membership.members.items())]
        keys = {ns.name: len(ns.versions()) for ns in self.replicator.namespaces.values()
                if ns.available()}
        return {"members": members, "links": len(self.links), "keys": keys,
                "applied": dict(self.applied), "events": dict(self.events)}

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node: this one first, then the members by name."""
        now_m, now = time.monotonic(), time.time()
        mine = await self._local_stats()
        host = "" if _unspecified(self.listen_host) else self.listen_host.strip("[]")
        out: list[dict[str, Any]] = [{
            "name": self.name, "self": True, "status": UP,
            "address": _fmt_addr(host or "0.0.0.0", self.listen_port),
            "last_heartbeat": now, "heartbeat_age_s": 0.0, "since": mine["started_at"],
            **mine}]
        for name in sorted(self.membership.members):
            m = self.membership.members[name]
            heard = m.last_heard_wall or None
            doc: dict[str, Any] = {
                "name": name, "self": False, "status": m.state, "address": m.address,
                "last_heartbeat": heard,
                "heartbeat_age_s": round(now_m - m.last_heard, 1) if m.last_heard else None,
                "since": m.since or None, "linked": name in self.links,
                "connections": m.stats.get("connections") if m.state == UP else None,
                "workers": m.stats.get("workers"), "version": m.stats.get("version"),
                "uptime_s": m.stats.get("uptime_s") if m.state == UP else None,
                "clock_skew_s": m.stats.get("clock_skew_s"),
            }
            if m.state == DOWN:
                doc["down_reason"] = m.down_reason
            out.append(doc)
        return out

    async def _local_connections(self, filters: dict[str, Any], first: int
                                 ) -> dict[str, Any]:
        from ..server.admin_ops import CONN_FILTERS, MAX_QUERY

        clean = {k: str(v) for k, v in filters.items() if k in CONN_FILTERS and v}
        first = max(0, min(first, MAX_QUERY))
        results = await self.node.ask_workers("conn_query", timeout=RPC_TIMEOUT, first=first,
                                              **clean)
        count, data, errors = 0, [], []
        for index, res in results:
            if isinstance(res, BaseException):
                errors.append(f"node {self.name} worker {index}: {res}")
                continue
            count += int(res["count"])
            for rec in res["data"]:
                d = dict(rec)
                d["conn_id"] = rec["id"]
                d["id"] = f"{index}.{rec['id']}@{self.name}"
                d["worker"] = index
                d["node"] = self.name
                data.append(d)
        return {"count": count, "data": data, "errors": errors}

    async def find_connections(self, filters: dict[str, Any], first: int = 100
                               ) -> dict[str, Any]:
        """Connections matching ``filters`` on every node up (ids ``<worker>.<id>@<node>``):
        ``{"count", "data", "errors"}``, each node's first ``first``."""
        peers = [n for n in self.membership.up() if n in self.links]

        async def remote(name: str) -> Any:
            try:
                return await self.request(name, "conn_query",
                                          {"filters": filters, "first": first})
            except (ClusterError, TimeoutError) as exc:
                return ClusterError(f"node {name}: {exc or 'timed out'}")

        results = await asyncio.gather(self._local_connections(filters, first),
                                       *(remote(n) for n in peers))
        count, data, errors = 0, [], []
        for name, res in zip([self.name, *peers], results, strict=True):
            if isinstance(res, BaseException) or not isinstance(res, dict):
                errors.append(str(res))
                continue
            try:
                count += int(res["count"])
                data += [r for r in res["data"] if isinstance(r, dict) and r.get("node") == name]
                errors += [str(e) for e in res.get("errors", [])]
            except (KeyError, TypeError, ValueError):
                errors.append(f"node {name}: malformed answer")
        for n, m in self.membership.members.items():
            if m.state != UP:
                errors.append(f"node {n} is {m.state}: its connections are not listed")
        return {"count": count, "data": data, "errors": errors}

    async def _local_connection(self, cid: str) -> Any:
        worker, _, rec_id = cid.partition(".")
        if not worker.isdigit():
            raise ValueError("connection ids are <worker>.<id>")
        h = self.node.workers.get(int(worker))
        if h is None or h.peer is None:
            return None
        rec = await h.peer.request("connection", timeout=RPC_TIMEOUT, id=rec_id)
        if rec is None:
            return None
        d = dict(rec)
        d["conn_id"], d["id"], d["worker"], d["node"] = (rec["id"], f"{worker}.{rec['id']}@"
                                                         f"{self.name}", int(worker), self.name)
        return d

    async def _local_kick(self, cid: str, reason: str) -> bool:
        worker, _, rec_id = cid.partition(".")
        if not worker.isdigit():
            raise ValueError("connection ids are <worker>.<id>")
        h = self.node.workers.get(int(worker))
        if h is None or h.peer is None:
            return False
        done = await h.peer.request("kick", timeout=RPC_TIMEOUT, id=rec_id, reason=reason)
        if done:
            log.info("cluster: kicked connection %s at the request of another node", cid)
        return bool(done)

    async def connection(self, node: str, cid: str) -> Any:
        """One connection on ``node`` (``<worker>.<id>``), or None."""
        if node == self.name:
            return await self._local_connection(cid)
        return await self.request(node, "connection", {"id": cid})

    async def kick(self, node: str, cid: str, reason: str) -> bool:
        if node == self.name:
            return await self._local_kick(cid, reason)
        return bool(await self.request(node, "kick", {"id": cid, "reason": reason}))


def _files_sig(cfg: Any) -> tuple[Any, ...]:
    """What identifies the [cluster.ssl] material: paths, password, and each file's stat."""
    ssl_cfg = cfg.ssl
    if ssl_cfg is None:
        return ()
    out: list[Any] = [str.__str__(ssl_cfg.password) if ssl_cfg.password is not None else None]
    for path in (ssl_cfg.cacertfile, ssl_cfg.certfile, ssl_cfg.keyfile):
        try:
            st = os.stat(path)
            out.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((path, None))
    return tuple(out)


def _bounded(v: Any, lo: float, hi: float, name: str) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{name} must be a number from {lo} to {hi}")
    return float(v)


def _clean_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Only the known, scalar fields of a peer's stats (they end up in the admin API)."""
    out: dict[str, Any] = {}
    for k in ("connections", "workers", "workers_alive", "uptime_s", "started_at"):
        v = stats.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = v
    v = stats.get("version")
    if isinstance(v, str):
        out["version"] = v[:64]
    return out


__all__ = ["ClusterError", "ClusterService", "rendezvous_owner"]

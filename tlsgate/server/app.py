"""The gateway of one worker process: its listeners, reload, graceful stop.

Start-up order: build every listener's TLS context (all problems reported together, nothing
bound yet), bind the sockets, then accept. A reload (:meth:`Gateway.apply_config`, driven by the
node process on SIGHUP) rebuilds every context; if anything is wrong the old contexts keep
serving and the result says why. Stop: close the listening sockets, let live connections drain
for ``node.shutdown_timeout``, then close what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL

from ..accesslog import access
from ..auth import AuthConfigError, AuthRequest, HttpAuthenticator
from ..config import Config, ConfigError, Problem
from ..config.schema import ListenerBase
from ..gateway.gate import ClientGate
from ..gateway.handshakes import HandshakeBatcher
from ..gateway.listener import ListenerRuntime
from ..gateway.record import ConnRecord
from ..gateway.registry import Registry
from ..gateway.tickets import TicketRefresher
from ..mqtt import Connect, Refusal
from ..psk_table import PskTable, printable_identity
from ..tls import unbound
from ..tls.client_context import ClientTls, ClientTlsError, build_client_tls
from ..tls.context import (
    ContextError,
    ContextHook,
    build_server_context,
    load_ticket_secret,
    ticket_epoch,
)
from ..tls.engine import TlsError, sweep_bios
from ..tls.psk import (
    PskResumed,
    PskUnavailable,
    enable_psk,
    psk_ciphers,
    psk_identity,
    require_psk_support,
)
from .control import ControlPeer
from .revocation import RevocationRuntime
from .sockets import listening_socket

#: Seconds between sweeps of idle connections' enlarged BIO buffers (engine.sweep_bios): a
#: connection gives back its transfer buffers 1-2 intervals after its last large chunk.
BIO_SWEEP_INTERVAL = 1.0

log = logging.getLogger("tlsgate.server")


@dataclass
class _Running:
    rt: ListenerRuntime
    sock: socket.socket
    server: asyncio.AbstractServer | None = None


@dataclass
class Built:
    listeners: dict[str, tuple[ListenerBase, Any]]
    upstream_tls: dict[str, ClientTls | None]
    authenticator: HttpAuthenticator | None
    #: The ticket-key period the listeners' contexts were made with.
    ticket_period: int


@dataclass
class ReloadResult:
    ok: bool
    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "changes": self.changes, "problems": self.problems}


class Gateway:
    def __init__(self, config: Config, config_path: str | None, *, reuse_port: bool = False,
                 sockets: dict[str, socket.socket] | None = None,
                 node: Callable[[], ControlPeer | None] | None = None,
                 ticket_secret: bytes | None = None) -> None:
        self.config = config
        #: What every listener's session-ticket keys are derived from: the node's (the same in
        #: every worker, so a client resumes on any of them), or this process's own. Kept for
        #: the life of the process, so tickets survive reloads. Never logged.
        self.ticket_secret = ticket_secret or os.urandom(32)
        self.config_path = config_path
        self.reuse_port = reuse_port
        self.registry = Registry()
        self.listeners: dict[str, _Running] = {}
        self.context_hooks: list[ContextHook] = []
        self.on_listener: list[Callable[[ListenerRuntime], None]] = []
        self.started_at = time.time()
        self._inherited = sockets or {}
        self._reload_lock = asyncio.Lock()
        self.reloads = 0
        self.last_reload: ReloadResult | None = None
        self.upstream_tls: dict[str, ClientTls | None] = {}
        self.authenticator: HttpAuthenticator | None = None
        self._retired: list[HttpAuthenticator] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The control channel to the node (None when running without one, e.g. check-config).
        self.node = node
        self.revocation = RevocationRuntime(config, node)
        #: This worker's TLS-PSK identities (the node pushes the merged table: psk_set).
        self.psk_table = PskTable()
        self.revocation.on_revoked(self._close_revoked)
        self._sweeper: asyncio.TimerHandle | None = None
        self._rekeyer: asyncio.TimerHandle | None = None
        #: The ticket-key period whose keys every listener's contexts hold.
        self._key_epoch: int | None = None
        #: Fresh session tickets for long-lived connections (ssl_options.session_ticket_refresh).
        self.tickets = TicketRefresher(lambda: [r.rt for r in self.listeners.values()])
        #: This worker's handshake batching (node.handshake_batch_window), shared by its
        #: listeners; made with the first listener (it needs the running loop).
        self.handshakes: HandshakeBatcher | None = None

    def _schedule_rekey(self) -> None:
        """Install the current period's ticket keys if a boundary passed since the listeners'
        were made (a start or a reload that spans one), and arm a timer for the next boundary
        (node.session_ticket_key_rotation; the same wall-clock instant in every worker and on
        every node)."""
        if self._rekeyer is not None:
            self._rekeyer.cancel()
            self._rekeyer = None
        rotation = self.config.node.session_ticket_key_rotation
        if rotation <= 0:
            return
        now = time.time()
        epoch = ticket_epoch(now, rotation)
        if epoch != self._key_epoch:
            self._rekey_listeners(epoch=epoch)
        wait = (epoch + 1) * rotation - now
        self._rekeyer = asyncio.get_running_loop().call_later(wait + 0.01, self._rekey)

    def _rekey(self) -> None:
        """The timer at a period boundary: every listener's contexts get the new period's keys
        (tickets issued in the period before still resume until the next one, where the
        ticket-key callback exists). A timer that fires a hair early only re-arms."""
        self._rekeyer = None
        self._schedule_rekey()

    def _rekey_listeners(self, secret: bytes | None = None, epoch: int | None = None) -> None:
        """Install the period's ticket keys (default: the current period) in every listener's
        contexts (derived from ``secret`` from now on, when given), then send connected clients
        a ticket made with them where their current one would stop resuming before the next
        refresh sweep."""
        if epoch is None:
            epoch = ticket_epoch(time.time(), self.config.node.session_ticket_key_rotation)
        self._key_epoch = epoch
        for label, run in self.listeners.items():
            rekey = getattr(run.rt.context, "rekey", None)
            if rekey is not None:
                try:
                    rekey(epoch, secret)
                except Exception:  # keep the old key rather than take the worker down
                    log.exception("%s: could not install the new session-ticket key", label)
        log.debug("session-ticket keys of period %d installed", epoch)
        # a plain rotation with the previous key still accepted: a sweep each period is enough
        grace = 0.0
        if secret is None and not unbound.grace_missing():
            grace = self.config.node.session_ticket_key_rotation
        self.tickets.after_rekey(time.time(), grace)

    def set_ticket_secret(self, secret: bytes) -> None:
        """A new node secret (the cluster agreed on another node's): every listener's ticket
        keys are derived from it from now on, and connected clients get a ticket made with
        them. With node.session_ticket_secret_file the file keeps winning."""
        self.ticket_secret = secret
        if not self.config.node.session_ticket_secret_file:
            self._rekey_listeners(secret)

    def _sweep_bios(self) -> None:
        """Every second: give back the BIO buffers of connections whose large transfers are
        over (tlsgate.tls.engine.sweep_bios), and send fresh session tickets where due."""
        sweep_bios()
        self.tickets.tick(time.time())
        self._sweeper = asyncio.get_running_loop().call_later(BIO_SWEEP_INTERVAL,
                                                              self._sweep_bios)

    # ------------------------------------------------------------------ building
    def build(self, config: Config) -> Built:
        """Everything a start (or reload) loads from files: every enabled listener's context
        (TLS and 国密), each upstream's client TLS context, the authenticator. Raises
        ConfigError listing all problems, each with its key."""
        out: dict[str, tuple[ListenerBase, Any]] = {}
        problems: list[Problem] = []
        hooks = list(self.context_hooks)
        secret = self.ticket_secret
        if config.node.session_ticket_secret_file:
            try:
                secret = load_ticket_secret(config.node.session_ticket_secret_file)
            except ValueError as exc:
                problems.append(Problem("node.session_ticket_secret_file", str(exc)))
        if config.psk_authentication.enable:
            try:
                require_psk_support()
            except PskUnavailable as exc:
                problems.append(Problem("psk_authentication.enable", str(exc)))
            hooks.append(self._psk_hook)
        rotation = config.node.session_ticket_key_rotation
        period = ticket_epoch(time.time(), rotation)  # one for every context of this build
        for name, lst in config.listeners.ssl.items():
            if not lst.enable:
                continue
            key = f"listeners.ssl.{name}"
            try:
                ctx = build_server_context(lst.ssl_options, key, hooks, secret, rotation,
                                           period)
                out[f"ssl:{name}"] = (lst, self.revocation.prepare(key, ctx))
            except ContextError as exc:
                problems.extend(exc.problems)
        for name, glst in config.listeners.gm.items():
            if not glst.enable:
                continue
            from ..tls.gm import build_gm_context  # loads Tongsuo only when a GM listener exists

            try:
                out[f"gm:{name}"] = (glst, build_gm_context(glst.ssl_options,
                                                            f"listeners.gm.{name}"))
            except ContextError as exc:
                problems.extend(exc.problems)
        upstream_tls: dict[str, ClientTls | None] = {}
        for name, up in config.upstreams.items():
            upstream_tls[name] = None
            if up.ssl.enable:
                try:
                    upstream_tls[name] = build_client_tls(up.ssl, f"upstreams.{name}.ssl")
                except ClientTlsError as exc:
                    problems.append(Problem(exc.key, exc.message))
        auth = None
        if config.authentication is not None and config.authentication.enable:
            try:
                auth = HttpAuthenticator(config.authentication)
            except (AuthConfigError, ClientTlsError) as exc:
                problems.append(Problem(exc.key, exc.message))
        if problems:
            raise ConfigError(self.config_path or "<config>", problems)
        return Built(out, upstream_tls, auth, period)

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        built = self.build(self.config)
        self.upstream_tls = built.upstream_tls
        await self._set_authenticator(built.authenticator)
        for label, (cfg, ctx) in built.listeners.items():
            await self.revocation.start_context(ctx)
            await self._start_listener(label, cfg, ctx)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(BIO_SWEEP_INTERVAL,
                                                                  self._sweep_bios)
        self._key_epoch = built.ticket_period  # a boundary may have passed since (the awaits)
        self._schedule_rekey()
        log.info("tlsgate node %s ready: %s", self.config.node.name,
                 ", ".join(f"{lb} on {r.rt.cfg.bind}" for lb, r in self.listeners.items()))

    async def _set_authenticator(self, auth: HttpAuthenticator | None) -> None:
        old, self.authenticator = self.authenticator, auth
        if auth is not None:
            await auth.start()
        if old is not None:
            # calls in flight finish on the old one; it closes once they are done
            self._retired.append(old)
            asyncio.get_running_loop().call_later(
                self.config.authentication.request_timeout + 1.0
                if self.config.authentication else 5.0,
                lambda: self._spawn(old.close(), "close old authenticator"))

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _auth_check(self, rec: ConnRecord, connect: Connect
                          ) -> tuple[Refusal, str] | None:
        auth = self.authenticator
        if auth is None:
            return None
        res = await auth.authenticate(AuthRequest(
            username=rec.username, password=connect.password, clientid=rec.client_id or "",
            peerhost=rec.peer[0], peerport=rec.peer[1], cert_common_name=rec.cert_cn,
            cert_subject=rec.cert_subject, psk_identity=rec.psk_identity))
        if res.allowed:
            return None
        refusal = res.refusal or Refusal.NOT_AUTHORIZED
        return refusal, f"authentication: {res.decision.value}" + \
            (f" ({res.reason})" if res.reason else "")

    # ------------------------------------------------------------------ TLS-PSK
    def _psk_hook(self, ctx: SSL.Context, opts: Any) -> None:
        """PSK on a listener context (and each SNI context): PSK suites first (SHA-256 ones
        for TLS 1.3, see tlsgate.tls.psk), keys from this worker's table."""
        ciphers = psk_ciphers(opts.tls12_ciphers(), opts.tls13_ciphers())
        try:
            if "tlsv1.2" in opts.versions:
                ctx.set_cipher_list(ciphers.tls12.encode())
            if "tlsv1.3" in opts.versions:
                ctx.set_tls13_ciphersuites(ciphers.tls13.encode())
        except SSL.Error as exc:
            raise ValueError(f"ciphers: OpenSSL refused the PSK suites: {exc}") from None
        enable_psk(ctx, self.psk_table, on_unknown=self._psk_unknown)

    @staticmethod
    def _psk_unknown(identity: bytes) -> None:
        log.warning("TLS-PSK: a client offered the unknown identity %r; refused",
                    printable_identity(identity))

    @staticmethod
    def _psk_identity_of(sess: Any) -> str | None:
        try:
            return psk_identity(sess.conn)
        except PskResumed:  # a safety net: PSK sessions are made non-resumable
            raise TlsError("a resumed TLS-PSK session is refused (the identity must be "
                           "checked against the table)") from None

    def _install(self, rt: ListenerRuntime) -> None:
        """Per-listener hooks of this gateway (run at start and after every reload)."""
        if self.handshakes is None:
            self.handshakes = HandshakeBatcher(rt.loop, 0.0)
        self.handshakes.window = self.config.node.handshake_batch_window
        rt.handshakes = self.handshakes
        rt.upstream_tls = self.upstream_tls.get(rt.cfg.upstream)
        rt.revocation = self.revocation
        rt.psk_identity_of = (self._psk_identity_of if self.config.psk_authentication.enable
                              and rt.kind == "ssl" else None)
        # The HTTP authentication check only while an authenticator exists: every admission
        # check is one more coroutine per connection.
        if self.authenticator is not None:
            if self._auth_check not in rt.admission:
                rt.admission.append(self._auth_check)
        elif self._auth_check in rt.admission:
            rt.admission.remove(self._auth_check)
        for hook in self.on_listener:
            hook(rt)

    async def _start_listener(self, label: str, cfg: ListenerBase, ctx: Any) -> None:
        kind, name = label.split(":", 1)
        rt = ListenerRuntime(kind, name, cfg, self.config.listener_mqtt(cfg.mqtt),
                             self.config.upstreams[cfg.upstream], ctx, self.registry)
        self._install(rt)
        sock = self._inherited.pop(label, None)
        if sock is None:
            try:
                sock = listening_socket(cfg.bind, cfg.backlog, self.reuse_port)
            except OSError as exc:
                raise ConfigError(self.config_path or "<config>", [Problem(
                    f"listeners.{kind}.{name}.bind",
                    f"cannot listen on {cfg.bind}: {exc.strerror or exc}")]) from None
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: ClientGate(rt), sock=sock,
                                          backlog=cfg.backlog)
        self.listeners[label] = _Running(rt, sock, server)

    def bound_port(self, label: str) -> int:
        return int(self.listeners[label].sock.getsockname()[1])

    # ------------------------------------------------------------------ reload
    async def apply_config(self, new_config: Config) -> ReloadResult:
        """Switch to ``new_config`` (contexts rebuilt); on any problem keep the old one."""
        async with self._reload_lock:
            res = await self._apply(new_config)
        self.reloads += 1
        self.last_reload = res
        return res

    async def _apply(self, new_config: Config) -> ReloadResult:
        try:
            built = self.build(new_config)
        except ConfigError as exc:
            return ReloadResult(False, problems=[str(p) for p in exc.problems])
        changes: list[str] = []
        old_labels = set(self.listeners)
        old_auth = self.config.authentication
        self.config = new_config
        self.upstream_tls = built.upstream_tls
        if new_config.authentication != old_auth:
            await self._set_authenticator(built.authenticator)
            changes.append("authentication: new settings")
        elif built.authenticator is not None:
            await built.authenticator.close()  # unchanged: keep the warm one
        self.revocation.update_config(new_config)
        for label, (cfg, ctx) in built.listeners.items():
            await self.revocation.start_context(ctx)
            run = self.listeners.get(label)
            if run is not None and run.rt.cfg.bind == cfg.bind:
                old_ctx = run.rt.context
                run.rt.apply(cfg, new_config.listener_mqtt(cfg.mqtt),
                             new_config.upstreams[cfg.upstream], ctx)
                self._install(run.rt)
                await self.revocation.retire_context(old_ctx)
                changes.append(f"{label}: new TLS context")
                continue
            if run is not None:
                await self._stop_listener(label)
                changes.append(f"{label}: bind changed to {cfg.bind}")
            else:
                changes.append(f"{label}: started on {cfg.bind}")
            try:
                await self._start_listener(label, cfg, ctx)
            except ConfigError as exc:
                changes.append(f"{label}: NOT started: {exc.problems[0]}")
        for label in old_labels - set(built.listeners):
            await self._stop_listener(label)
            changes.append(f"{label}: stopped (removed from the config; live connections stay)")
        # the new contexts hold the keys of the period they were made in (the rotation may
        # have changed, or a boundary passed while the listeners were replaced)
        self._key_epoch = built.ticket_period
        self._schedule_rekey()
        return ReloadResult(True, changes=changes)

    async def _stop_listener(self, label: str) -> None:
        run = self.listeners.pop(label)
        if run.server is not None:
            run.server.close()
        run.sock.close()
        await self.revocation.retire_context(run.rt.context)

    def _close_revoked(self, conn_ids: set[str]) -> None:
        for cid in conn_ids:
            self.registry.kick(cid, "certificate revoked by a refreshed CRL "
                                    "(close_revoked_connections)")

    # ------------------------------------------------------------------ stop
    async def stop(self) -> None:
        """Stop accepting, let connections drain, then close what is left."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._rekeyer is not None:
            self._rekeyer.cancel()
            self._rekeyer = None
        self.tickets.stop()
        for label in list(self.listeners):
            await self._stop_listener(label)
        deadline = time.monotonic() + self.config.node.shutdown_timeout
        if len(self.registry):
            log.info("draining %d connection(s) for up to %.0fs", len(self.registry),
                     self.config.node.shutdown_timeout)
        while len(self.registry) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for rec in self.registry:
            if rec.conn is not None:
                rec.conn.close("tlsgate shutting down")
        await asyncio.sleep(0)  # let transports flush their close
        for auth in [self.authenticator, *self._retired]:
            if auth is not None:
                await auth.close()
        await self.revocation.close()
        access.flush()

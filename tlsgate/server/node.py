"""The node process: supervises the workers and owns everything that is once per node.

``tlsgate serve`` runs this. It validates the whole configuration (every certificate and key
loads) before any worker starts, then starts ``node.workers`` worker processes. Each worker
binds the listening ports itself with SO_REUSEPORT, so the kernel spreads new connections over
them, and a crashed worker is replaced (with back-off) while the others keep serving.

Signals go to the node: SIGHUP re-reads and validates the file and hands the same TOML text to
every worker (bad new material: nothing changes, the log says why); SIGTERM/SIGINT ask every
worker to drain and stop. Per-node services (admin API, cluster channel, OCSP/CRL fetching)
live here so that they run once per node, not once per worker.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, ConfigError, Problem, parse
from ..config.types import split_hostport
from ..psk_table import PskError
from .app import Gateway, ReloadResult
from .control import ControlError, ControlPeer
from .fetch import NodeFetcher
from .pskstore import PskStore, encode_table
from .ticket_secret import NodeTicketSecret

log = logging.getLogger("tlsgate.node")

RESTART_BACKOFF_MAX = 30.0


@dataclass
class WorkerHandle:
    index: int
    proc: asyncio.subprocess.Process | None = None
    peer: ControlPeer | None = None
    pid: int = 0
    started: float = 0.0
    restarts: int = 0
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


class StartError(Exception):
    pass


class Node:
    def __init__(self, config: Config, path: str | None, toml_text: str) -> None:
        self.config = config
        self.path = path
        self.toml_text = toml_text
        self.workers: dict[int, WorkerHandle] = {}
        #: Every worker derives its session-ticket keys from ``tickets.secret``
        #: (tlsgate.tls.context), so a client resumes on any worker, also one restarted after a
        #: crash; in a cluster it is the replicated entry (tlsgate.server.ticket_secret): nodes
        #: adopt the longest-running node's, so clients resume on any node. Memory only.
        self.tickets = NodeTicketSecret(os.urandom(32), config.node.name, time.time())
        self.tickets.on_change.append(self._adopt_ticket_secret)
        self.stopping = False
        self.started_at = time.time()
        self._supervisors: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        self.stop_event = asyncio.Event()
        self._sighup: asyncio.Task[ReloadResult] | None = None
        self.last_reload: ReloadResult | None = None
        #: One HTTP fetch of an OCSP response / CRL for all workers.
        self.fetcher = NodeFetcher()
        #: Operations workers may request from the node (features add theirs).
        self.worker_requests: dict[str, Any] = {"http_fetch": self.fetcher.handle}
        #: Per-node services with async start()/stop() (admin API, cluster, fetchers).
        self.services: list[Any] = []
        #: Called after a worker (re)started, to push node state to it (bans, ...).
        self.on_worker_started: list[Callable[[WorkerHandle], Awaitable[None]]] = []
        #: TLS-PSK identities (file + admin API overlay), None while PSK is disabled.
        self.psk: PskStore | None = None
        #: The cluster (tlsgate.cluster.ClusterService) when [cluster] enable = true.
        self.cluster: Any = None
        self._make_services()

    def _make_services(self) -> None:
        if self.config.dashboard.enable:
            try:
                admin = importlib.import_module("tlsgate.admin")
                service = admin.AdminService
            except (ImportError, AttributeError):
                log.warning("the admin API is not part of this build; [dashboard] ignored")
            else:
                self.services.append(service(self))
        if self.config.cluster.enable:  # after the admin service: it shares node.bans
            from ..cluster import ClusterService

            self.services.append(ClusterService(self))
        from .watch import FileWatcher  # node.reload_on_change (idles while off)

        self.services.append(FileWatcher(self))

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        await _validate(self.config, self.path)  # raises ConfigError
        self._load_psk(self.config)
        self._check_ports_free(self.config)
        n = self.config.node.worker_count()
        # Node services first (admin API, cluster, file watcher): a bad [dashboard] or
        # [cluster] setting stops the start before any worker exists, and once a client port
        # answers, the admin API does too.
        try:
            for svc in self.services:
                await svc.start()  # e.g. the admin API: ConfigError naming dashboard.listen
        except BaseException:
            await self.stop()
            raise
        results = await asyncio.gather(*(self._spawn(i) for i in range(n)),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise StartError(str(errors[0]))
        binds = [f"{label} on {lst.bind}" for label, lst in self._enabled(self.config)]
        log.info("tlsgate node %s ready: %s (%d worker%s)", self.config.node.name,
                 ", ".join(binds), n, "" if n == 1 else "s")

    @staticmethod
    def _enabled(config: Config) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [
            (f"ssl:{n}", lst) for n, lst in config.listeners.ssl.items() if lst.enable]
        out += [(f"gm:{n}", lst) for n, lst in config.listeners.gm.items() if lst.enable]
        return out

    def _check_ports_free(self, config: Config, skip: set[str] | None = None) -> None:
        problems = ports_taken(config, skip)
        if problems:
            raise ConfigError(self.path or "<config>", problems)



    async def _spawn(self, index: int) -> WorkerHandle:
        h = self.workers.get(index) or WorkerHandle(index)
        self.workers[index] = h
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            h.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tlsgate.server.worker", "--fd", str(child.fileno()),
                "--index", str(index), pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        finally:
            child.close()
        h.pid = h.proc.pid
        h.peer = await ControlPeer.from_socket(parent, self._handlers(h), f"worker {index}")
        loop = asyncio.get_running_loop()
        h.tasks = [loop.create_task(h.peer.run(), name=f"control worker {index}")]
        try:
            await h.peer.request("start", timeout=60.0, toml=self.toml_text, path=self.path,
                                 psk=encode_table(self.psk.merged()) if self.psk else None,
                                 ticket_secret=self.tickets.secret.hex())
        except (ControlError, TimeoutError) as exc:
            if h.proc.returncode is None:
                h.proc.kill()
            await h.proc.wait()
            raise StartError(f"worker {index} failed to start: {exc}") from None
        h.started = time.monotonic()
        for cb in list(self.on_worker_started):
            try:
                await cb(h)
            except Exception:  # a state push must not fail the worker's start
                log.exception("pushing node state to worker %d failed", index)
        sup = loop.create_task(self._supervise(h), name=f"supervise worker {index}")
        self._supervisors.add(sup)
        sup.add_done_callback(self._supervisors.discard)
        return h

    def _handlers(self, h: WorkerHandle) -> dict[str, Any]:
        """Requests a worker may send to the node (e.g. fetch a CRL once for all workers)."""
        return dict(self.worker_requests)

    async def ask_workers(self, op: str, timeout: float = 10.0, **args: Any
                          ) -> list[tuple[int, Any]]:
        """Send ``op`` to every live worker; ``[(index, result or the exception)]``."""
        live = [h for h in self.workers.values()
                if h.peer is not None and h.proc is not None and h.proc.returncode is None]

        async def one(h: WorkerHandle) -> tuple[int, Any]:
            assert h.peer is not None
            try:
                return h.index, await h.peer.request(op, timeout=timeout, **args)
            except (ControlError, TimeoutError) as exc:
                return h.index, exc

        return list(await asyncio.gather(*(one(h) for h in live)))

    def tell_workers(self, op: str, **args: Any) -> None:
        """Notify every live worker (no answer)."""
        for h in self.workers.values():
            if h.peer is not None:
                h.peer.notify(op, **args)

    async def _supervise(self, h: WorkerHandle) -> None:
        assert h.proc is not None
        rc = await h.proc.wait()
        if self.stopping:
            return
        ran = time.monotonic() - h.started
        if ran > 60:
            h.restarts = 0
        delay = min(RESTART_BACKOFF_MAX, 0.5 * (2 ** h.restarts))
        h.restarts += 1
        log.error("worker %d (pid %d) exited with code %s after %.0fs; restarting in %.1fs",
                  h.index, h.pid, rc, ran, delay)
        await asyncio.sleep(delay)
        while not self.stopping:
            try:
                await self._spawn(h.index)
                log.info("worker %d restarted (pid %d)", h.index, h.pid)
                return
            except StartError as exc:
                log.error("%s; retrying in %.0fs", exc, RESTART_BACKOFF_MAX)
                await asyncio.sleep(RESTART_BACKOFF_MAX)

    # ------------------------------------------------------------------ reload
    async def reload(self) -> ReloadResult:
        async with self._reload_lock:
            res = await self._reload()
        self.last_reload = res
        if res.ok:
            log.info("reload done: %s", "; ".join(res.changes) or "nothing changed")
        else:
            log.error("reload failed, the previous configuration keeps serving: %s",
                      "; ".join(res.problems))
        return res

    async def _reload(self) -> ReloadResult:
        text = self.toml_text
        if self.path is not None:
            try:
                with open(self.path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                return ReloadResult(False, problems=[f"{self.path}: {exc.strerror}"])
        try:
            import tomllib
            config = parse(tomllib.loads(text), self.path or "<config>")
            await _validate(config, self.path)
            old_binds = {lst.bind for _, lst in self._enabled(self.config)}
            self._check_ports_free(config, skip=old_binds)
        except ConfigError as exc:
            return ReloadResult(False, problems=[str(p) for p in exc.problems])
        except ValueError as exc:  # TOML syntax
            return ReloadResult(False, problems=[f"{self.path}: not valid TOML: {exc}"])
        psk_change = self._reload_psk(config)
        if psk_change is not None and psk_change.startswith("ERROR "):
            return ReloadResult(False, problems=[psk_change[6:]])
        old_config, self.config = self.config, config
        self.toml_text = text
        changes: list[str] = [psk_change] if psk_change else []
        for svc in self.services:  # services that care say what a reload means for them
            hook = getattr(svc, "config_changed", None)
            if hook is not None:
                changes += hook(old_config, config)
        if config.cluster.enable and self.cluster is None:
            log.warning("[cluster] enable = true takes effect at the next restart of this node")
            changes.append("cluster: enabling it needs a restart")
        problems: list[str] = []
        for h in list(self.workers.values()):
            if h.peer is None:
                continue
            try:
                r = await h.peer.request("reload", timeout=30.0, toml=text, path=self.path)
            except (ControlError, TimeoutError) as exc:
                problems.append(f"worker {h.index}: {exc}")
                continue
            if not r["ok"]:
                problems.extend(f"worker {h.index}: {p}" for p in r["problems"])
            elif h.index == min(self.workers):
                changes += list(r["changes"])
        return ReloadResult(not problems, changes=changes, problems=problems)

    # ------------------------------------------------------------------ PSK
    def _load_psk(self, config: Config) -> None:
        """At start: the PSK file must load (ConfigError naming file and line otherwise)."""
        cfg = config.psk_authentication
        if not cfg.enable:
            return
        store = PskStore(cfg, config.node.data_dir, config.node.name)
        try:
            store.load()
        except (PskError, OSError) as exc:
            raise ConfigError(self.path or "<config>",
                              [Problem("psk_authentication.init_file", str(exc))]) from None
        store.on_change.append(self._push_psk)
        self.psk = store
        log.info("TLS-PSK: %d identities (%s)", len(store.merged()), cfg.init_file)

    def _reload_psk(self, config: Config) -> str | None:
        """A change description, None (nothing to say), or "ERROR <why>" (keep everything)."""
        cfg = config.psk_authentication
        if not cfg.enable:
            if self.psk is not None:
                self.psk = None
                self.tell_workers("psk_set", table={})
                return "psk_authentication: disabled"
            return None
        if self.psk is None:
            try:
                self._load_psk(config)
            except ConfigError as exc:
                return "ERROR " + str(exc.problems[0])
            self._push_psk(self.psk.merged() if self.psk else {})
            return "psk_authentication: enabled"
        before = self.psk.merged()
        why = self.psk.reload_file(cfg)
        if why is not None:
            return "ERROR " + why
        after = self.psk.merged()
        if before == after:
            return None
        added, removed = after.keys() - before.keys(), before.keys() - after.keys()
        return (f"psk_authentication: {len(added)} identities added, {len(removed)} removed, "
                f"{sum(1 for k in after.keys() & before.keys() if after[k] != before[k])} "
                "changed")

    def cluster_ticket_secret(self) -> NodeTicketSecret | None:
        """What the cluster replicates as the ticket secret; None when this node's comes from
        node.session_ticket_secret_file (the file wins; the node takes no part)."""
        return None if self.config.node.session_ticket_secret_file else self.tickets

    def _adopt_ticket_secret(self, secret: bytes) -> None:
        log.info("session tickets: this node now uses the cluster's ticket secret (sessions "
                 "resume on every node)")
        self.tell_workers("ticket_secret", secret=secret.hex())

    def _push_psk(self, table: dict[bytes, bytes]) -> None:
        self.tell_workers("psk_set", table=encode_table(table))

    # ------------------------------------------------------------------ stop
    async def stop(self) -> None:
        self.stopping = True
        for svc in reversed(self.services):
            try:
                await svc.stop()
            except Exception:
                log.exception("stopping %s failed", type(svc).__name__)
        timeout = self.config.node.shutdown_timeout + 5.0

        async def stop_one(h: WorkerHandle) -> None:
            if h.proc is None or h.proc.returncode is not None:
                return
            try:
                if h.peer is not None:
                    await h.peer.request("stop", timeout=2.0)
            except (ControlError, TimeoutError):
                h.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(h.proc.wait(), timeout)
            except TimeoutError:
                log.warning("worker %d did not stop in %.0fs; killing it", h.index, timeout)
                h.proc.kill()
                await h.proc.wait()

        await asyncio.gather(*(stop_one(h) for h in self.workers.values()))
        for t in list(self._supervisors):
            t.cancel()
        await self.fetcher.close()

    # ------------------------------------------------------------------ signals
    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.path or "the embedded configuration")
        self._sighup = asyncio.get_running_loop().create_task(self.reload(), name="reload")

    def worker_pids(self) -> list[int]:
        return [h.pid for h in self.workers.values() if h.pid]


async def _validate(config: Config, path: str | None) -> None:
    """Load everything a worker will (raises ConfigError), then let go of it."""
    if config.cluster.enable:  # [cluster.ssl] files load (ConfigError naming the key)
        from ..cluster.channel import build_contexts

        build_contexts(config.cluster, path or "<config>")
    gw = Gateway(config, path)
    built = gw.build(config)
    if built.authenticator is not None:
        await built.authenticator.close()
    for _, ctx in built.listeners.values():
        await gw.revocation.retire_context(ctx)


def node_pid() -> int:
    return os.getpid()


def ports_taken(config: Config, skip: set[str] | None = None) -> list[Problem]:
    """Listener ports another process holds, each a Problem naming the key. Probed without
    SO_REUSEPORT, which would otherwise hide another tlsgate on the same port."""
    problems = []
    for label, lst in Node._enabled(config):
        if skip and lst.bind in skip:
            continue
        host, port = split_hostport(lst.bind)
        if port == 0:
            continue
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                kind, name = label.split(":", 1)
                why = "the port is in use" if exc.errno == errno.EADDRINUSE else \
                    (exc.strerror or str(exc))
                problems.append(Problem(f"listeners.{kind}.{name}.bind",
                                        f"cannot listen on {lst.bind}: {why}"))
    return problems

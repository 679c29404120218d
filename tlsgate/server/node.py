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
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, ConfigError, Problem, parse
from ..config.types import split_hostport
from .app import Gateway, ReloadResult
from .control import ControlError, ControlPeer

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
        self.stopping = False
        self.started_at = time.time()
        self._supervisors: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        self.stop_event = asyncio.Event()
        self._sighup: asyncio.Task[ReloadResult] | None = None
        self.last_reload: ReloadResult | None = None
        #: Operations workers may request from the node (features add theirs).
        self.worker_requests: dict[str, Any] = {}
        #: Per-node services with async start()/stop() (admin API, cluster, fetchers).
        self.services: list[Any] = []
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

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        await _validate(self.config, self.path)  # raises ConfigError
        self._check_ports_free(self.config)
        n = self.config.node.worker_count()
        results = await asyncio.gather(*(self._spawn(i) for i in range(n)),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise StartError(str(errors[0]))
        for svc in self.services:
            await svc.start()
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
        """Fail early with the key when a port is taken (SO_REUSEPORT would hide another
        tlsgate on the same port: probe without it)."""
        problems = []
        for label, lst in self._enabled(config):
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
            await h.peer.request("start", timeout=60.0, toml=self.toml_text, path=self.path)
        except (ControlError, TimeoutError) as exc:
            if h.proc.returncode is None:
                h.proc.kill()
            await h.proc.wait()
            raise StartError(f"worker {index} failed to start: {exc}") from None
        h.started = time.monotonic()
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
        self.config = config
        self.toml_text = text
        changes: list[str] = []
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
            elif not changes:
                changes = list(r["changes"])
        return ReloadResult(not problems, changes=changes, problems=problems)

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
    built = Gateway(config, path).build(config)
    if built.authenticator is not None:
        await built.authenticator.close()


def node_pid() -> int:
    return os.getpid()

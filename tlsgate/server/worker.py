"""A worker process: runs one :class:`~tlsgate.server.app.Gateway` (listeners, handshakes, relay)
under the node process, which talks to it over the control channel.

Started as ``python -m tlsgate.server.worker --fd N --index I``; the config arrives as TOML text
in the first ``start`` request (so the node and its workers always run the same, validated
configuration, whatever happens to the file meanwhile). The worker stops when asked, on
SIGTERM, or when the control channel closes (the node is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import tomllib
from typing import Any

from ..config import Config, ConfigError, parse
from ..log import setup as setup_logging
from ..tls import engine, unbound
from ..tls.engine import self_check
from . import worker_ops
from .app import Gateway
from .control import ControlPeer
from .pskstore import decode_table
from .run import install_loop
from .sockets import raise_fd_limit, tune_malloc

log = logging.getLogger("tlsgate.worker")


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.gw: Gateway | None = None
        self.stop_event = asyncio.Event()
        self.peer: ControlPeer | None = None

    def _config(self, args: dict[str, Any]) -> Config:
        return parse(tomllib.loads(args["toml"]), args.get("path") or "<config>")

    # ---- control handlers ---------------------------------------------------------------
    async def h_start(self, args: dict[str, Any]) -> Any:
        config = self._config(args)
        setup_logging(config.log.level, config.log.format, config.log.file,
                      config.log.access_log, tag=f"w{self.index}")
        if self.index == 0:  # once per node, not once per worker
            if engine.ACCEL == "c":
                log.info("TLS relay loops: C accelerator (tlsgate.tls._relayc)")
            else:
                log.warning("TLS relay loops: pure Python, more CPU per TLS record (%s)",
                            engine.ACCEL_MISSING)
            why = unbound.missing()
            if why:
                log.warning("TLS session tickets: each worker has its own keys, so a client "
                            "resumes only on the worker it had before (%s)", why)
            elif unbound.grace_missing():
                log.warning("TLS session tickets: a ticket-key rotation retires the previous "
                            "period's tickets at once (%s)", unbound.grace_missing())
        secret = args.get("ticket_secret")
        gw = Gateway(config, args.get("path"), reuse_port=True, node=lambda: self.peer,
                     ticket_secret=bytes.fromhex(secret) if secret else None)
        self.gw = gw
        if args.get("psk"):
            gw.psk_table.replace_all(decode_table(args["psk"]), reason="start")
        try:
            await gw.start()
        except ConfigError as exc:
            raise RuntimeError("; ".join(str(p) for p in exc.problems)) from None
        # Everything loaded so far (modules, contexts, the config: ~140,000 objects) lives as
        # long as the process: keep it out of the cycle collector's scans, which otherwise
        # walked all of it in every full collection that connections' garbage triggered
        # (~1 % of a connection's CPU on the handshake benchmark). No connection exists yet.
        gc.freeze()
        # And collect the young generation every 20,000 allocations instead of 700: a
        # connection makes ~60 container objects and frees them itself (no cycles on its
        # path), so most collections found nothing (gc ~1.7 -> ~0 µs per connection, perf).
        gc.set_threshold(20_000, 20, 20)
        return {"pid": os.getpid(),
                "listeners": {lb: gw.bound_port(lb) for lb in gw.listeners}}

    async def h_reload(self, args: dict[str, Any]) -> Any:
        assert self.gw is not None
        try:
            config = self._config(args)
        except ConfigError as exc:
            return {"ok": False, "changes": [], "problems": [str(p) for p in exc.problems]}
        setup_logging(config.log.level, config.log.format, config.log.file,
                      config.log.access_log, tag=f"w{self.index}")
        return (await self.gw.apply_config(config)).as_dict()

    async def h_psk_set(self, args: dict[str, Any]) -> Any:
        """The node's merged PSK table (file + admin API), pushed whole on every change."""
        if self.gw is not None:
            change = self.gw.psk_table.replace_all(decode_table(args.get("table") or {}),
                                                   reason="node")
            return change.version
        return None

    async def h_ticket_secret(self, args: dict[str, Any]) -> Any:
        """The node adopted the cluster's session-ticket secret (never logged)."""
        if self.gw is not None:
            self.gw.set_ticket_secret(bytes.fromhex(args["secret"]))
        return True

    async def h_stop(self, args: dict[str, Any]) -> Any:
        self.stop_event.set()
        return True

    async def h_status(self, args: dict[str, Any]) -> Any:
        gw = self.gw
        assert gw is not None
        return {"pid": os.getpid(), "index": self.index, "connections": len(gw.registry),
                "listeners": {lb: {"active": r.rt.active, "bind": r.rt.cfg.bind}
                              for lb, r in gw.listeners.items()}}

    def handlers(self) -> dict[str, Any]:
        ops: dict[str, Any] = worker_ops.handlers(lambda: self.gw)
        ops.update({"start": self.h_start, "reload": self.h_reload, "stop": self.h_stop,
                    "status": self.h_status, "psk_set": self.h_psk_set,
                    "ticket_secret": self.h_ticket_secret})
        return ops

    # ---- main -----------------------------------------------------------------------------
    async def main(self, fd: int) -> int:
        sock = socket.socket(fileno=fd)
        self.peer = peer = await ControlPeer.from_socket(sock, self.handlers(),
                                                         f"node (worker {self.index})")
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        # SIGINT/SIGHUP go to the node, which coordinates; a worker ignores them.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        reader = loop.create_task(peer.run(), name="control reader")
        closed = loop.create_task(peer.closed.wait(), name="control closed")
        stopped = loop.create_task(self.stop_event.wait(), name="stop requested")
        await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if self.gw is not None:
            await self.gw.stop()
        peer.close()
        for t in (reader, closed, stopped):
            t.cancel()
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(prog="tlsgate-worker")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--index", type=int, default=0)
    ns = ap.parse_args()
    setup_logging(tag=f"w{ns.index}")
    tune_malloc()
    raise_fd_limit()
    self_check()
    install_loop()
    sys.exit(asyncio.run(Worker(ns.index).main(ns.fd)))


if __name__ == "__main__":
    main()

"""`tlsgate serve`: set up the node process and run it until told to stop."""

from __future__ import annotations

import asyncio
import logging
import sys

from ..config import Config, ConfigError
from ..log import setup as setup_logging
from ..tls.engine import self_check
from .demo_broker import DemoBroker
from .sockets import raise_fd_limit

log = logging.getLogger("tlsgate.node")

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


def install_loop() -> None:
    """uvloop when available (it is a dependency); asyncio's loop otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        log.warning("uvloop is not installed; using asyncio's event loop (slower)")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve_async(config: Config, path: str | None, text: str) -> int:
    from .node import Node, StartError

    node = Node(config, path, text)
    node.install_signals()
    try:
        await node.start()
    except ConfigError as exc:
        log.error("%s", exc.render())
        return EXIT_CONFIG
    except StartError as exc:
        log.error("start-up failed: %s", exc)
        return EXIT_CONFIG
    await node.stop_event.wait()
    log.info("stopping: draining connections for up to %.0fs",
             config.node.shutdown_timeout)
    await node.stop()
    log.info("stopped")
    return EXIT_OK


def serve(config: Config, path: str | None, text: str) -> int:
    setup_logging(config.log.level, config.log.format, config.log.file, config.log.access_log,
                  tag="main")
    raise_fd_limit()
    self_check()
    demo = None
    if config.demo_broker.enable:
        demo = DemoBroker(config.demo_broker.listen)
        try:
            demo.start()
        except RuntimeError as exc:
            log.error("%s", exc)
            return EXIT_RUNTIME
    install_loop()
    try:
        return asyncio.run(serve_async(config, path, text))
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if demo is not None:
            demo.stop()
        logging.shutdown()
        sys.stderr.flush()

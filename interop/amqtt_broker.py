"""Run amqtt (an MQTT 3.1.1 broker from PyPI) on HOST:PORT with anonymous access.

``python -m interop.amqtt_broker 127.0.0.1:PORT`` prints ``READY`` on stdout once it listens, logs
connections at INFO on stderr, and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys


async def serve(listen: str) -> None:
    from amqtt.broker import Broker

    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": listen}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                    {"allow_anonymous": True}},
    })
    await broker.start()
    print("READY", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)  # state-machine noise
    asyncio.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()

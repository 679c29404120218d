"""DEMO ONLY: an embedded MQTT broker so `make run` works on a machine with no broker.

It is amqtt (an MQTT 3.1.1 broker from PyPI) run as a child process with anonymous access on a
loopback port. It exists for the out-of-the-box demo; put tlsgate in front of your real broker
(mosquitto, EMQX, VerneMQ, HiveMQ...) by pointing ``[upstreams.default] address`` at it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading

from ..config.types import split_hostport

log = logging.getLogger("tlsgate.demo")


class DemoBroker:
    def __init__(self, listen: str) -> None:
        self.listen = listen
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        host, port = split_hostport(self.listen)
        if _port_open(host, port):
            log.warning("DEMO: something already listens on %s; using it as the broker",
                        self.listen)
            return
        try:
            import amqtt  # noqa: F401
        except ImportError:
            raise RuntimeError("the demo broker needs amqtt: pip install 'tlsgate[demo]' "
                               "(or point [upstreams.default] at your broker and turn "
                               "[demo_broker] off)") from None
        # The child writes one line to stdout once it listens (no probe connection, which
        # amqtt would log as an error).
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tlsgate.server.demo_broker", self.listen],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True)
        out = self.proc.stdout
        assert out is not None
        ready: list[bytes] = []
        reader = threading.Thread(target=lambda: ready.append(out.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if ready and ready[0].startswith(b"READY"):
            log.warning("DEMO: embedded amqtt broker (demo default, not for production) "
                        "listening on %s, pid %d", self.listen, self.proc.pid)
            return
        code = self.proc.poll()
        self.stop()
        if code is not None:
            raise RuntimeError(f"the demo broker exited with code {code}")
        raise RuntimeError(f"the demo broker did not listen on {self.listen} within {timeout}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _main(listen: str) -> None:  # pragma: no cover - runs in the child
    from amqtt.broker import Broker

    logging.basicConfig(level=logging.WARNING, format="[demo broker] %(levelname)s %(message)s")
    config = {
        "listeners": {"default": {"type": "tcp", "bind": listen}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                    {"allow_anonymous": True}},
    }

    async def run() -> None:
        broker = Broker(config)
        await broker.start()
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        parent = os.getppid()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                if os.getppid() != parent:  # tlsgate died: don't linger
                    break
        await broker.shutdown()

    asyncio.run(run())


if __name__ == "__main__":  # pragma: no cover
    _main(sys.argv[1])

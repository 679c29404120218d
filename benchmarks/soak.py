#!/usr/bin/env python3
"""Soak run: thousands of TLS MQTT clients through tlsgate to mosquitto, with certificate
reloads, a broker crash and hostile clients, and an exact account of every message.

    /work/main/.venv/bin/python benchmarks/soak.py --clients 10000 --duration 60 --workers 2

Not part of ``make test``: it prints numbers and exits 1 if something was lost that should
not have been. The script starts everything itself on free ports: mosquitto (``max_connections
-1``, no persistence), ``tlsgate serve`` (``--workers`` processes), and the clients, which are
one asyncio process of lean TLS clients (stdlib ``ssl`` over memory BIOs on plain transports:
no 256 KiB read buffer per connection as asyncio's own TLS keeps), bound to several
127.0.0.x source addresses. The fd limit is raised for itself and its children.

Timeline: ramp-up (all clients connect, at most ``--rate`` new connections per second), then
``--duration`` seconds of traffic during which it fires a SIGHUP reload with a freshly issued
server certificate every ``--reload-every`` seconds (and checks new handshakes get it), SIGKILLs
the broker at 40 % of the duration and restarts it ``--broker-down`` seconds later, and starts
``--hostile`` hostile clients per second (garbage, silent sockets, slowloris hellos, vanishing
handshakes, a CONNECT with a 268,435,455-byte Remaining Length, a first packet that is not a
CONNECT). Then publishing stops, the run drains (up to ``--grace`` seconds) and every client
disconnects.

Each client subscribes (QoS 1) to its own topic ``soak/<n>`` right after CONNECT and then
publishes QoS 1 messages to that topic every ``--interval`` seconds (jittered); every message
carries the client id, a sequence number and a checksum. Accounting, per message:

* **published** -- the PUBLISH was written to the TLS connection.
* **acknowledged** -- its PUBACK came back. A QoS 1 PUBLISH whose connection ended before its
  PUBACK is **in flight** (the broker may or may not have taken it; clean sessions, so it is
  not retransmitted): counted, never "lost".
* **delivered** -- it came back through the client's own subscription (same connection: the
  subscription was acknowledged before the first publish on that connection).
* **cut off** -- acknowledged, not delivered, and the connection ended less than ``--grace``
  seconds after the acknowledgement (the broker died, or the connection was dropped, while the
  message was on its way): explained by that drop, not lost.
* **lost** -- acknowledged, and the connection stayed up ``--grace`` seconds after the
  acknowledgement (or until the end of the drain), yet it never came back. Should be 0.
* **corrupt** -- came back with a payload that does not match what was sent; **unknown** --
  came back with a sequence number that was never published. Should be 0. Duplicates (QoS 1
  may duplicate) are only counted.

Every connection attempt, first or re-, waits for a slot (at most ``--rate`` per second for the
whole fleet); a failed attempt backs off exponentially with jitter (1, 2, 4... 30 s).

Connections: a connection that ends while the broker is up, outside the window from the kill to
``--broker-down`` + 10 s after it, is an **unexpected drop** (a reload must not drop anyone).
Should be 0. Connection attempts that fail are **refused**, by reason and by whether the broker
was down (a refusal while it is down is tlsgate doing its job: CONNACK 0x03).

Exit status 1 if lost, corrupt, unknown or unexpected drops are non-zero, a tlsgate worker
died (pid changed), a reload failed, or a hostile client was not closed by tlsgate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tlsgate.tls.certs import Issued, issue_server, make_ca  # noqa: E402

MiB = 1024 * 1024


# ------------------------------------------------------------------------------ processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, want)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        target = hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            "max_connections -1\nmax_queued_messages 100000\nmax_inflight_messages 100\n"
            f"persistence false\nset_tcp_nodelay true\nlog_dest file {workdir}/mosquitto.log\n"
            "log_type error\nlog_type warning\n")

    def start(self) -> None:
        if shutil.which("mosquitto") is None:
            raise SystemExit("mosquitto is not installed (apt install mosquitto)")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


class Gate:
    def __init__(self, workdir: Path, broker_port: int, workers: int, cert: Path, key: Path,
                 handshake_timeout: int) -> None:
        self.dir = workdir
        self.port = free_port()
        self.log = workdir / "tlsgate.log"
        self.config = workdir / "tlsgate.toml"
        self.config.write_text(f"""[node]
name = "soak"
workers = {workers}
data_dir = "{workdir}/data"
shutdown_timeout = "5s"
[log]
access_log = true
file = "{self.log}"
[upstreams.default]
address = "127.0.0.1:{broker_port}"
connect_timeout = "3s"
[dashboard]
enable = false
[listeners.ssl.soak]
bind = "127.0.0.1:{self.port}"
backlog = 4096
[listeners.ssl.soak.ssl_options]
certfile = "{cert}"
keyfile = "{key}"
handshake_timeout = "{handshake_timeout}s"
""")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_pos = 0

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, "-m", "tlsgate", "serve", "-c",
                                      str(self.config)], cwd=self.dir, env=env,
                                     stdout=open(self.dir / "stdout.log", "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT)
        wait_port(self.port)

    def pids(self) -> list[int]:
        assert self.proc is not None
        pid = self.proc.pid
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        return [pid, *(int(k) for k in kids)]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def proc_usage(pids: list[int]) -> list[tuple[int, int, int]]:
    """(pid, fds, RSS bytes) per process."""
    out = []
    for pid in pids:
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            rss = 0
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
            out.append((pid, fds, rss))
        except OSError:
            out.append((pid, -1, -1))
    return out


def fmt_usage(usage: list[tuple[int, int, int]]) -> str:
    parts = [f"{'node' if i == 0 else f'w{i - 1}'}[{pid}] fds={fds} rss={rss / MiB:.1f}MiB"
             for i, (pid, fds, rss) in enumerate(usage)]
    total = sum(r for _, _, r in usage)
    return "  ".join(parts) + f"  (total rss {total / MiB:.1f} MiB)"


# ------------------------------------------------------------------------------ MQTT bits
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(cid: bytes, keepalive: int = 120) -> bytes:
    body = b"\x00\x04MQTT\x04\x02" + struct.pack(">HH", keepalive, len(cid)) + cid
    return b"\x10" + varint(len(body)) + body


def payload_for(cid: bytes, seq: int, size: int) -> bytes:
    head = cid + b"|" + str(seq).encode() + b"|"
    digest = hashlib.blake2b(head, digest_size=16).digest()
    pad = (digest * (size // 16 + 1))[:max(0, size - len(head))]
    return head + pad


# ------------------------------------------------------------------------------ accounting
@dataclass
class World:
    args: argparse.Namespace
    ca: Issued
    gate_port: int
    broker_down: bool = False
    kill_at: float | None = None
    expected_drop_until: float = 0.0
    publishing: bool = True
    stopping: bool = False
    published: int = 0
    acked: int = 0
    delivered: int = 0
    in_flight: int = 0
    cut_off: int = 0
    lost: int = 0
    corrupt: int = 0
    unknown: int = 0
    duplicates: int = 0
    connects: int = 0
    connected_now: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    drops_expected: int = 0
    drops_unexpected: list[str] = field(default_factory=list)
    hostile: Counter[str] = field(default_factory=Counter)
    hostile_not_closed: list[str] = field(default_factory=list)
    reloads_ok: int = 0
    reloads_failed: list[str] = field(default_factory=list)
    reload_cert_seen: int = 0
    lost_examples: list[str] = field(default_factory=list)

    next_slot: float = 0.0

    async def connect_slot(self) -> None:
        """Pace every connection attempt (first ones and reconnects) to --rate per second, as
        a fleet with jittered back-off does: without it a 10k reconnect storm is bound by this
        one client process, whose TLS handshakes then miss tlsgate's handshake_timeout."""
        now = time.monotonic()
        t = max(now, self.next_slot)
        self.next_slot = t + 1.0 / self.args.rate
        if t > now:
            await asyncio.sleep(t - now)

    def drop_expected(self, now: float) -> bool:
        return self.broker_down or now <= self.expected_drop_until or self.stopping


class Conn(asyncio.Protocol):
    """One TLS connection: stdlib ssl over memory BIOs on a plain transport."""

    def __init__(self, ctx: ssl.SSLContext, client: Client) -> None:
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.buf = bytearray()
        self.handshaken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._handshake()

    def _flush(self) -> None:
        data = self.out.read()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _handshake(self) -> None:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()
            self._end(f"tls: {exc.reason or exc}")
            return
        self._flush()
        self.handshaken = True
        if not self.ready.done():
            self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.inc.write(data)
        if not self.handshaken:
            self._handshake()
            if not self.handshaken:
                return
        ended = ""
        try:
            while True:
                chunk = self.obj.read(65536)
                if not chunk:
                    ended = "close_notify"
                    break
                self.buf += chunk
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            ended = "close_notify"
        except ssl.SSLError as exc:
            ended = f"tls: {exc.reason or exc}"
        self._flush()
        if self.buf:  # what came before a close is still the broker's (e.g. a CONNACK 0x03)
            self.client.packets(self)
        if ended:
            self._end(ended)

    def send(self, plain: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self.obj.write(plain)
        except ssl.SSLError as exc:
            self._end(f"tls write: {exc}")
            return
        self._flush()

    def eof_received(self) -> bool:
        self._end("eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end("connection lost" if exc is None else f"connection lost: {exc}")

    def _end(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if not self.closed.done():
            self.closed.set_result(why)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(ssl.SSLError):
                self.obj.unwrap()
            self._flush()
            self.transport.close()


class Client:
    def __init__(self, n: int, world: World, ctx: ssl.SSLContext, src: str) -> None:
        self.cid = f"soak-{n}".encode()
        self.topic = f"soak/{n}".encode()
        self.world = world
        self.ctx = ctx
        self.src = src
        self.seq = 0
        self.pid = 0
        self.conn: Conn | None = None
        self.state = ""  # "", "connack", "suback", "up"
        self.connack: asyncio.Future[int] | None = None
        self.suback: asyncio.Future[None] | None = None
        self.pending: dict[int, int] = {}          # packet id -> seq (PUBACK awaited)
        self.acked: dict[int, float] = {}          # seq -> ack time (delivery awaited)
        self.early: set[int] = set()               # delivered before its PUBACK arrived
        self.seen: set[int] = set()
        self.published: set[int] = set()

    # -- packets from the broker ----------------------------------------------------------
    def packets(self, conn: Conn) -> None:
        buf = conn.buf
        w = self.world
        while len(buf) >= 2:
            rl, mult, i = 0, 1, 1
            while True:
                if i >= len(buf):
                    return
                b = buf[i]
                rl += (b & 0x7F) * mult
                mult <<= 7
                i += 1
                if not b & 0x80:
                    break
            if len(buf) < i + rl:
                return
            ptype = buf[0] >> 4
            flags = buf[0] & 0x0F
            body = bytes(buf[i:i + rl])
            del buf[:i + rl]
            if ptype == 2 and self.connack is not None and not self.connack.done():
                self.connack.set_result(body[1] if len(body) >= 2 else -1)
            elif ptype == 9 and self.suback is not None and not self.suback.done():
                self.suback.set_result(None)
            elif ptype == 4:  # PUBACK
                (pid,) = struct.unpack(">H", body[:2])
                seq = self.pending.pop(pid, None)
                if seq is not None:
                    w.acked += 1
                    if seq in self.early:
                        self.early.discard(seq)
                    else:
                        self.acked[seq] = time.monotonic()
            elif ptype == 3:  # PUBLISH
                qos = (flags >> 1) & 3
                (tl,) = struct.unpack(">H", body[:2])
                pos = 2 + tl
                if qos:
                    (ppid,) = struct.unpack(">H", body[pos:pos + 2])
                    pos += 2
                    conn.send(b"\x40\x02" + struct.pack(">H", ppid))
                self._delivered(body[pos:])

    def _delivered(self, payload: bytes) -> None:
        w = self.world
        try:
            cid, seq_s, _ = payload.split(b"|", 2)
            seq = int(seq_s)
        except ValueError:
            w.corrupt += 1
            return
        if cid != self.cid or seq not in self.published:
            w.unknown += 1
            return
        if payload != payload_for(self.cid, seq, w.args.size):
            w.corrupt += 1
            return
        if seq in self.seen:
            w.duplicates += 1
            return
        self.seen.add(seq)
        w.delivered += 1
        if self.acked.pop(seq, None) is None:
            self.early.add(seq)  # came back before its PUBACK

    # -- one connection ---------------------------------------------------------------------
    async def connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        w = self.world
        _, conn = await asyncio.wait_for(loop.create_connection(
            lambda: Conn(self.ctx, self), "127.0.0.1", w.gate_port,
            local_addr=(self.src, 0)), 30)
        await asyncio.wait_for(conn.ready, 30)
        self.connack = loop.create_future()
        conn.send(connect_packet(self.cid))
        code = await self._either(self.connack, conn)
        if code != 0:
            conn.close()
            raise ConnectionRefusedError(f"CONNACK 0x{code:02x}")
        self.suback = loop.create_future()
        conn.send(b"\x82" + varint(5 + len(self.topic)) + b"\x00\x01"
                  + struct.pack(">H", len(self.topic)) + self.topic + b"\x01")
        await self._either(self.suback, conn)
        return conn

    @staticmethod
    async def _either(fut: asyncio.Future[Any], conn: Conn, timeout: float = 30) -> Any:
        """The answer, or ConnectionError if the connection ends first."""
        await asyncio.wait([fut, conn.closed], timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        if fut.done():
            return fut.result()
        conn.close()
        if conn.closed.done():
            raise ConnectionError(f"closed before the answer: {conn.closed.result()}")
        raise TimeoutError("no answer")

    async def run(self, start_delay: float) -> None:
        w = self.world
        await asyncio.sleep(start_delay)
        failures = 0
        while not w.stopping:
            await w.connect_slot()
            if w.stopping:
                break
            try:
                conn = await self.connect()
            except (OSError, TimeoutError, ConnectionError, ssl.SSLError) as exc:
                why = type(exc).__name__ if not str(exc) else str(exc)
                why = re.sub(r"\d+\.\d+\.\d+\.\d+|:\d+", "", why)[:60]
                when = "broker down" if w.drop_expected(time.monotonic()) else "broker up"
                w.refused[f"{why} ({when})"] += 1
                failures += 1
                await asyncio.sleep(random.uniform(0.5, 1.0) * min(30.0, 2.0 ** failures))
                continue
            failures = 0
            w.connects += 1
            w.connected_now += 1
            self.conn = conn
            why = await self._session(conn)
            w.connected_now -= 1
            self._end_of_connection(why)
            if not w.stopping:
                await asyncio.sleep(random.uniform(0.2, 2.0))

    async def _session(self, conn: Conn) -> str:
        w = self.world
        interval = w.args.interval
        next_pub = time.monotonic() + random.uniform(0, interval)
        while not conn.closed.done() and not w.stopping:
            now = time.monotonic()
            if w.publishing and now >= next_pub and len(self.pending) < 20:
                self.pid = self.pid % 65535 + 1
                self.seq += 1
                self.pending[self.pid] = self.seq
                self.published.add(self.seq)
                payload = payload_for(self.cid, self.seq, w.args.size)
                body = (struct.pack(">H", len(self.topic)) + self.topic
                        + struct.pack(">H", self.pid) + payload)
                conn.send(b"\x32" + varint(len(body)) + body)
                w.published += 1
                next_pub = now + interval * random.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.closed),
                                       max(0.05, min(1.0, next_pub - time.monotonic())))
        if conn.closed.done():
            return conn.closed.result()
        # orderly end of the run
        conn.send(b"\xe0\x00")
        conn.close()
        return "client stopped"

    def _end_of_connection(self, why: str) -> None:
        w = self.world
        now = time.monotonic()
        w.in_flight += len(self.pending)
        self.pending.clear()
        for seq, t_ack in self.acked.items():
            if now - t_ack < w.args.grace:
                w.cut_off += 1
            else:
                w.lost += 1
                if len(w.lost_examples) < 10:
                    w.lost_examples.append(f"{self.cid.decode()} seq {seq}: acked "
                                           f"{now - t_ack:.1f}s before the connection ended "
                                           f"({why})")
        self.acked.clear()
        self.early.clear()
        if why == "client stopped":
            return
        if w.drop_expected(now):
            w.drops_expected += 1
        elif len(w.drops_unexpected) < 1000:
            w.drops_unexpected.append(f"{self.cid.decode()}: {why}")

    def finish(self) -> None:
        """End of run: what is still awaited after the drain is lost."""
        w = self.world
        w.in_flight += len(self.pending)
        for seq, t_ack in self.acked.items():
            w.lost += 1
            if len(w.lost_examples) < 10:
                w.lost_examples.append(f"{self.cid.decode()} seq {seq}: acked "
                                       f"{time.monotonic() - t_ack:.1f}s ago, never delivered")


# ------------------------------------------------------------------------------ hostile
HOSTILE_KINDS = ("garbage", "silent", "slowloris", "vanish", "huge_connect", "not_connect")


async def _wait_closed(reader: asyncio.StreamReader, limit: float) -> bool:
    """True once the peer closed (EOF, reset, TLS alert), False if still open after limit."""
    deadline = time.monotonic() + limit
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536),
                                          max(0.01, deadline - time.monotonic()))
            if not data:
                return True
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        return True


async def hostile_one(world: World, kind: str, ctx: ssl.SSLContext, src: str) -> None:
    w = world
    limit = w.args.handshake_timeout + 10
    w.hostile[kind] += 1
    try:
        if kind in ("huge_connect", "not_connect"):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", w.gate_port, ssl=ctx, server_hostname="localhost",
                local_addr=(src, 0)), 30)
            writer.write(b"\x10\xff\xff\xff\x7f\x00\x04MQTT\x04" if kind == "huge_connect"
                         else b"\xc0\x00")
        else:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", w.gate_port, local_addr=(src, 0)), 30)
            if kind == "garbage":
                writer.write(os.urandom(random.randint(1, 3000)))
            elif kind in ("slowloris", "vanish"):
                obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(),
                                   server_hostname="localhost")
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
                hello = out.read()
                if kind == "vanish":
                    writer.write(hello[:len(hello) // 2])
                    await asyncio.sleep(0.05)
                    writer.transport.abort()
                    return
                for b in hello:  # one byte per 0.5 s: handshake_timeout must reap it
                    if reader.at_eof() or writer.is_closing():
                        break
                    writer.write(bytes([b]))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(1), 0.5)
                    if reader.at_eof():
                        break
                    if w.stopping:
                        break
        closed = reader.at_eof() or await _wait_closed(reader, limit)
        if not closed and not w.stopping:
            w.hostile_not_closed.append(kind)
        writer.transport.abort()
    except (OSError, TimeoutError, ssl.SSLError, ConnectionError):
        pass  # refused or reset: tlsgate closed it, which is fine


async def hostile_loop(world: World, ctx: ssl.SSLContext, sources: list[str]) -> None:
    tasks: set[asyncio.Task[None]] = set()
    rate = world.args.hostile
    if rate <= 0:
        return
    while not world.stopping:
        t = asyncio.create_task(hostile_one(world, random.choice(HOSTILE_KINDS), ctx,
                                            random.choice(sources)))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        await asyncio.sleep(random.expovariate(rate))
    for t in list(tasks):
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ------------------------------------------------------------------------------ events
def served_serial(port: int, ca_pem: Path) -> int:
    from cryptography import x509

    ctx = ssl.create_default_context(cafile=str(ca_pem))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def reload_loop(world: World, gate: Gate, certdir: Path, ca_pem: Path,
                      say: Any) -> None:
    every = world.args.reload_every
    if every <= 0:
        return
    n = 0
    while not world.stopping:
        await asyncio.sleep(every)
        if world.stopping:
            return
        n += 1
        new = issue_server(world.ca, ["localhost", "127.0.0.1"], cn=f"soak server {n}")
        new.write(certdir, "server.next")
        os.replace(certdir / "server.next.pem", certdir / "server.pem")
        os.replace(certdir / "server.next.key", certdir / "server.key")
        before = len(re.findall(r"reload (done|failed)", gate.log_text()))
        assert gate.proc is not None
        gate.proc.send_signal(signal.SIGHUP)
        t0 = time.monotonic()
        outcome = ""
        while time.monotonic() - t0 < 30:
            lines = re.findall(r".*reload (?:done|failed).*", gate.log_text())
            if len(lines) > before:
                outcome = lines[-1]
                break
            await asyncio.sleep(0.2)
        if "reload done" in outcome:
            world.reloads_ok += 1
            serial = await asyncio.to_thread(served_serial, gate.port, ca_pem)
            if serial == new.serial:
                world.reload_cert_seen += 1
            else:
                world.reloads_failed.append(f"reload {n}: still serving serial {serial:x}")
            say(f"reload {n}: done in {time.monotonic() - t0:.1f}s, new certificate served")
        else:
            world.reloads_failed.append(f"reload {n}: {outcome or 'no outcome in 30s'}")
            say(f"reload {n}: FAILED {outcome!r}")


async def broker_crash(world: World, broker: Broker, at: float, say: Any) -> None:
    await asyncio.sleep(at)
    if world.stopping:
        return
    down = world.args.broker_down
    say(f"killing the broker (SIGKILL), {world.connected_now} clients connected")
    world.broker_down = True
    world.kill_at = time.monotonic()
    world.expected_drop_until = time.monotonic() + down + 10
    broker.kill()
    await asyncio.sleep(down)
    await asyncio.to_thread(broker.start)
    world.broker_down = False
    world.expected_drop_until = time.monotonic() + 10
    say(f"broker restarted after {down:.0f}s")


# ------------------------------------------------------------------------------ main
async def soak(args: argparse.Namespace) -> int:
    t_start = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:7.1f}s] {msg}", flush=True)

    nofile = raise_nofile(args.clients * 3 + 10000)
    say(f"fd limit {nofile}")
    work = Path(tempfile.mkdtemp(prefix="tlsgate-soak-"))
    certdir = work / "certs"
    ca = make_ca("tlsgate soak CA")
    ca_pem, _ = ca.write(certdir, "ca")
    issue_server(ca, ["localhost", "127.0.0.1"], cn="soak server 0").write(certdir, "server")
    broker = Broker(work)
    broker.start()
    gate = Gate(work, broker.port, args.workers, certdir / "server.pem", certdir / "server.key",
                args.handshake_timeout)
    gate.start()
    time.sleep(1.0)
    pids0 = gate.pids()
    usage_before = proc_usage(pids0)
    say(f"mosquitto :{broker.port}, tlsgate :{gate.port} ({args.workers} workers), work dir "
        f"{work}")
    say(f"tlsgate before: {fmt_usage(usage_before)}")

    world = World(args, ca, gate.port)
    ctx = ssl.create_default_context(cafile=str(ca_pem))
    sources = [f"127.0.0.{2 + i}" for i in range(args.sources)]
    clients = [Client(n, world, ctx, sources[n % len(sources)]) for n in range(args.clients)]
    ramp = args.clients / args.rate
    tasks = [asyncio.create_task(c.run(0.0)) for c in clients]  # paced by connect_slot
    # ramp-up
    t0 = time.monotonic()
    while world.connected_now < args.clients and time.monotonic() - t0 < ramp + 120:
        await asyncio.sleep(2)
        say(f"ramp-up: {world.connected_now}/{args.clients} connected, "
            f"refused {sum(world.refused.values())}")
    usage_peak = proc_usage(gate.pids())
    say(f"tlsgate with {world.connected_now} clients: {fmt_usage(usage_peak)}")
    # the soak proper
    events = [asyncio.create_task(reload_loop(world, gate, certdir, ca_pem, say)),
              asyncio.create_task(broker_crash(world, broker, args.duration * 0.4, say)),
              asyncio.create_task(hostile_loop(world, ctx, sources))]
    t_soak = time.monotonic()
    while time.monotonic() - t_soak < args.duration:
        await asyncio.sleep(min(10, args.duration))
        say(f"soak: {world.connected_now} connected, published {world.published}, acked "
            f"{world.acked}, delivered {world.delivered}, lost {world.lost}, hostile "
            f"{sum(world.hostile.values())}")
    # drain: stop publishing, wait for what was acknowledged to come back
    world.publishing = False
    say("publishing stopped; draining")
    t_drain = time.monotonic()
    while time.monotonic() - t_drain < args.grace:
        if not any(c.acked or c.pending for c in clients) and not world.broker_down:
            break
        await asyncio.sleep(0.5)
    usage_loaded = proc_usage(gate.pids())
    world.stopping = True
    for c in clients:
        c.finish()
        c.acked.clear()
        c.pending.clear()
    for e in events:
        e.cancel()
    await asyncio.gather(*events, return_exceptions=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(3)
    pids1 = gate.pids()
    usage_after = proc_usage(pids1)
    log = gate.log_text()
    errors = [ln for ln in log.splitlines() if " ERROR " in ln or "Traceback" in ln]
    reasons = Counter(re.findall(r'reason="([^":]*)', log))
    gate.stop()
    broker.stop()

    # report
    w = world
    print()
    print("=" * 78)
    print(f"soak: {args.clients} clients, {args.duration}s, {args.workers} workers, "
          f"{args.sources} source addresses, interval {args.interval}s, payload {args.size} B")
    print(f"connections: {w.connects} established, {w.drops_expected} dropped by the broker "
          f"crash (expected), {len(w.drops_unexpected)} dropped unexpectedly")
    print(f"refused attempts: {sum(w.refused.values())}")
    for why, n in w.refused.most_common():
        print(f"    {n:7d}  {why}")
    print(f"messages: published {w.published}, acknowledged {w.acked}, delivered "
          f"{w.delivered}, in flight at a drop {w.in_flight}, cut off by a drop {w.cut_off}, "
          f"LOST {w.lost}, corrupt {w.corrupt}, unknown {w.unknown}, duplicates "
          f"{w.duplicates}")
    print(f"reloads: {w.reloads_ok} done ({w.reload_cert_seen} verified serving the new "
          f"certificate), {len(w.reloads_failed)} failed")
    print(f"hostile clients: {sum(w.hostile.values())} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(w.hostile.items()))}), "
          f"{len(w.hostile_not_closed)} not closed by tlsgate")
    print(f"tlsgate before: {fmt_usage(usage_before)}")
    print(f"tlsgate peak  : {fmt_usage(usage_peak)}")
    print(f"tlsgate loaded: {fmt_usage(usage_loaded)}")
    print(f"tlsgate after : {fmt_usage(usage_after)}")
    print(f"tlsgate pids before {pids0} after {pids1}; ERROR/Traceback log lines: "
          f"{len(errors)}")
    for ln in errors[:10]:
        print(f"    {ln[:200]}")
    print("close reasons in tlsgate's access log:")
    for why, n in reasons.most_common(12):
        print(f"    {n:7d}  {why}")
    problems = []
    if w.lost or w.corrupt or w.unknown:
        problems.append(f"{w.lost} lost, {w.corrupt} corrupt, {w.unknown} unknown messages")
        for ex in w.lost_examples:
            print(f"    lost: {ex}")
    if w.drops_unexpected:
        problems.append(f"{len(w.drops_unexpected)} unexpected drops "
                        f"(e.g. {w.drops_unexpected[:3]})")
    if sorted(pids0) != sorted(pids1):
        problems.append(f"tlsgate processes changed: {pids0} -> {pids1}")
    if w.reloads_failed:
        problems.append(f"reloads failed: {w.reloads_failed}")
    if w.hostile_not_closed:
        problems.append(f"hostile clients not closed: {Counter(w.hostile_not_closed)}")
    print("RESULT: " + ("OK, nothing lost that should not have been" if not problems
                        else "FAIL: " + "; ".join(problems)))
    print(f"(work dir with logs: {work})")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--duration", type=float, default=120, help="soak seconds after ramp-up")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sources", type=int, default=8, help="127.0.0.x source addresses")
    ap.add_argument("--rate", type=float, default=500, help="new connections per second "
                    "during ramp-up")
    ap.add_argument("--interval", type=float, default=10, help="seconds between a client's "
                    "publishes")
    ap.add_argument("--size", type=int, default=100, help="payload bytes")
    ap.add_argument("--reload-every", type=float, default=15, help="SIGHUP period (0 = none)")
    ap.add_argument("--broker-down", type=float, default=8, help="seconds the broker stays "
                    "dead")
    ap.add_argument("--hostile", type=float, default=20, help="hostile clients per second")
    ap.add_argument("--handshake-timeout", type=int, default=5)
    ap.add_argument("--grace", type=float, default=15, help="seconds an acknowledged message "
                    "may take to come back")
    args = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())

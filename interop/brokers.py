"""The brokers behind tlsgate in the matrix: mosquitto, amqtt, a private RabbitMQ node.

Each runs as a child of the runner on free loopback ports, under the runner's work directory,
and is stopped by it. Each says which MQTT versions it speaks (``unsupported()``) and how a cell
shows that the broker received the identity tlsgate mapped (``identity_evidence()``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

from tests.procs import REPO, Gate, Mosquitto, free_port


class BrokerUnavailable(RuntimeError):
    """The broker cannot run here (not installed, failed to start); the message says why."""


class IdentityNotShown(RuntimeError):
    """The broker (or tlsgate's access log) did not show the mapped identity."""


class Broker:
    name = "broker"
    #: The broker refuses a user it does not know, so clients must send a password (and so a
    #: user name, which tlsgate replaces with the mapped identity).
    needs_password = False

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / self.name
        self.port = 0
        self.version = "?"

    def start(self, users: list[str], password: str) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def unsupported(self, mqtt_version: str) -> str | None:
        """Why this broker cannot take part in cells of ``mqtt_version`` (None: it can)."""
        return None

    def identity_evidence(self, client_id: str, user: str, sent_user: str | None,
                          gate: Gate) -> str:
        """Check that the connection ``client_id`` reached the broker as ``user``.

        Returns a short note saying what showed it; raises IdentityNotShown otherwise.
        """
        raise NotImplementedError


def _access_log_evidence(gate: Gate, client_id: str, user: str) -> str:
    """tlsgate's access line (written when the connection closes) names the mapped user."""
    pattern = rf"clientid={re.escape(client_id)} user={re.escape(user)} "
    try:
        gate.wait_log(pattern, timeout=5)
    except TimeoutError:
        raise IdentityNotShown(f"tlsgate's access log has no line for {client_id} with "
                               f"user={user}") from None
    return f"tlsgate access log: clientid={client_id} user={user}"


# ------------------------------------------------------------------------------------------------
class MosquittoBroker(Broker):
    name = "mosquitto"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._m: Mosquitto | None = None

    def start(self, users: list[str], password: str) -> None:
        if shutil.which("mosquitto") is None:
            raise BrokerUnavailable("mosquitto is not installed (apt install mosquitto)")
        out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
        m = re.search(r"mosquitto version (\S+)", out)
        self.version = m.group(1) if m else "?"
        self._m = Mosquitto(self.dir).start()
        self.port = self._m.port

    def stop(self) -> None:
        if self._m is not None:
            self._m.stop()
            self._m = None

    def identity_evidence(self, client_id: str, user: str, sent_user: str | None,
                          gate: Gate) -> str:
        assert self._m is not None
        # log_type all: "New client connected from <peer> as <id> (p2, c1, k60, u'<user>')."
        pattern = (rf"New client connected from \S+ as {re.escape(client_id)} "
                   rf"\(.*u'{re.escape(user)}'\)")
        try:
            self._m.wait_log(pattern, timeout=5)
        except TimeoutError:
            raise IdentityNotShown(f"mosquitto's log has no connection of {client_id} as "
                                   f"u'{user}'") from None
        return f"mosquitto log: {client_id} as u'{user}'"


# ------------------------------------------------------------------------------------------------
class AmqttBroker(Broker):
    name = "amqtt"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, users: list[str], password: str) -> None:
        try:
            self.version = metadata.version("amqtt")
        except metadata.PackageNotFoundError:
            raise BrokerUnavailable("amqtt is not installed (pip install amqtt)") from None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = open(self.dir / "amqtt.log", "ab")  # noqa: SIM115 - owned by the child
        env = {**os.environ,
               "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "interop.amqtt_broker", f"127.0.0.1:{self.port}"],
            stdout=subprocess.PIPE, stderr=log, env=env, cwd=self.dir)
        log.close()
        assert self.proc.stdout is not None
        ready: list[bytes] = []
        reader = threading.Thread(target=lambda: ready.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(30)
        if not (ready and ready[0].startswith(b"READY")):
            self.stop()
            raise BrokerUnavailable(f"amqtt did not start; see {self.dir / 'amqtt.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def unsupported(self, mqtt_version: str) -> str | None:
        if mqtt_version == "5":
            return (f"amqtt {self.version} implements MQTT 3.1.1 only (it misreads a 5.0 CONNECT "
                    "and waits for bytes that never come)")
        return None

    def identity_evidence(self, client_id: str, user: str, sent_user: str | None,
                          gate: Gate) -> str:
        # amqtt logs no user names; tlsgate's access log shows what it put in the CONNECT.
        return _access_log_evidence(gate, client_id, user)


# ------------------------------------------------------------------------------------------------
def _rabbit_password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _rabbit_bin() -> Path | None:
    # Debian's /usr/sbin/rabbitmq-* wrappers switch to the rabbitmq user when run as root; the
    # scripts under /usr/lib/rabbitmq/bin run as whoever calls them.
    for cand in (Path("/usr/lib/rabbitmq/bin"),
                 Path(os.environ.get("RABBITMQ_HOME", "/nonexistent")) / "sbin"):
        if (cand / "rabbitmq-server").exists():
            return cand
    found = shutil.which("rabbitmq-server")
    return Path(found).parent if found else None


class RabbitBroker(Broker):
    """A private RabbitMQ node (its own node name, ports, epmd, data and HOME) with the MQTT
    plugin, run as the current user, users loaded from a definitions file."""

    name = "rabbitmq"
    needs_password = True

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.bin: Path | None = None
        self.epmd_port = 0

    def _ctl(self, tool: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        assert self.bin is not None
        return subprocess.run([str(self.bin / tool), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self, users: list[str], password: str) -> None:
        self.bin = _rabbit_bin()
        if self.bin is None:
            raise BrokerUnavailable("RabbitMQ is not installed (apt install rabbitmq-server)")
        d = self.dir
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        self.port = free_port()
        amqp_port, dist_port, self.epmd_port = free_port(), free_port(), free_port()
        node = f"tlsgate-interop-{os.getpid()}@localhost"
        definitions = {
            "vhosts": [{"name": "/"}],
            "users": [{"name": u, "password_hash": _rabbit_password_hash(password),
                       "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}
                      for u in users],
            "permissions": [{"user": u, "vhost": "/", "configure": ".*", "write": ".*",
                             "read": ".*"} for u in users],
        }
        (d / "definitions.json").write_text(json.dumps(definitions))
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = false\n"
            f"load_definitions = {d / 'definitions.json'}\n"
            "log.console = false\nlog.file.level = info\n")
        (d / "rabbitmq-env.conf").write_text("")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(d),  # the Erlang cookie goes here, not into the user's home
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_PORT": str(amqp_port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "rabbit.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        r = self._ctl("rabbitmq-plugins", "--offline", "enable", "rabbitmq_mqtt")
        if r.returncode != 0:
            raise BrokerUnavailable(f"rabbitmq-plugins enable rabbitmq_mqtt failed: "
                                    f"{(r.stderr or r.stdout).strip()[-300:]}")
        out = open(d / "server.out", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen([str(self.bin / "rabbitmq-server")], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=d)
        out.close()
        r = self._ctl("rabbitmqctl", "wait", "--timeout", "90", str(d / "rabbit.pid"),
                      timeout=120)
        if r.returncode != 0 or self.proc.poll() is not None:
            tail = (d / "server.out").read_text(errors="replace")[-400:]
            self.stop()
            raise BrokerUnavailable(f"RabbitMQ did not start: {r.stderr.strip()[-200:]} {tail}")
        r = self._ctl("rabbitmqctl", "version")
        self.version = r.stdout.strip().splitlines()[-1] if r.returncode == 0 else "?"

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._ctl("rabbitmqctl", "stop", timeout=60)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self.epmd_port and shutil.which("epmd"):
            # The node started a private epmd on its own port: end it too.
            subprocess.run(["epmd", "-port", str(self.epmd_port), "-kill"], env=self.env,
                           capture_output=True, timeout=15)
            self.epmd_port = 0

    def _version_tuple(self) -> tuple[int, ...]:
        m = re.match(r"(\d+)\.(\d+)", self.version)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    def unsupported(self, mqtt_version: str) -> str | None:
        if mqtt_version == "5" and self._version_tuple() < (3, 13):
            return (f"RabbitMQ {self.version}'s MQTT plugin speaks 3.1/3.1.1 only (MQTT 5 came "
                    "in 3.13); it closes a 5.0 CONNECT as unparseable")
        return None

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace")
                       for p in sorted((self.dir / "log").glob("*.log")))

    def identity_evidence(self, client_id: str, user: str, sent_user: str | None,
                          gate: Gate) -> str:
        # RabbitMQ refuses a user it does not know. The client sent `sent_user`, which is not a
        # RabbitMQ user; the connection got in, so RabbitMQ saw the mapped name, which is one.
        failed = re.findall(r"MQTT login failed for user '([^']*)'", self.log_text())
        if user in failed:
            raise IdentityNotShown(f"RabbitMQ refused the login of {user!r}")
        note = f"RabbitMQ authenticated {user!r}"
        if sent_user and sent_user != user:
            note += f" (the client sent {sent_user!r}, not a RabbitMQ user)"
        return note


BROKERS: dict[str, type[Broker]] = {
    "mosquitto": MosquittoBroker,
    "amqtt": AmqttBroker,
    "rabbitmq": RabbitBroker,
}


"""Cells of the interoperability matrix: one client example × broker × TLS mode × MQTT version.

A ``Stage`` is one broker with one tlsgate (``python -m tlsgate serve``) in front of it, three
listeners: ``oneway`` (server certificate only), ``mutual`` (client certificate required, its CN
becomes the MQTT user name) and ``psk`` (TLS-PSK, the PSK identity becomes the user name).
``run_cell`` runs one example against it and decides:

- **pass**: the example's subscriber received the message its publisher sent, both through
  tlsgate; tlsgate's access log shows the publisher's connection on the right listener with the
  expected TLS version and PSK/certificate; for mutual TLS and PSK the broker (or, where the
  broker cannot show it, tlsgate's access log) shows the mapped identity;
- **fail**: anything else, with the example's last output line;
- **unsupported**: the broker or the client cannot do this combination (its own limit), with why;
- **skipped**: this machine lacks what the client needs (a tool, a package), with what.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from tests.procs import REPO, Gate, free_port

from .brokers import Broker, IdentityNotShown
from .clients import Client, Mode, Toolchain

Status = Literal["pass", "fail", "unsupported", "skipped"]
UNSUPPORTED_EXIT = 3
CLIENT_CN = "interop-device"
PSK_IDENTITY = "interop-psk-device"
VERSIONS = ("3.1.1", "5")


@dataclass
class Result:
    client: str
    broker: str
    mode: str
    version: str
    status: Status
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Secrets:
    """Per-run credentials: the PSK (emqx format: the secret's bytes are the key) and, for
    brokers that want one, the MQTT password. Never printed."""
    psk_secret: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))

    @property
    def psk_hex(self) -> str:
        return self.psk_secret.encode().hex()

    def __repr__(self) -> str:
        return "Secrets(<hidden>)"


@dataclass
class Pki:
    """Certificates made with `tlsgate certs init` (CA, server for localhost, one client)."""
    dir: Path

    @classmethod
    def make(cls, directory: Path, env: dict[str, str], key_type: str = "ec") -> Pki:
        if not (directory / f"{CLIENT_CN}.pem").exists():
            r = subprocess.run(
                [sys.executable, "-m", "tlsgate", "certs", "init", str(directory),
                 "--client", CLIENT_CN, "--key-type", key_type, "--force"],
                capture_output=True, text=True, env=env, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"tlsgate certs init failed: {r.stderr or r.stdout}")
        return cls(directory)

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / f"{CLIENT_CN}.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / f"{CLIENT_CN}.key"


def repo_env() -> dict[str, str]:
    """The environment for `python -m tlsgate ...` from this checkout."""
    return {**os.environ,
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def gate_config(broker_port: int, ports: dict[str, int], pki: Pki, psk_file: Path) -> str:
    def listener(name: str, extra_ssl: str = "", mqtt: str = "") -> str:
        text = (f"[listeners.ssl.{name}]\nbind = \"127.0.0.1:{ports[name]}\"\n"
                f"[listeners.ssl.{name}.ssl_options]\n"
                f"certfile = \"{pki.server_cert}\"\nkeyfile = \"{pki.server_key}\"\n"
                f"handshake_timeout = \"5s\"\n{extra_ssl}")
        if mqtt:
            text += f"[listeners.ssl.{name}.mqtt]\n{mqtt}"
        return text

    return (
        "[node]\nname = \"interop\"\nworkers = 1\ndata_dir = \"data\"\n"
        "shutdown_timeout = \"2s\"\n"
        "[dashboard]\nenable = false\n"
        f"[upstreams.default]\naddress = \"127.0.0.1:{broker_port}\"\n"
        "connect_timeout = \"5s\"\n"
        f"[psk_authentication]\nenable = true\ninit_file = \"{psk_file}\"\nformat = \"emqx\"\n"
        + listener("oneway")
        + listener("mutual",
                   f"cacertfile = \"{pki.ca}\"\nverify = \"verify_peer\"\n"
                   "fail_if_no_peer_cert = true\n",
                   "peer_cert_as_username = \"cn\"\n")
        + listener("psk", mqtt="psk_identity_as_username = true\n"))


class Stage:
    """A broker and a tlsgate in front of it."""

    LISTENER: ClassVar[dict[str, str]] = {"one-way": "oneway", "mutual": "mutual", "psk": "psk"}

    def __init__(self, broker: Broker, workdir: Path, pki: Pki, creds: Secrets) -> None:
        self.broker = broker
        self.dir = workdir / f"stage-{broker.name}"
        self.pki = pki
        self.creds = creds
        self.gate: Gate | None = None
        self.ports: dict[str, int] = {}

    def users(self) -> list[str]:
        return ["interop", CLIENT_CN, PSK_IDENTITY]

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.broker.start(self.users(), self.creds.password)
        psk_file = self.dir / "psk.txt"
        psk_file.write_text(f"{PSK_IDENTITY}:{self.creds.psk_secret}\n")
        psk_file.chmod(0o600)
        self.ports = {name: free_port() for name in ("oneway", "mutual", "psk")}
        self.gate = Gate(self.dir / "tlsgate",
                         gate_config(self.broker.port, self.ports, self.pki, psk_file),
                         list(self.ports.values()))
        try:
            self.gate.start()
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"tlsgate did not start: {exc}\n{self.gate.log_text()[-2000:]}"
                               ) from exc

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.stop()
            self.gate = None
        self.broker.stop()


def _tls_cap_files(workdir: Path) -> dict[str, Path]:
    out = {}
    for version, line in (("1.2", "MaxProtocol = TLSv1.2"), ("1.3", "MinProtocol = TLSv1.3")):
        p = workdir / f"openssl-tls{version}.cnf"
        p.write_text("openssl_conf = cap\n[cap]\nssl_conf = cap_ssl\n[cap_ssl]\n"
                     f"system_default = cap_tls\n[cap_tls]\n{line}\n")
        out[version] = p
    return out


ACCESS_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def access_line(gate: Gate, client_id: str, timeout: float = 5.0) -> dict[str, str] | None:
    """The fields of tlsgate's access log line for ``client_id`` (written when it closes)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in reversed(gate.log_text().splitlines()):
            if "tlsgate.access" in line and f" clientid={client_id} " in line:
                return {k: v.strip('"') for k, v in ACCESS_FIELD.findall(line)}
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _check_access(fields: dict[str, str] | None, stage: Stage, mode: Mode, user: str | None,
                  client_id: str) -> str:
    """The publisher's access line must show the right listener, TLS version and identity."""
    if fields is None:
        raise IdentityNotShown(f"no tlsgate access log line for {client_id}")
    want_listener = f"ssl:{Stage.LISTENER[mode.kind]}"
    problems = []
    if fields.get("listener") != want_listener:
        problems.append(f"listener {fields.get('listener')} (expected {want_listener})")
    if mode.tls_version and fields.get("tls") != f"TLSv{mode.tls_version}":
        problems.append(f"{fields.get('tls')} (expected TLSv{mode.tls_version})")
    if mode.kind == "psk" and fields.get("psk") != PSK_IDENTITY:
        problems.append(f"psk={fields.get('psk')} (expected {PSK_IDENTITY})")
    if mode.kind == "mutual" and f"CN={CLIENT_CN}" not in fields.get("cert", ""):
        problems.append(f"cert={fields.get('cert')} (expected CN={CLIENT_CN})")
    if user is not None and fields.get("user") != user:
        problems.append(f"user={fields.get('user')} (expected {user})")
    if problems:
        raise IdentityNotShown("tlsgate access log: " + ", ".join(problems))
    return f"{fields.get('tls')} {fields.get('cipher')}"


def run_cell(client: Client, stage: Stage, mode: Mode, version: str, tc: Toolchain,
             timeout: float = 10.0, host: str = "localhost", message_size: int = 0) -> Result:
    """Run one example against a started stage and judge the outcome.

    ``message_size``: pad the message to this many bytes (ASCII; at most ~120 KB, since it
    travels in an environment variable) to send more than one TLS record each way.
    """
    broker = stage.broker
    res = Result(client.key, broker.name, mode.key, version, "fail")
    t0 = time.monotonic()
    try:
        _run_cell(res, client, stage, mode, version, tc, timeout, host, message_size)
    finally:
        res.seconds = round(time.monotonic() - t0, 2)
    return res


def _run_cell(res: Result, client: Client, stage: Stage, mode: Mode, version: str,
              tc: Toolchain, timeout: float, host: str, message_size: int) -> None:
    broker = stage.broker
    reason = broker.unsupported(version)
    if reason:
        res.status, res.detail = "unsupported", reason
        return
    cmd = client.command(tc, mode)
    if isinstance(cmd, str):
        res.status, res.detail = "skipped", cmd
        return
    argv, client_env = cmd
    assert stage.gate is not None
    tag = secrets.token_hex(2)
    vtag = "5" if version == "5" else "311"
    # No "." in topics: RabbitMQ's MQTT plugin swaps "." and "/" (AMQP routing keys) and hands
    # a subscriber "a/tls1/2" for "a/tls1.2" (clients that match topics, like Paho Go, drop it).
    mtag = mode.key.replace("-tls", "").replace(".", "")
    client_id = f"{client.short}-{mtag}-{vtag}-{tag}"
    topic = f"interop/{client.key}/{mtag}/{vtag}/{tag}"
    message = f"hello from {client.key} via tlsgate ({mode.key}, MQTT {version}) {tag}"
    if message_size > len(message):
        message += " " + "x" * (message_size - len(message) - 1)
    env = {**os.environ, **client_env,
           "MQTT_HOST": host, "MQTT_PORT": str(stage.ports[Stage.LISTENER[mode.kind]]),
           "MQTT_VERSION": version, "MQTT_TOPIC": topic, "MQTT_MESSAGE": message,
           "MQTT_CLIENT_ID": client_id, "TIMEOUT": str(int(timeout))}
    for k in ("TLS_CAFILE", "TLS_CERT", "TLS_KEY", "PSK_IDENTITY", "PSK_KEY", "TLS_VERSION",
              "MQTT_USERNAME", "MQTT_PASSWORD", "OPENSSL_CONF"):
        if k not in client_env:
            env.pop(k, None)
    # What the client sends as user name, and what the broker must see.
    sent_user: str | None = None
    if broker.needs_password:
        sent_user = "interop" if mode.kind == "one-way" else "not-the-identity"
        env["MQTT_USERNAME"], env["MQTT_PASSWORD"] = sent_user, stage.creds.password
    expect_user = {"one-way": sent_user, "mutual": CLIENT_CN, "psk": PSK_IDENTITY}[mode.kind]
    if mode.kind == "psk":
        env["PSK_IDENTITY"], env["PSK_KEY"] = PSK_IDENTITY, stage.creds.psk_hex
    else:
        env["TLS_CAFILE"] = str(stage.pki.ca)
        if mode.kind == "mutual":
            env["TLS_CERT"], env["TLS_KEY"] = str(stage.pki.client_cert), str(stage.pki.client_key)
    if mode.tls_version:
        if client.tls_version_by_openssl_conf:
            env["OPENSSL_CONF"] = str(_tls_cap_files(tc.workdir)[mode.tls_version])
        else:
            env["TLS_VERSION"] = mode.tls_version
    try:
        r = subprocess.run(argv, env=env, capture_output=True, text=True,
                           timeout=timeout * 4 + 10, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        res.detail = f"the example did not finish within {timeout * 4 + 10:.0f}s"
        return
    out = (r.stdout + r.stderr).strip()
    out = out.replace(stage.creds.psk_hex, "<psk>").replace(stage.creds.password, "<password>")
    if r.returncode == UNSUPPORTED_EXIT and "UNSUPPORTED:" in out:
        res.status = "unsupported"
        res.detail = out.split("UNSUPPORTED:", 1)[1].strip().splitlines()[0]
        return
    if r.returncode != 0:
        res.detail = _last_line(out) or f"exit status {r.returncode}"
        return
    try:
        tls = _check_access(access_line(stage.gate, f"{client_id}-pub"), stage, mode,
                            expect_user, f"{client_id}-pub")
        notes = [tls]
        if mode.kind != "one-way":
            assert expect_user is not None
            notes.append(broker.identity_evidence(f"{client_id}-pub", expect_user, sent_user,
                                                  stage.gate))
    except IdentityNotShown as exc:
        res.detail = f"message arrived, but {exc}"
        return
    res.status = "pass"
    res.detail = "; ".join(notes)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    fails = [ln for ln in lines if ln.startswith("FAIL")]
    return (fails or lines or [""])[-1][:300]


# ---- printing ----------------------------------------------------------------------------------
MARK = {"pass": "pass", "fail": "FAIL", "unsupported": "unsup", "skipped": "skip"}


def format_matrix(results: Iterable[Result], clients: dict[str, str],
                  header: list[str] | None = None) -> str:
    """The long table (one line per cell) and a grid per broker, then the reasons."""
    results = list(results)
    lines = list(header or [])
    w_client = max([len(clients.get(r.client, r.client)) for r in results] + [6])
    lines.append("")
    w_mode = max([len(r.mode) for r in results] + [4])
    lines.append(f"{'client':<{w_client}}  {'broker':<9}  {'mode':<{w_mode}}  {'MQTT':<5}  "
                 f"{'result':<11}  detail")
    lines.append("-" * (w_client + w_mode + 50))
    for r in results:
        lines.append(f"{clients.get(r.client, r.client):<{w_client}}  {r.broker:<9}  "
                     f"{r.mode:<{w_mode}}  {r.version:<5}  {r.status:<11}  {r.detail}")
    # Grid: rows = clients, columns = mode, per broker; each cell "3.1.1/5".
    modes = list(dict.fromkeys(r.mode for r in results))
    for broker in dict.fromkeys(r.broker for r in results):
        lines.append("")
        lines.append(f"{broker}: each cell is MQTT 3.1.1 / MQTT 5.0")
        lines.append(f"  {'':<{w_client}}  " + "  ".join(f"{m:<13}" for m in modes))
        for client in dict.fromkeys(r.client for r in results if r.broker == broker):
            cells = []
            for m in modes:
                by_v = {r.version: MARK[r.status] for r in results
                        if r.broker == broker and r.client == client and r.mode == m}
                cells.append("/".join(by_v.get(v, "-") for v in VERSIONS))
            lines.append(f"  {clients.get(client, client):<{w_client}}  "
                         + "  ".join(f"{c:<13}" for c in cells))
    reasons: dict[str, list[str]] = {}
    for r in results:
        if r.status in ("unsupported", "skipped", "fail"):
            reasons.setdefault(f"{r.status}: {r.detail}", []).append(
                f"{r.client}/{r.broker}/{r.mode}/{r.version}")
    if reasons:
        lines.append("")
        lines.append("Why not pass:")
        for why, cells in reasons.items():
            lines.append(f"  {why}")
            lines.append(f"    ({len(cells)} cells: {', '.join(cells[:6])}"
                         f"{', ...' if len(cells) > 6 else ''})")
    counts = {s: sum(1 for r in results if r.status == s) for s in MARK}
    lines.append("")
    lines.append("Total: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)

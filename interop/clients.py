"""The client examples of ``examples/`` as the matrix runs them.

Every example follows one contract (examples/README.md): settings from environment variables
(``MQTT_HOST``, ``MQTT_PORT``, ``MQTT_VERSION``, ``TLS_CAFILE``/``TLS_CERT``/``TLS_KEY``,
``PSK_IDENTITY``/``PSK_KEY``, ``TLS_VERSION``...), a subscriber and a publisher through tlsgate,
exit status 0 when the message arrived, 1 when not, 3 with an ``UNSUPPORTED: <reason>`` line when
the client cannot do what was asked (a limit of the client, e.g. TLS-PSK in Go).

Here each one is found or built (``prepare``) and turned into a command line (``command``).
``prepare`` and ``command`` return a string instead when the client cannot run *here* (a tool is
missing): the runner records that as "skipped", which is about this machine, not the client.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from tests.procs import REPO

EXAMPLES = REPO / "examples"


@dataclass(frozen=True)
class Mode:
    key: str                  # as printed in the matrix
    kind: str                 # "one-way" | "mutual" | "psk"
    tls_version: str | None   # "1.2" / "1.3" pinned, None = what the pair negotiates


MODES = {m.key: m for m in (
    Mode("one-way", "one-way", None),
    Mode("mutual", "mutual", None),
    Mode("mutual-tls1.2", "mutual", "1.2"),
    Mode("psk-tls1.3", "psk", "1.3"),
    Mode("psk-tls1.2", "psk", "1.2"),
)}


@dataclass
class Toolchain:
    """Where the runner builds things (``workdir``), keeps what it downloads and compiler caches
    (``cache``, default: the workdir), and whether it may download (pip, npm)."""
    workdir: Path
    offline: bool = False
    cache: Path | None = None
    log: list[str] = field(default_factory=list)

    @property
    def cache_dir(self) -> Path:
        return self.cache or self.workdir

    @property
    def bin(self) -> Path:
        p = self.workdir / "bin"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def note(self, line: str) -> None:
        self.log.append(line)
        print(f"  [prepare] {line}", flush=True)


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600,  # type: ignore[call-overload,no-any-return]
                          **kw)


def _dpkg_version(package: str) -> str:
    if shutil.which("dpkg-query") is None:
        return "?"
    r = _run(["dpkg-query", "-W", "-f", "${Version}", package])
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "?"


def _missing(*tools: str) -> str | None:
    gone = [t for t in tools if shutil.which(t) is None]
    return f"not installed here: {', '.join(gone)}" if gone else None


class Client:
    key = "client"
    label = "client"
    short = "c"
    #: Pin the TLS version through an OpenSSL config file (OPENSSL_CONF) instead of TLS_VERSION,
    #: for clients whose API has no maximum version.
    tls_version_by_openssl_conf = False

    def prepare(self, tc: Toolchain) -> str | None:
        """Find or build the example; None when ready, else why it cannot run here."""
        return None

    def command(self, tc: Toolchain, mode: Mode) -> tuple[list[str], dict[str, str]] | str:
        raise NotImplementedError

    def version(self) -> str:
        return "?"


class MosquittoClients(Client):
    key, label, short = "mosquitto", "mosquitto_pub/sub", "mosq"

    def prepare(self, tc: Toolchain) -> str | None:
        return _missing("mosquitto_pub", "mosquitto_sub", "stdbuf")

    def command(self, tc: Toolchain, mode: Mode) -> tuple[list[str], dict[str, str]] | str:
        return ["sh", str(EXAMPLES / "mosquitto-clients/roundtrip.sh")], {}

    def version(self) -> str:
        out = _run(["mosquitto_pub", "--help"]).stdout
        m = re.search(r"version (\S+)", out)
        return m.group(1) if m else "?"


class OpensslClient(Client):
    key, label, short = "openssl", "openssl s_client", "sslc"

    def prepare(self, tc: Toolchain) -> str | None:
        return _missing("openssl", "mkfifo", "od", "timeout")

    def command(self, tc: Toolchain, mode: Mode) -> tuple[list[str], dict[str, str]] | str:
        return ["sh", str(EXAMPLES / "openssl/roundtrip.sh")], {}

    def version(self) -> str:
        return _run(["openssl", "version"]).stdout.split(" ")[1]


# ---- Python --------------------------------------------------------------------------------
PSK_PYTHON_CHECK = "import ssl, sys; sys.exit(0 if hasattr(ssl.SSLContext, " \
                   "'set_psk_client_callback') else 1)"


def find_python313() -> str | None:
    """A Python with stdlib TLS-PSK (>= 3.13): $INTEROP_PYTHON313, this one, PATH, pyenv."""
    cands = [os.environ.get("INTEROP_PYTHON313", ""), sys.executable,
             shutil.which("python3.14") or "", shutil.which("python3.13") or ""]
    cands += [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.1[3-9]*/bin/python3"))]
    for cand in cands:
        if not cand:
            continue
        try:  # a pyenv shim may exist without the version being active: run it to know
            if subprocess.run([cand, "-c", PSK_PYTHON_CHECK], capture_output=True,
                              timeout=30).returncode == 0:
                return cand
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


class PskPython:
    """Python >= 3.13 with paho-mqtt and aiomqtt importable, for the TLS-PSK cells.

    When the runner's own Python is older, the two pure-Python packages are installed once with
    ``pip install --target`` into the work directory (same versions as here), unless offline.
    """

    def __init__(self) -> None:
        self._done = False
        self._result: tuple[str, dict[str, str]] | str = ""

    def get(self, tc: Toolchain) -> tuple[str, dict[str, str]] | str:
        if not self._done:
            self._result = self._make(tc)
            self._done = True
        return self._result

    def _make(self, tc: Toolchain) -> tuple[str, dict[str, str]] | str:
        py = find_python313()
        if py is None:
            return ("no Python >= 3.13 here (the stdlib ssl module has TLS-PSK from 3.13; set "
                    "INTEROP_PYTHON313)")
        if py == sys.executable:
            return py, {}
        site = tc.cache_dir / "py313-site"
        env = {"PYTHONPATH": str(site)}
        check = [py, "-c", "import paho.mqtt, aiomqtt"]
        if subprocess.run(check, env={**os.environ, **env}, capture_output=True).returncode:
            if tc.offline:
                return (f"{py} has no paho-mqtt/aiomqtt in {site} and downloads are off "
                        "(`make interop` installs them there once)")
            pins = [f"{d}=={metadata.version(d)}" for d in ("paho-mqtt", "aiomqtt")]
            tc.note(f"pip install --target {site} {' '.join(pins)} (for {py})")
            r = _run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                      "--target", str(site), *pins])
            if r.returncode != 0:
                return f"could not install {' '.join(pins)} for {py}: {r.stderr.strip()[-200:]}"
        return py, env


PSK_PYTHON = PskPython()


class PythonClient(Client):
    module = ""
    script = ""

    def prepare(self, tc: Toolchain) -> str | None:
        try:
            metadata.version(self.module)
        except metadata.PackageNotFoundError:
            return f"{self.module} is not installed in {sys.executable} (pip install -e '.[dev]')"
        return None

    def command(self, tc: Toolchain, mode: Mode) -> tuple[list[str], dict[str, str]] | str:
        script = str(EXAMPLES / self.script)
        if mode.kind != "psk":
            return [sys.executable, script], {}
        got = PSK_PYTHON.get(tc)
        if isinstance(got, str):
            return got
        py, env = got
        return [py, script], env

    def version(self) -> str:
        return metadata.version(self.module)


class PahoPython(PythonClient):
    key, label, short = "paho-python", "paho-mqtt (Python)", "pahopy"
    module, script = "paho-mqtt", "paho-python/roundtrip.py"


class Aiomqtt(PythonClient):
    key, label, short = "aiomqtt", "aiomqtt (Python)", "aio"
    module, script = "aiomqtt", "aiomqtt/roundtrip.py"


# ---- Node ------------------------------------------------------------------------------------
class MqttJs(Client):
    key, label, short = "mqttjs", "MQTT.js (Node)", "mqttjs"
    dir = EXAMPLES / "mqttjs"

    def prepare(self, tc: Toolchain) -> str | None:
        if shutil.which("node") is None:
            return "node is not installed here (apt install nodejs npm)"
        if not (self.dir / "node_modules/mqtt/package.json").exists():
            if tc.offline:
                return ("examples/mqttjs/node_modules is missing and downloads are off "
                        "(run `npm ci` in examples/mqttjs; `make interop` does)")
            if shutil.which("npm") is None:
                return "npm is not installed here (apt install npm)"
            tc.note("npm ci in examples/mqttjs (MQTT.js from npm)")
            r = _run(["npm", "ci", "--no-audit", "--no-fund"], cwd=self.dir)
            if r.returncode != 0:
                return f"npm ci failed: {r.stderr.strip()[-300:]}"
        return None

    def command(self, tc: Toolchain, mode: Mode) -> tuple[list[str], dict[str, str]] | str:
        return ["node", str(self.dir / "roundtrip.js")], {}

    def version(self) -> str:
        try:
            pkg = json.loads((self.dir / "node_modules/mqtt/package.json").read_text())
        except OSError:
            return "?"
        node = _run(["node", "--version"]).stdout.strip()
        return f"{pkg.get('version', '?')} on node {node}"


# ---- Go --------------------------------------------------------------------------------------
GOPATH = Path("/usr/share/gocode")
PAHO_GO = GOPATH / "src/github.com/eclipse/paho.mqtt.golang"


def find_go() -> str | None:
    for cand in (shutil.which("go"), "/usr/lib/go/bin/go",
                 *sorted(str(p) for p in Path("/usr/lib").glob("go-1.*/bin/go"))):
        if cand and Path(cand).exists():
            return cand
    return None


class PahoGo(Client):
    key, label, short = "paho-go", "Eclipse Paho Go", "pahogo"

    def prepare(self, tc: Toolchain) -> str | None:
        go = find_go()
        if go is None:
            return "no Go toolchain here (apt install golang-1.19-go or golang-go)"
        if not PAHO_GO.exists():
            return ("paho.mqtt.golang is not installed here "
                    "(apt install golang-github-eclipse-paho.mqtt.golang-dev)")
        src = EXAMPLES / "paho-go/roundtrip.go"
        out = tc.bin / "paho-go-roundtrip"
        if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
            return None
        tc.note(f"go build {src.relative_to(REPO)} (GOPATH={GOPATH}, GO111MODULE=off)")
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOFLAGS": "",
               "GOCACHE": str(tc.cache_dir / "gocache"), "CGO_ENABLED": "0"}
        r = _run([go, "build", "-o", str(out), str(src)], env=env)
        if r.returncode != 0:
            return f"go build failed: {r.stderr.strip()[-400:]}"
        return None

    def command(self, tc: Toolchain, mode: Mode) -> tuple[list[str], dict[str, str]] | str:
        return [str(tc.bin / "paho-go-roundtrip")], {}

    def version(self) -> str:
        go = find_go()
        gov = _run([go, "version"]).stdout.split()[2] if go else "?"
        return f"{_dpkg_version('golang-github-eclipse-paho.mqtt.golang-dev')} with {gov}"


# ---- C ---------------------------------------------------------------------------------------
class PahoC(Client):
    key, label, short = "paho-c", "Eclipse Paho C", "pahoc"
    tls_version_by_openssl_conf = True

    def prepare(self, tc: Toolchain) -> str | None:
        missing = _missing("make", "cc")
        if missing:
            return missing
        if not Path("/usr/include/MQTTClient.h").exists():
            return "libpaho-mqtt-dev is not installed here (apt install libpaho-mqtt-dev)"
        out = tc.bin / "paho-c-roundtrip"
        tc_src = EXAMPLES / "paho-c/roundtrip.c"
        if out.exists() and out.stat().st_mtime >= tc_src.stat().st_mtime:
            return None
        tc.note("make -C examples/paho-c (cc ... -lpaho-mqtt3cs)")
        r = _run(["make", "-s", "-C", str(EXAMPLES / "paho-c"), f"OUT={out}"])
        if r.returncode != 0:
            return f"building the Paho C example failed: {r.stderr.strip()[-400:]}"
        return None

    def command(self, tc: Toolchain, mode: Mode) -> tuple[list[str], dict[str, str]] | str:
        return [str(tc.bin / "paho-c-roundtrip")], {}

    def version(self) -> str:
        return _dpkg_version("libpaho-mqtt-dev")


CLIENTS: dict[str, type[Client]] = {c.key: c for c in (
    MosquittoClients, OpensslClient, PahoPython, Aiomqtt, MqttJs, PahoGo, PahoC)}

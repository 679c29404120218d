"""Run the documentation: the shell snippets of a page, in order, and a check of every TOML block.

What a page's fenced code blocks mean (the info string after the opening fence):

``sh`` (or ``bash``, ``shell``)
    Run with ``bash -euo pipefail`` in the page's working directory, in page order; it must exit 0.
    Attributes in braces after the language change that:

    * ``{external}``: needs something the test cannot provide (a public CA, systemd, a cloud load
      balancer, ``make run`` which CI smoke-tests separately). Not run.
    * ``{background wait=PORT}``: a long-running process (``tlsgate serve``, an OCSP responder).
      Started in the background; the page goes on once a socket listens on ``PORT`` (the block
      fails if the process exits first). Stopped when the page is done.
    * ``{expect-fail}``: the block must exit non-zero (a refused client, an invalid config).
    * ``expect="regex"``: its output (stdout and stderr) must match.

``toml``
    Checked like ``tlsgate check-config`` does (``tlsgate.config.check.check``), after the page's
    shell blocks ran (so the files they create exist). ``{file=NAME}`` also writes it to ``NAME``
    in the working directory at that point of the page, for the shell blocks after it.
    ``{fragment}``: a part of a file; checked merged onto :data:`BASE_CONFIG` (a minimal listener).
    ``{invalid expect="regex"}``: must fail the check, with a problem matching the regex.
    ``{external}``: not checked.

Any other language (``console``, ``text``, ``hocon``, ``nginx``, ``ini``, ``yaml``...) is prose.

Ports: the docs use the usual ports (:data:`CANONICAL_PORTS`); every one of them is replaced by a
free port chosen for the page, in shell blocks and TOML alike, so pages can run beside other tests.
1883 is a real mosquitto (``tests/procs.Mosquitto``) started for the page. A config that a
``background`` block may serve must set ``dashboard.listen`` (or disable the dashboard): the
default address has a fixed port.

Absolute paths ``/etc/tlsgate/`` and ``/var/lib/tlsgate/`` (the deployment layout) are mapped to
the same paths under the working directory when TOML is checked; the files the checks need there
(certificates from ``tlsgate certs init``, a token, a PSK file) are made by :func:`make_fixtures`.

``tlsgate`` on the snippets' PATH is a shim running ``python -m tlsgate`` from this checkout, and
``python`` is the interpreter running the tests (the docs assume the virtual environment is
active). ``examples/`` of the checkout is linked into the working directory.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"

#: Ports the docs may use literally; each becomes a free port per page.
CANONICAL_PORTS = (1883, 8883, 8884, 8885, 8886, 8887, 18083, 18084, 8080, 8888, 8889, 5370,
                   5371)

BASE_CONFIG = """
[node]
data_dir = "var/tlsgate"
[upstreams.default]
address = "127.0.0.1:1883"
[listeners.ssl.default]
bind = "127.0.0.1:8883"
[listeners.ssl.default.ssl_options]
certfile = "etc/certs/server.pem"
keyfile = "etc/certs/server.key"
cacertfile = "etc/certs/ca.pem"
[dashboard]
enable = false
"""

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^\n`]*)$")
_ATTR = re.compile(r'([\w-]+)(?:=("(?:[^"\\]|\\.)*"|\S+))?')


@dataclass
class Block:
    lang: str
    attrs: dict[str, str]
    text: str
    line: int           # 1-based line of the opening fence

    def has(self, flag: str) -> bool:
        return flag in self.attrs

    @property
    def where(self) -> str:
        return f"line {self.line}"


def parse_info(info: str) -> tuple[str, dict[str, str]]:
    info = info.strip()
    lang, _, rest = info.partition(" ")
    attrs: dict[str, str] = {}
    rest = rest.strip()
    if rest.startswith("{") and rest.endswith("}"):
        for m in _ATTR.finditer(rest[1:-1]):
            value = m.group(2) or ""
            if value.startswith('"'):
                value = value[1:-1].replace('\\"', '"')
            attrs[m.group(1)] = value
    elif rest:
        raise ValueError(f"unexpected text after the language in ```{info}: put attributes in "
                         "{braces}")
    return lang.lower(), attrs


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order."""
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        lang, attrs = parse_info(m.group("info"))
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        out.append(Block(lang, attrs, "\n".join(body) + "\n", i + 1))
        i = j + 1
    return out


SHELL = ("sh", "bash", "shell")


def runnable(b: Block) -> bool:
    return b.lang in SHELL and not b.has("external")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """A socket listens on ``port`` (read from /proc: connecting to probe would be seen by the
    server -- an access log line in tlsgate, and `openssl ocsp` hangs after such a probe)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def wait_listening(port: int, proc: subprocess.Popen[Any] | None = None,
                   timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        if listening(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


def port_map(extra: dict[int, int] | None = None) -> dict[int, int]:
    m = {p: free_port() for p in CANONICAL_PORTS}
    m.update(extra or {})
    return m


def remap(text: str, ports: dict[int, int]) -> str:
    if not ports:
        return text
    rx = re.compile(r"(?<![\w.])(" + "|".join(str(p) for p in ports) + r")(?![\w])")
    return rx.sub(lambda m: str(ports[int(m.group(1))]), text)


def map_abs_paths(text: str, root: Path) -> str:
    for prefix in ("/etc/tlsgate/", "/var/lib/tlsgate"):
        text = text.replace(prefix, str(root) + prefix)
    return text


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def toml_dumps(data: dict[str, Any]) -> str:
    """Just enough TOML writing for merged config fragments (tables, scalars, lists, inline
    tables of strings, arrays of tables)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json_key(k)} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(f"cannot write {v!r}")

    def json_key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else value(k)

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not _is_table(v) and not _is_table_array(v)}
        if prefix and (scalars or not d):
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{json_key(k)} = {value(v)}")
        for k, v in d.items():
            name = f"{prefix}.{json_key(k)}" if prefix else json_key(k)
            if _is_table(v):
                table(name, v)
            elif _is_table_array(v):
                for item in v:
                    lines.append(f"[[{name}]]")
                    for ik, iv in item.items():
                        lines.append(f"{json_key(ik)} = {value(iv)}")

    table("", data)
    return "\n".join(lines) + "\n"


def _is_table(v: Any) -> bool:
    # headers/body are string tables: written inline
    return (isinstance(v, dict) and not all(isinstance(x, str) for x in v.values())) or \
        (isinstance(v, dict) and not v)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


# ------------------------------------------------------------------------------------------
# Running a page
# ------------------------------------------------------------------------------------------
def make_shim(bindir: Path) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    shim = bindir / "tlsgate"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m tlsgate \"$@\"\n")
    shim.chmod(0o755)
    # `python` is the venv's (the docs say: with the virtual environment active)
    py = bindir / "python"
    py.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    py.chmod(0o755)


def make_fixtures(root: Path, env: dict[str, str]) -> None:
    """Files the deployment layout's configs name, under ``root`` (see map_abs_paths)."""
    certs = root / "etc/tlsgate/certs"
    if not (certs / "server.pem").exists():
        subprocess.run(["tlsgate", "certs", "init", str(certs), "--client", "device-001"],
                       env=env, check=True, capture_output=True)
    # the names an ACME client (certbot) uses
    for src, dst in (("server.pem", "fullchain.pem"), ("server.key", "privkey.pem")):
        if not (certs / dst).exists():
            (certs / dst).write_bytes((certs / src).read_bytes())
            (certs / dst).chmod(0o600)
    crl = certs / "ca.crl"
    if not crl.exists():
        crl.write_bytes(_empty_crl(certs / "ca.pem", certs / "ca.key"))
    (root / "etc/tlsgate/admin").mkdir(exist_ok=True)
    (root / "etc/tlsgate/admin/token").write_text("docs-test-token\n")
    (root / "etc/tlsgate/admin.token").write_text("docs-test-token\n")
    (root / "etc/tlsgate/admin.token").chmod(0o600)
    (root / "etc/tlsgate/psk.txt").write_text("device-9:secret-key\n")
    (root / "var/lib/tlsgate").mkdir(parents=True, exist_ok=True)
    _cluster_fixtures(root / "etc/tlsgate")


def _cluster_fixtures(d: Path) -> None:
    """docs/cluster.md's files: a cluster CA and a node certificate for both ends of a link
    (serverAuth and clientAuth)."""
    if (d / "gate1-cluster.pem").exists():
        return
    from tlsgate.tls.certs import issue_server, make_ca

    ca = make_ca("docs cluster CA")
    ca_pem, _ = ca.write(d, "cluster-ca")
    node = issue_server(ca, ["gate1"], eku=("serverAuth", "clientAuth"))
    cert, _key = node.write(d, "gate1-cluster")
    assert ca_pem.name == "cluster-ca.pem" and cert.name == "gate1-cluster.pem"


def _empty_crl(ca_pem: Path, ca_key: Path) -> bytes:
    """A current CRL (no entries) of the fixture CA, PEM."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    key = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    now = datetime.datetime.now(datetime.UTC)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
           .last_update(now - datetime.timedelta(minutes=1))
           .next_update(now + datetime.timedelta(days=30))
           .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.PEM)


@dataclass
class Outcome:
    block: Block
    ok: bool
    output: str


@dataclass
class PageRun:
    page: Path
    workdir: Path
    ports: dict[int, int]
    env: dict[str, str]
    procs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    configs: list[tuple[Block, str]] = field(default_factory=list)  # (block, TOML text)

    # -- shell ---------------------------------------------------------------------------------
    def run_shell(self, b: Block, timeout: float = 60.0) -> None:
        script = remap(b.text, self.ports)
        if b.has("background"):
            self._background(b, script)
            return
        p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.workdir,
                           env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout)
        out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
        want_fail = b.has("expect-fail")
        ok = (p.returncode != 0) if want_fail else (p.returncode == 0)
        problem = ""
        if not ok:
            problem = ("expected a non-zero exit, got 0" if want_fail
                       else f"exit status {p.returncode}")
        if ok and b.attrs.get("expect") and not re.search(b.attrs["expect"], out):
            ok, problem = False, f"output does not match {b.attrs['expect']!r}"
        self.outcomes.append(Outcome(b, ok, out if ok else f"{problem}\n{out}"))
        if not ok:
            raise SnippetFailed(self, b, f"{problem}\n--- output ---\n{out}")

    def _background(self, b: Block, script: str) -> None:
        wait = b.attrs.get("wait")
        if not wait:
            raise SnippetFailed(self, b, "a background block needs wait=PORT")
        port = self.ports.get(int(wait), int(wait))
        log = self.workdir / f"background-{b.line}.log"
        out = open(log, "ab")  # noqa: SIM115 - closed when the process is stopped
        p = subprocess.Popen(["bash", "-c", "exec " + script.strip()], cwd=self.workdir,
                             env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.procs.append((p, log))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise SnippetFailed(self, b, f"exited with {p.returncode} before port {port} "
                                             f"was open\n--- output ---\n{log.read_text()}")
            if listening(port):
                break
            time.sleep(0.05)
        else:
            raise SnippetFailed(self, b, f"nothing listens on {port} after 30s\n--- output ---"
                                         f"\n{log.read_text()}")
        self.outcomes.append(Outcome(b, True, f"started, listening on {port}"))

    def stop(self) -> None:
        for p, _log in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for p, _log in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()

    def background_logs(self) -> str:
        parts = []
        for f in sorted(self.workdir.glob("background-*.log")):
            parts.append(f"--- {f.name} ---\n{f.read_text(errors='replace')[-6000:]}")
        return "\n".join(parts)

    # -- TOML ----------------------------------------------------------------------------------
    def write_file(self, b: Block) -> None:
        text = remap(b.text, self.ports)
        target = self.workdir / b.attrs["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if b.lang == "toml":
            self._check_fixed_ports(b, text)

    def _check_fixed_ports(self, b: Block, text: str) -> None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return
        if data.get("listeners") and not b.has("fragment"):
            dash = data.get("dashboard", {})
            if dash.get("enable", True) and "listen" not in dash:
                raise SnippetFailed(self, b, "this config would bind the admin API on the fixed "
                                             "default port 18083: set dashboard.listen (it is "
                                             "remapped) or dashboard.enable = false")

    def check_tomls(self, blocks_: list[Block]) -> list[str]:
        """check-config every TOML block; returns the failures."""
        from tlsgate.config.check import check

        failures = []
        for i, b in enumerate(blocks_):
            if b.lang != "toml" or b.has("external"):
                continue
            text = map_abs_paths(remap(b.text, self.ports), self.workdir)
            if b.has("fragment"):
                try:
                    data = deep_merge(tomllib.loads(BASE_CONFIG), tomllib.loads(text))
                except tomllib.TOMLDecodeError as exc:
                    failures.append(f"{b.where}: not valid TOML: {exc}")
                    continue
                text = toml_dumps(data)
            path = self.workdir / f".check-{i}.toml"
            path.write_text(text)
            cwd = os.getcwd()
            os.chdir(self.workdir)
            try:
                problems = check(str(path))
            except Exception as exc:  # a crash in check-config is a finding too
                problems = [f"check-config crashed: {type(exc).__name__}: {exc}"]
            finally:
                os.chdir(cwd)
            if b.has("invalid"):
                want = b.attrs.get("expect", "")
                if not problems:
                    failures.append(f"{b.where}: marked invalid but check-config accepts it")
                elif want and not any(re.search(want, p) for p in problems):
                    failures.append(f"{b.where}: marked invalid, expected a problem matching "
                                    f"{want!r}, got: {problems}")
            elif problems:
                failures.append(f"{b.where}: check-config: " + "; ".join(problems))
        return failures


class SnippetFailed(AssertionError):
    def __init__(self, run: PageRun, b: Block, message: str) -> None:
        rel = run.page.relative_to(REPO) if run.page.is_relative_to(REPO) else run.page
        super().__init__(f"{rel} {b.where} ({b.lang} {b.attrs or ''}):\n{b.text}\n{message}\n"
                         f"{run.background_logs()}")


def env_for(bindir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    for k in ("TLSGATE_URL", "TLSGATE_TOKEN"):
        env.pop(k, None)
    return env


def pages(*names: str) -> Iterator[Path]:
    for n in names:
        yield DOCS / n

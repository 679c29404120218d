"""The admin service of the node process: the HTTP(S) server for the API, /metrics and the
dashboard, and the node's ban list.

Decisions (documented for operators in the README):

* **Token.** ``dashboard.token`` (or ``file://path``) or ``dashboard.token_file`` (first line).
  Both are re-read when they change (a SIGHUP/API reload for ``token``; the file's mtime for
  ``token_file``), so a token can be rotated without a restart.
* **No token.** Allowed only on a loopback address (127.0.0.0/8, ::1, localhost), with a warning
  at start: anyone who can open a connection on this machine then steers the gateway. On any
  other address tlsgate refuses to start and says which key to set -- unless the dashboard runs
  with mutual TLS (``dashboard.ssl.cacertfile``), where the client certificate authenticates.
* **/metrics needs no token**, like EMQX's Prometheus endpoint and HAProxy's exporter: it shows
  counts, never identities or secrets, and not every scraper can send a header. Expose the
  admin address only where scrapers and operators are.
* **TLS** (``dashboard.ssl``): stdlib ``ssl``, TLS 1.2+, client certificates required when
  ``cacertfile`` is set.
* ``dashboard.listen``/``ssl`` changes take effect at the next restart (a reload keeps the
  server as it is).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from types import SimpleNamespace
from typing import Any

from aiohttp import web

from ..config import ConfigError, Problem
from ..config.schema import DashboardConfig, DashboardSsl
from ..config.types import Secret, split_hostport
from .api import make_app
from .banstore import NodeBans

log = logging.getLogger("tlsgate.admin")


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return addr.is_loopback


class TokenSource:
    """The current API token, or None when none is configured. Raises OSError when the
    token file cannot be read (the API then refuses requests: fail closed)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self._file_cache: tuple[str, int, str] | None = None  # (path, mtime_ns, token)

    def _cfg(self) -> DashboardConfig:
        cfg: DashboardConfig = self.node.config.dashboard
        return cfg

    def __call__(self) -> str | None:
        cfg = self._cfg()
        if cfg.token is not None and str.__str__(cfg.token) != "":
            value = cfg.token.reveal().strip()
            return value or None
        if cfg.token_file:
            return self._from_file(cfg.token_file)
        return None

    def _from_file(self, path: str) -> str:
        st = os.stat(path)
        cached = self._file_cache
        if cached is not None and cached[0] == path and cached[1] == st.st_mtime_ns:
            return cached[2]
        with open(path, encoding="utf-8") as f:
            first = f.readline().strip()
        if not first:
            raise OSError(0, f"{path} is empty")
        self._file_cache = (path, st.st_mtime_ns, first)
        return first

    def check(self, source: str) -> str | None:
        """At start: the token, or a ConfigError naming the key."""
        cfg = self._cfg()
        try:
            return self()
        except OSError as exc:
            raise ConfigError(source, [Problem(
                "dashboard.token_file" if cfg.token_file and cfg.token is None
                else "dashboard.token",
                f"cannot read the API token: {exc.strerror or exc}")]) from None


def build_ssl_context(opts: DashboardSsl, source: str) -> ssl.SSLContext:
    problems: list[Problem] = []
    if not opts.certfile or not opts.keyfile:
        raise ConfigError(source, [Problem("dashboard.ssl", "enable = true needs certfile and "
                                                            "keyfile")])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    password: str | None = None
    if isinstance(opts.password, Secret) and str.__str__(opts.password):
        try:
            password = opts.password.reveal()
        except OSError as exc:
            problems.append(Problem("dashboard.ssl.password",
                                    f"cannot read the password file: {exc.strerror}"))
    try:
        ctx.load_cert_chain(opts.certfile, opts.keyfile, password=password)
    except FileNotFoundError as exc:
        key = "dashboard.ssl.certfile" if exc.filename == opts.certfile or \
            not os.path.exists(opts.certfile) else "dashboard.ssl.keyfile"
        problems.append(Problem(key, f"file not found: {exc.filename or ''}".rstrip(": ")))
    except (ssl.SSLError, OSError) as exc:
        why = getattr(exc, "reason", None) or exc
        problems.append(Problem("dashboard.ssl.keyfile",
                                f"cannot load certfile/keyfile: {why} (wrong password, or a key "
                                "that does not match the certificate?)"))
    if opts.cacertfile:
        try:
            ctx.load_verify_locations(opts.cacertfile)
        except (ssl.SSLError, OSError) as exc:
            problems.append(Problem("dashboard.ssl.cacertfile", f"cannot load: {exc}"))
        ctx.verify_mode = ssl.CERT_REQUIRED
    if problems:
        raise ConfigError(source, problems)
    return ctx


def validate(cfg: DashboardConfig, source: str, token: TokenSource | None = None, *,
             warn: bool = False) -> ssl.SSLContext | None:
    """Everything about ``[dashboard]`` a start checks (token readable, no token only on a
    loopback address, the TLS files); the TLS context when ``ssl.enable``. Raises ConfigError
    naming the key. Used by the service and by ``tlsgate check-config``."""
    host, _ = split_hostport(cfg.listen)
    if token is None:
        token = TokenSource(SimpleNamespace(config=SimpleNamespace(dashboard=cfg)))
    value = token.check(source)
    if value is None:
        if not is_loopback(host) and not (cfg.ssl.enable and cfg.ssl.cacertfile):
            raise ConfigError(source, [Problem(
                "dashboard.token",
                f"the admin API listens on {cfg.listen}, which is not a loopback address, "
                "and no token is set: set dashboard.token or dashboard.token_file (or "
                "listen on 127.0.0.1, or require client certificates with "
                "dashboard.ssl.cacertfile)")])
        if warn:
            log.warning("dashboard.token is not set: anyone who can connect to %s can use the "
                        "admin API (loopback only); set dashboard.token or token_file",
                        cfg.listen)
    return build_ssl_context(cfg.ssl, source) if cfg.ssl.enable else None


class AdminService:
    """Node service (``node.services``): start()/stop()."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.bans = NodeBans(node)
        node.bans = self.bans  # other node services (cluster) share the same list
        hooks = getattr(node, "on_worker_started", None)
        if hooks is not None:
            hooks.append(self.bans.push_to)
        else:  # pragma: no cover - an older node without the hook
            log.warning("this node cannot push bans to restarted workers")
        self.token = TokenSource(node)
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.port = 0

    async def start(self) -> None:
        cfg: DashboardConfig = self.node.config.dashboard
        source = self.node.path or "<config>"
        host, port = split_hostport(cfg.listen)
        ssl_ctx = validate(cfg, source, self.token, warn=True)
        app = make_app(self.node, self.bans, self.token)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host.strip("[]"), port, ssl_context=ssl_ctx,
                           reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(source, [Problem(
                "dashboard.listen", f"cannot listen on {cfg.listen}: "
                f"{exc.strerror or exc}")]) from None
        self.runner = runner
        server = getattr(site, "_server", None)
        socks = getattr(server, "sockets", None) or []
        self.port = int(socks[0].getsockname()[1]) if socks else port
        scheme = "https" if ssl_ctx is not None else "http"
        shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
        self.url = f"{scheme}://{shown}:{self.port}/"
        log.info("admin API, /metrics and dashboard on %s", self.url)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

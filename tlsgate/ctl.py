"""`tlsgate ctl`: the admin API from the command line (status, connections, kick, psk, ban,
reload, certs, listeners, nodes).

Where the API is and the token: ``--url``/``--token``/``--token-file``, else the environment
(``TLSGATE_URL``, ``TLSGATE_TOKEN``), else the ``[dashboard]`` table of the config file given
with ``-c`` (``listen``, ``token``/``token_file``, ``ssl.enable``), else
``http://127.0.0.1:18083`` without a token. Output: readable tables, or the API's JSON with
``--json``. Exit status: 0 done, 1 the API said no (or could not be reached), 2 usage errors.

Plain stdlib HTTP (urllib): a CLI call is one request; no event loop needed.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

DEFAULT_URL = "http://127.0.0.1:18083"


class ApiFailure(Exception):
    def __init__(self, status: int, message: str, doc: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.doc = doc


@dataclass
class Client:
    url: str
    token: str | None
    ssl_context: ssl.SSLContext | None
    timeout: float
    as_json: bool

    def call(self, method: str, path: str, body: Any = None,
             query: dict[str, Any] | None = None, ok: tuple[int, ...] = ()) -> Any:
        url = self.url.rstrip("/") + path
        if query:
            q = {k: v for k, v in query.items() if v not in (None, "")}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout,
                                        context=self.ssl_context) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
            if exc.code in ok:
                return doc
            message = doc.get("message") if isinstance(doc, dict) else None
            if exc.code == 401:
                message = ("the admin API refused the token (HTTP 401): give --token-file, "
                           "--token, TLSGATE_TOKEN or -c CONFIG")
            raise ApiFailure(exc.code, message or f"HTTP {exc.code} {exc.reason}", doc) \
                from None
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise ApiFailure(0, f"cannot reach the tlsgate admin API at {self.url}: {why}") \
                from None


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"tlsgate ctl: {message}", err=True)
    sys.exit(code)


def _client(ctx: click.Context) -> Client:
    obj = ctx.find_object(Client)
    assert obj is not None
    return obj


def _run(ctx: click.Context, method: str, path: str, body: Any = None,
         query: dict[str, Any] | None = None, ok: tuple[int, ...] = ()) -> Any:
    try:
        return _client(ctx).call(method, path, body, query, ok)
    except ApiFailure as exc:
        _fail(exc.message)


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False))


# ------------------------------------------------------------------------------------ format
def table(headers: list[str], rows: list[list[Any]], right: set[int] | None = None) -> str:
    """A plain text table; ``right`` = indexes of right-aligned (numeric) columns."""
    right = right or set()
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(widths[i]) if i in right else v.ljust(widths[i])
                         for i, v in enumerate(values)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def human_duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    d, h, m, sec = s // 86400, s % 86400 // 3600, s % 3600 // 60, s % 60
    if d:
        return f"{d}d{h}h"
    if h:
        return f"{h}h{m}m"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"


def _warn_errors(doc: Any) -> None:
    errs = doc.get("errors") if isinstance(doc, dict) else None
    if errs:
        click.echo("warning: partial answer: " + "; ".join(errs), err=True)


# ------------------------------------------------------------------------------------ group
def _defaults_from_config(path: str) -> tuple[str, str | None]:
    from .config import ConfigError, load
    from .config.types import split_hostport

    try:
        cfg = load(path).dashboard
    except ConfigError as exc:
        _fail(exc.render(), 2)
    host, port = split_hostport(cfg.listen)
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    url = f"{'https' if cfg.ssl.enable else 'http'}://{shown}:{port}"
    token = None
    try:
        if cfg.token is not None and str.__str__(cfg.token):
            token = cfg.token.reveal().strip()
        elif cfg.token_file:
            token = Path(cfg.token_file).read_text().splitlines()[0].strip()
    except (OSError, IndexError) as exc:
        _fail(f"{path}: cannot read the dashboard token: {exc}", 2)
    return url, token or None


@click.group("ctl")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="tlsgate config file: the API address and token come from its [dashboard].")
@click.option("--url", envvar="TLSGATE_URL", help="Admin API base URL "
              f"(default: from -c, else {DEFAULT_URL}). Env: TLSGATE_URL.")
@click.option("--token", envvar="TLSGATE_TOKEN",
              help="Bearer token (visible to other users in `ps`: prefer --token-file or "
                   "TLSGATE_TOKEN).")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True),
              help="File whose first line is the token.")
@click.option("--cacert", type=click.Path(dir_okay=False, exists=True),
              help="CA that the admin API's HTTPS certificate chains to.")
@click.option("--cert", type=click.Path(dir_okay=False, exists=True),
              help="Client certificate (when dashboard.ssl.cacertfile asks for one).")
@click.option("--key", type=click.Path(dir_okay=False, exists=True), help="Its key.")
@click.option("--insecure", is_flag=True, help="Do not verify the API's HTTPS certificate.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for an answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_context
def ctl(ctx: click.Context, config_path: str | None, url: str | None, token: str | None,
        token_file: str | None, cacert: str | None, cert: str | None, key: str | None,
        insecure: bool, timeout: float, as_json: bool) -> None:
    """Talk to a running tlsgate over its admin API."""
    cfg_url, cfg_token = (None, None)
    if config_path:
        cfg_url, cfg_token = _defaults_from_config(config_path)
    if token_file:
        lines = Path(token_file).read_text().splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            _fail(f"{token_file} is empty", 2)
    base = url or cfg_url or DEFAULT_URL
    sslctx: ssl.SSLContext | None = None
    if base.startswith("https://"):
        sslctx = ssl.create_default_context(cafile=cacert)
        if insecure:
            sslctx.check_hostname = False
            sslctx.verify_mode = ssl.CERT_NONE
        if cert:
            sslctx.load_cert_chain(cert, key)
    ctx.obj = Client(base, token or cfg_token, sslctx, timeout, as_json)


# ------------------------------------------------------------------------------------ commands
@ctl.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Node, version, uptime, workers, listeners, last reload."""
    doc = _run(ctx, "GET", "/api/v1/status")
    if _client(ctx).as_json:
        _emit_json(doc)
        return
    alive = sum(1 for w in doc["workers"] if w["alive"])
    psk_state = f"on ({doc['psk']['identities']})" if doc["psk"]["enabled"] else "off"
    click.echo(f"node {doc['node']}  tlsgate {doc['version']}  up "
               f"{human_duration(doc['uptime_s'])}  workers {alive}/{len(doc['workers'])}  "
               f"connections {doc['connections']}  bans {doc['bans']}  psk {psk_state}")
    if doc.get("config_path"):
        click.echo(f"config {doc['config_path']}  reload_on_change "
                   f"{'on' if doc['reload_on_change'] else 'off'}")
    r = doc.get("last_reload")
    if r:
        click.echo("last reload: " + ("ok: " + ("; ".join(r["changes"]) or "nothing changed")
                                      if r["ok"] else "FAILED: " + "; ".join(r["problems"])))
    click.echo()
    click.echo(table(["listener", "bind", "open"],
                     [[x["listener"], x["bind"], x["active"]] for x in doc["listeners"]], {2}))
    click.echo()
    click.echo(table(["worker", "pid", "alive", "restarts", "connections"],
                     [[w["index"], w["pid"], "yes" if w["alive"] else "NO", w["restarts"],
                       w.get("connections")] for w in doc["workers"]], {0, 1, 3, 4}))
    _warn_errors(doc)


@ctl.command()
@click.pass_context
def listeners(ctx: click.Context) -> None:
    """Listeners with their counters: open, accepted, handshakes (resumed among them),
    refusals, bytes."""
    doc = _run(ctx, "GET", "/api/v1/listeners")
    if _client(ctx).as_json:
        _emit_json(doc)
        return
    rows = [[x["listener"], x["bind"], x.get("upstream_address"), x.get("verify"),
             x.get("active", 0), x.get("accepted", 0), x.get("handshakes_ok", 0),
             x.get("handshakes_resumed", 0), x.get("handshakes_failed", 0),
             sum((x.get("refusals") or {}).values()),
             human_bytes(x.get("bytes_in")), human_bytes(x.get("bytes_out"))]
            for x in doc["data"]]
    click.echo(table(["listener", "bind", "upstream", "verify", "open", "accepted", "hs ok",
                      "resumed", "hs failed", "refused", "in", "out"], rows,
                     {4, 5, 6, 7, 8, 9, 10, 11}))
    reasons = [[x["listener"], kind, r, n] for x in doc["data"]
               for kind, key in (("refusal", "refusals"), ("handshake", "handshake_failures"))
               for r, n in sorted((x.get(key) or {}).items())]
    if reasons:
        click.echo()
        click.echo(table(["listener", "what", "reason", "count"], reasons, {3}))
    _warn_errors(doc)


@ctl.command()
@click.argument("conn_id", required=False)
@click.option("--clientid", help="Exact client id.")
@click.option("--username", help="Exact user name.")
@click.option("--cn", help="Client certificate CN.")
@click.option("--psk-identity", help="TLS-PSK identity.")
@click.option("--peer", help="Peer IP, or a prefix of host:port.")
@click.option("--listener", help="Listener, e.g. ssl:default.")
@click.option("--page", type=click.IntRange(1), default=1, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.pass_context
def connections(ctx: click.Context, conn_id: str | None, clientid: str | None,
                username: str | None, cn: str | None, psk_identity: str | None,
                peer: str | None, listener: str | None, page: int, limit: int) -> None:
    """Live connections (filtered, paged), or one connection's details with CONN_ID."""
    if conn_id:
        doc = _run(ctx, "GET", f"/api/v1/connections/{urllib.parse.quote(conn_id, safe='')}")
        if _client(ctx).as_json:
            _emit_json(doc)
            return
        for k, v in doc.items():
            click.echo(f"{k:15} {'-' if v is None else v}")
        return
    doc = _run(ctx, "GET", "/api/v1/connections", query={
        "clientid": clientid, "username": username, "cn": cn, "psk_identity": psk_identity,
        "peer": peer, "listener": listener, "page": page, "limit": limit})
    if _client(ctx).as_json:
        _emit_json(doc)
        return
    now = time.time()
    rows = [[c["id"], c["listener"], c["peer"], c.get("clientid"), c.get("username"),
             c.get("cert_cn") or c.get("psk_identity"), c.get("tls_version"),
             human_bytes(c["bytes_in"]), human_bytes(c["bytes_out"]),
             human_duration(now - c["connected_at"])] for c in doc["data"]]
    click.echo(table(["id", "listener", "peer", "clientid", "username", "cn/psk", "tls", "in",
                      "out", "age"], rows, {7, 8, 9}))
    m = doc["meta"]
    click.echo(f"\n{m['count']} connection(s); page {m['page']}"
               + (" (more: --page " + str(m["page"] + 1) + ")" if m["hasnext"] else ""))
    _warn_errors(doc)


@ctl.command()
@click.argument("conn_ids", nargs=-1, required=True)
@click.pass_context
def kick(ctx: click.Context, conn_ids: tuple[str, ...]) -> None:
    """Close connections by id (as `ctl connections` lists them)."""
    failed = False
    for cid in conn_ids:
        try:
            _client(ctx).call("DELETE", f"/api/v1/connections/{urllib.parse.quote(cid, safe='')}")
            click.echo(f"kicked {cid}")
        except ApiFailure as exc:
            click.echo(f"tlsgate ctl: {cid}: {exc.message}", err=True)
            failed = True
    if failed:
        sys.exit(1)


@ctl.command()
@click.pass_context
def reload(ctx: click.Context) -> None:
    """Reload the config and everything it names (like SIGHUP); prints what changed."""
    doc = _run(ctx, "POST", "/api/v1/reload", ok=(422,))
    if _client(ctx).as_json:
        _emit_json(doc)
    elif doc["ok"]:
        click.echo("reloaded" + (":" if doc["changes"] else ": nothing changed"))
        for c in doc["changes"]:
            click.echo(f"  {c}")
    else:
        click.echo("reload FAILED; the previous configuration keeps serving:", err=True)
        for p in doc["problems"]:
            click.echo(f"  {p}", err=True)
    if not doc["ok"]:
        sys.exit(1)


@ctl.command()
@click.pass_context
def certs(ctx: click.Context) -> None:
    """Served certificates: expiry, SANs, OCSP staple and CRL state."""
    doc = _run(ctx, "GET", "/api/v1/certificates")
    if _client(ctx).as_json:
        _emit_json(doc)
        return
    rows = []
    for lst in doc["listeners"]:
        for ch in lst["chains"]:
            for i, c in enumerate(ch["certificates"]):
                where = f"({ch['role']})" if ch.get("role") else \
                    (ch["server_name"] or "(default)")
                rows.append([lst["listener"], where,
                             "leaf" if i == 0 else f"chain{i}", c["subject"], c["not_after"],
                             f"{c['days_left']:.0f}", c["status"].upper()
                             if c["status"] != "ok" else "ok"])
    click.echo(table(["listener", "sni", "#", "subject", "not after", "days", "status"], rows,
                     {5}))
    rev = doc.get("revocation") or {}
    click.echo()
    if not rev.get("configured"):
        click.echo(rev.get("message", "revocation: not configured"))
    else:
        for s in rev.get("ocsp_staples") or []:
            age = human_duration(s.get("staple_age_seconds"))
            state = (f"stapled ({s.get('cert_status')}, {age} old)" if s.get("stapled")
                     else f"NOT stapled ({s.get('last_error') or 'no response yet'})")
            click.echo(f"OCSP {s.get('name')}: {state}")
        for c in rev.get("crls") or []:
            state = (f"held, {human_duration(c.get('age_seconds'))} old" if c.get("cached")
                     else f"none held ({c.get('last_error') or 'not fetched yet'})")
            click.echo(f"CRL {c.get('source')}: {state}")
        if rev.get("error"):
            click.echo(f"revocation status: {rev['error']}")
    _warn_errors(doc)


@ctl.command()
@click.pass_context
def nodes(ctx: click.Context) -> None:
    """Cluster nodes (this node alone without a cluster)."""
    doc = _run(ctx, "GET", "/api/v1/cluster/nodes")
    if _client(ctx).as_json:
        _emit_json(doc)
        return
    click.echo(table(["node", "status", "version", "uptime", "connections"],
                     [[n.get("name"), n.get("status"), n.get("version"),
                       human_duration(n.get("uptime_s")), n.get("connections")]
                      for n in doc["nodes"]], {4}))


# ------------------------------------------------------------------------------------ psk
@ctl.group()
def psk() -> None:
    """TLS-PSK identities: list, add, remove (secrets are never shown)."""


@psk.command("list")
@click.pass_context
def psk_list(ctx: click.Context) -> None:
    doc = _run(ctx, "GET", "/api/v1/psk")
    if _client(ctx).as_json:
        _emit_json(doc)
    elif not doc["enabled"]:
        click.echo("TLS-PSK is not enabled ([psk_authentication] enable = false)")
    else:
        for ident in doc["identities"]:
            click.echo(ident)
        click.echo(f"{doc['count']} identit{'y' if doc['count'] == 1 else 'ies'}", err=True)


@psk.command("add")
@click.argument("identity")
@click.option("--secret-file", type=click.File("r"),
              help="Read the secret from this file's first line ('-' = standard input). "
                   "Without it the secret is prompted for (not echoed).")
@click.pass_context
def psk_add(ctx: click.Context, identity: str, secret_file: Any) -> None:
    """Add IDENTITY (or change its secret); the secret is written as
    psk_authentication.format says (emqx: raw text; hex: hex digits)."""
    if secret_file is not None:
        lines = secret_file.read().splitlines()
        secret = lines[0].strip() if lines else ""
    else:
        secret = click.prompt("secret", hide_input=True, confirmation_prompt=True)
    if not secret:
        _fail("the secret is empty", 2)
    doc = _run(ctx, "POST", "/api/v1/psk", body={"identity": identity, "secret": secret})
    if _client(ctx).as_json:
        _emit_json(doc)
    else:
        click.echo(f"added PSK identity {identity}")


@psk.command("remove")
@click.argument("identity")
@click.pass_context
def psk_remove(ctx: click.Context, identity: str) -> None:
    doc = _run(ctx, "DELETE", f"/api/v1/psk/{urllib.parse.quote(identity, safe='')}")
    if _client(ctx).as_json:
        _emit_json(doc)
    else:
        click.echo(f"removed PSK identity {identity}")


# ------------------------------------------------------------------------------------ bans
KINDS = click.Choice(["clientid", "username", "cn", "psk_identity"])


@ctl.group()
def ban() -> None:
    """Bans by client id, user name, certificate CN or PSK identity."""


@ban.command("list")
@click.pass_context
def ban_list(ctx: click.Context) -> None:
    doc = _run(ctx, "GET", "/api/v1/bans")
    if _client(ctx).as_json:
        _emit_json(doc)
        return
    rows = [[b["kind"], b["value"], b.get("reason"),
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b["until"]))
             if b.get("until") else "never"] for b in doc["data"]]
    click.echo(table(["kind", "value", "reason", "until"], rows))


@ban.command("add")
@click.argument("kind", type=KINDS)
@click.argument("value")
@click.option("--for", "duration", help="How long, e.g. 10m, 1h, 7d (default: no end).")
@click.option("--reason", default="", help="Shown in the ban list.")
@click.pass_context
def ban_add(ctx: click.Context, kind: str, value: str, duration: str | None,
            reason: str) -> None:
    """Ban KIND VALUE: new clients get CONNACK 'banned'; live ones are closed."""
    body: dict[str, Any] = {"kind": kind, "value": value, "reason": reason}
    if duration:
        body["duration"] = duration
    doc = _run(ctx, "POST", "/api/v1/bans", body=body)
    if _client(ctx).as_json:
        _emit_json(doc)
        return
    click.echo(f"banned {kind} {value}" + (f" for {duration}" if duration else "")
               + f"; {len(doc['closed'])} live connection(s) closed")
    _warn_errors(doc)


@ban.command("remove")
@click.argument("kind", type=KINDS)
@click.argument("value")
@click.pass_context
def ban_remove(ctx: click.Context, kind: str, value: str) -> None:
    doc = _run(ctx, "DELETE", f"/api/v1/bans/{kind}/{urllib.parse.quote(value, safe='')}")
    if _client(ctx).as_json:
        _emit_json(doc)
    else:
        click.echo(f"ban on {kind} {value} lifted")

"""The admin HTTP API (SPEC §8): JSON under ``/api/v1``, ``/metrics``, the dashboard at ``/``.

The app talks to the node process through a small surface (:class:`AdminNode`): its config,
its workers, ``ask_workers`` (fan-out of control operations, see
``tlsgate.server.admin_ops``), ``reload()``, and optional features the node may carry --
``node.psk`` (TLS-PSK table), ``node.revocation_status`` (OCSP/CRL state; without it the
workers' own registries are merged), ``node.cluster``.
Unit tests drive the same app with a fake node; e2e tests with the real one.

Authentication: every ``/api/v1`` path except ``openapi.json`` needs ``Authorization: Bearer
<token>`` when a token is configured (compared in constant time); a missing or wrong token is
401. ``/``, ``/static/*``, ``/api/v1/openapi.json`` and ``/metrics`` need none (see
``tlsgate.admin.server`` for why). Errors are JSON: ``{"error": code, "message": text}``.

Connection ids are ``<worker>.<id>`` (e.g. ``0.1a``): the id tlsgate's access log shows for the
connection (``conn=1a``), prefixed by the worker process that holds it (``[w0]`` in the log).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from .. import __version__
from ..config import Config
from ..gateway.bans import BAN_KINDS, BanError, parse_ban
from ..server.admin_ops import MAX_QUERY
from . import procinfo
from .banstore import NodeBans
from .metrics import CONTENT_TYPE, MetricsRenderer, Snapshot, sum_listener_stats

log = logging.getLogger("tlsgate.admin")

STATIC_DIR = Path(str(resources.files("tlsgate.admin").joinpath("static")))
OPENAPI_FILE = STATIC_DIR / "openapi.json"
#: Certificate expiry thresholds (days) for the "status" of each certificate.
WARN_DAYS, CRITICAL_DAYS = 30.0, 7.0
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
WORKER_TIMEOUT = 10.0


class AdminNode(Protocol):
    """What the API needs from ``tlsgate.server.node.Node``."""

    config: Config
    path: str | None
    started_at: float
    workers: dict[int, Any]
    last_reload: Any

    async def ask_workers(self, op: str, timeout: float = 10.0, **args: Any
                          ) -> list[tuple[int, Any]]: ...

    async def reload(self) -> Any: ...


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


TokenSource = Callable[[], "str | None"]
NODE: web.AppKey[Any] = web.AppKey("node", object)
BANS: web.AppKey[NodeBans] = web.AppKey("bans", NodeBans)
TOKEN: web.AppKey[TokenSource] = web.AppKey("token", object)  # type: ignore[arg-type]
METRICS: web.AppKey[MetricsRenderer] = web.AppKey("metrics", MetricsRenderer)

PUBLIC_PATHS = frozenset({"/", "/metrics", "/api/v1/openapi.json", "/favicon.ico", "/healthz"})


# ------------------------------------------------------------------------------------------
# middlewares
# ------------------------------------------------------------------------------------------
def _json_error(status: int, code: str, message: str,
                headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status,
                             headers=headers)


def bearer_ok(header: str | None, expected: str) -> bool:
    """``Authorization: Bearer <expected>``, compared in constant time."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"),
                               expected.encode("utf-8", "surrogateescape"))


@web.middleware
async def _guard(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    path = request.path
    is_api = path.startswith("/api/")
    if is_api and path not in PUBLIC_PATHS:
        try:
            expected = request.app[TOKEN]()
        except OSError as exc:  # token_file vanished: fail closed
            log.error("cannot read dashboard.token_file: %s; refusing API requests",
                      exc.strerror)
            return _json_error(503, "token_unavailable",
                               "the API token cannot be read (dashboard.token_file); "
                               "see the tlsgate log")
        if expected is not None and not bearer_ok(request.headers.get("Authorization"),
                                                   expected):
            return _json_error(401, "unauthorized",
                               "missing or wrong bearer token: send 'Authorization: Bearer "
                               "<token>' with dashboard.token (or the content of "
                               "dashboard.token_file)",
                               headers={"WWW-Authenticate": 'Bearer realm="tlsgate"'})
    try:
        resp = await handler(request)
    except ApiError as exc:
        resp = _json_error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if not is_api or exc.status < 400:
            raise
        resp = _json_error(exc.status, exc.reason.lower().replace(" ", "_"),
                           f"{request.method} {path}: {exc.reason}")
    except Exception:
        log.exception("admin API: %s %s failed", request.method, path)
        resp = _json_error(500, "internal_error", "internal error; see the tlsgate log")
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")
    if is_api:
        resp.headers.setdefault("Cache-Control", "no-store")
    else:
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'self'")
    return resp


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _node(request: web.Request) -> Any:
    return request.app[NODE]


def _who(request: web.Request) -> str:
    return request.remote or "?"


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _split(results: list[tuple[int, Any]]) -> tuple[list[tuple[int, Any]], list[str]]:
    ok, errors = [], []
    for index, res in results:
        if isinstance(res, BaseException):
            errors.append(f"worker {index}: {res or type(res).__name__}")
        else:
            ok.append((index, res))
    return ok, errors


async def _ask(node: Any, op: str, **args: Any) -> tuple[list[tuple[int, Any]], list[str]]:
    return _split(await node.ask_workers(op, timeout=WORKER_TIMEOUT, **args))


async def _ask_one(node: Any, index: int, op: str, **args: Any) -> Any:
    h = node.workers.get(index)
    if h is None or h.peer is None or (h.proc is not None and h.proc.returncode is not None):
        return None
    return await h.peer.request(op, timeout=WORKER_TIMEOUT, **args)


def _conn_id(worker: int, rec_id: str) -> str:
    return f"{worker}.{rec_id}"


def _parse_conn_id(cid: str) -> tuple[int | None, str]:
    head, dot, tail = cid.partition(".")
    if dot and head.isdigit() and tail:
        return int(head), tail
    return None, cid


def _with_worker(worker: int, rec: dict[str, Any]) -> dict[str, Any]:
    out = dict(rec)
    out["conn_id"] = rec["id"]
    out["id"] = _conn_id(worker, rec["id"])
    out["worker"] = worker
    return out


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw in (None, ""):
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name} must be an integer") from None
    if not lo <= v <= hi:
        raise ApiError(400, "bad_parameter", f"{name} must be between {lo} and {hi}")
    return v


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        doc = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "bad_json", "the request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "bad_json", "the request body must be a JSON object")
    return doc


def _enabled_listeners(config: Config) -> list[tuple[str, str, str, Any]]:
    out: list[tuple[str, str, str, Any]] = [
        (f"ssl:{name}", "ssl", name, lst) for name, lst in config.listeners.ssl.items()
        if lst.enable]
    out += [(f"gm:{name}", "gm", name, lst) for name, lst in config.listeners.gm.items()
            if lst.enable]
    return out


def _workers_view(node: Any) -> list[dict[str, Any]]:
    out = []
    for index in sorted(node.workers):
        h = node.workers[index]
        alive = h.proc is not None and h.proc.returncode is None
        out.append({"index": index, "pid": h.pid, "alive": alive, "restarts": h.restarts})
    return out


def _reload_view(res: Any) -> dict[str, Any] | None:
    if res is None:
        return None
    return dict(res.as_dict()) if hasattr(res, "as_dict") else dict(res)


def _cert_status(days_left: float) -> str:
    if days_left < 0:
        return "expired"
    if days_left < CRITICAL_DAYS:
        return "critical"
    if days_left < WARN_DAYS:
        return "warning"
    return "ok"


def revocation_configured(config: Config) -> bool:
    """Does any listener staple OCSP, check CRLs or check client certificates by OCSP?"""
    for lst in config.listeners.ssl.values():
        o = lst.ssl_options
        if lst.enable and (o.enable_crl_check or o.ocsp.enable_ocsp_stapling
                           or o.ocsp.check_client):
            return True
    return False


def _fresher(a: dict[str, Any], b: dict[str, Any], held: str) -> dict[str, Any]:
    """Of two workers' entries for the same staple/CRL: the one that holds something, then
    the one that succeeded last (ISO 8601 UTC strings compare in time order)."""
    ka = (bool(a.get(held)), a.get("last_success") or "")
    kb = (bool(b.get(held)), b.get("last_success") or "")
    return b if kb > ka else a


def merge_revocation(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """One view of the workers' revocation snapshots (tlsgate.tls.revocation_status)."""
    staples: dict[str, dict[str, Any]] = {}
    crls: dict[str, dict[str, Any]] = {}
    client: dict[str, Any] = {}
    generated = ""
    for snap in snaps:
        generated = max(generated, str(snap.get("generated_at") or ""))
        for st in snap.get("ocsp_staples") or []:
            key = str(st.get("name"))
            staples[key] = _fresher(staples[key], st, "stapled") if key in staples else st
        for c in snap.get("crls") or []:
            key = str(c.get("source"))
            crls[key] = _fresher(crls[key], c, "cached") if key in crls else c
        for k, v in (snap.get("client_ocsp") or {}).items():
            if isinstance(v, int) and not isinstance(v, bool):
                client[k] = client.get(k, 0) + v
            elif k not in client or v is not None:
                client[k] = v
    return {"generated_at": generated or None,
            "ocsp_staples": [staples[k] for k in sorted(staples)],
            "crls": [crls[k] for k in sorted(crls)], "client_ocsp": client}


async def _revocation(node: Any) -> dict[str, Any]:
    fn = getattr(node, "revocation_status", None)
    if not callable(fn):
        if not revocation_configured(node.config):
            return {"configured": False,
                    "message": "OCSP stapling / CRL status: not configured"}
        ok, errors = await _ask(node, "revocation")
        return {"configured": True, **merge_revocation([r for _i, r in ok]), "errors": errors}
    try:
        doc = await _maybe_await(fn())
    except Exception as exc:
        log.exception("reading the revocation status failed")
        return {"configured": True, "error": str(exc) or type(exc).__name__}
    if not isinstance(doc, dict):
        return {"configured": True, "error": "the revocation status is not a JSON object"}
    return {"configured": True, **doc}


# ------------------------------------------------------------------------------------------
# handlers
# ------------------------------------------------------------------------------------------
async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(OPENAPI_FILE, headers={"Content-Type": "application/json"})


async def status(request: web.Request) -> web.Response:
    node = _node(request)
    cfg: Config = node.config
    ok, errors = await _ask(node, "status")
    per_worker = dict(ok)
    workers = _workers_view(node)
    for w in workers:
        st = per_worker.get(w["index"])
        w["connections"] = st["connections"] if st else None
    listeners = []
    for label, _kind, _name, lst in _enabled_listeners(cfg):
        active = sum((st["listeners"].get(label) or {}).get("active", 0)
                     for st in per_worker.values())
        listeners.append({"listener": label, "bind": lst.bind, "active": active})
    psk = getattr(node, "psk", None)
    psk_count = len(await _maybe_await(psk.identities())) if psk is not None else 0
    now = time.time()
    doc = {
        "node": cfg.node.name, "version": __version__, "pid": os.getpid(),
        "started_at": node.started_at, "uptime_s": round(now - node.started_at, 1),
        "config_path": node.path,
        "workers": workers,
        "connections": sum(st["connections"] for st in per_worker.values()),
        "listeners": listeners,
        "last_reload": _reload_view(node.last_reload),
        "reload_on_change": cfg.node.reload_on_change,
        "psk": {"enabled": psk is not None, "identities": psk_count},
        "bans": len(request.app[BANS].list()),
        "cluster": {"enabled": cfg.cluster.enable},
        "errors": errors,
    }
    return web.json_response(doc)


async def healthz(request: web.Request) -> web.Response:
    """Liveness/readiness for probes (no token, no identities): 200 when every configured
    worker answers, 503 otherwise (e.g. a worker is being restarted)."""
    node = _node(request)
    want = node.config.node.worker_count()
    ok, errors = await _ask(node, "status")
    up = len(ok)
    code = 200 if up >= want and not errors else 503
    return web.json_response({"status": "ok" if code == 200 else "degraded",
                              "workers_up": up, "workers": want}, status=code)


async def listeners(request: web.Request) -> web.Response:
    node = _node(request)
    cfg: Config = node.config
    ok, errors = await _ask(node, "stats")
    sums = sum_listener_stats(st for _i, st in ok)
    out = []
    for label, kind, name, lst in _enabled_listeners(cfg):
        up = cfg.upstreams.get(lst.upstream)
        opts = lst.ssl_options
        doc: dict[str, Any] = {
            "listener": label, "kind": kind, "name": name, "bind": lst.bind,
            "upstream": lst.upstream, "upstream_address": up.address if up else None,
            "max_connections": lst.max_connections, "max_conn_rate": lst.max_conn_rate,
            "proxy_protocol": lst.proxy_protocol,
            "verify": opts.verify,
            "versions": list(getattr(opts, "versions", None) or
                             getattr(opts, "protocols", None) or []),
            "running": label in sums,
        }
        doc.update(sums.get(label) or {})
        out.append(doc)
    return web.json_response({"data": out, "errors": errors})


async def connections(request: web.Request) -> web.Response:
    node = _node(request)
    page = _int_param(request, "page", 1, 1, 1_000_000)
    limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    if page * limit > MAX_QUERY:
        raise ApiError(400, "bad_parameter",
                       f"page {page} with limit {limit} is deeper than the first {MAX_QUERY} "
                       "connections: narrow the list with a filter (clientid, username, cn, "
                       "psk_identity, peer, listener)")
    filters = {k: request.query[k] for k in
               ("clientid", "username", "cn", "psk_identity", "peer", "listener")
               if request.query.get(k)}
    count = 0
    merged: list[dict[str, Any]] = []
    if (request.query.get("cluster") or "").lower() in ("1", "true", "yes"):
        # every node of the cluster; ids are <worker>.<id>@<node>
        find = getattr(getattr(node, "cluster", None), "find_connections", None)
        if not callable(find):
            raise ApiError(409, "cluster_disabled",
                           "cluster=true needs [cluster] enable = true on this node")
        res = await find(filters, first=page * limit)
        count, merged, errors = res["count"], list(res["data"]), list(res["errors"])
        merged.sort(key=lambda r: (r["connected_at"], r["node"], r["worker"], r["conn_id"]))
    else:
        ok, errors = await _ask(node, "conn_query", first=page * limit, **filters)
        for index, res in ok:
            count += res["count"]
            merged.extend(_with_worker(index, r) for r in res["data"])
        merged.sort(key=lambda r: (r["connected_at"], r["worker"], r["conn_id"]))
    data = merged[(page - 1) * limit:page * limit]
    return web.json_response({
        "data": data,
        "meta": {"page": page, "limit": limit, "count": count,
                 "hasnext": page * limit < count},
        "errors": errors,
    })


async def _find_connection(node: Any, cid: str) -> tuple[int, dict[str, Any]]:
    worker, rec_id = _parse_conn_id(cid)
    if worker is not None:
        rec = await _ask_one(node, worker, "connection", id=rec_id)
        if rec is None:
            raise ApiError(404, "not_found", f"no live connection {cid}")
        return worker, rec
    ok, _errors = await _ask(node, "connection", id=rec_id)
    found = [(i, r) for i, r in ok if r is not None]
    if not found:
        raise ApiError(404, "not_found", f"no live connection {cid}")
    if len(found) > 1:
        raise ApiError(409, "ambiguous",
                       f"connection id {cid} exists in workers "
                       f"{', '.join(str(i) for i, _ in found)}: use <worker>.<id>, e.g. "
                       f"{_conn_id(found[0][0], rec_id)}")
    return found[0]


def _on_other_node(node: Any, cid: str) -> tuple[Any, str, str] | None:
    """``<worker>.<id>@<node>`` naming another cluster node: (cluster, node, local id)."""
    local, at, target = cid.rpartition("@")
    if not at or target == node.config.node.name:
        return None
    cluster = getattr(node, "cluster", None)
    if cluster is None or not hasattr(cluster, "kick"):
        raise ApiError(404, "not_found", f"no live connection {cid} (the cluster is not "
                                         "enabled on this node)")
    return cluster, target, local


async def _remote_call(coro: Awaitable[Any], cid: str) -> Any:
    try:
        return await coro
    except Exception as exc:  # ClusterError, TimeoutError: the node is not reachable
        raise ApiError(502, "cluster_error", f"{cid}: {exc or 'the node did not answer'}"
                       ) from None


async def connection(request: web.Request) -> web.Response:
    node = _node(request)
    cid = request.match_info["id"]
    other = _on_other_node(node, cid)
    if other is not None:
        cluster, target, local = other
        rec = await _remote_call(cluster.connection(target, local), cid)
        if rec is None:
            raise ApiError(404, "not_found", f"no live connection {cid}")
        return web.json_response(rec)
    worker, rec = await _find_connection(node, cid.rpartition("@")[0] or cid)
    return web.json_response(_with_worker(worker, rec))


async def kick(request: web.Request) -> web.Response:
    node = _node(request)
    cid = request.match_info["id"]
    other = _on_other_node(node, cid)
    if other is not None:
        cluster, target, local = other
        reason = f"kicked by operator ({_who(request)} via node {node.config.node.name})"
        if not await _remote_call(cluster.kick(target, local, reason), cid):
            raise ApiError(404, "not_found", f"no live connection {cid}")
        log.info("admin API: kicked connection %s at the request of %s", cid, _who(request))
        return web.json_response({"id": cid, "kicked": True})
    cid = cid.rpartition("@")[0] or cid
    worker, rec = await _find_connection(node, cid)
    reason = f"kicked by operator ({_who(request)})"
    done = await _ask_one(node, worker, "kick", id=rec["id"], reason=reason)
    if not done:
        raise ApiError(404, "not_found", f"connection {cid} closed before it could be kicked")
    log.info("admin API: kicked connection %s (client id %r) at the request of %s",
             _conn_id(worker, rec["id"]), rec.get("clientid"), _who(request))
    return web.json_response({"id": _conn_id(worker, rec["id"]), "kicked": True})


async def certificates(request: web.Request) -> web.Response:
    node = _node(request)
    ok, errors = await _ask(node, "certificates")
    lists = ok[0][1] if ok else []
    for lst in lists:
        for chain in lst.get("chains", []):
            for c in chain.get("certificates", []):
                c["status"] = _cert_status(float(c["days_left"]))
    return web.json_response({"listeners": lists, "revocation": await _revocation(node),
                              "warn_days": WARN_DAYS, "critical_days": CRITICAL_DAYS,
                              "errors": errors})


def _psk_or_409(node: Any) -> Any:
    psk = getattr(node, "psk", None)
    if psk is None:
        raise ApiError(409, "psk_disabled",
                       "TLS-PSK is not enabled: set [psk_authentication] enable = true and "
                       "init_file, then reload")
    return psk


async def psk_list(request: web.Request) -> web.Response:
    node = _node(request)
    psk = getattr(node, "psk", None)
    cfg = node.config.psk_authentication
    if psk is None:
        return web.json_response({"enabled": False, "format": cfg.format, "identities": [],
                                  "count": 0})
    ids = sorted(await _maybe_await(psk.identities()))
    return web.json_response({"enabled": True, "format": cfg.format, "identities": ids,
                              "count": len(ids)})


async def psk_add(request: web.Request) -> web.Response:
    node = _node(request)
    psk = _psk_or_409(node)
    body = await _json_body(request)
    identity, secret = body.get("identity"), body.get("secret")
    if not isinstance(identity, str) or not identity:
        raise ApiError(400, "bad_request", "identity must be a non-empty string")
    if not isinstance(secret, str) or not secret:
        raise ApiError(400, "bad_request",
                       "secret must be a non-empty string, written as "
                       f"psk_authentication.format = {node.config.psk_authentication.format!r} "
                       "says")
    try:
        await _maybe_await(psk.add(identity, secret))
    except ValueError as exc:
        msg = str(exc).replace(secret, "******")  # never echo a secret
        raise ApiError(400, "bad_psk", msg) from None
    log.info("admin API: PSK identity %r added at the request of %s", identity, _who(request))
    return web.json_response({"identity": identity, "added": True}, status=201)


async def psk_remove(request: web.Request) -> web.Response:
    node = _node(request)
    psk = _psk_or_409(node)
    identity = request.match_info["identity"]
    removed = await _maybe_await(psk.remove(identity))
    if not removed:
        raise ApiError(404, "not_found", f"no PSK identity {identity!r}")
    log.info("admin API: PSK identity %r removed at the request of %s", identity,
             _who(request))
    return web.json_response({"identity": identity, "removed": True})


def _ban_view(b: Any, now: float) -> dict[str, Any]:
    d: dict[str, Any] = b.as_dict()
    d["expires_in_s"] = round(b.until - now, 1) if b.until is not None else None
    return d


async def bans_list(request: web.Request) -> web.Response:
    now = time.time()
    return web.json_response({"data": [_ban_view(b, now) for b in request.app[BANS].list()],
                              "kinds": list(BAN_KINDS)})


async def bans_add(request: web.Request) -> web.Response:
    body = await _json_body(request)
    now = time.time()
    body.pop("created_at", None)
    try:
        ban = parse_ban(body, now)
    except BanError as exc:
        raise ApiError(400, "bad_ban", str(exc)) from None
    if ban.until is not None and ban.until <= now:
        raise ApiError(400, "bad_ban", "until is in the past")
    res = await request.app[BANS].add(ban)
    log.info("admin API: ban %s %r added at the request of %s (%d live connection(s) closed)",
             ban.kind, ban.value, _who(request), len(res["closed"]))
    return web.json_response({"ban": _ban_view(ban, now), "replaced": res["replaced"],
                              "closed": res["closed"], "errors": res["errors"]}, status=201)


async def bans_remove(request: web.Request) -> web.Response:
    kind, value = request.match_info["kind"], request.match_info["value"]
    if kind not in BAN_KINDS:
        raise ApiError(400, "bad_ban", f"kind must be one of {', '.join(BAN_KINDS)}")
    gone = await request.app[BANS].remove(kind, value)
    if gone is None:
        raise ApiError(404, "not_found", f"no ban on {kind} {value!r}")
    log.info("admin API: ban %s %r removed at the request of %s", kind, value, _who(request))
    return web.json_response({"kind": kind, "value": value, "removed": True})


async def cluster_nodes(request: web.Request) -> web.Response:
    node = _node(request)
    cluster = getattr(node, "cluster", None)
    nodes_of = getattr(cluster, "nodes", None)
    if callable(nodes_of):
        return web.json_response({"enabled": True, "nodes": await _maybe_await(nodes_of())})
    ok, errors = await _ask(node, "status")
    now = time.time()
    me = {"name": node.config.node.name, "self": True, "status": "running",
          "version": __version__, "uptime_s": round(now - node.started_at, 1),
          "connections": sum(st["connections"] for _i, st in ok)}
    return web.json_response({"enabled": bool(node.config.cluster.enable), "nodes": [me],
                              "errors": errors})


async def reload(request: web.Request) -> web.Response:
    node = _node(request)
    log.info("admin API: reload requested by %s", _who(request))
    res = _reload_view(await node.reload()) or {"ok": False, "changes": [], "problems": []}
    return web.json_response(res, status=200 if res.get("ok") else 422)


async def gather_snapshot(node: Any, bans: NodeBans) -> Snapshot:
    """Everything /metrics renders, fetched from the workers concurrently."""
    stats_t = asyncio.ensure_future(node.ask_workers("stats", timeout=WORKER_TIMEOUT))
    certs_t = asyncio.ensure_future(node.ask_workers("certificates", timeout=WORKER_TIMEOUT))
    rev = await _revocation(node)
    stats_ok, stats_err = _split(await stats_t)
    certs_ok, _ = _split(await certs_t)
    workers = _workers_view(node)
    procs: list[tuple[str, str, procinfo.ProcInfo]] = []
    me = procinfo.read(os.getpid())
    if me is not None:
        procs.append(("node", "", me))
    for w in workers:
        if w["alive"] and w["pid"]:
            p = procinfo.read(w["pid"])
            if p is not None:
                procs.append(("worker", str(w["index"]), p))
    last = node.last_reload
    cluster_metrics = getattr(getattr(node, "cluster", None), "metrics", None)
    return Snapshot(
        node=node.config.node.name, started_at=node.started_at, workers=workers, procs=procs,
        stats=stats_ok, worker_errors=len(stats_err),
        certs=certs_ok[0][1] if certs_ok else [],
        revocation=rev if rev.get("configured") else None,
        bans=len(bans.list()),
        reload_ok=getattr(last, "ok", None) if last is not None else None,
        cluster=cluster_metrics() if callable(cluster_metrics) else None)


async def metrics(request: web.Request) -> web.Response:
    snap = await gather_snapshot(_node(request), request.app[BANS])
    body = request.app[METRICS].render(snap)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


# ------------------------------------------------------------------------------------------
# the app
# ------------------------------------------------------------------------------------------
def make_app(node: Any, bans: NodeBans, token: TokenSource) -> web.Application:
    app = web.Application(middlewares=[_guard])
    app[NODE] = node
    app[BANS] = bans
    app[TOKEN] = token
    app[METRICS] = MetricsRenderer()
    r = app.router
    r.add_get("/", index)
    r.add_static("/static", STATIC_DIR, show_index=False)
    r.add_get("/metrics", metrics)
    r.add_get("/api/v1/openapi.json", openapi)
    r.add_get("/api/v1/status", status)
    r.add_get("/healthz", healthz)
    r.add_get("/api/v1/listeners", listeners)
    r.add_get("/api/v1/connections", connections)
    r.add_get("/api/v1/connections/{id}", connection)
    r.add_delete("/api/v1/connections/{id}", kick)
    r.add_get("/api/v1/certificates", certificates)
    r.add_get("/api/v1/psk", psk_list)
    r.add_post("/api/v1/psk", psk_add)
    r.add_delete("/api/v1/psk/{identity:.+}", psk_remove)
    r.add_get("/api/v1/bans", bans_list)
    r.add_post("/api/v1/bans", bans_add)
    r.add_delete("/api/v1/bans/{kind}/{value:.+}", bans_remove)
    r.add_get("/api/v1/cluster/nodes", cluster_nodes)
    r.add_post("/api/v1/reload", reload)
    return app


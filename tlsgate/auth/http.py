"""HTTP authentication of each CONNECT, with EMQX's HTTP authenticator contract.

The gateway calls :meth:`HttpAuthenticator.authenticate` once per CONNECT, after the TLS
handshake and before the upstream connection is opened, and answers the client with the
:class:`Refusal` of the result when it is not allowed.

How the backend's answer is read (EMQX 5, ``apps/emqx_auth_http/src/emqx_authn_http.erl``,
``authenticate/2``, ``handle_response/2`` and ``body_to_auth_data/1``):

* ``204`` -> allow, not a superuser.
* ``200`` -> the body is parsed by its ``Content-Type``: ``application/json...`` as JSON,
  ``application/x-www-form-urlencoded...`` as a query string; any other or no content type, or a
  body that does not parse, or a JSON value that is not an object -> ignore.
  ``result``: ``"allow"`` -> allow, with ``is_superuser`` read leniently as EMQX's
  ``emqx_authn_utils:to_bool/1`` does (``true``, ``"true"``, integers >= 1 and their strings are
  true; anything else false); ``"deny"`` -> EMQX's ``{error, not_authorized}``, i.e. CONNACK 0x05
  (MQTT 3.x) / 0x87 (MQTT 5); ``"ignore"``, any other value or no ``result`` -> ignore.
  An ``allow`` with a bad ``expire_at`` (not an integer, in the past, or apparently in
  milliseconds) is EMQX's ``{error, bad_username_or_password}`` -> CONNACK 0x04 / 0x86.
* Any other status (3xx, 4xx, 5xx, also 201...) -> ignore. Redirects are not followed.
* A transport failure (timeout, refused, TLS failure) is also ``ignore`` in EMQX; tlsgate keeps it
  apart as ``ERROR`` so ``on_error`` can decide it separately from ``on_ignore``.

EMQX's HTTP contract has no way for the server to say "bad user name or password" on purpose
(``deny`` is always not-authorised). tlsgate adds one, compatible with EMQX (which ignores unknown
keys): ``{"result": "deny", "reason": "bad_username_or_password"}`` -> ``BAD_CREDENTIALS``
(CONNACK 0x04 / 0x86). Any other ``reason`` is just logged as absent.

What ``ignore`` ends in: in EMQX, a chain in which every authenticator ignores ends in
``not_authorized``; tlsgate sits in front of a broker that authenticates again, so ``on_ignore``
(default ``allow``) leaves the decision to the broker, and ``on_ignore = "deny"`` gives EMQX's
0x05 / 0x87. ``on_error = "deny"`` refuses with 0x03 / 0x88 (server unavailable): the device is
not at fault and should retry, where a not-authorised code makes many clients give up. This is a
documented difference from EMQX.

Request building (``apps/emqx_auth_http/src/emqx_auth_http_utils.erl`` ``generate_request/2``,
``apps/emqx_auth/src/emqx_auth_template.erl``, ``apps/emqx_utils/src/emqx_template.erl``):

* Placeholders ``${name}`` may appear in the URL path, the URL query, header values and the body
  (keys and values). ``${$}`` is a literal ``$``. A known placeholder without a value renders as
  ``""``; an unknown one stays as written (EMQX warns and does the same).
* ``post``: ``content-type`` defaults to ``application/json`` (body as a JSON object of strings);
  ``application/x-www-form-urlencoded`` sends the body form-encoded. ``get``: the body's pairs are
  appended to the URL query; a ``content-type`` header is a config error, as in EMQX.
* Values in the path are percent-encoded, values in the query form-encoded (``+`` for space), in
  headers and JSON sent as they are. A value that cannot be represented (a password that is not
  UTF-8 in a JSON body or a header; a CR/LF in a header) makes the request impossible -> ignore,
  as EMQX's ``encode_error`` does.

Caching (``cache_ttl`` > 0): the key is the values of exactly the placeholders the templates use
(the request is a function of them), with the password replaced by a keyed BLAKE2b digest whose
key is random per process. Only answers of 200/204 are cached; EMQX also caches 4xx/5xx answers,
which would pin a transient backend failure for the whole TTL. Concurrent identical requests
share one HTTP call. An ``expire_at`` in an allow shortens the entry's life to it.

Passwords never appear in logs, exceptions, ``repr`` or cache keys; the debug line per call shows
the decision, status and latency only.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hashlib
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit

import aiohttp
from yarl import URL

from ..mqtt.errors import Refusal
from ..tls.client_context import ClientTls, build_client_tls

if TYPE_CHECKING:
    from ..config.schema import AuthenticationConfig

__all__ = [
    "LATENCY_BUCKETS",
    "AuthConfigError",
    "AuthMetrics",
    "AuthRequest",
    "AuthResult",
    "Decision",
    "HttpAuthenticator",
    "Refusal",
    "interpret_response",
]

log = logging.getLogger("tlsgate.auth")

#: Placeholders tlsgate fills. EMQX's list also has zone, cert_pem and client_attrs.*, which a
#: TLS proxy does not know; they stay as written.
PLACEHOLDERS = ("username", "password", "clientid", "peerhost", "peerport", "cert_common_name",
                "cert_subject", "psk_identity")

#: Upper bounds (seconds) of the latency histogram; the last bucket is +Inf.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))

MAX_RESPONSE_BODY = 64 * 1024
DEFAULT_CACHE_ENTRIES = 100_000


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuthRequest:
    """What is known about a client when its CONNECT arrives. ``password`` is never shown."""

    username: str | None
    password: bytes | None = field(repr=False)
    clientid: str
    peerhost: str
    cert_common_name: str | None = None
    cert_subject: str | None = None
    psk_identity: str | None = None
    peerport: int | None = None

    def value(self, name: str) -> bytes | None:
        """The placeholder ``name`` as bytes (``None`` = no value)."""
        v: Any = getattr(self, name)
        if v is None:
            return None
        if isinstance(v, bytes):
            return v
        return str(v).encode("utf-8", "surrogateescape")


class Decision(enum.Enum):
    """What the backend said (before ``on_error`` / ``on_ignore`` are applied)."""

    ALLOW = "allow"
    DENY = "deny"                       # result = deny -> not authorised
    BAD_CREDENTIALS = "bad_credentials"  # see the module docstring
    IGNORE = "ignore"                   # result = ignore, 4xx/5xx, unreadable answer
    ERROR = "error"                     # timeout, refused, TLS failure: no answer at all


@dataclass(frozen=True)
class AuthResult:
    decision: Decision
    allowed: bool                       # the final word, after on_error / on_ignore
    refusal: Refusal | None             # set when not allowed
    is_superuser: bool = False
    status: int | None = None           # HTTP status; None when there was no answer
    reason: str = ""                    # short, for logs; never contains secrets
    cached: bool = False
    latency: float = 0.0                # seconds spent on the HTTP call (0 for cache hits)
    expire_at: float | None = None      # allow only: Unix time after which to disconnect
    clientid_override: str | None = None


@dataclass
class AuthMetrics:
    """Counters the admin API's /metrics reads. Plain attributes, updated in place."""

    decisions: dict[str, int] = field(default_factory=lambda: {d.value: 0 for d in Decision})
    allowed: int = 0
    refused: int = 0
    cache_hits: int = 0
    coalesced: int = 0                  # callers that shared another caller's HTTP call
    http_status: dict[int, int] = field(default_factory=dict)
    latency_sum: float = 0.0
    latency_count: int = 0
    #: cumulative counts, one per LATENCY_BUCKETS bound (Prometheus ``le`` semantics)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))

    def observe_latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_count += 1
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1


class AuthConfigError(ValueError):
    """The ``[authentication]`` table cannot be used as written. ``key`` names the key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


# --------------------------------------------------------------------------------------------
# Templates (EMQX's ${var} syntax)
# --------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"\$\{[.]?([a-zA-Z0-9._]*)\}|\$\{\$\}")


@dataclass(frozen=True)
class _Var:
    name: str


class _Unsendable(Exception):
    """A value cannot be put where the template puts it (never carries the value)."""


@dataclass(frozen=True)
class _Template:
    parts: tuple[str | _Var, ...]

    @classmethod
    def parse(cls, text: str, unknown: set[str]) -> _Template:
        parts: list[str | _Var] = []
        pos = 0
        for m in _TOKEN.finditer(text):
            if m.start() > pos:
                parts.append(text[pos:m.start()])
            if m.group(0) == "${$}":
                parts.append("$")
            elif m.group(1) in PLACEHOLDERS:
                parts.append(_Var(m.group(1)))
            else:
                unknown.add(m.group(0))
                parts.append(m.group(0))
            pos = m.end()
        if pos < len(text):
            parts.append(text[pos:])
        return cls(tuple(parts))

    def vars(self) -> set[str]:
        return {p.name for p in self.parts if isinstance(p, _Var)}

    def render(self, req: AuthRequest, encode: Callable[[bytes], bytes] | None = None,
               literal: Callable[[str], str] | None = None) -> bytes:
        out = []
        for p in self.parts:
            if isinstance(p, _Var):
                v = req.value(p.name) or b""
                out.append(encode(v) if encode else v)
            else:
                out.append((literal(p) if literal else p).encode())
        return b"".join(out)


def _utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Unsendable(f"a value is not valid UTF-8 and cannot be sent in {where}") from None


def _path_encode(v: bytes) -> bytes:
    """A placeholder's value in the URL path: every reserved character escaped."""
    return quote(v, safe="").encode()


def _path_literal(text: str) -> str:
    """The written part of the path: kept as written, only non-ASCII and spaces escaped."""
    return quote(text, safe="/%:@!$&'()*+,;=~")


# --------------------------------------------------------------------------------------------
# Reading the answer (pure)
# --------------------------------------------------------------------------------------------
_INT_RE = re.compile(r"^[+-]?[0-9]+$")


def _to_bool(v: Any) -> bool:
    """EMQX's ``emqx_authn_utils:to_bool/1``."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v >= 1
    if isinstance(v, str):
        if v == "true":
            return True
        return bool(_INT_RE.match(v)) and int(v) >= 1
    return False


@dataclass(frozen=True)
class _Answer:
    decision: Decision
    is_superuser: bool = False
    reason: str = ""
    expire_at: float | None = None
    clientid_override: str | None = None


def interpret_response(status: int, content_type: str | None, body: bytes,
                       now: float | None = None) -> _Answer:
    """Map one HTTP answer to a decision, as EMQX's HTTP authenticator does (see the module
    docstring); ``now`` is for tests."""
    if status == 204:
        return _Answer(Decision.ALLOW, reason="204 No Content")
    if status != 200:
        return _Answer(Decision.IGNORE, reason=f"HTTP {status}")
    ctype = (content_type or "").strip().lower()
    data: Any
    if ctype.startswith("application/json"):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _Answer(Decision.IGNORE, reason="200 with a body that is not valid JSON")
    elif ctype.startswith("application/x-www-form-urlencoded"):
        try:
            data = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except (ValueError, UnicodeDecodeError):
            return _Answer(Decision.IGNORE, reason="200 with an unreadable form body")
    else:
        return _Answer(Decision.IGNORE, reason=f"200 with unsupported content type "
                                               f"{ctype or '(none)'!r}")
    if not isinstance(data, dict):
        return _Answer(Decision.IGNORE, reason="200 with a JSON body that is not an object")
    result = data.get("result", "ignore")
    if result == "allow":
        superuser = _to_bool(data.get("is_superuser"))
        override = data.get("clientid_override")
        override = override if isinstance(override, str) else None
        if "expire_at" not in data:
            return _Answer(Decision.ALLOW, superuser, "allow", clientid_override=override)
        expire = data["expire_at"]
        now_s = int(time.time() if now is None else now)
        if not isinstance(expire, int) or isinstance(expire, bool):
            why = "expire_at is not an integer (Unix time in seconds)"
        elif expire < now_s:
            why = "expire_at is in the past"
        elif expire > now_s * 1000 // 2:
            why = "expire_at does not look like Unix time in seconds"
        else:
            return _Answer(Decision.ALLOW, superuser, "allow", expire_at=float(expire),
                           clientid_override=override)
        return _Answer(Decision.BAD_CREDENTIALS, reason=f"allow with a bad {why}")
    if result == "deny":
        if data.get("reason") == "bad_username_or_password":
            return _Answer(Decision.BAD_CREDENTIALS, reason="deny: bad_username_or_password")
        return _Answer(Decision.DENY, reason="deny")
    if result == "ignore":
        return _Answer(Decision.IGNORE, reason="ignore")
    return _Answer(Decision.IGNORE, reason="200 with an unknown result")


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Prepared:
    url: URL
    headers: dict[str, str]
    body: bytes | None


_CacheKey = tuple[Any, ...]


class HttpAuthenticator:
    """One per process: a pooled aiohttp session towards the authentication backend.

    ``start()`` before use, ``close()`` at shutdown (or ``async with``). ``authenticate()`` never
    raises for anything the backend or network does; it returns an :class:`AuthResult`.
    Config problems found here (beyond the schema's) raise :class:`AuthConfigError` or
    :class:`~tlsgate.tls.client_context.ClientTlsError` from the constructor, each naming its
    key (``authentication.headers``, ``authentication.ssl.keyfile``...).
    """

    def __init__(self, cfg: AuthenticationConfig, *, key: str = "authentication",
                 cache_max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        self.cfg = cfg
        self.key = key
        self.metrics = AuthMetrics()
        self._session: aiohttp.ClientSession | None = None
        self._tls: ClientTls | None = None
        self._cache: dict[_CacheKey, tuple[float, AuthResult]] = {}
        self._cache_max = max(1, cache_max_entries)
        self._inflight: dict[_CacheKey, asyncio.Task[AuthResult]] = {}
        self._hash_key = os.urandom(32)
        self._last_error_log = 0.0
        self._suppressed_errors = 0
        self._closed = False

        parsed = urlsplit(cfg.url)
        if not parsed.hostname:
            raise AuthConfigError(f"{key}.url", f"{cfg.url!r} has no host")
        if parsed.username is not None or parsed.password is not None:
            raise AuthConfigError(f"{key}.url", "user:password@ in the URL is not supported; "
                                                "use an Authorization header")
        if parsed.fragment or cfg.url.endswith("#"):
            raise AuthConfigError(f"{key}.url", "a #fragment is not allowed in the URL")
        try:
            port = parsed.port
        except ValueError:
            raise AuthConfigError(f"{key}.url", f"{cfg.url!r} has an invalid port") from None
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = port or (443 if parsed.scheme == "https" else 80)
        self._base = f"{parsed.scheme}://{parsed.netloc}"

        unknown: set[str] = set()
        self._path_t = _Template.parse(parsed.path or "/", unknown)
        self._query_t = [(_Template.parse(k, unknown), _Template.parse(v, unknown))
                         for k, v in parse_qsl(parsed.query, keep_blank_values=True)]
        headers = {k.strip().lower(): v for k, v in cfg.headers.items()}
        for name in headers:
            if not name or any(c in name for c in " \t\r\n:"):
                raise AuthConfigError(f"{key}.headers", f"{name!r} is not a valid header name")
        ctype = headers.get("content-type")
        if cfg.method == "get":
            if ctype is not None:
                raise AuthConfigError(f"{key}.headers", "a GET request has no body, so it "
                                                        "cannot have a content-type header "
                                                        "(as in EMQX)")
            self._form = False
        else:
            if ctype is None:
                headers["content-type"] = ctype = "application/json"
            media = ctype.split(";")[0].strip().lower()
            if media not in ("application/json", "application/x-www-form-urlencoded"):
                raise AuthConfigError(f"{key}.headers", f"content-type {ctype!r} is not "
                                                        "supported for the body; use "
                                                        "application/json or "
                                                        "application/x-www-form-urlencoded")
            self._form = media == "application/x-www-form-urlencoded"
        self._headers_t = [(name, _Template.parse(v, unknown)) for name, v in headers.items()]
        self._body_t = [(_Template.parse(k, unknown), _Template.parse(v, unknown))
                        for k, v in cfg.body.items()]
        if unknown:
            log.warning("%s: placeholder(s) %s are not known and are sent as written (known: %s;"
                        " write ${$} for a literal $)", key, ", ".join(sorted(unknown)),
                        ", ".join("${" + p + "}" for p in PLACEHOLDERS))
        used: set[str] = self._path_t.vars()
        for kt, vt in self._query_t + self._body_t:
            used |= kt.vars() | vt.vars()
        for _, ht in self._headers_t:
            used |= ht.vars()
        self._used_vars = tuple(sorted(used))

        # Built here, not in start(): constructing an HttpAuthenticator checks everything a
        # start would (check-config, reload), without an event loop.
        if self._scheme == "https":
            self._tls = build_client_tls(cfg.ssl, f"{key}.ssl")

    # ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the session (idempotent). Needs the running loop."""
        if self._session is not None or not self.cfg.enable:
            return
        connector_ssl: ssl.SSLContext | bool = False
        if self._tls is not None:
            connector_ssl = self._tls.context
        elif self.cfg.ssl.enable:
            log.warning("%s.ssl.enable = true but %s.url is http://; TLS is not used",
                        self.key, self.key)
        connector = aiohttp.TCPConnector(limit=self.cfg.pool_size, ssl=connector_ssl)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.cfg.request_timeout),
            auto_decompress=True,
            trust_env=False,
        )
        self._closed = False

    async def close(self) -> None:
        """Cancel calls in flight and close the session (idempotent)."""
        self._closed = True
        tasks = list(self._inflight.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        self._cache.clear()

    async def __aenter__(self) -> HttpAuthenticator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------------------------------
    async def authenticate(self, req: AuthRequest) -> AuthResult:
        """Ask the backend about ``req``; never raises for backend or network trouble."""
        if not self.cfg.enable:
            return self._count(AuthResult(Decision.IGNORE, True, None,
                                          reason="authentication disabled"))
        if self._session is None:
            if self._closed:  # shutting down: refuse like a down backend, do not crash callers
                return self._count(self._final(_Answer(Decision.ERROR,
                                                       reason="authenticator closed"), None, 0.0))
            raise RuntimeError("HttpAuthenticator.start() has not been awaited")
        try:
            prepared = self._prepare(req)
        except _Unsendable as exc:
            return self._count(self._final(_Answer(Decision.IGNORE, reason=str(exc)), None, 0.0))
        if self.cfg.cache_ttl <= 0:
            return self._count(await self._call(prepared))

        key = self._cache_key(req)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > now:
                self.metrics.cache_hits += 1
                result = replace(hit[1], cached=True, latency=0.0)
                log.debug("auth %s (cached)", result.decision.value)
                return self._count(result)
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._call(prepared),
                                                          name="tlsgate-auth-call")
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
        else:
            self.metrics.coalesced += 1
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and not _current_task_cancelling():
                result = self._final(_Answer(Decision.ERROR, reason="authenticator closed"),
                                     None, 0.0)
            else:
                raise
        return self._count(result)

    # ---------------------------------------------------------------------------------------
    def _finished(self, key: _CacheKey, task: asyncio.Task[AuthResult]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled() or task.exception() is not None or self._closed:
            return
        result = task.result()
        if result.status not in (200, 204):
            return
        now = time.monotonic()
        expires = now + self.cfg.cache_ttl
        if result.expire_at is not None:
            expires = min(expires, now + (result.expire_at - time.time()))
        if expires <= now:
            return
        # purge expired entries from the front (insertion order ~ expiry order), then bound
        while self._cache:
            first = next(iter(self._cache))
            if self._cache[first][0] > now and len(self._cache) < self._cache_max:
                break
            del self._cache[first]
        self._cache[key] = (expires, result)

    def _cache_key(self, req: AuthRequest) -> _CacheKey:
        parts: list[Any] = []
        for name in self._used_vars:
            v = req.value(name)
            if name == "password" and v is not None:
                v = hashlib.blake2b(v, key=self._hash_key, digest_size=32).digest()
            parts.append(v)
        return tuple(parts)

    def _prepare(self, req: AuthRequest) -> _Prepared:
        path = self._path_t.render(req, _path_encode, _path_literal).decode("ascii")
        query = [(k.render(req), v.render(req)) for k, v in self._query_t]
        body: bytes | None = None
        if self.cfg.method == "get":
            query += [(k.render(req), v.render(req)) for k, v in self._body_t]
        elif self._form:
            body = urlencode([(k.render(req), v.render(req)) for k, v in self._body_t]).encode()
        else:
            obj = {_utf8(k.render(req), "a JSON body"): _utf8(v.render(req), "a JSON body")
                   for k, v in self._body_t}
            body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        url = self._base + path
        if query:
            url += "?" + "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in query)
        headers = {}
        for name, t in self._headers_t:
            value = _utf8(t.render(req), "a header")
            if any(c in value for c in "\r\n\0"):
                raise _Unsendable(f"header {name!r} would contain a line break or NUL")
            headers[name] = value
        return _Prepared(URL(url, encoded=True), headers, body)

    async def _call(self, p: _Prepared) -> AuthResult:
        session = self._session
        if session is None or session.closed:
            return self._final(_Answer(Decision.ERROR, reason="authenticator closed"), None, 0.0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        timeout = self.cfg.request_timeout
        answer: _Answer
        status: int | None = None
        kwargs: dict[str, Any] = {}
        if self._tls is not None and self._tls.sni:
            kwargs["server_hostname"] = self._tls.sni
        try:
            async with asyncio.timeout(timeout):
                async with session.request(
                    self.cfg.method.upper(), p.url, headers=p.headers, data=p.body,
                    allow_redirects=False, **kwargs,
                ) as resp:
                    status = resp.status
                    body = await _read_limited(resp.content, MAX_RESPONSE_BODY)
                    if body is None:
                        answer = _Answer(Decision.IGNORE, reason=f"HTTP {status} with a body "
                                                                 f"over {MAX_RESPONSE_BODY} "
                                                                 "bytes")
                    else:
                        answer = interpret_response(status, resp.headers.get("Content-Type"),
                                                    body)
        except TimeoutError:
            answer = _Answer(Decision.ERROR, reason=f"no answer within request_timeout "
                                                    f"({timeout:g}s)")
        except aiohttp.ClientConnectorCertificateError as exc:
            answer = _Answer(Decision.ERROR, reason="TLS: the server's certificate was refused:"
                                                    f" {_cert_error(exc)}")
        except aiohttp.ClientConnectorSSLError as exc:
            answer = _Answer(Decision.ERROR, reason=f"TLS handshake failed: {_os_reason(exc)}")
        except aiohttp.ClientConnectorError as exc:
            answer = _Answer(Decision.ERROR, reason=f"cannot connect: {_os_reason(exc)}")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            answer = _Answer(Decision.ERROR, reason=f"connection lost: {_os_reason(exc)}")
        except aiohttp.ClientError as exc:
            # Other client errors may carry the URL (and a GET query may carry the password):
            # only the class name is kept.
            answer = _Answer(Decision.ERROR, reason=f"HTTP client error: {type(exc).__name__}")
        except OSError as exc:
            answer = _Answer(Decision.ERROR, reason=f"network error: {_os_reason(exc)}")
        except RuntimeError:
            if not session.closed:
                raise
            answer = _Answer(Decision.ERROR, reason="authenticator closed")
        latency = loop.time() - t0
        self.metrics.observe_latency(latency)
        if status is not None:
            self.metrics.http_status[status] = self.metrics.http_status.get(status, 0) + 1
        result = self._final(answer, status, latency)
        log.debug("auth %s status=%s latency=%.1fms", result.decision.value,
                  status if status is not None else "-", latency * 1000)
        if result.decision is Decision.ERROR:
            self._log_error(result.reason)
        return result

    def _final(self, a: _Answer, status: int | None, latency: float) -> AuthResult:
        d = a.decision
        if d is Decision.ALLOW:
            allowed, refusal = True, None
        elif d is Decision.DENY:
            allowed, refusal = False, Refusal.NOT_AUTHORIZED
        elif d is Decision.BAD_CREDENTIALS:
            allowed, refusal = False, Refusal.BAD_CREDENTIALS
        elif d is Decision.IGNORE:
            allowed = self.cfg.on_ignore == "allow"
            refusal = None if allowed else Refusal.NOT_AUTHORIZED
        else:
            allowed = self.cfg.on_error == "allow"
            refusal = None if allowed else Refusal.SERVER_UNAVAILABLE
        return AuthResult(d, allowed, refusal, is_superuser=a.is_superuser, status=status,
                          reason=a.reason, latency=latency, expire_at=a.expire_at,
                          clientid_override=a.clientid_override)

    def _count(self, result: AuthResult) -> AuthResult:
        m = self.metrics
        m.decisions[result.decision.value] += 1
        if result.allowed:
            m.allowed += 1
        else:
            m.refused += 1
        return result

    def _log_error(self, reason: str) -> None:
        # A down backend under a reconnect storm must not flood the log: one line per 10 s.
        now = time.monotonic()
        if now - self._last_error_log < 10.0:
            self._suppressed_errors += 1
            return
        extra = (f" ({self._suppressed_errors} more since the last report)"
                 if self._suppressed_errors else "")
        self._suppressed_errors = 0
        self._last_error_log = now
        log.warning("authentication backend %s: %s; on_error = %s%s", self._base, reason,
                    self.cfg.on_error, extra)


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())


async def _read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_chunked(16384):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _os_reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    inner = os_error if isinstance(os_error, BaseException) else exc
    reason = getattr(inner, "reason", None)  # ssl.SSLError
    if isinstance(reason, str) and reason:
        return reason
    errno = getattr(inner, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    strerror = getattr(inner, "strerror", None)
    if isinstance(strerror, str) and strerror:
        return strerror
    text = str(inner)
    return text if text and "://" not in text else type(inner).__name__


def _cert_error(exc: aiohttp.ClientConnectorCertificateError) -> str:
    err = exc.certificate_error
    msg = getattr(err, "verify_message", None)
    if isinstance(msg, str) and msg:
        return msg.rstrip(".")
    return _os_reason(err)


"""HTTP fetches of OCSP responses and CRLs, done once per node for all of its workers.

Every worker validates what it staples or checks against (that logic stays in
``tlsgate.tls.ocsp`` / ``tlsgate.tls.crl``), but the HTTP request itself goes through the node:
identical requests in flight are shared, and a successful answer is reused by any worker that
asks again within ``max_age`` seconds (the requester's own refresh interval). So N workers cost
the responder one request per refresh, not N (SPEC §8, "fetched once, not per worker").

Worker side: :func:`crl_fetcher` / :func:`ocsp_fetcher` return callables with the signatures
``CrlCache(fetcher=...)`` and ``OcspStapler(fetcher=...)`` expect; they ask the node over the
control channel (op ``http_fetch``) and raise the module's own fetch errors on failure.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from ..tls.crl import CrlFetchError, get_crl
from ..tls.ocsp import OcspFetchError, post_ocsp
from .control import ControlError, ControlPeer

log = logging.getLogger("tlsgate.fetch")


class NodeFetcher:
    """Node side of ``http_fetch``: shared in-flight requests and a short-lived answer cache."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[tuple[str, str, bytes], asyncio.Task[bytes]] = {}
        self._cache: dict[tuple[str, str, bytes], tuple[float, bytes]] = {}
        self.requests = 0      # HTTP requests actually made (for tests and metrics)
        self.served = 0        # answers given to workers

    async def handle(self, args: dict[str, Any]) -> dict[str, Any]:
        kind = str(args["kind"])
        url = str(args["url"])
        body = base64.b64decode(args.get("body") or "")
        timeout = float(args.get("timeout_s", 15.0))
        max_age = float(args.get("max_age", 0.0))
        key = (kind, url, body)
        self.served += 1
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] <= max_age:
            return {"body": base64.b64encode(hit[1]).decode(), "cached": True}
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(kind, url, body, timeout),
                                                          name=f"fetch {url}")
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        data = await asyncio.shield(task)
        return {"body": base64.b64encode(data).decode(), "cached": False}

    async def _fetch(self, kind: str, url: str, body: bytes, timeout: float) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.requests += 1
        if kind == "ocsp":
            data = await post_ocsp(self._session, url, body, timeout)
        elif kind == "crl":
            data = await get_crl(self._session, url, timeout)
        else:
            raise ValueError(f"unknown fetch kind {kind!r}")
        now = time.monotonic()
        self._cache[(kind, url, body)] = (now, data)
        # keep the cache small: drop answers older than an hour
        for k, (t, _) in list(self._cache.items()):
            if now - t > 3600:
                del self._cache[k]
        return data

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def crl_fetcher(peer: Callable[[], ControlPeer | None], max_age: Callable[[], float]
                ) -> Callable[[str, float], Awaitable[bytes]]:
    async def fetch(url: str, timeout: float) -> bytes:
        p = peer()
        if p is None:
            raise CrlFetchError(f"{url}: the node process is not reachable")
        try:
            r = await p.request("http_fetch", timeout=timeout + 5.0, kind="crl", url=url,
                                timeout_s=timeout, max_age=max_age())
        except (ControlError, TimeoutError) as exc:
            raise CrlFetchError(str(exc) or f"{url}: fetch failed") from None
        return base64.b64decode(r["body"])

    return fetch


def ocsp_fetcher(peer: Callable[[], ControlPeer | None], max_age: Callable[[], float]
                 ) -> Callable[[str, bytes, float], Awaitable[bytes]]:
    async def fetch(url: str, request: bytes, timeout: float) -> bytes:
        p = peer()
        if p is None:
            raise OcspFetchError(f"{url}: the node process is not reachable")
        try:
            r = await p.request("http_fetch", timeout=timeout + 5.0, kind="ocsp", url=url,
                                body=base64.b64encode(request).decode(), timeout_s=timeout,
                                max_age=max_age())
        except (ControlError, TimeoutError) as exc:
            raise OcspFetchError(str(exc) or f"{url}: fetch failed") from None
        return base64.b64decode(r["body"])

    return fetch

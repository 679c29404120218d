"""HTTP fetches of OCSP responses and CRLs, done once per node for all of its workers.

Every worker validates what it staples or checks against (that logic stays in
``tlsgate.tls.ocsp`` / ``tlsgate.tls.crl``), but the HTTP request itself goes through the node:
identical requests in flight are shared, and a successful answer is reused by any worker that
asks again within ``max_age`` seconds (the requester's own refresh interval). So N workers cost
the responder one request per refresh, not N (SPEC §8, "fetched once, not per worker").

Worker side: :func:`crl_fetcher` / :func:`ocsp_fetcher` return callables with the signatures
``CrlCache(fetcher=...)`` and ``OcspStapler(fetcher=...)`` expect; they ask the node over the
control channel (op ``http_fetch``) and raise the module's own fetch errors on failure.

In a cluster (``tlsgate.cluster``) the node asks the cluster before fetching: ``cluster`` is
then set to a coroutine that gets the answer from the node that owns the URL (which fetches it
once for everybody) or returns this node's own fetch when it is the owner or the owner cannot
help. An answer from the cluster is shared if it is younger than the requester's *refresh
interval* (``refresh``, sent by the worker; 2 × ``max_age`` when absent), not only
``max_age``: nodes start at unrelated times, and with the shorter window two nodes whose
refreshes are more than ``max_age`` apart would each cause a fetch per period.
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
        #: The cluster's fetch (set by tlsgate.cluster): ``(kind, url, body, timeout, window)
        #: -> (body, age in seconds)``; None outside a cluster.
        self.cluster: Callable[[str, str, bytes, float, float],
                               Awaitable[tuple[bytes, float]]] | None = None
        self._via_cluster: dict[tuple[str, str, bytes], asyncio.Task[bytes]] = {}

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
        cluster = self.cluster
        if cluster is not None:
            window = max(max_age, float(args.get("refresh") or 2.0 * max_age))
            ctask = self._via_cluster.get(key)
            if ctask is None:
                ctask = asyncio.get_running_loop().create_task(
                    self._from_cluster(cluster, key, timeout, window), name=f"fetch {url}")
                self._via_cluster[key] = ctask
                ctask.add_done_callback(lambda _t: self._via_cluster.pop(key, None))
            data = await asyncio.shield(ctask)
            return {"body": base64.b64encode(data).decode(), "cached": False}
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(kind, url, body, timeout),
                                                          name=f"fetch {url}")
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        data = await asyncio.shield(task)
        return {"body": base64.b64encode(data).decode(), "cached": False}

    async def _from_cluster(self, cluster: Callable[[str, str, bytes, float, float],
                                                    Awaitable[tuple[bytes, float]]],
                            key: tuple[str, str, bytes], timeout: float, window: float) -> bytes:
        data, age = await cluster(key[0], key[1], key[2], timeout, window)
        fetched = time.monotonic() - max(0.0, age)
        prev = self._cache.get(key)
        if prev is None or prev[0] < fetched:
            self._cache[key] = (fetched, data)
        return data

    async def fetch_shared(self, kind: str, url: str, body: bytes, timeout: float,
                           max_age: float) -> tuple[bytes, float]:
        """This node's answer younger than ``max_age``, or an HTTP fetch (shared with an
        identical one in flight); ``(body, age in seconds)``. What the cluster asks of the node
        that owns a URL -- it never asks the cluster again."""
        key = (kind, url, body)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] <= max_age:
            return hit[1], now - hit[0]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(kind, url, body, timeout),
                                                          name=f"fetch {url}")
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        data = await asyncio.shield(task)
        got = self._cache.get(key)
        return data, (max(0.0, time.monotonic() - got[0]) if got is not None else 0.0)

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


async def _ask_node(peer: Callable[[], ControlPeer | None], error: type[Exception], kind: str,
                    url: str, body: bytes, timeout: float, max_age: float,
                    refresh: float | None) -> bytes:
    """One ``http_fetch`` request to the node; failures become ``error`` (the module's own
    fetch error, which its caller already handles)."""
    p = peer()
    if p is None:
        raise error(f"{url}: the node process is not reachable")
    extra = {"refresh": refresh} if refresh is not None else {}
    try:
        r = await p.request("http_fetch", timeout=timeout + 5.0, kind=kind, url=url,
                            body=base64.b64encode(body).decode(), timeout_s=timeout,
                            max_age=max_age, **extra)
    except (ControlError, TimeoutError) as exc:
        raise error(str(exc) or f"{url}: fetch failed") from None
    return base64.b64decode(r["body"])


def crl_fetcher(peer: Callable[[], ControlPeer | None], max_age: Callable[[], float],
                refresh: Callable[[], float] | None = None
                ) -> Callable[[str, float], Awaitable[bytes]]:
    """For ``CrlCache(fetcher=...)``. ``refresh``: the requester's refresh interval (how old
    a cluster-shared answer may be)."""

    async def fetch(url: str, timeout: float) -> bytes:
        return await _ask_node(peer, CrlFetchError, "crl", url, b"", timeout, max_age(),
                               refresh() if refresh is not None else None)

    return fetch


def ocsp_fetcher(peer: Callable[[], ControlPeer | None], max_age: Callable[[], float],
                 refresh: Callable[[], float] | None = None
                 ) -> Callable[[str, bytes, float], Awaitable[bytes]]:
    """For ``OcspStapler(fetcher=...)`` / ``ClientOcspChecker(fetcher=...)``."""

    async def fetch(url: str, request: bytes, timeout: float) -> bytes:
        return await _ask_node(peer, OcspFetchError, "ocsp", url, request, timeout, max_age(),
                               refresh() if refresh is not None else None)

    return fetch

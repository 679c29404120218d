"""Revocation in a worker: wires the CRL cache, client OCSP checks and OCSP staplers
(``tlsgate.tls.crl`` / ``tlsgate.tls.ocsp``) into listener contexts and their lifecycle.

One :class:`RevocationRuntime` per worker owns what outlives a reload: the CRL cache (CRLs are
fetched once and kept across reloads), the client OCSP answer cache, and the index of live
connections by certificate for ``close_revoked_connections``. Per listener context it adds a
:class:`~tlsgate.tls.revocation_guard.ClientRevocationGuard` (attached to the main and every SNI
context) and one :class:`~tlsgate.tls.ocsp.OcspStapler` per certificate. HTTP goes through the
node (see ``fetch.py``) when the worker has one, so N workers cost a responder one request.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config.load import Problem
from ..config.schema import Config, ServerSslOptions
from ..tls.context import ContextError, ServerContext
from ..tls.crl import CertId, CrlCache, CrlError
from ..tls.ocsp import ClientOcspChecker, OcspError, OcspStapler, install_stapling
from ..tls.revocation_guard import ClientRevocationGuard, LiveConnectionIndex

if TYPE_CHECKING:
    from .control import ControlPeer

log = logging.getLogger("tlsgate.revocation")


class RevocationRuntime:
    def __init__(self, config: Config, peer: Callable[[], ControlPeer | None] | None = None
                 ) -> None:
        self.config = config
        self._peer = peer
        self.crl_cache: CrlCache | None = None
        self.client_ocsp: ClientOcspChecker | None = None
        self.live: LiveConnectionIndex[str] = LiveConnectionIndex()
        self._on_revoked: list[Callable[[set[str]], None]] = []
        self._started = False

    # -- shared per-worker objects -------------------------------------------------------------
    def _crl_fetcher(self) -> Any:
        """Through the node when there is one; ``max_age`` lets workers share one answer per
        refresh period."""
        if self._peer is None:
            return None
        from .fetch import crl_fetcher

        return crl_fetcher(self._peer, lambda: self.config.crl_cache.refresh_interval * 0.5,
                           lambda: self.config.crl_cache.refresh_interval)

    def _ocsp_fetcher(self, refresh_interval: float) -> Any:
        if self._peer is None:
            return None
        from .fetch import ocsp_fetcher

        return ocsp_fetcher(self._peer, lambda: min(refresh_interval * 0.5, 300.0),
                            lambda: refresh_interval)

    def _cache(self) -> CrlCache:
        if self.crl_cache is None:
            crl_fetch = self._crl_fetcher()
            self.crl_cache = CrlCache(self.config.crl_cache, data_dir=self.config.node.data_dir,
                                      fetcher=crl_fetch)
            self.crl_cache.on_revoked(self._revoked)
        return self.crl_cache

    def _ocsp_checker(self) -> ClientOcspChecker:
        if self.client_ocsp is None:
            self.client_ocsp = ClientOcspChecker(fetcher=self._ocsp_fetcher(60.0))
        return self.client_ocsp

    def update_config(self, config: Config) -> None:
        """New settings for what survives a reload ([crl_cache] tunables)."""
        self.config = config
        if self.crl_cache is not None:
            c = config.crl_cache
            self.crl_cache.refresh_interval = float(c.refresh_interval)
            self.crl_cache.http_timeout = float(c.http_timeout)
            self.crl_cache.capacity = int(c.capacity)
            self.crl_cache.failure_threshold = float(c.failure_threshold)

    # -- per listener context ------------------------------------------------------------------
    def prepare(self, key: str, ctx: ServerContext) -> ServerContext:
        """Attach a revocation guard and OCSP staplers to a freshly built context (not started:
        :meth:`start_context`). Raises ContextError naming the key on bad files."""
        opts: ServerSslOptions = ctx.opts
        problems: list[Problem] = []
        guard = None
        if ClientRevocationGuard.needed(opts):
            try:
                guard = ClientRevocationGuard(
                    opts, self._cache() if opts.enable_crl_check else None, name=key,
                    client_ocsp=self._ocsp_checker() if opts.ocsp.check_client else None,
                    key_prefix=f"{key}.ssl_options", verify_next=ctx.verify_callback)
                for c in (ctx.ctx, *ctx.sni.values()):
                    guard.attach(c)
            except (CrlError, ValueError) as exc:
                problems.append(_problem(str(exc), f"{key}.ssl_options.crlfile"))
        staplers: list[OcspStapler] = []
        if opts.ocsp.enable_ocsp_stapling:
            ocsp_fetch = self._ocsp_fetcher(opts.ocsp.refresh_interval)
            targets = [("", opts.certfile, ctx.ctx)]
            targets += [(f".sni[{i}]", e.certfile, ctx.sni[e.server_name])
                        for i, e in enumerate(opts.sni)]
            for suffix, certfile, sslctx in targets:
                try:
                    st = OcspStapler.from_options(
                        name=f"{key}{suffix}", certfile=certfile, options=opts.ocsp,
                        cacertfile=opts.cacertfile, data_dir=self.config.node.data_dir,
                        key_prefix=f"{key}.ssl_options", fetcher=ocsp_fetch)
                except (OcspError, ValueError) as exc:
                    problems.append(_problem(str(exc), f"{key}.ssl_options.ocsp"))
                    continue
                install_stapling(sslctx, _constant(st))
                staplers.append(st)
        if problems:
            if guard is not None:
                guard.close()
            raise ContextError(problems)
        if guard is None and not staplers:
            return ctx
        return dataclasses.replace(ctx, guard=guard, staplers=tuple(staplers))

    async def start_context(self, ctx: Any) -> None:
        staplers: tuple[OcspStapler, ...] = getattr(ctx, "staplers", ())
        for st in staplers:
            await st.start()
        if getattr(ctx, "guard", None) is not None or staplers:
            await self.start()

    async def retire_context(self, ctx: Any) -> None:
        """The context is no longer used for new connections (reload, listener removed)."""
        staplers: tuple[OcspStapler, ...] = getattr(ctx, "staplers", ())
        for st in staplers:
            await st.stop()
        guard = getattr(ctx, "guard", None)
        if guard is not None:
            guard.close()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.crl_cache is not None:
            await self.crl_cache.start()

    async def close(self) -> None:
        if self.crl_cache is not None:
            await self.crl_cache.close()
        if self.client_ocsp is not None:
            await self.client_ocsp.close()

    # -- close_revoked_connections ---------------------------------------------------------------
    def on_revoked(self, cb: Callable[[set[str]], None]) -> None:
        """``cb(connection ids)`` when a refreshed CRL revokes live connections' certificates."""
        self._on_revoked.append(cb)

    def _revoked(self, ids: frozenset[CertId]) -> None:
        hit = self.live.affected(ids)
        if not hit:
            return
        log.warning("a refreshed CRL revokes the certificates of %d live connection(s)", len(hit))
        for cb in self._on_revoked:
            cb(hit)


def _problem(message: str, default_key: str) -> Problem:
    """The revocation modules prefix their messages with the key at fault; split it off."""
    head, sep, rest = message.partition(": ")
    if sep and "." in head and " " not in head:
        return Problem(head, rest)
    return Problem(default_key, message)


def _constant(stapler: OcspStapler) -> Callable[[], OcspStapler]:
    return lambda: stapler

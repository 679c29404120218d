"""Worker-side control operations for the admin API: statistics, certificates, paged
connection queries, and the node's ban list.

``handlers(gw_of)`` returns the ops; :func:`tlsgate.server.worker_ops.handlers` merges them in.
Everything returned is plain JSON. Nothing here runs per connection except the ban check at
admission (one dict lookup per identity kind while any ban exists).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from ..gateway.bans import BanList
from ..mqtt import Refusal
from ..tls.certs import days_left, describe_public_key, fingerprint

if TYPE_CHECKING:
    from ..gateway.listener import ListenerRuntime
    from ..gateway.record import ConnRecord
    from ..mqtt import Connect
    from .app import Gateway
    from .worker_ops import Handler

log = logging.getLogger("tlsgate.admin")

#: Filters the connection query accepts (those of Registry.find).
CONN_FILTERS = ("clientid", "username", "cn", "psk_identity", "peer", "listener")
#: Most records one worker sends for one query.
MAX_QUERY = 100_000


class WorkerBans:
    """The node's ban list as installed in this worker, plus its admission check."""

    def __init__(self) -> None:
        self.bans = BanList()
        self._hooked: Gateway | None = None

    async def check(self, rec: ConnRecord, connect: Connect) -> tuple[Refusal, str] | None:
        if not len(self.bans):
            return None
        ban = self.bans.match(rec, time.time())
        if ban is None:
            return None
        return Refusal.BANNED, f"banned ({ban.kind} {ban.value!r})"

    def install(self, gw: Gateway) -> None:
        """Put the check in front of every listener's admission list (now and after reloads)."""
        if self._hooked is not gw:
            self._hooked = gw
            gw.on_listener.append(self.hook)
        for run in gw.listeners.values():
            self.hook(run.rt)

    def hook(self, rt: ListenerRuntime) -> None:
        if self.check not in rt.admission:
            # first: a banned client costs no authentication call and no broker dial
            rt.admission.insert(0, self.check)

    def cut_live(self, gw: Gateway) -> list[str]:
        """Close live connections that a ban now names; their ids."""
        now = time.time()
        cut = []
        for rec in gw.registry:
            ban = self.bans.match(rec, now)
            if ban is not None and rec.conn is not None:
                rec.conn.close(f"banned ({ban.kind} {ban.value!r})")
                cut.append(rec.id)
        return cut


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> Any:
    try:
        return cert.extensions.get_extension_for_oid(oid).value
    except (x509.ExtensionNotFound, ValueError):
        return None


def describe_cert(cert: x509.Certificate, now: dt.datetime | None = None) -> dict[str, Any]:
    """What an operator wants to see of one certificate (no key material)."""
    sans: list[str] = []
    san = _ext(cert, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if san is not None:
        sans += [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        sans += [f"IP:{n}" for n in san.get_values_for_type(x509.IPAddress)]
        sans += [f"URI:{n}" for n in san.get_values_for_type(x509.UniformResourceIdentifier)]
        sans += [f"email:{n}" for n in san.get_values_for_type(x509.RFC822Name)]
    bc = _ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    aia = _ext(cert, ExtensionOID.AUTHORITY_INFORMATION_ACCESS)
    ocsp_urls = [d.access_location.value for d in aia or []
                 if d.access_method == AuthorityInformationAccessOID.OCSP]
    cdp = _ext(cert, ExtensionOID.CRL_DISTRIBUTION_POINTS)
    crl_urls = [n.value for dp in cdp or [] for n in (dp.full_name or [])
                if isinstance(n, x509.UniformResourceIdentifier)]
    tlsf = _ext(cert, ExtensionOID.TLS_FEATURE)
    must_staple = bool(tlsf is not None and x509.TLSFeatureType.status_request in tlsf)
    try:
        key = describe_public_key(cert.public_key())
    except Exception:  # unsupported algorithm (e.g. SM2 in cryptography)
        key = "unknown"
    left = days_left(cert, now)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": _iso(cert.not_valid_before_utc),
        "not_after": _iso(cert.not_valid_after_utc),
        "days_left": round(left, 2),
        "expired": left < 0,
        "sans": sans,
        "is_ca": bool(bc is not None and bc.ca),
        "key": key,
        "fingerprint_sha256": fingerprint(cert),
        "ocsp_urls": ocsp_urls,
        "crl_urls": crl_urls,
        "must_staple": must_staple,
    }


def listener_stats(gw: Gateway) -> dict[str, Any]:
    """Every listener's counters (closed + live bytes), for /metrics and the listener view."""
    live: dict[str, list[int]] = {}
    for rec in gw.registry:
        if rec.relay is not None:
            bin_, bout = rec.live_bytes()
            acc = live.setdefault(rec.listener, [0, 0])
            acc[0] += bin_
            acc[1] += bout
    out: dict[str, Any] = {}
    for label, run in gw.listeners.items():
        rt = run.rt
        st = rt.stats
        lb = live.get(label, [0, 0])
        out[label] = {
            "bind": rt.cfg.bind,
            "active": rt.active,
            "accepted": st.accepted,
            "connections_total": st.connections_total,
            "handshakes": [[r, v, n] for (r, v), n in st.handshakes.items()],
            "ciphers": dict(st.ciphers),
            "groups": dict(st.groups),
            "resumed": st.resumed,
            "tickets_refreshed": st.tickets_refreshed,
            "handshake_steps": {"batched": st.handshake_steps[True],
                                "immediate": st.handshake_steps[False]},
            "handshake_failures": dict(st.handshake_failures),
            "refusals": dict(st.refusals),
            "bytes_in": st.bytes_in + lb[0],
            "bytes_out": st.bytes_out + lb[1],
            "hs_buckets": list(st.hs_buckets),
            "hs_sum": st.hs_sum,
            "hs_count": st.hs_count,
        }
    return out


def auth_stats(gw: Gateway) -> dict[str, Any] | None:
    auth = getattr(gw, "authenticator", None)
    m = getattr(auth, "metrics", None)
    if m is None:
        return None
    return {
        "decisions": dict(m.decisions), "allowed": m.allowed, "refused": m.refused,
        "cache_hits": m.cache_hits, "coalesced": m.coalesced,
        "http_status": {str(k): v for k, v in m.http_status.items()},
        "latency_sum": m.latency_sum, "latency_count": m.latency_count,
        "latency_buckets": list(m.latency_buckets),
    }


def handlers(gw_of: Callable[[], Gateway | None]) -> dict[str, Handler]:
    bans = WorkerBans()

    def gw() -> Gateway:
        g = gw_of()
        if g is None:
            raise RuntimeError("the worker has not started yet")
        return g

    async def stats(args: dict[str, Any]) -> Any:
        g = gw()
        return {"pid": os.getpid(), "connections": len(g.registry),
                "listeners": listener_stats(g), "auth": auth_stats(g), "bans": len(bans.bans),
                "reloads": g.reloads}

    async def certificates(args: dict[str, Any]) -> Any:
        g = gw()
        now = dt.datetime.now(dt.UTC)
        out = []
        for label, run in g.listeners.items():
            ctx = run.rt.context
            chains: list[dict[str, Any]] = []
            if hasattr(ctx, "enc_chain"):  # 国密: the signing and the encryption certificate
                for role, attr in (("sign", "chain"), ("encryption", "enc_chain")):
                    chain = getattr(ctx, attr, None) or []
                    if chain:
                        chains.append({"server_name": None, "role": role,
                                       "certificates": [describe_cert(c, now) for c in chain]})
            elif hasattr(ctx, "all_chains"):  # TLS: the default chain and one per SNI entry
                chains = [{"server_name": sni or None, "role": None,
                           "certificates": [describe_cert(c, now) for c in chain]}
                          for sni, chain in ctx.all_chains().items()]
            out.append({"listener": label, "bind": run.rt.cfg.bind,
                        "certfile": getattr(ctx, "certfile", None), "chains": chains})
        return out

    async def conn_query(args: dict[str, Any]) -> Any:
        """Matching connections, oldest first: the total count and the first ``first``."""
        filters = {k: str(v) for k, v in args.items() if k in CONN_FILTERS and v not in (None, "")}
        first = max(0, min(int(args.get("first", 100)), MAX_QUERY))
        recs = gw().registry.find(**filters)
        recs.sort(key=lambda r: (r.started, r.id))
        return {"count": len(recs), "data": [r.as_dict() for r in recs[:first]]}

    async def bans_set(args: dict[str, Any]) -> Any:
        g = gw()
        bans.bans = BanList.from_json(args.get("bans") or [])
        bans.install(g)
        cut = bans.cut_live(g)
        if cut:
            log.info("closed %d live connection(s) named by a ban", len(cut))
        return {"bans": len(bans.bans), "closed": cut}

    async def revocation(args: dict[str, Any]) -> Any:
        """This worker's OCSP staple / CRL / client OCSP state (tlsgate.tls.revocation_status)."""
        from ..tls.revocation_status import default_status

        return default_status().snapshot()

    return {"stats": stats, "certificates": certificates, "conn_query": conn_query,
            "bans_set": bans_set, "revocation": revocation}

"""``/metrics``: Prometheus text built with prometheus_client from the workers' counters.

Counters live in the worker processes (plain ints on each listener, see
``tlsgate.gateway.listener.ListenerStats``). A scrape asks every worker for a snapshot
(``stats`` control op), sums them per listener, adds node-level facts (certificates, bans,
revocation state, process CPU/memory of the node and of each worker) and renders them through a
custom collector on a private registry. Counter values are sums over the live workers: when a
worker is restarted its share starts from zero again, which Prometheus' ``rate()`` treats as a
counter reset.

Metric names (all prefixed ``tlsgate_``) are listed in :data:`METRIC_HELP` and in the README.
"""

from __future__ import annotations

import calendar
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import __version__
from ..auth.http import LATENCY_BUCKETS
from ..gateway.listener import HANDSHAKE_BUCKETS
from . import procinfo

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Snapshot:
    """Everything one scrape renders (gathered asynchronously before rendering)."""

    node: str = ""
    started_at: float = 0.0
    workers: list[dict[str, Any]] = field(default_factory=list)
    procs: list[tuple[str, str, procinfo.ProcInfo]] = field(default_factory=list)
    stats: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    worker_errors: int = 0
    certs: list[dict[str, Any]] = field(default_factory=list)
    revocation: dict[str, Any] | None = None
    bans: int = 0
    reload_ok: bool | None = None
    reload_time: float | None = None
    #: ClusterService.metrics() when [cluster] is enabled.
    cluster: dict[str, Any] | None = None


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class _Sum:
    """Per-listener sums over the workers' stats."""

    def __init__(self) -> None:
        self.active: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.admitted: Counter[str] = Counter()
        self.handshakes: Counter[tuple[str, str, str]] = Counter()
        self.ciphers: Counter[tuple[str, str]] = Counter()
        self.groups: Counter[tuple[str, str]] = Counter()
        self.resumed: Counter[str] = Counter()
        self.tickets_refreshed: Counter[str] = Counter()
        self.hs_steps: Counter[tuple[str, str]] = Counter()
        self.failures: Counter[tuple[str, str]] = Counter()
        self.refusals: Counter[tuple[str, str]] = Counter()
        self.bytes: Counter[tuple[str, str]] = Counter()
        self.hs_buckets: dict[str, list[int]] = {}
        self.hs_sum: Counter[str] = Counter()
        self.hs_count: Counter[str] = Counter()
        self.auth: list[dict[str, Any]] = []

    def add(self, stats: dict[str, Any]) -> None:
        for label, s in (stats.get("listeners") or {}).items():
            self.active[label] += s["active"]
            self.accepted[label] += s["accepted"]
            self.admitted[label] += s["connections_total"]
            for result, version, n in s["handshakes"]:
                self.handshakes[label, result, version] += n
            for cipher, n in s["ciphers"].items():
                self.ciphers[label, cipher] += n
            for group, n in s["groups"].items():
                self.groups[label, group] += n
            self.resumed[label] += s.get("resumed", 0)
            self.tickets_refreshed[label] += s.get("tickets_refreshed", 0)
            for run, n in (s.get("handshake_steps") or {}).items():
                self.hs_steps[label, run] += n
            for reason, n in s["handshake_failures"].items():
                self.failures[label, reason] += n
            for reason, n in s["refusals"].items():
                self.refusals[label, reason] += n
            self.bytes[label, "client_to_broker"] += s["bytes_in"]
            self.bytes[label, "broker_to_client"] += s["bytes_out"]
            acc = self.hs_buckets.setdefault(label, [0] * len(s["hs_buckets"]))
            for i, n in enumerate(s["hs_buckets"]):
                acc[i] += n
            self.hs_sum[label] += s["hs_sum"]
            self.hs_count[label] += s["hs_count"]
        if stats.get("auth"):
            self.auth.append(stats["auth"])

    def labels(self) -> list[str]:
        return sorted(set(self.active) | set(self.accepted) | set(self.hs_buckets))


def sum_listener_stats(stats: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-listener totals over workers, for the JSON listener view."""
    s = _Sum()
    for st in stats:
        s.add(st)
    out: dict[str, dict[str, Any]] = {}
    for label in s.labels():
        hs_ok = sum(n for (lb, r, _v), n in s.handshakes.items() if lb == label and r == "ok")
        hs_failed = sum(n for (lb, r, _v), n in s.handshakes.items()
                        if lb == label and r != "ok")
        out[label] = {
            "active": s.active[label], "accepted": s.accepted[label],
            "connections_total": s.admitted[label],
            "handshakes_ok": hs_ok, "handshakes_failed": hs_failed,
            "tls_versions": {v: n for (lb, r, v), n in s.handshakes.items()
                             if lb == label and r == "ok"},
            "ciphers": {c: n for (lb, c), n in s.ciphers.items() if lb == label},
            "groups": {g: n for (lb, g), n in s.groups.items() if lb == label},
            "handshakes_resumed": s.resumed[label],
            "handshake_failures": {r: n for (lb, r), n in s.failures.items() if lb == label},
            "refusals": {r: n for (lb, r), n in s.refusals.items() if lb == label},
            "bytes_in": s.bytes[label, "client_to_broker"],
            "bytes_out": s.bytes[label, "broker_to_client"],
            "handshake_seconds_avg": (s.hs_sum[label] / s.hs_count[label]
                                      if s.hs_count[label] else None),
        }
    return out


def _cluster_metrics(c: dict[str, Any]) -> Iterator[Metric]:
    """[cluster]: the other nodes as this one sees them, links, replicated state."""
    states = GaugeMetricFamily("tlsgate_cluster_members",
                               "Other cluster nodes by state as seen from this node "
                               "(joining: configured, never heard).", labels=["state"])
    by_state = Counter(m["state"] for m in c["members"])
    for state in ("up", "down", "joining"):
        states.add_metric([state], by_state.get(state, 0))
    yield states
    up = GaugeMetricFamily("tlsgate_cluster_member_up", "1 if the node is up, else 0.",
                           labels=["member"])
    age = GaugeMetricFamily("tlsgate_cluster_member_heartbeat_age_seconds",
                            "Seconds since this node last heard from the member.",
                            labels=["member"])
    for m in c["members"]:
        up.add_metric([m["name"]], 1 if m["state"] == "up" else 0)
        if m["heartbeat_age_s"] is not None:
            age.add_metric([m["name"]], m["heartbeat_age_s"])
    yield up
    yield age
    yield GaugeMetricFamily("tlsgate_cluster_links", "Open node-to-node TLS links.",
                            value=c["links"])
    keys = GaugeMetricFamily("tlsgate_cluster_replicated_keys",
                             "Replicated entries held (including removals kept as tombstones).",
                             labels=["namespace"])
    for ns, n in sorted(c["keys"].items()):
        keys.add_metric([ns], n)
    yield keys
    applied = CounterMetricFamily("tlsgate_cluster_changes_applied",
                                  "Changes made on other nodes and applied here.",
                                  labels=["namespace"])
    for ns, n in sorted(c["applied"].items()):
        applied.add_metric([ns], n)
    yield applied
    events = CounterMetricFamily("tlsgate_cluster_member_events",
                                 "Membership events (joined, back, restarted, down).",
                                 labels=["event"])
    for kind, n in sorted(c["events"].items()):
        events.add_metric([kind], n)
    yield events


class GatewayCollector(Collector):
    """Renders the current :class:`Snapshot` (set by :func:`render` just before rendering)."""

    def __init__(self) -> None:
        self.snap = Snapshot()

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        s = _Sum()
        for _i, st in snap.stats:
            s.add(st)

        info = GaugeMetricFamily("tlsgate_info", "tlsgate version and node name (always 1).",
                                 labels=["version", "node"])
        info.add_metric([__version__, snap.node], 1)
        yield info
        yield GaugeMetricFamily("tlsgate_start_time_seconds",
                                "When the node process started (Unix time).",
                                value=snap.started_at)
        w = GaugeMetricFamily("tlsgate_workers", "Worker processes by state.", labels=["state"])
        alive = sum(1 for x in snap.workers if x["alive"])
        w.add_metric(["running"], alive)
        w.add_metric(["down"], len(snap.workers) - alive)
        yield w
        restarts = CounterMetricFamily("tlsgate_worker_restarts",
                                       "Times a worker was restarted after it exited.",
                                       labels=["worker"])
        for x in snap.workers:
            restarts.add_metric([str(x["index"])], x["restarts"])
        yield restarts
        yield GaugeMetricFamily("tlsgate_scrape_worker_errors",
                                "Workers that did not answer this scrape.",
                                value=snap.worker_errors)
        if snap.cluster is not None:
            yield from _cluster_metrics(snap.cluster)

        cur = GaugeMetricFamily("tlsgate_connections",
                                "Open client connections (accepted, not yet closed).",
                                labels=["listener"])
        acc = CounterMetricFamily("tlsgate_connections_accepted",
                                  "TCP connections accepted.", labels=["listener"])
        adm = CounterMetricFamily("tlsgate_connections_admitted",
                                  "Connections admitted to the broker (relay started).",
                                  labels=["listener"])
        for label in s.labels():
            cur.add_metric([label], s.active[label])
            acc.add_metric([label], s.accepted[label])
            adm.add_metric([label], s.admitted[label])
        yield cur
        yield acc
        yield adm

        hs = CounterMetricFamily("tlsgate_handshakes", "TLS handshakes by result and version.",
                                 labels=["listener", "result", "tls_version"])
        for (label, result, version), n in sorted(s.handshakes.items()):
            hs.add_metric([label, result, version], n)
        yield hs
        ci = CounterMetricFamily("tlsgate_handshake_ciphers",
                                 "Successful TLS handshakes by negotiated cipher suite.",
                                 labels=["listener", "cipher"])
        for (label, cipher), n in sorted(s.ciphers.items()):
            ci.add_metric([label, cipher], n)
        yield ci
        gr = CounterMetricFamily("tlsgate_handshake_groups",
                                 "Successful TLS handshakes by key exchange group "
                                 "(X25519MLKEM768 = post-quantum hybrid).",
                                 labels=["listener", "group"])
        for (label, group), n in sorted(s.groups.items()):
            gr.add_metric([label, group], n)
        yield gr
        rs = CounterMetricFamily("tlsgate_handshakes_resumed",
                                 "Successful TLS handshakes that resumed a session (ticket); "
                                 "compare with tlsgate_handshakes_total{result=\"ok\"}.",
                                 labels=["listener"])
        for label in s.labels():
            rs.add_metric([label], s.resumed[label])
        yield rs
        tr = CounterMetricFamily("tlsgate_session_tickets_refreshed",
                                 "Fresh TLS 1.3 session tickets sent to connections already up "
                                 "(ssl_options.session_ticket_refresh).",
                                 labels=["listener"])
        for label in s.labels():
            tr.add_metric([label], s.tickets_refreshed[label])
        yield tr
        hb = CounterMetricFamily("tlsgate_handshake_steps",
                                 "TLS handshake steps (one per client flight) run at once "
                                 "(run=\"immediate\") or with others that arrived within "
                                 "node.handshake_batch_window (run=\"batched\").",
                                 labels=["listener", "run"])
        for label in s.labels():
            for run in ("immediate", "batched"):
                hb.add_metric([label, run], s.hs_steps[label, run])
        yield hb
        hf = CounterMetricFamily("tlsgate_handshake_failures",
                                 "Failed TLS handshakes by kind of failure.",
                                 labels=["listener", "reason"])
        for (label, reason), n in sorted(s.failures.items()):
            hf.add_metric([label, reason], n)
        yield hf
        hist = HistogramMetricFamily("tlsgate_handshake_duration_seconds",
                                     "Time from TCP accept to a finished TLS handshake.",
                                     labels=["listener"])
        for label in s.labels():
            counts = s.hs_buckets.get(label, [])
            cumulative, buckets = 0, []
            for bound, n in zip(HANDSHAKE_BUCKETS, counts, strict=False):
                cumulative += n
                buckets.append((_le(bound), cumulative))
            buckets.append(("+Inf", s.hs_count[label]))
            hist.add_metric([label], buckets, s.hs_sum[label])
        yield hist
        rf = CounterMetricFamily("tlsgate_refusals",
                                 "Clients refused (before or after the handshake) by reason.",
                                 labels=["listener", "reason"])
        for (label, reason), n in sorted(s.refusals.items()):
            rf.add_metric([label, reason], n)
        yield rf
        by = CounterMetricFamily("tlsgate_bytes",
                                 "MQTT bytes relayed (closed and live connections).",
                                 labels=["listener", "direction"])
        for (label, direction), n in sorted(s.bytes.items()):
            by.add_metric([label, direction], n)
        yield by

        yield from self._auth(s.auth)
        yield from self._certs(snap.certs)
        yield from self._revocation(snap.revocation)

        yield GaugeMetricFamily("tlsgate_bans", "Active bans.", value=snap.bans)
        if snap.reload_ok is not None:
            yield GaugeMetricFamily("tlsgate_last_reload_success",
                                    "1 if the last reload succeeded, 0 if it failed.",
                                    value=1 if snap.reload_ok else 0)
        yield from self._procs(snap.procs)

    # -------------------------------------------------------------------------------------
    @staticmethod
    def _auth(auths: list[dict[str, Any]]) -> Iterator[Metric]:
        if not auths:
            return
        dec = CounterMetricFamily("tlsgate_auth_decisions",
                                  "Authentication backend decisions (allow, deny, ignore, "
                                  "error).", labels=["decision"])
        res = CounterMetricFamily("tlsgate_auth_results",
                                  "Final authentication outcome after on_error/on_ignore.",
                                  labels=["result"])
        http = CounterMetricFamily("tlsgate_auth_http_responses",
                                   "HTTP status codes from the authentication backend.",
                                   labels=["status"])
        decisions: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        allowed = refused = cache_hits = coalesced = count = 0
        lat_sum = 0.0
        lat = [0] * len(LATENCY_BUCKETS)
        for a in auths:
            decisions.update(a.get("decisions", {}))
            statuses.update(a.get("http_status", {}))
            allowed += a.get("allowed", 0)
            refused += a.get("refused", 0)
            cache_hits += a.get("cache_hits", 0)
            coalesced += a.get("coalesced", 0)
            lat_sum += a.get("latency_sum", 0.0)
            count += a.get("latency_count", 0)
            for i, n in enumerate(a.get("latency_buckets", [])[:len(lat)]):
                lat[i] += n
        for d, n in sorted(decisions.items()):
            dec.add_metric([d], n)
        res.add_metric(["allowed"], allowed)
        res.add_metric(["refused"], refused)
        for st, n in sorted(statuses.items()):
            http.add_metric([st], n)
        yield dec
        yield res
        yield http
        yield CounterMetricFamily("tlsgate_auth_cache_hits",
                                  "Authentication decisions answered from the cache.",
                                  value=cache_hits)
        yield CounterMetricFamily("tlsgate_auth_coalesced",
                                  "Callers that shared another caller's HTTP call.",
                                  value=coalesced)
        hist = HistogramMetricFamily("tlsgate_auth_request_duration_seconds",
                                     "Time of one call to the authentication backend.")
        buckets = [(_le(b), n) for b, n in zip(LATENCY_BUCKETS, lat, strict=False)
                   if not math.isinf(b)]
        buckets.append(("+Inf", count))
        hist.add_metric([], buckets, lat_sum)
        yield hist

    @staticmethod
    def _certs(certs: list[dict[str, Any]]) -> Iterator[Metric]:
        days = GaugeMetricFamily("tlsgate_certificate_days_to_expiry",
                                 "Days until a served certificate's notAfter (negative: "
                                 "expired).",
                                 labels=["listener", "server_name", "position", "subject",
                                         "serial"])
        after = GaugeMetricFamily("tlsgate_certificate_not_after_timestamp_seconds",
                                  "A served certificate's notAfter (Unix time).",
                                  labels=["listener", "server_name", "position", "subject",
                                          "serial"])
        for lst in certs:
            for chain in lst.get("chains", []):
                sni = chain.get("server_name") or ""
                for i, c in enumerate(chain.get("certificates", [])):
                    labels = [lst["listener"], sni, "leaf" if i == 0 else f"chain{i}",
                              c["subject"], c["serial"]]
                    days.add_metric(labels, c["days_left"])
                    after.add_metric(labels, _ts(c["not_after"]))
        yield days
        yield after

    @staticmethod
    def _revocation(rev: dict[str, Any] | None) -> Iterator[Metric]:
        """From tlsgate.tls.revocation_status snapshots; absent keys are skipped."""
        if not isinstance(rev, dict):
            return
        staples = [x for x in rev.get("ocsp_staples") or [] if isinstance(x, dict)]
        if staples:
            valid = GaugeMetricFamily("tlsgate_ocsp_staple_valid",
                                      "1 while a valid OCSP response is stapled.",
                                      labels=["name"])
            age = GaugeMetricFamily("tlsgate_ocsp_staple_age_seconds",
                                    "Age (since thisUpdate) of the stapled OCSP response.",
                                    labels=["name"])
            fetches = CounterMetricFamily("tlsgate_ocsp_fetches",
                                          "OCSP responder fetches by result.",
                                          labels=["name", "result"])
            fails = GaugeMetricFamily("tlsgate_ocsp_consecutive_failures",
                                      "OCSP fetches failed in a row.", labels=["name"])
            for st in staples:
                name = str(st.get("name", ""))
                valid.add_metric([name], 1 if st.get("stapled") else 0)
                if st.get("staple_age_seconds") is not None:
                    age.add_metric([name], float(st["staple_age_seconds"]))
                total, rejected = int(st.get("fetches") or 0), int(st.get("rejected") or 0)
                fetches.add_metric([name, "fetched"], total)
                fetches.add_metric([name, "rejected"], rejected)
                fails.add_metric([name], int(st.get("consecutive_failures") or 0))
            yield from (valid, age, fetches, fails)
        crls = [x for x in rev.get("crls") or [] if isinstance(x, dict)]
        if crls:
            held = GaugeMetricFamily("tlsgate_crl_held", "1 while a CRL is held for the source.",
                                     labels=["source"])
            age = GaugeMetricFamily("tlsgate_crl_age_seconds",
                                    "Age (since thisUpdate) of the CRL held.", labels=["source"])
            fetches = CounterMetricFamily("tlsgate_crl_fetches", "CRL fetches/reads.",
                                          labels=["source"])
            fails = GaugeMetricFamily("tlsgate_crl_consecutive_failures",
                                      "CRL fetches failed in a row.", labels=["source"])
            for c in crls:
                src = str(c.get("source", ""))
                held.add_metric([src], 1 if c.get("cached") else 0)
                if c.get("age_seconds") is not None:
                    age.add_metric([src], float(c["age_seconds"]))
                fetches.add_metric([src], int(c.get("fetches") or 0))
                fails.add_metric([src], int(c.get("consecutive_failures") or 0))
            yield from (held, age, fetches, fails)
        co = rev.get("client_ocsp")
        if isinstance(co, dict):
            checks = CounterMetricFamily("tlsgate_client_ocsp_checks",
                                         "Client certificate OCSP checks by result.",
                                         labels=["result"])
            for result, key in (("good", "good"), ("revoked", "revoked"),
                                ("unknown", "unknown"), ("error", "errors")):
                checks.add_metric([result], int(co.get(key) or 0))
            yield checks

    @staticmethod
    def _procs(procs: list[tuple[str, str, procinfo.ProcInfo]]) -> Iterator[Metric]:
        labels = ["process", "worker"]
        cpu = CounterMetricFamily("tlsgate_process_cpu_seconds",
                                  "CPU time (user + system) of the node and each worker.",
                                  labels=labels)
        rss = GaugeMetricFamily("tlsgate_process_resident_memory_bytes",
                                "Resident memory of the node and each worker.", labels=labels)
        vms = GaugeMetricFamily("tlsgate_process_virtual_memory_bytes",
                                "Virtual memory of the node and each worker.", labels=labels)
        fds = GaugeMetricFamily("tlsgate_process_open_fds",
                                "Open file descriptors of the node and each worker.",
                                labels=labels)
        start = GaugeMetricFamily("tlsgate_process_start_time_seconds",
                                  "Start time of the node and each worker (Unix time).",
                                  labels=labels)
        for kind, idx, p in procs:
            cpu.add_metric([kind, idx], p.cpu_seconds)
            rss.add_metric([kind, idx], p.rss_bytes)
            vms.add_metric([kind, idx], p.vms_bytes)
            if p.open_fds is not None:
                fds.add_metric([kind, idx], p.open_fds)
            if p.start_time is not None:
                start.add_metric([kind, idx], p.start_time)
        yield from (cpu, rss, vms, fds, start)


def _ts(iso: str) -> float:
    return float(calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))) if iso else 0.0


class MetricsRenderer:
    """A private registry: the gateway collector plus the standard ``process_*`` metrics of
    the node process (so stock Prometheus dashboards work too)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = GatewayCollector()
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)

    def render(self, snap: Snapshot) -> bytes:
        # set-then-generate with no await in between: concurrent scrapes cannot mix snapshots
        self.collector.snap = snap
        return generate_latest(self.registry)

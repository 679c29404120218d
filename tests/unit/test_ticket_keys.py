"""Session tickets: OpenSSL calls the cffi bindings lack (tlsgate.tls.unbound), the per-listener
ticket keys every worker derives from the node's secret (tlsgate.tls.context.ticket_key), and
``reuse_sessions = false`` sending no tickets. Real handshakes: tlsgate's ServerSession on the
bundled OpenSSL against CPython's ssl (the system OpenSSL) over memory BIOs."""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL

from tests.certkit import Pki
from tests.unit.test_engine import Peer
from tlsgate.config.schema import ServerSslOptions
from tlsgate.tls import unbound
from tlsgate.tls.context import (
    ServerContext,
    build_server_context,
    load_ticket_secret,
    ticket_epoch,
    ticket_key,
)
from tlsgate.tls.engine import INBUF

SECRET = bytes(range(32))


def _opts(pki: Pki, **kw: object) -> ServerSslOptions:
    return ServerSslOptions(certfile=str(pki.server.cert), keyfile=str(pki.server.key), **kw)


def _client_ctx(pki: Pki) -> ssl.SSLContext:
    c = ssl.create_default_context(cafile=str(pki.ca_pem))
    c.minimum_version = c.maximum_version = ssl.TLSVersion.TLSv1_3
    return c


def _tls12_client_ctx(pki: Pki) -> ssl.SSLContext:
    c = ssl.create_default_context(cafile=str(pki.ca_pem))
    c.maximum_version = ssl.TLSVersion.TLSv1_2
    return c


def _connect(pki: Pki, ctx: ServerContext, cctx: ssl.SSLContext,
             session: ssl.SSLSession | None = None) -> Peer:
    """Handshake, then one server write (the tickets go out with it) read by the client."""
    p = Peer(pki, ctx=ctx, cctx=cctx, session=session)
    p.handshake()
    INBUF[:4] = b"\x20\x02\x00\x00"
    p.sent.append(p.sess.encrypt_in(4))
    assert p.client_read() == b"\x20\x02\x00\x00"
    return p


def test_the_functions_are_found_in_the_bundled_openssl() -> None:
    """If a cryptography release stops shipping its symbol table, this fails here first (and
    tlsgate logs the reason and falls back to per-worker keys)."""
    assert unbound.missing() == ""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    assert unbound.set_ticket_keys(ctx, b"k" * unbound.TICKET_KEY_LEN)
    assert unbound.ticket_keys_of(ctx) == b"k" * unbound.TICKET_KEY_LEN
    assert unbound.set_num_tickets(ctx, 0)
    with pytest.raises(ValueError):
        unbound.set_ticket_keys(ctx, b"short")


def test_contexts_from_one_secret_share_keys_and_resume_each_others_sessions(pki: Pki) -> None:
    """Two contexts built apart (two workers, or before and after a reload) from the same
    secret: a session from the first resumes on the second; another secret does not."""
    a = build_server_context(_opts(pki), "listeners.ssl.t", ticket_secret=SECRET)
    b = build_server_context(_opts(pki), "listeners.ssl.t", ticket_secret=SECRET)
    other = build_server_context(_opts(pki), "listeners.ssl.t", ticket_secret=b"x" * 32)
    assert unbound.ticket_keys_of(a.ctx) == unbound.ticket_keys_of(b.ctx) \
        == ticket_key(SECRET, "listeners.ssl.t", _opts(pki))
    assert unbound.ticket_keys_of(other.ctx) != unbound.ticket_keys_of(a.ctx)
    cctx = _client_ctx(pki)
    first = _connect(pki, a, cctx)
    session = first.cli.session
    assert session is not None and session.has_ticket and not first.cli.session_reused
    assert _connect(pki, b, cctx, session).cli.session_reused
    assert not _connect(pki, other, cctx, session).cli.session_reused


def test_without_a_secret_each_context_has_its_own_keys(pki: Pki) -> None:
    a = build_server_context(_opts(pki), "listeners.ssl.t")
    b = build_server_context(_opts(pki), "listeners.ssl.t")
    assert unbound.ticket_keys_of(a.ctx) != unbound.ticket_keys_of(b.ctx)
    cctx = _client_ctx(pki)
    session = _connect(pki, a, cctx).cli.session
    assert not _connect(pki, b, cctx, session).cli.session_reused


def test_ticket_key_changes_with_what_decides_admission(pki: Pki, tmp_path: Path) -> None:
    """A renewed server certificate keeps tickets valid; another listener, another CA file
    content or verify mode does not (a resumed session skips certificate verification)."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca_pem.read_bytes())
    base = _opts(pki, cacertfile=str(ca))
    k = ticket_key(SECRET, "listeners.ssl.t", base)
    assert len(k) == unbound.TICKET_KEY_LEN
    renewed = pki.issue_server("renewed-tk", ["localhost"])
    same = base.model_copy(update={"certfile": str(renewed.cert), "keyfile": str(renewed.key)})
    assert ticket_key(SECRET, "listeners.ssl.t", same) == k
    assert ticket_key(SECRET, "listeners.ssl.u", base) != k
    assert ticket_key(SECRET, "listeners.ssl.t",
                      base.model_copy(update={"verify": "verify_peer"})) != k
    ca.write_bytes(pki.ca_pem.read_bytes() + b"\n")  # same path, other content
    assert ticket_key(SECRET, "listeners.ssl.t", base) != k


def test_reuse_sessions_false_sends_no_tickets(pki: Pki) -> None:
    cctx = _client_ctx(pki)
    on = _connect(pki, build_server_context(_opts(pki), "listeners.ssl.t", ticket_secret=SECRET),
                  cctx)
    assert on.cli.session is not None and on.cli.session.has_ticket
    off = _connect(pki, build_server_context(_opts(pki, reuse_sessions=False), "listeners.ssl.t",
                                             ticket_secret=SECRET), cctx)
    assert off.cli.session is None or not off.cli.session.has_ticket


def test_ticket_secret_file_is_read_hashed_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "tickets.key"
    good.write_bytes(bytes(range(48)))
    good.chmod(0o600)
    same = tmp_path / "copy.key"
    same.write_bytes(good.read_bytes())
    secret = load_ticket_secret(str(good))
    assert len(secret) == 32 and secret == load_ticket_secret(str(same))
    assert bytes(range(48)) not in secret  # hashed, not the file's bytes
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31)
    with pytest.raises(ValueError, match=r"holds 31 bytes; at least 32 random bytes"):
        load_ticket_secret(str(short))
    with pytest.raises(ValueError, match=r"cannot read .*missing.key"):
        load_ticket_secret(str(tmp_path / "missing.key"))


def test_check_config_names_a_bad_ticket_secret_file(pki: Pki, tmp_path: Path) -> None:
    from tlsgate.config.check import check

    short = tmp_path / "short.key"
    short.write_bytes(b"too short")
    cfg = tmp_path / "tlsgate.toml"
    cfg.write_text(f"""
[node]
session_ticket_secret_file = "{short}"
[listeners.ssl.t]
bind = "127.0.0.1:0"
[listeners.ssl.t.ssl_options]
certfile = "{pki.server.cert}"
keyfile = "{pki.server.key}"
""")
    problems = check(str(cfg))
    assert any(p.startswith("node.session_ticket_secret_file") and "holds 9 bytes" in p
               for p in problems), problems


def _rotating_context(pki: Pki, opts: ServerSslOptions) -> tuple[ServerContext, int]:
    while True:  # not across a period boundary of the 1-hour rotation
        before = ticket_epoch(time.time(), 3600.0)
        ctx = build_server_context(opts, "listeners.ssl.t", ticket_secret=SECRET,
                                   ticket_rotation=3600.0)
        if ticket_epoch(time.time(), 3600.0) == before:
            return ctx, before


def test_ticket_keys_rotate_by_period(pki: Pki) -> None:
    """node.session_ticket_key_rotation: the key is a function of the clock period, so every
    worker and node changes it at the same instant; after ServerContext.rekey a ticket from
    the period before still resumes (the client gets one under the new key with it), one
    from two periods before does not, one from the new period does."""
    assert ticket_epoch(1000.0, 0) == 0 and ticket_epoch(1000.0, 300.0) == 3
    opts = _opts(pki)
    assert ticket_key(SECRET, "listeners.ssl.t", opts, 7) == \
        ticket_key(SECRET, "listeners.ssl.t", opts, 7)
    assert ticket_key(SECRET, "listeners.ssl.t", opts, 7) != \
        ticket_key(SECRET, "listeners.ssl.t", opts, 8)
    ctx, before = _rotating_context(pki, opts)
    assert unbound.ticket_keys_of(ctx.ctx) == ticket_key(SECRET, "listeners.ssl.t", opts, before)
    assert unbound.ticket_keys_of(ctx.ctx, previous=True) == \
        ticket_key(SECRET, "listeners.ssl.t", opts, before - 1)
    assert ctx.rekey is not None
    cctx = _client_ctx(pki)
    old = _connect(pki, ctx, cctx).cli.session
    c12 = _tls12_client_ctx(pki)
    old12 = _connect(pki, ctx, c12).cli.session
    ctx.rekey(before + 1)
    assert unbound.ticket_keys_of(ctx.ctx) == ticket_key(SECRET, "listeners.ssl.t", opts,
                                                         before + 1)
    back12 = _connect(pki, ctx, c12, old12)
    assert back12.cli.session_reused and back12.cli.version() == "TLSv1.2"
    renewed12 = back12.cli.session  # TLS 1.2: OpenSSL renews the ticket (callback said 2),
    assert renewed12 is not None  # which resumes after the next rotation too (below)
    assert unbound.ticket_keys_of(ctx.ctx, previous=True) == \
        ticket_key(SECRET, "listeners.ssl.t", opts, before)
    back = _connect(pki, ctx, cctx, old)
    assert back.cli.session_reused  # the grace period
    renewed = back.cli.session
    assert renewed is not None and renewed != old and renewed.has_ticket
    new = _connect(pki, ctx, cctx).cli.session
    again = _connect(pki, ctx, cctx, new)
    assert again.cli.session_reused
    # TLS 1.3: every resumption brings a new ticket, also under the current key (as with
    # OpenSSL's own key slot)
    assert again.cli.session is not None and again.cli.session != new
    ctx.rekey(before + 2)
    assert not _connect(pki, ctx, cctx, old).cli.session_reused  # two periods back
    assert not _connect(pki, ctx, c12, old12).cli.session_reused
    assert _connect(pki, ctx, c12, renewed12).cli.session_reused
    assert _connect(pki, ctx, cctx, renewed).cli.session_reused
    assert _connect(pki, ctx, cctx, new).cli.session_reused
    # no secret or no resumption: OpenSSL's own keys, nothing to rotate
    assert build_server_context(opts, "listeners.ssl.t").rekey is None
    assert build_server_context(_opts(pki, reuse_sessions=False), "listeners.ssl.t",
                                ticket_secret=SECRET).rekey is None


def test_sni_contexts_share_the_listeners_keys_and_grace(pki: Pki) -> None:
    """A client whose SNI selects an ``sni`` entry's context: its tickets come from the same
    keys (OpenSSL asks the listener's context, the callback reads the selected one's), resume,
    and still resume one rotation later."""
    opts = _opts(pki, sni=[{"server_name": "localhost", "certfile": str(pki.server.cert),
                            "keyfile": str(pki.server.key)}])
    ctx, before = _rotating_context(pki, opts)
    assert set(ctx.sni) == {"localhost"}
    for one in (ctx.ctx, ctx.sni["localhost"]):
        assert unbound.ticket_keys_of(one) == ticket_key(SECRET, "listeners.ssl.t", opts, before)
    cctx = _client_ctx(pki)
    first = _connect(pki, ctx, cctx)
    assert first.sess.conn is not None
    assert first.sess.conn.get_context() is ctx.sni["localhost"]  # the SNI entry's context
    old = first.cli.session
    assert _connect(pki, ctx, cctx, old).cli.session_reused
    assert ctx.rekey is not None
    ctx.rekey(before + 1)
    for one in (ctx.ctx, ctx.sni["localhost"]):
        assert unbound.ticket_keys_of(one, previous=True) == \
            ticket_key(SECRET, "listeners.ssl.t", opts, before)
    assert _connect(pki, ctx, cctx, old).cli.session_reused
    ctx.rekey(before + 2)
    assert not _connect(pki, ctx, cctx, old).cli.session_reused


def test_without_the_callback_a_rotation_retires_the_previous_key(
        pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """No grace period where the ticket-key callback is unavailable (no accelerator module):
    OpenSSL's single key slot, as before, and tickets still resume within a period."""
    monkeypatch.setattr(unbound, "_grace", None)
    opts = _opts(pki)
    ctx, before = _rotating_context(pki, opts)
    assert unbound.ticket_keys_of(ctx.ctx) == ticket_key(SECRET, "listeners.ssl.t", opts, before)
    assert unbound.ticket_keys_of(ctx.ctx, previous=True) is None
    cctx = _client_ctx(pki)
    old = _connect(pki, ctx, cctx).cli.session
    assert _connect(pki, ctx, cctx, old).cli.session_reused
    assert ctx.rekey is not None
    ctx.rekey(before + 1)
    assert not _connect(pki, ctx, cctx, old).cli.session_reused


def test_tickets_from_openssls_key_slot_resume_under_the_callback(pki: Pki) -> None:
    """The callback keeps OpenSSL's ticket format: a ticket a context made with the same key in
    OpenSSL's own key slot (an older tlsgate, a node without the accelerator module: a rolling
    upgrade) resumes on a context that uses the callback, and the other way round."""
    opts = _opts(pki)
    key = ticket_key(SECRET, "listeners.ssl.t", opts, 0)
    slot = build_server_context(opts, "listeners.ssl.t")  # OpenSSL's random key, no callback
    ctrl = unbound._load()["SSL_CTX_ctrl"]
    assert ctrl(slot.ctx._context, 59, unbound.TICKET_KEY_LEN, key) == 1  # SET_TICKET_KEYS
    assert unbound.ticket_keys_of(slot.ctx) == key
    cb = build_server_context(opts, "listeners.ssl.t", ticket_secret=SECRET)
    assert unbound.grace_missing() == "" and unbound.ticket_keys_of(cb.ctx) == key
    cctx = _client_ctx(pki)
    from_slot = _connect(pki, slot, cctx).cli.session
    assert _connect(pki, cb, cctx, from_slot).cli.session_reused
    from_cb = _connect(pki, cb, cctx).cli.session
    assert _connect(pki, slot, cctx, from_cb).cli.session_reused
    # and a context with another secret takes neither
    other = build_server_context(opts, "listeners.ssl.t", ticket_secret=bytes(32))
    assert not _connect(pki, other, cctx, from_slot).cli.session_reused
    assert not _connect(pki, other, cctx, from_cb).cli.session_reused


def test_a_new_secret_keeps_the_tickets_made_under_the_old_one(pki: Pki) -> None:
    """rekey(period, new_secret) (the node adopts the cluster's secret): tickets this node made
    so far still resume, until the next rotation."""
    opts = _opts(pki)
    ctx, before = _rotating_context(pki, opts)
    assert ctx.rekey is not None
    cctx = _client_ctx(pki)
    old = _connect(pki, ctx, cctx).cli.session
    cluster = bytes(range(100, 132))
    ctx.rekey(before, cluster)
    assert unbound.ticket_keys_of(ctx.ctx) == ticket_key(cluster, "listeners.ssl.t", opts, before)
    assert _connect(pki, ctx, cctx, old).cli.session_reused
    fresh = _connect(pki, ctx, cctx).cli.session
    ctx.rekey(before + 1)  # on the cluster's secret from now on
    assert unbound.ticket_keys_of(ctx.ctx) == ticket_key(cluster, "listeners.ssl.t", opts,
                                                         before + 1)
    assert not _connect(pki, ctx, cctx, old).cli.session_reused
    assert _connect(pki, ctx, cctx, fresh).cli.session_reused


def test_session_lifetime_is_what_clients_are_told(pki: Pki) -> None:
    cctx = _client_ctx(pki)
    default = _connect(pki, build_server_context(_opts(pki), "listeners.ssl.t"), cctx)
    assert default.cli.session is not None
    assert default.cli.session.ticket_lifetime_hint == 86400
    short = _connect(pki, build_server_context(_opts(pki, session_lifetime="90m"),
                                               "listeners.ssl.t"), cctx)
    assert short.cli.session is not None and short.cli.session.ticket_lifetime_hint == 5400
    with pytest.raises(ValueError, match="less than or equal to 604800"):
        _opts(pki, session_lifetime="8d")


def test_a_fresh_ticket_on_a_live_connection_resumes_after_a_rekey(pki: Pki) -> None:
    """ServerSession.new_ticket (what the ticket refresher sends): the client's session is
    replaced by one that resumes under the context's new key, while the one from the
    handshake no longer does; traffic goes on around it."""
    ctx = build_server_context(_opts(pki), "listeners.ssl.t", ticket_secret=SECRET,
                               ticket_rotation=3600.0)
    assert ctx.rekey is not None
    cctx = _client_ctx(pki)
    live = _connect(pki, ctx, cctx)
    first = live.cli.session
    assert first is not None and first.has_ticket
    ctx.rekey(10**6)  # the next period's key
    assert live.sess.new_ticket()
    assert len(live.sent) == 1 and 200 < len(live.sent[0]) < 400  # one NewSessionTicket record
    assert live.client_read() == b""  # the client takes it in; no application data
    fresh = live.cli.session
    assert fresh is not None and fresh != first and fresh.has_ticket
    INBUF[:2] = b"\xd0\x00"
    live.sent.append(live.sess.encrypt_in(2))
    assert live.client_read() == b"\xd0\x00"
    assert live.to_server(live.client_records(b"\xc0\x00")) == b"\xc0\x00"
    assert not _connect(pki, ctx, cctx, first).cli.session_reused
    assert _connect(pki, ctx, cctx, fresh).cli.session_reused


def test_no_fresh_ticket_on_tls12_or_a_closing_connection(pki: Pki) -> None:
    ctx = build_server_context(_opts(pki), "listeners.ssl.t", ticket_secret=SECRET)
    c12 = _tls12_client_ctx(pki)
    old = _connect(pki, ctx, c12)
    assert not old.sess.new_ticket() and old.sent == []
    live = _connect(pki, ctx, _client_ctx(pki))
    live.sess.close_notify()
    live.sent.clear()
    assert not live.sess.new_ticket() and live.sent == []


def test_a_context_accepts_the_next_periods_tickets(pki: Pki) -> None:
    """Workers and nodes re-key at the same wall-clock instant only as far as their timers and
    clocks agree: a context still in period P takes the tickets of one that is in P+1 already
    (and the client gets a fresh ticket, which the one in P+1 takes as its previous period's);
    tickets of P+2 it does not take. Without rotation there is no next key."""
    opts = _opts(pki)

    def at(period: int) -> ServerContext:
        return build_server_context(opts, "listeners.ssl.t", ticket_secret=SECRET,
                                    ticket_rotation=3600.0, ticket_period=period)

    behind, ahead, far = at(100), at(101), at(102)
    assert unbound.ticket_keys_of(behind.ctx, upcoming=True) == \
        ticket_key(SECRET, "listeners.ssl.t", opts, 101)
    for cctx in (_client_ctx(pki), _tls12_client_ctx(pki)):
        from_ahead = _connect(pki, ahead, cctx).cli.session
        back = _connect(pki, behind, cctx, from_ahead)
        assert back.cli.session_reused, cctx.maximum_version
        fresh = back.cli.session
        assert fresh is not None and fresh != from_ahead
        assert _connect(pki, ahead, cctx, fresh).cli.session_reused
        from_far = _connect(pki, far, cctx).cli.session
        assert not _connect(pki, behind, cctx, from_far).cli.session_reused
    fixed = build_server_context(opts, "listeners.ssl.t", ticket_secret=SECRET)
    assert unbound.ticket_keys_of(fixed.ctx) is not None
    assert unbound.ticket_keys_of(fixed.ctx, upcoming=True) is None


def test_a_start_or_reload_that_spans_a_period_boundary_installs_the_new_keys(
        pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """The contexts a start or reload builds hold the keys of the period they were built in,
    and the re-key timer is armed after the listeners are started (awaits). A boundary in
    between must not leave the worker on the old period's keys for a whole period (the other
    workers' tickets would not resume on it, as a CI run once showed): the keys of the period
    it is by then are installed at once."""
    import asyncio
    import types

    from tlsgate.config import parse
    from tlsgate.server import app as app_mod

    rotation = 3600.0
    first = ticket_epoch(time.time(), rotation) + 1
    clock = [first * rotation - 0.5]  # half a second before a boundary
    monkeypatch.setattr(app_mod, "time", types.SimpleNamespace(
        time=lambda: clock[0], monotonic=time.monotonic))
    cfg = parse({"node": {"session_ticket_key_rotation": "1h"},
                 "listeners": {"ssl": {"t": {"bind": "127.0.0.1:0", "ssl_options": {
                     "certfile": str(pki.server.cert), "keyfile": str(pki.server.key)}}}}})
    opts = cfg.listeners.ssl["t"].ssl_options

    async def main() -> None:
        gw = app_mod.Gateway(cfg, None, ticket_secret=SECRET)
        build = gw.build

        def build_then_cross(config: Any) -> Any:  # the boundary passes after the build
            built = build(config)
            assert built.ticket_period == ticket_epoch(clock[0], rotation)
            clock[0] += 1.0
            return built

        monkeypatch.setattr(gw, "build", build_then_cross)
        await gw.start()
        try:
            ctx = gw.listeners["ssl:t"].rt.context.ctx
            assert unbound.ticket_keys_of(ctx) == ticket_key(SECRET, "listeners.ssl.t", opts,
                                                             first)
            clock[0] = (first + 1) * rotation - 0.5  # a reload just before the next one
            assert (await gw._apply(cfg)).ok
            ctx = gw.listeners["ssl:t"].rt.context.ctx
            assert unbound.ticket_keys_of(ctx) == ticket_key(SECRET, "listeners.ssl.t", opts,
                                                             first + 1)
            assert unbound.ticket_keys_of(ctx, previous=True) == \
                ticket_key(SECRET, "listeners.ssl.t", opts, first)
        finally:
            await gw.stop()

    asyncio.run(main())

"""What tlsgate knows about one client connection: the access log line, the admin API's view.

A :class:`ConnRecord` is created at accept and filled in as the connection advances (handshake,
CONNECT, relay). The relay does not touch it per chunk: byte counters live on the relay objects
and are folded in when the connection closes (or read live by the admin API through ``relay``).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Protocol

from ..accesslog import text_value as _v

_ids = itertools.count(1)

#: text_value() of the values that repeat from connection to connection (listener, TLS
#: version, cipher, group, close reason): a dict lookup instead of a call per field. Bounded
#: (reasons can carry error details): past the bound, values are formatted each time.
_MEMO: dict[str | None, str] = {None: "-", "": "-"}
_MEMO_MAX = 4096


def _memo(v: str | None) -> str:
    text = _v(v)
    if len(_MEMO) < _MEMO_MAX:
        _MEMO[v] = text
    return text


class Closable(Protocol):
    def close(self, reason: str) -> None: ...

    def refresh_ticket(self) -> bool: ...


class ConnRecord:
    __slots__ = (
        "alpn", "bytes_in", "bytes_out", "cert_cn", "cert_subject", "cipher", "client_id",
        "close_reason", "closed_at", "conn", "group", "handshake_ms", "id", "listener",
        "mqtt_version",
        "peer", "psk_identity", "refusal", "relay", "server_name", "session_reused",
        "started", "tls_version", "username",
    )

    def __init__(self, listener: str, peer: tuple[str, int]) -> None:
        self.id = f"{next(_ids):x}"
        self.listener = listener
        self.peer = peer
        self.started = time.time()
        self.closed_at: float | None = None
        self.server_name: str | None = None
        self.tls_version: str | None = None
        self.cipher: str | None = None
        self.group: str | None = None  # key exchange group
        self.alpn: str | None = None
        self.session_reused = False
        self.handshake_ms: float | None = None
        self.cert_subject: str | None = None
        self.cert_cn: str | None = None
        self.psk_identity: str | None = None
        self.client_id: str | None = None
        self.username: str | None = None
        self.mqtt_version: int | None = None
        self.bytes_in = 0   # MQTT bytes client -> broker
        self.bytes_out = 0  # MQTT bytes broker -> client
        self.close_reason: str | None = None
        self.refusal: str | None = None
        self.relay: Any = None  # the live relay (for byte counters) while relaying
        self.conn: Closable | None = None  # what the admin API calls to kick

    def live_bytes(self) -> tuple[int, int]:
        r = self.relay
        if r is not None:
            return self.bytes_in + r.client.nbytes, self.bytes_out + r.upstream.nbytes
        return self.bytes_in, self.bytes_out

    @property
    def peer_str(self) -> str:
        host, port = self.peer[0], self.peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def as_dict(self) -> dict[str, Any]:
        bin_, bout = self.live_bytes()
        end = self.closed_at or time.time()
        return {
            "id": self.id, "listener": self.listener, "peer": self.peer_str,
            "sni": self.server_name, "tls_version": self.tls_version, "cipher": self.cipher,
            "group": self.group, "alpn": self.alpn, "session_reused": self.session_reused,
            "handshake_ms": self.handshake_ms, "cert_subject": self.cert_subject,
            "cert_cn": self.cert_cn, "psk_identity": self.psk_identity,
            "clientid": self.client_id, "username": self.username,
            "mqtt_version": self.mqtt_version, "bytes_in": bin_, "bytes_out": bout,
            "connected_at": self.started, "duration_s": round(end - self.started, 3),
            "close_reason": self.close_reason,
        }

    def access_fields(self) -> dict[str, Any]:
        bin_, bout = self.live_bytes()
        end = self.closed_at or time.time()
        return {
            "conn": self.id, "listener": self.listener, "peer": self.peer_str,
            "sni": self.server_name, "tls": self.tls_version, "cipher": self.cipher,
            "group": self.group, "resumed": self.session_reused if self.tls_version else None,
            "cert": self.cert_subject, "psk": self.psk_identity, "clientid": self.client_id,
            "user": self.username, "in": bin_, "out": bout,
            "dur": f"{end - self.started:.3f}", "reason": self.close_reason,
        }

    def access_text(self) -> str:
        """:meth:`access_fields` as the access log's ``k=v`` text in one f-string (no dict, no
        generator); names, order and quoting are the same, which a unit test holds. Called by
        the access log when it writes its batch, after the connection has finished."""
        bin_, bout = self.live_bytes()
        end = self.closed_at or time.time()
        tls = self.tls_version
        m = _MEMO.get  # memoised fields: ``m(x) or _memo(x)`` (a text value is never "")
        return (f"conn={self.id} listener={m(self.listener) or _memo(self.listener)} "
                f"peer={_v(self.peer_str)} sni={_v(self.server_name)} "
                f"tls={m(tls) or _memo(tls)} cipher={m(self.cipher) or _memo(self.cipher)} "
                f"group={m(self.group) or _memo(self.group)} "
                f"resumed={self.session_reused if tls else '-'} "
                f"cert={_v(self.cert_subject)} psk={_v(self.psk_identity)} "
                f"clientid={_v(self.client_id)} user={_v(self.username)} in={bin_} out={bout} "
                f"dur={end - self.started:.3f} "
                f"reason={m(self.close_reason) or _memo(self.close_reason)}")

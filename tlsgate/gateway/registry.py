"""The live connections of this process: lookup, filters, kick."""

from __future__ import annotations

from collections.abc import Iterator

from .record import ConnRecord


class Registry:
    def __init__(self) -> None:
        self._conns: dict[str, ConnRecord] = {}

    def add(self, rec: ConnRecord) -> None:
        self._conns[rec.id] = rec

    def remove(self, rec: ConnRecord) -> None:
        self._conns.pop(rec.id, None)

    def get(self, conn_id: str) -> ConnRecord | None:
        return self._conns.get(conn_id)

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[ConnRecord]:
        return iter(list(self._conns.values()))

    def find(self, *, clientid: str | None = None, username: str | None = None,
             cn: str | None = None, psk_identity: str | None = None,
             peer: str | None = None, listener: str | None = None) -> list[ConnRecord]:
        out = []
        for rec in self._conns.values():
            if clientid is not None and rec.client_id != clientid:
                continue
            if username is not None and rec.username != username:
                continue
            if cn is not None and rec.cert_cn != cn:
                continue
            if psk_identity is not None and rec.psk_identity != psk_identity:
                continue
            if peer is not None and not rec.peer_str.startswith(peer) and rec.peer[0] != peer:
                continue
            if listener is not None and rec.listener != listener:
                continue
            out.append(rec)
        return out

    def kick(self, conn_id: str, reason: str = "kicked by operator") -> bool:
        rec = self._conns.get(conn_id)
        if rec is None or rec.conn is None:
            return False
        rec.conn.close(reason)
        return True

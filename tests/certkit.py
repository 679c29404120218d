"""A throw-away PKI for tests: every certificate a TLS test usually needs, written to files.

Built on :mod:`tlsgate.tls.certs` (EC P-256 keys: the whole set takes a few milliseconds), so
certificates are made per test session and never checked in. Typical use, once per session::

    # tests/conftest.py (or a test module)
    import pytest
    from tests.certkit import Pki

    @pytest.fixture(scope="session")
    def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
        return Pki(tmp_path_factory.mktemp("pki"))

    def test_something(pki: Pki) -> None:
        ssl_options = {"certfile": str(pki.server.cert), "keyfile": str(pki.server.key),
                       "cacertfile": str(pki.ca_pem), "verify": "verify_peer"}
        ...  # connect with pki.client.cert / pki.client.key: accepted
        ...  # with pki.expired / pki.foreign / pki.wrong_eku: refused

What a :class:`Pki` holds (each :class:`Pair` has ``.cert`` and ``.key`` paths and ``.issued``,
the in-memory :class:`~tlsgate.tls.certs.Issued`):

===================  =========================================================================
``ca_pem``/``ca_key``  the root CA (``ca.pem``, ``ca.key``): the ``cacertfile`` of everything
``intermediate``     with ``intermediate=True``: an intermediate CA under the root, which then
                     signs every leaf below; leaf files carry it after the leaf (leaf, chain)
``server``           ``server.pem``/``.key``: serverAuth for ``localhost``, ``127.0.0.1``,
                     ``::1`` (plus ``hosts=``)
``client``           ``client.pem``/``.key``: clientAuth, subject
                     ``CN=client,OU=devices,O=tlsgate tests,L=Hangzhou,ST=Zhejiang,C=CN``
``expired``          ``expired.pem``: a client certificate that expired yesterday
``not_yet_valid``    ``not-yet-valid.pem``: a client certificate valid from tomorrow
``wrong_eku``        ``wrong-eku.pem``: from the right CA, but EKU serverAuth only
``foreign``          ``foreign.pem``: a client certificate from another CA
                     (``foreign_ca`` / ``foreign-ca.pem``)
===================  =========================================================================

More on demand: :meth:`Pki.issue_client` (any option of
:func:`~tlsgate.tls.certs.issue_client`: CRL URLs, OCSP URL, must-staple, subject parts...),
:meth:`Pki.issue_server`, :meth:`Pki.crl` (a CRL file revoking some pairs),
:meth:`Pki.server_context` / :meth:`Pki.client_context` (stdlib ``ssl`` contexts for the real
peer side of a test).
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlsgate.tls.certs import Issued, KeyType, issue_client, issue_server, make_ca, make_crl

__all__ = ["Pair", "Pki"]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Pair:
    """A certificate file (leaf, then its intermediates) and its key file (mode 0600)."""

    cert: Path
    key: Path
    issued: Issued

    @property
    def serial(self) -> int:
        return self.issued.serial

    @property
    def der(self) -> bytes:
        return self.issued.cert_der()


class Pki:
    """Root CA (+ optional intermediate), server, good and bad clients, as files in
    ``directory``. See the module docstring for the list."""

    def __init__(self, directory: str | Path, *, key_type: KeyType = "ec",
                 intermediate: bool = False, hosts: Sequence[str] = (),
                 crl_url: str | None = None, ocsp_url: str | None = None) -> None:
        """``crl_url`` / ``ocsp_url`` go into every leaf this object issues (and into the
        intermediate), for the revocation tests."""
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key_type: KeyType = key_type
        self._status: dict[str, Any] = {"crl_urls": [crl_url] if crl_url else [],
                                        "ocsp_url": ocsp_url}
        now = dt.datetime.now(dt.UTC)

        self.ca = make_ca("tlsgate test root CA", o="tlsgate tests", key_type=key_type)
        self.ca_pem, self.ca_key = self.ca.write(self.dir, "ca")
        self.intermediate: Issued | None = None
        self.issuer = self.ca
        if intermediate:
            self.intermediate = make_ca("tlsgate test intermediate CA", o="tlsgate tests",
                                        parent=self.ca, path_len=0, key_type=key_type,
                                        **self._status)
            self.intermediate.write(self.dir, "intermediate")
            self.issuer = self.intermediate

        self.server = self.issue_server("server", [*DEFAULT_HOSTS, *hosts])
        self.client = self.issue_client("client", "client", ou="devices", o="tlsgate tests",
                                        l="Hangzhou", st="Zhejiang", c="CN")
        self.expired = self.issue_client("expired", "expired-client",
                                         not_before=now - dt.timedelta(days=30),
                                         not_after=now - dt.timedelta(days=1))
        self.not_yet_valid = self.issue_client("not-yet-valid", "future-client",
                                               not_before=now + dt.timedelta(days=1),
                                               not_after=now + dt.timedelta(days=30))
        self.wrong_eku = self.issue_client("wrong-eku", "wrong-eku-client", eku=["serverAuth"])
        self.foreign_ca = make_ca("foreign CA", o="somebody else", key_type=key_type)
        self.foreign_ca_pem, _ = self.foreign_ca.write(self.dir, "foreign-ca")
        self.foreign = self._pair("foreign", issue_client(self.foreign_ca, "foreign-client",
                                                          key_type=key_type))

    # -- more certificates -------------------------------------------------------------------
    def issue_client(self, name: str, cn: str | None, **options: Any) -> Pair:
        """A client certificate from this PKI's issuer written as ``<name>.pem``/``.key``.
        ``options`` are those of :func:`tlsgate.tls.certs.issue_client`."""
        opts = {"key_type": self.key_type, **self._status, **options}
        return self._pair(name, issue_client(self.issuer, cn, **opts))

    def issue_server(self, name: str, hosts: Sequence[str], **options: Any) -> Pair:
        """A server certificate for ``hosts`` written as ``<name>.pem``/``.key``."""
        opts = {"key_type": self.key_type, **self._status, **options}
        return self._pair(name, issue_server(self.issuer, hosts, **opts))

    def crl(self, name: str, revoked: Iterable[Pair | int], *, der: bool = False,
            **options: Any) -> Path:
        """A CRL from this PKI's issuer revoking ``revoked`` (pairs or serials), written as
        ``<name>.crl.pem`` (or ``.crl.der``). ``options``: ``this_update``, ``next_update``,
        ``crl_number`` of :func:`tlsgate.tls.certs.make_crl`."""
        when = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        entries = [(r.serial if isinstance(r, Pair) else r, when) for r in revoked]
        path = self.dir / f"{name}.crl.{'der' if der else 'pem'}"
        path.write_bytes(make_crl(self.issuer, entries, der=der, **options))
        return path

    def _pair(self, name: str, issued: Issued) -> Pair:
        cert, key = issued.write(self.dir, name)
        return Pair(cert, key, issued)

    # -- stdlib ssl peers --------------------------------------------------------------------
    def server_context(self, *, require_client_cert: bool = True,
                       pair: Pair | None = None) -> ssl.SSLContext:
        """A stdlib ``ssl`` server context with ``pair`` (default: :attr:`server`), trusting
        this PKI's root for client certificates."""
        p = pair or self.server
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(p.cert, p.key)
        ctx.load_verify_locations(self.ca_pem)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        return ctx

    def client_context(self, pair: Pair | None = None, *,
                       check_hostname: bool = True) -> ssl.SSLContext:
        """A stdlib ``ssl`` client context trusting this PKI's root, presenting ``pair``'s
        certificate when one is given."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = check_hostname
        ctx.load_verify_locations(self.ca_pem)
        if pair is not None:
            ctx.load_cert_chain(pair.cert, pair.key)
        return ctx

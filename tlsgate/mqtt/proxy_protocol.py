"""Sans-IO codec for the PROXY protocol, versions 1 (text) and 2 (binary).

Reference: HAProxy's ``doc/proxy-protocol.txt``. tlsgate uses it in both directions:

* towards a broker (``[upstreams.<name>] proxy_protocol = "v1"|"v2"``): :func:`encode_v1`,
  :func:`encode_v2`. v2 carries the client's TLS details the way HAProxy's
  ``send-proxy-v2-ssl-cn`` (plus ``proxy-v2-options ssl-cipher,authority``) does: PP2_TYPE_ALPN,
  PP2_TYPE_AUTHORITY (= SNI), then PP2_TYPE_SSL with the client flags, the verify field and the
  sub-TLVs SSL_VERSION, SSL_CN, SSL_CIPHER. EMQX, VerneMQ and mosquitto >= 2.1 read these.
* from a load balancer in front of a listener (``proxy_protocol = true``):
  :func:`parse_proxy_header`, bounded, returning None while the header is incomplete.

Decisions:

* The verify field is 0 only when the client presented a certificate *and* it was verified, as
  the specification says. (HAProxy leaves it 0 when no certificate was presented at all; a reader
  that trusts "verify == 0" alone would then take an unauthenticated CN-less client as verified.)
* A v2 header with PP2_TYPE_CRC32C is checked; a wrong checksum is an error, as the spec says.
* A LOCAL v2 header (health checks) means "use the real connection addresses": the address block
  and TLVs are skipped, ``src``/``dst`` are None. Same for v1 ``UNKNOWN`` and v2 ``UNSPEC``.
* An IPv4 address next to an IPv6 one (a dual-stack socket) is sent as IPv4-mapped IPv6; two
  IPv4-mapped IPv6 addresses are sent as plain IPv4 (TCP4 / AF_INET), so the broker logs and
  matches the address a human expects.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .errors import ProxyProtocolError

__all__ = [
    "PP2_TYPE_ALPN", "PP2_TYPE_AUTHORITY", "PP2_TYPE_CRC32C", "PP2_TYPE_NOOP", "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID", "ProxyHeader", "TlsInfo", "encode_v1", "encode_v2", "encode_v2_local",
    "parse_proxy_header",
]

V1_PREFIX: Final = b"PROXY "
V1_MAX_LENGTH: Final = 107  # "PROXY TCP6 <39> <39> 65535 65535\r\n", CRLF included
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LENGTH: Final = 16
DEFAULT_MAX_V2_LENGTH: Final = 4096  # bytes after the 16-byte header; the format allows 65535

PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_SUBTYPE_SSL_VERSION: Final = 0x21
PP2_SUBTYPE_SSL_CN: Final = 0x22
PP2_SUBTYPE_SSL_CIPHER: Final = 0x23
PP2_SUBTYPE_SSL_SIG_ALG: Final = 0x24
PP2_SUBTYPE_SSL_KEY_ALG: Final = 0x25
PP2_TYPE_NETNS: Final = 0x30

PP2_CLIENT_SSL: Final = 0x01
PP2_CLIENT_CERT_CONN: Final = 0x02
PP2_CLIENT_CERT_SESS: Final = 0x04

_FAMILIES: Final = {0: "UNSPEC", 1: "INET", 2: "INET6", 3: "UNIX"}
_TRANSPORTS: Final = {0: "UNSPEC", 1: "STREAM", 2: "DGRAM"}
_ADDRESS_LENGTHS: Final = {0: 0, 1: 12, 2: 36, 3: 216}
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What a TLS terminator knows about its client, as carried by PROXY v2 TLVs.

    ``version``: OpenSSL's name ("TLSv1.3"), ``cipher``: OpenSSL's cipher name, ``sni``: the
    server name the client asked for (sent as PP2_TYPE_AUTHORITY), ``alpn``: the negotiated
    protocol, ``cn``: the client certificate's subject CN. ``client_cert_present``: the client
    has a certificate in this TLS session; ``session_reused``: it was presented on an earlier
    connection of a resumed session (then only PP2_CLIENT_CERT_SESS is set, not _CONN).
    ``cn`` is sent only with a client certificate. When decoding, ``version``/``cipher`` are
    None if the sender did not include them.
    """

    version: str | None
    cipher: str | None
    sni: str | None = None
    alpn: bytes | None = None
    cn: str | None = None
    client_cert_present: bool = False
    client_cert_verified: bool = False
    session_reused: bool = False


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY header.

    ``family``: "INET", "INET6", "UNIX" or "UNSPEC" (v1 TCP4/TCP6/UNKNOWN map to the first two
    and the last); ``transport``: "STREAM", "DGRAM" or "UNSPEC". ``src``/``dst`` are (address,
    port) or None when the receiver must use the connection's own addresses (LOCAL, UNKNOWN,
    UNSPEC) or the family is UNIX. ``tlvs``: every v2 TLV in order, raw. ``tls``: decoded from
    PP2_TYPE_SSL (with SNI and ALPN from their TLVs) when the sender says the client used TLS.
    """

    version: int
    command: str
    family: str
    transport: str
    src: Address | None
    dst: Address | None
    tlvs: tuple[tuple[int, bytes], ...] = ()
    tls: TlsInfo | None = None
    ssl_client_flags: int | None = None
    ssl_verify: int | None = None

    def tlv(self, tlv_type: int) -> bytes | None:
        """The value of the first TLV of that type, or None."""
        for t, value in self.tlvs:
            if t == tlv_type:
                return value
        return None

    @property
    def authority(self) -> str | None:
        """The PP2_TYPE_AUTHORITY value (the client's SNI); checked to be UTF-8 when parsed."""
        value = self.tlv(PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def alpn(self) -> bytes | None:
        return self.tlv(PP2_TYPE_ALPN)


# --------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), for PP2_TYPE_CRC32C
# --------------------------------------------------------------------------------------------
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(host: str, what: str) -> IPAddress:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{what} address {host!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(ip.packed)  # the scope is local to this host
    return ip


def _port(port: int, what: str) -> int:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"{what} port {port} is not in 0..65535")
    return port


def _pair(src: Address, dst: Address) -> tuple[IPAddress, IPAddress]:
    """Bring both addresses into one family (see the module notes)."""
    s, d = _ip(src[0], "source"), _ip(dst[0], "destination")
    _port(src[1], "source")
    _port(dst[1], "destination")

    def mapped4(ip: IPAddress) -> ipaddress.IPv4Address | None:
        if isinstance(ip, ipaddress.IPv4Address):
            return ip
        return ip.ipv4_mapped

    s4, d4 = mapped4(s), mapped4(d)
    if s4 is not None and d4 is not None:
        return s4, d4

    def as6(ip: IPAddress) -> ipaddress.IPv6Address:
        if isinstance(ip, ipaddress.IPv6Address):
            return ip
        return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed)

    return as6(s), as6(d)


def encode_v1(src: Address, dst: Address) -> bytes:
    """``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n``. ValueError on a bad address."""
    s, d = _pair(src, dst)
    proto = "TCP4" if isinstance(s, ipaddress.IPv4Address) else "TCP6"
    return f"PROXY {proto} {s} {d} {src[1]} {dst[1]}\r\n".encode("ascii")


def _tlv(tlv_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV 0x{tlv_type:02X} value of {len(value)} bytes exceeds 65535")
    return bytes((tlv_type,)) + _U16.pack(len(value)) + value


def _tls_tlvs(tls: TlsInfo) -> list[bytes]:
    out = []
    if tls.alpn:
        out.append(_tlv(PP2_TYPE_ALPN, tls.alpn))
    if tls.sni:
        out.append(_tlv(PP2_TYPE_AUTHORITY, tls.sni.encode()))
    client = PP2_CLIENT_SSL
    if tls.client_cert_present:
        client |= PP2_CLIENT_CERT_SESS
        if not tls.session_reused:
            client |= PP2_CLIENT_CERT_CONN
    verify = 0 if tls.client_cert_present and tls.client_cert_verified else 1
    sub = [bytes((client,)) + _U32.pack(verify)]
    if tls.version:
        sub.append(_tlv(PP2_SUBTYPE_SSL_VERSION, tls.version.encode("ascii")))
    if tls.cn is not None and tls.client_cert_present:
        sub.append(_tlv(PP2_SUBTYPE_SSL_CN, tls.cn.encode()))
    if tls.cipher:
        sub.append(_tlv(PP2_SUBTYPE_SSL_CIPHER, tls.cipher.encode("ascii")))
    out.append(_tlv(PP2_TYPE_SSL, b"".join(sub)))
    return out


def _v2(command: int, family: int, addresses: bytes, tlvs: Sequence[bytes]) -> bytes:
    body = addresses + b"".join(tlvs)
    if len(body) > 0xFFFF:
        raise ValueError(f"PROXY v2 header body of {len(body)} bytes exceeds 65535")
    return V2_SIGNATURE + bytes((0x20 | command, family)) + _U16.pack(len(body)) + body


def encode_v2(src: Address, dst: Address, tls: TlsInfo | None = None, *,
              extra_tlvs: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """A v2 PROXY header (command PROXY, TCP over IPv4 or IPv6) with the client's TLS details.

    With ``tls``: PP2_TYPE_ALPN (if any), PP2_TYPE_AUTHORITY (= SNI, if any), PP2_TYPE_SSL with
    SSL_VERSION, SSL_CN (if a client certificate has a CN) and SSL_CIPHER. ``extra_tlvs`` are
    appended as given. ValueError on a bad address or an oversized value.
    """
    s, d = _pair(src, dst)
    family = 0x11 if isinstance(s, ipaddress.IPv4Address) else 0x21
    addresses = s.packed + d.packed + _U16.pack(src[1]) + _U16.pack(dst[1])
    tlvs = _tls_tlvs(tls) if tls is not None else []
    tlvs += [_tlv(t, v) for t, v in extra_tlvs]
    return _v2(0x1, family, addresses, tlvs)


def encode_v2_local() -> bytes:
    """A v2 LOCAL header (no addresses): what a health check sends."""
    return _v2(0x0, 0x00, b"", [])


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
def _fail(message: str) -> ProxyProtocolError:
    return ProxyProtocolError(message)


def _not_proxy(mv: memoryview) -> ProxyProtocolError:
    head = bytes(mv[:8])
    hint = ""
    if head[:1] == b"\x16":
        hint = (" (it starts like a TLS ClientHello: the peer connected without a PROXY header; "
                "configure the load balancer to send one, e.g. HAProxy `send-proxy-v2`, or set "
                "proxy_protocol = false on this listener)")
    return _fail(f"expected a PROXY protocol header, got {head!r}{hint}")


def parse_proxy_header(buf: bytes | bytearray | memoryview, *,
                       max_v2_length: int = DEFAULT_MAX_V2_LENGTH,
                       ) -> tuple[ProxyHeader, int] | None:
    """Parse a PROXY v1 or v2 header at the start of ``buf``.

    Returns None until the whole header is there, then ``(header, consumed)``; the bytes after
    it are the client's (its TLS ClientHello). A v1 line is at most 107 bytes; a v2 header whose
    length field exceeds ``max_v2_length`` is refused as soon as the 16-byte fixed part is in.
    Raises :class:`ProxyProtocolError` on anything else, including data that is not a PROXY
    header at all. No view of ``buf`` outlives the call.
    """
    with memoryview(buf) as mv:
        if len(mv) == 0:
            return None
        if mv[0] == V1_PREFIX[0]:
            return _parse_v1(mv)
        if mv[0] == V2_SIGNATURE[0]:
            return _parse_v2(mv, max_v2_length)
        raise _not_proxy(mv)


def _parse_v1(mv: memoryview) -> tuple[ProxyHeader, int] | None:
    head = bytes(mv[:V1_MAX_LENGTH])
    if not head.startswith(V1_PREFIX[:len(head)]):
        raise _not_proxy(mv)
    end = head.find(b"\r\n")
    # A bare LF anywhere before the CRLF is refused whether or not the CRLF has arrived yet,
    # so the verdict does not depend on how the bytes were split across reads (found by fuzz/).
    stray = head.find(b"\n")
    if stray >= 0 and stray != end + 1:
        raise _fail(f"PROXY v1 line ends with a bare LF at byte {stray}, CRLF required")
    if end < 0:
        if len(head) >= V1_MAX_LENGTH:
            raise _fail(f"PROXY v1 line has no CRLF within {V1_MAX_LENGTH} bytes")
        return None
    try:
        line = head[:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise _fail(f"PROXY v1 line has a non-ASCII byte at {exc.start}") from None
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, "PROXY", "UNSPEC", "UNSPEC", None, None), end + 2
    if len(parts) < 2 or parts[1] not in ("TCP4", "TCP6"):
        proto = parts[1][:16] if len(parts) > 1 else ""
        raise _fail(f"PROXY v1 protocol {proto!r} is not TCP4, TCP6 or UNKNOWN")
    if len(parts) != 6:
        raise _fail(f"PROXY v1 {parts[1]} line needs 6 space-separated fields, got "
                    f"{len(parts)}: {line!r}")
    version = 4 if parts[1] == "TCP4" else 6
    src = (_v1_address(parts[2], version, "source"), _v1_port(parts[4], "source"))
    dst = (_v1_address(parts[3], version, "destination"), _v1_port(parts[5], "destination"))
    family = "INET" if version == 4 else "INET6"
    return ProxyHeader(1, "PROXY", family, "STREAM", src, dst), end + 2


def _v1_address(text: str, version: int, what: str) -> str:
    if "%" in text:
        # Python's IPv6Address takes "addr%<any text>" (a scope id, even with control
        # characters, found by fuzz/); a zone means nothing off the sender's host, and the
        # PROXY v1 format has none.
        raise _fail(f"PROXY v1 {what} address {text!r} carries a scope id (%...)")
    try:
        ip: IPAddress = (ipaddress.IPv4Address(text) if version == 4
                         else ipaddress.IPv6Address(text))
    except ValueError:
        raise _fail(f"PROXY v1 {what} address {text!r} is not an IPv{version} address") from None
    return str(ip)


def _v1_port(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 0xFFFF):
        raise _fail(f"PROXY v1 {what} port {text!r} is not a number in 0..65535")
    return int(text)


def _parse_v2(mv: memoryview, max_length: int) -> tuple[ProxyHeader, int] | None:
    n = len(mv)
    sig = bytes(mv[:len(V2_SIGNATURE)])
    if sig != V2_SIGNATURE[:len(sig)]:
        raise _not_proxy(mv)
    if n < V2_HEADER_LENGTH:
        return None
    ver_cmd, fam = mv[12], mv[13]
    length = _U16.unpack_from(mv, 14)[0]
    if ver_cmd >> 4 != 2:
        raise _fail(f"PROXY v2 header has version {ver_cmd >> 4}, expected 2")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise _fail(f"PROXY v2 command {command} is neither LOCAL (0) nor PROXY (1)")
    if length > max_length:
        raise _fail(f"PROXY v2 header announces {length} bytes of addresses and TLVs, more "
                    f"than the {max_length} accepted")
    total = V2_HEADER_LENGTH + length
    if n < total:
        return None
    if command == 0:
        # LOCAL: "the receiver must accept this connection as valid and must use the real
        # connection endpoints and discard the protocol block including the family".
        return ProxyHeader(2, "LOCAL", "UNSPEC", "UNSPEC", None, None), total
    family_code, transport_code = fam >> 4, fam & 0x0F
    if family_code not in _FAMILIES or transport_code not in _TRANSPORTS:
        raise _fail(f"PROXY v2 address family/transport byte 0x{fam:02X} is not valid")
    addr_len = _ADDRESS_LENGTHS[family_code]
    if length < addr_len:
        raise _fail(f"PROXY v2 {_FAMILIES[family_code]} header needs {addr_len} bytes of "
                    f"addresses, but its length is {length}")
    pos = V2_HEADER_LENGTH
    src: Address | None = None
    dst: Address | None = None
    if family_code == 1:
        src = (str(ipaddress.IPv4Address(bytes(mv[pos:pos + 4]))), _U16.unpack_from(mv, pos + 8)[0])
        dst = (str(ipaddress.IPv4Address(bytes(mv[pos + 4:pos + 8]))),
               _U16.unpack_from(mv, pos + 10)[0])
    elif family_code == 2:
        src = (str(ipaddress.IPv6Address(bytes(mv[pos:pos + 16]))),
               _U16.unpack_from(mv, pos + 32)[0])
        dst = (str(ipaddress.IPv6Address(bytes(mv[pos + 16:pos + 32]))),
               _U16.unpack_from(mv, pos + 34)[0])
    tlvs = _parse_tlvs(mv, pos + addr_len, total, "PROXY v2 TLV")
    crc = [v for t, v in tlvs if t == PP2_TYPE_CRC32C]
    if crc:
        _check_crc(mv, total, pos + addr_len, crc[0])
    for t, v in tlvs:
        if t == PP2_TYPE_AUTHORITY:
            _text(v, "AUTHORITY")
    header = ProxyHeader(2, "PROXY", _FAMILIES[family_code], _TRANSPORTS[transport_code], src,
                         dst, tuple(tlvs))
    ssl = header.tlv(PP2_TYPE_SSL)
    if ssl is None:
        return header, total
    return _with_tls(header, ssl), total


def _parse_tlvs(mv: memoryview, pos: int, end: int, what: str) -> list[tuple[int, bytes]]:
    tlvs = []
    while pos < end:
        if pos + 3 > end:
            raise _fail(f"{what} at offset {pos} is truncated: {end - pos} byte(s) left, a TLV "
                        f"needs at least 3")
        tlv_type = mv[pos]
        length = _U16.unpack_from(mv, pos + 1)[0]
        if pos + 3 + length > end:
            raise _fail(f"{what} 0x{tlv_type:02X} at offset {pos} announces {length} bytes, "
                        f"only {end - pos - 3} left")
        tlvs.append((tlv_type, bytes(mv[pos + 3:pos + 3 + length])))
        pos += 3 + length
    return tlvs


def _check_crc(mv: memoryview, total: int, tlv_start: int, value: bytes) -> None:
    if len(value) != 4:
        raise _fail(f"PROXY v2 CRC32C TLV has {len(value)} bytes, expected 4")
    data = bytearray(mv[:total])
    # Zero the checksum field of the (first) CRC32C TLV, then checksum the whole header.
    pos = tlv_start
    while pos < total:
        length = _U16.unpack_from(data, pos + 1)[0]
        if data[pos] == PP2_TYPE_CRC32C:
            data[pos + 3:pos + 7] = b"\x00\x00\x00\x00"
            break
        pos += 3 + length
    expected = _U32.unpack(value)[0]
    actual = crc32c(bytes(data))
    if actual != expected:
        raise _fail(f"PROXY v2 CRC32C mismatch: header says 0x{expected:08X}, computed "
                    f"0x{actual:08X}")


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(f"PROXY v2 {what} is not valid UTF-8: {value[:64]!r}") from None


def _with_tls(header: ProxyHeader, ssl: bytes) -> ProxyHeader:
    if len(ssl) < 5:
        raise _fail(f"PROXY v2 PP2_TYPE_SSL value has {len(ssl)} bytes, needs at least 5")
    client = ssl[0]
    verify = _U32.unpack_from(ssl, 1)[0]
    with memoryview(ssl) as mv:
        subs = _parse_tlvs(mv, 5, len(ssl), "PROXY v2 PP2_TYPE_SSL sub-TLV")
    tls = None
    if client & PP2_CLIENT_SSL:
        sub = dict(reversed(subs))  # first occurrence wins
        version = sub.get(PP2_SUBTYPE_SSL_VERSION)
        cipher = sub.get(PP2_SUBTYPE_SSL_CIPHER)
        cn = sub.get(PP2_SUBTYPE_SSL_CN)
        authority = header.tlv(PP2_TYPE_AUTHORITY)
        present = bool(client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS))
        tls = TlsInfo(
            version=None if version is None else _text(version, "SSL_VERSION"),
            cipher=None if cipher is None else _text(cipher, "SSL_CIPHER"),
            sni=None if authority is None else _text(authority, "AUTHORITY"),
            alpn=header.tlv(PP2_TYPE_ALPN),
            cn=None if cn is None else _text(cn, "SSL_CN"),
            client_cert_present=present,
            client_cert_verified=present and verify == 0,
            session_reused=present and not client & PP2_CLIENT_CERT_CONN,
        )
    return ProxyHeader(header.version, header.command, header.family, header.transport,
                       header.src, header.dst, header.tlvs, tls, client, verify)

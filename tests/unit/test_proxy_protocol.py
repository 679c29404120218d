"""PROXY protocol v1/v2: examples written from haproxy's proxy-protocol.txt, errors, fuzzing.

tests/e2e/test_proxy_v2_haproxy.py decodes a header produced by a real HAProxy.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsgate.mqtt.errors import ProxyProtocolError
from tlsgate.mqtt.proxy_protocol import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V2_SIGNATURE,
    ProxyHeader,
    TlsInfo,
    crc32c,
    encode_v1,
    encode_v2,
    encode_v2_local,
    parse_proxy_header,
)

CAPTURES = Path(__file__).parent / "captures"
CLIENT_HELLO = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03"


def parse(data: bytes, **kw: int) -> ProxyHeader:
    got = parse_proxy_header(data + CLIENT_HELLO, **kw)
    assert got is not None
    header, consumed = got
    assert consumed == len(data), "the client's bytes after the header are not consumed"
    return header


def error(data: bytes, **kw: int) -> str:
    with pytest.raises(ProxyProtocolError) as info:
        parse_proxy_header(data, **kw)
    return info.value.message


# ---------------------------------------------------------------------------------------------
# v1
# ---------------------------------------------------------------------------------------------
def test_v1_spec_example() -> None:
    # proxy-protocol.txt §2.1: "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    h = parse(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
    assert (h.version, h.command, h.family, h.transport) == (1, "PROXY", "INET", "STREAM")
    assert h.src == ("192.168.0.1", 56324) and h.dst == ("192.168.0.11", 443)


def test_v1_worst_case_is_107_bytes() -> None:
    # proxy-protocol.txt §2.1: the worst case, "PROXY UNKNOWN" with two full IPv6 addresses
    # and ports, is 107 bytes with the CRLF.
    ff = ":".join(["ffff"] * 8)
    line = f"PROXY UNKNOWN {ff} {ff} 65535 65535\r\n".encode()
    assert len(line) == 107
    assert parse(line).family == "UNSPEC"
    tcp6 = f"PROXY TCP6 {ff} {ff} 65535 65535\r\n".encode()
    assert parse(tcp6).src == (ff, 65535)
    # A line that is one byte longer is refused, without waiting for more.
    assert "no CRLF within 107" in error(line[:-2] + b"5\r\n")
    assert parse_proxy_header(line[:-2] + b"5") is None  # 106 bytes: may still end
    assert "no CRLF within 107" in error(line[:-2] + b"55")


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n",
                                  b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"])
def test_v1_unknown(line: bytes) -> None:
    h = parse(line)
    assert h.family == "UNSPEC" and h.src is None and h.dst is None


def test_v1_encode() -> None:
    assert encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == \
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert encode_v1(("2001:db8::1", 1), ("2001:db8::2", 8883)) == \
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 8883\r\n"
    # Dual-stack socket: both IPv4-mapped -> plain IPv4; mixed -> IPv6 with a mapped address.
    assert encode_v1(("::ffff:10.0.0.1", 5), ("::ffff:10.0.0.2", 6)) == \
        b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n"
    assert encode_v1(("10.0.0.1", 5), ("2001:db8::2", 6)) == \
        b"PROXY TCP6 ::ffff:a00:1 2001:db8::2 5 6\r\n"
    assert encode_v1(("fe80::1%eth0", 5), ("fe80::2", 6)) == b"PROXY TCP6 fe80::1 fe80::2 5 6\r\n"
    with pytest.raises(ValueError, match="not an IP address"):
        encode_v1(("localhost", 1), ("127.0.0.1", 2))
    with pytest.raises(ValueError, match="65535"):
        encode_v1(("127.0.0.1", 70000), ("127.0.0.1", 2))


@pytest.mark.parametrize(("data", "needle"), [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "'TCP5' is not TCP4"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "6 space-separated"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "7"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "'1.2.3.256' is not an IPv4"),
    (b"PROXY TCP4 ::1 ::1 1 2\r\n", "'::1' is not an IPv4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "'1.2.3.4' is not an IPv6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port '65536'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port '-1'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xd9\xa3\r\n", "non-ASCII"),
    (b"PROXX TCP4", "expected a PROXY protocol header"),
    (CLIENT_HELLO, "TLS ClientHello"),
    (b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00", "expected a PROXY protocol header"),
])
def test_v1_errors(data: bytes, needle: str) -> None:
    assert needle in error(data)


def test_v1_prefixes_need_more() -> None:
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    for i in range(len(line)):
        assert parse_proxy_header(line[:i]) is None


# ---------------------------------------------------------------------------------------------
# v2
# ---------------------------------------------------------------------------------------------
def test_v2_spec_layout_ipv4() -> None:
    # proxy-protocol.txt §2.2: signature, ver_cmd 0x21 (v2, PROXY), fam 0x11 (TCP over IPv4),
    # len 12, then src_addr, dst_addr, src_port, dst_port (network byte order).
    data = (V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([192, 168, 0, 1]) +
            bytes([192, 168, 0, 11]) + (56324).to_bytes(2, "big") + (443).to_bytes(2, "big"))
    h = parse(data)
    assert (h.version, h.command, h.family, h.transport) == (2, "PROXY", "INET", "STREAM")
    assert h.src == ("192.168.0.1", 56324) and h.dst == ("192.168.0.11", 443)
    assert h.tlvs == () and h.tls is None
    assert encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443)) == data


def test_v2_spec_layout_ipv6_with_tlv() -> None:
    src, dst = ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("2001:db8::2")
    tlv = bytes([PP2_TYPE_UNIQUE_ID]) + b"\x00\x03abc"
    data = (V2_SIGNATURE + b"\x21\x21" + (36 + len(tlv)).to_bytes(2, "big") + src.packed +
            dst.packed + b"\x00\x01\x22\xb3" + tlv)
    h = parse(data)
    assert h.family == "INET6" and h.src == ("2001:db8::1", 1) and h.dst == ("2001:db8::2", 8883)
    assert h.tlvs == ((PP2_TYPE_UNIQUE_ID, b"abc"),)
    assert h.tlv(PP2_TYPE_UNIQUE_ID) == b"abc" and h.tlv(PP2_TYPE_NOOP) is None


def test_v2_tls_as_haproxy_send_proxy_v2_ssl_cn() -> None:
    tls = TlsInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", sni="mqtt.example.com",
                  alpn=b"mqtt", cn="device-0042", client_cert_present=True,
                  client_cert_verified=True)
    data = encode_v2(("10.1.2.3", 40000), ("10.0.0.1", 8883), tls)
    # The exact TLV bytes, written from proxy-protocol.txt §2.2.1-2.2.6.
    ssl_value = (bytes([0x07]) + b"\x00\x00\x00\x00" +          # SSL|CERT_CONN|CERT_SESS, ok
                 b"\x21\x00\x07TLSv1.3" + b"\x22\x00\x0bdevice-0042" +
                 b"\x23\x00\x16TLS_AES_256_GCM_SHA384")
    tlvs = (b"\x01\x00\x04mqtt" + b"\x02\x00\x10mqtt.example.com" +
            b"\x20" + len(ssl_value).to_bytes(2, "big") + ssl_value)
    assert data[28:] == tlvs
    assert data[14:16] == (12 + len(tlvs)).to_bytes(2, "big")
    h = parse(data)
    assert h.tls == tls
    assert (h.ssl_client_flags, h.ssl_verify) == (0x07, 0)
    assert h.authority == "mqtt.example.com" and h.alpn == b"mqtt"


def load_hex(name: str) -> bytes:
    text = (CAPTURES / name).read_text()
    return bytes.fromhex("".join(ln for ln in text.splitlines() if not ln.startswith("#")))


def test_v2_haproxy_capture() -> None:
    """A header recorded from HAProxy's send-proxy-v2-ssl-cn (see the .hex file's comments)."""
    data = load_hex("haproxy_v2_ssl_cn.hex")
    h = parse(data)  # includes a CRC32C TLV, which is checked
    assert h.src == ("127.0.0.1", 49840) and h.dst == ("127.0.0.1", 45929)
    assert h.tls == TlsInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384",
                            sni="mqtt.example.com", alpn=b"mqtt", cn="device-0042",
                            client_cert_present=True, client_cert_verified=True)
    # tlsgate's encoder produces the same bytes, apart from the CRC32C TLV it does not send.
    crc_tlv = b"\x03\x00\x04" + (h.tlv(PP2_TYPE_CRC32C) or b"")
    without_crc = bytearray(data.replace(crc_tlv, b""))
    without_crc[14:16] = (len(without_crc) - 16).to_bytes(2, "big")
    assert encode_v2(h.src, h.dst, h.tls) == bytes(without_crc)
    corrupted = bytearray(data)
    corrupted[-1] ^= 0x20  # cipher name case flipped: the CRC no longer matches
    assert "CRC32C mismatch" in error(bytes(corrupted))


@pytest.mark.parametrize(("tls", "flags", "verify"), [
    (TlsInfo("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256"), 0x01, 1),   # no client certificate
    (TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", cn="x", client_cert_present=True), 0x07, 1),
    (TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", cn="x", client_cert_present=True,
             client_cert_verified=True, session_reused=True), 0x05, 0),
])
def test_v2_client_flags_and_verify(tls: TlsInfo, flags: int, verify: int) -> None:
    h = parse(encode_v2(("127.0.0.1", 1), ("127.0.0.1", 2), tls))
    assert (h.ssl_client_flags, h.ssl_verify) == (flags, verify)
    assert h.tls == tls


def test_v2_decodes_haproxy_no_cert_quirk() -> None:
    """HAProxy leaves verify at 0 for a client without a certificate: not "verified"."""
    ssl = b"\x01\x00\x00\x00\x00" + b"\x21\x00\x07TLSv1.3"
    data = (V2_SIGNATURE + b"\x21\x11" + (12 + 3 + len(ssl)).to_bytes(2, "big") + bytes(12) +
            b"\x20" + len(ssl).to_bytes(2, "big") + ssl)
    tls = parse(data).tls
    assert tls is not None and not tls.client_cert_present and not tls.client_cert_verified
    assert tls.cipher is None and tls.version == "TLSv1.3"


def test_v2_ssl_tlv_without_tls_flag() -> None:
    ssl = b"\x00\x00\x00\x00\x01"
    data = (V2_SIGNATURE + b"\x21\x11" + (12 + 3 + len(ssl)).to_bytes(2, "big") + bytes(12) +
            b"\x20" + len(ssl).to_bytes(2, "big") + ssl)
    h = parse(data)
    assert h.tls is None and h.ssl_client_flags == 0 and h.ssl_verify == 1


def test_v2_local_and_unspec_and_unix() -> None:
    local = encode_v2_local()
    assert local == V2_SIGNATURE + b"\x20\x00\x00\x00"
    h = parse(local)
    assert (h.command, h.src, h.dst) == ("LOCAL", None, None)
    # LOCAL with a (discarded) address block.
    h = parse(V2_SIGNATURE + b"\x20\x11\x00\x0c" + bytes(12))
    assert (h.command, h.src) == ("LOCAL", None)
    h = parse(V2_SIGNATURE + b"\x21\x00\x00\x00")
    assert (h.command, h.family, h.src) == ("PROXY", "UNSPEC", None)
    h = parse(V2_SIGNATURE + b"\x21\x31\x00\xd8" + b"/tmp/a".ljust(108, b"\x00") +
              b"/tmp/b".ljust(108, b"\x00"))
    assert (h.family, h.transport, h.src, h.dst) == ("UNIX", "STREAM", None, None)


def test_crc32c_known_value() -> None:
    # The standard CRC-32C check value (RFC 3720 appendix B.4 uses the same polynomial).
    assert crc32c(b"123456789") == 0xE3069283


def with_crc(header_without_crc_tlv: bytes) -> bytes:
    """Append a PP2_TYPE_CRC32C TLV and fill it in (proxy-protocol.txt §2.2.3)."""
    data = bytearray(header_without_crc_tlv + b"\x03\x00\x04\x00\x00\x00\x00")
    data[14:16] = (len(data) - 16).to_bytes(2, "big")
    data[-4:] = crc32c(bytes(data)).to_bytes(4, "big")
    return bytes(data)


def test_v2_crc32c_checked() -> None:
    data = with_crc(encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2), TlsInfo("TLSv1.3", "X")))
    h = parse(data)
    assert h.tlv(PP2_TYPE_CRC32C) is not None and h.tls is not None
    bad = bytearray(data)
    bad[20] ^= 0x01  # change the source address: the checksum no longer matches
    assert "CRC32C mismatch" in error(bytes(bad))


@pytest.mark.parametrize(("data", "needle"), [
    (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version 1, expected 2"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "command 2"),
    (V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12), "0x41"),
    (V2_SIGNATURE + b"\x21\x13\x00\x0c" + bytes(12), "0x13"),
    (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "needs 36 bytes"),
    (V2_SIGNATURE + b"\x21\x11\x00\x0e" + bytes(12) + b"\x01\x00", "truncated"),
    (V2_SIGNATURE + b"\x21\x11\x00\x10" + bytes(12) + b"\x01\x00\x05a", "announces 5 bytes"),
    (V2_SIGNATURE + b"\x21\x11\x00\x12" + bytes(12) + b"\x20\x00\x03abc", "at least 5"),
    (V2_SIGNATURE + b"\x21\x11\x00\x16" + bytes(12) + b"\x20\x00\x07\x01\x00\x00\x00\x00"
     b"\x21\x00", "sub-TLV at offset 5 is truncated"),
    (V2_SIGNATURE + b"\x21\x11\x00\x11" + bytes(12) + b"\x02\x00\x02\xff\xfe", "AUTHORITY"),
    (V2_SIGNATURE + b"\x21\x11\x00\x13" + bytes(12) + b"\x03\x00\x04\x00\x00\x00\x00"[:7],
     "CRC32C"),
    (b"\r\n\r\n\x00\r\nQUIX", "expected a PROXY protocol header"),
])
def test_v2_errors(data: bytes, needle: str) -> None:
    assert needle in error(data)


def test_v2_length_bounded_before_the_bytes_arrive() -> None:
    header = V2_SIGNATURE + b"\x21\x11\x10\x00"  # announces 4096 bytes
    assert parse_proxy_header(header) is None      # allowed by default: wait for them
    assert "more than the 1024 accepted" in error(header, max_v2_length=1024)


def test_v2_prefixes_need_more() -> None:
    data = encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2),
                     TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", sni="a", cn="b",
                             client_cert_present=True))
    for i in range(len(data)):
        assert parse_proxy_header(data[:i]) is None


def test_bytearray_can_grow_after_parse() -> None:
    buf = bytearray(encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2))[:10])
    assert parse_proxy_header(buf) is None
    buf += b"x"  # BufferError if a view of buf were still alive
    bad = bytearray(b"junk")
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(bad)
    bad += b"more"


# ---------------------------------------------------------------------------------------------
# Hypothesis
# ---------------------------------------------------------------------------------------------
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ports = st.integers(0, 65535)
ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
text = st.text(st.characters(codec="utf-8"), max_size=30)
ascii_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                     max_size=30)


@st.composite
def tls_infos(draw: st.DrawFn) -> TlsInfo:
    present = draw(st.booleans())
    return TlsInfo(
        version=draw(st.none() | ascii_text), cipher=draw(st.none() | ascii_text),
        sni=draw(st.none() | text.filter(bool)), alpn=draw(st.none() | st.binary(min_size=1,
                                                                                max_size=20)),
        cn=draw(text) if present and draw(st.booleans()) else None,
        client_cert_present=present,
        client_cert_verified=present and draw(st.booleans()),
        session_reused=present and draw(st.booleans()))


def expected_pair(src: str, dst: str) -> tuple[str, str]:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    a4 = a if a.version == 4 else a.ipv4_mapped
    b4 = b if b.version == 4 else b.ipv4_mapped
    if a4 is not None and b4 is not None:
        return str(a4), str(b4)

    def six(x: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        return str(x if x.version == 6 else ipaddress.IPv6Address(f"::ffff:{x}"))
    return six(a), six(b)


@FUZZ
@given(ips, ports, ips, ports, st.none() | tls_infos())
def test_fuzz_round_trip(src: str, sport: int, dst: str, dport: int,
                         tls: TlsInfo | None) -> None:
    want_src, want_dst = expected_pair(src, dst)
    h1 = parse(encode_v1((src, sport), (dst, dport)))
    assert (h1.src, h1.dst) == ((want_src, sport), (want_dst, dport))
    h2 = parse(encode_v2((src, sport), (dst, dport), tls))
    assert (h2.src, h2.dst) == ((want_src, sport), (want_dst, dport))
    assert h2.tls == tls


def check_parse_result(data: bytes) -> None:
    """None, ProxyProtocolError, or a header that the consumed bytes alone parse to again."""
    try:
        got = parse_proxy_header(data)
    except ProxyProtocolError as exc:
        assert exc.message
        return
    if got is None:
        return
    header, consumed = got
    assert 0 < consumed <= len(data)
    assert parse_proxy_header(data[:consumed]) == (header, consumed)
    assert parse_proxy_header(data[:consumed - 1]) is None
    if header.version == 1:
        assert data[consumed - 2:consumed] == b"\r\n"
    else:
        assert consumed == 16 + int.from_bytes(data[14:16], "big")


@FUZZ
@given(st.binary(max_size=120))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_parse_result(data)
    check_parse_result(b"PROXY " + data)
    check_parse_result(V2_SIGNATURE + data)


@FUZZ
@given(ips, ports, ips, ports, tls_infos(), st.data())
def test_fuzz_mutations(src: str, sport: int, dst: str, dport: int, tls: TlsInfo,
                        data: st.DataObject) -> None:
    for packet in (encode_v1((src, sport), (dst, dport)),
                   encode_v2((src, sport), (dst, dport), tls)):
        mutated = bytearray(packet)
        for _ in range(data.draw(st.integers(1, 3))):
            pos = data.draw(st.integers(0, len(mutated) - 1))
            op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
            if op == "flip":
                mutated[pos] ^= data.draw(st.integers(1, 255))
            elif op == "insert":
                mutated.insert(pos, data.draw(st.integers(0, 255)))
            else:
                del mutated[pos]
        check_parse_result(bytes(mutated))
        if packet[:1] == b"\r" and len(mutated) >= 16:
            # Keep the v2 length field right so the TLV walk itself gets fuzzed.
            mutated[14:16] = (len(mutated) - 16).to_bytes(2, "big")
            check_parse_result(bytes(mutated))


@pytest.mark.parametrize("tlv_type", [PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL])
def test_tlv_constants(tlv_type: int) -> None:
    # proxy-protocol.txt §2.2.7 numbering.
    assert {PP2_TYPE_ALPN: 0x01, PP2_TYPE_AUTHORITY: 0x02, PP2_TYPE_SSL: 0x20}[tlv_type] == \
        tlv_type

"""The fuzz corpus as a regression suite (issue 10): every checked-in input of every target in
fuzz/corpus/ and every crash the fuzzers found (fuzz/regressions/, fixed since) runs through its
target on each `make test`. The targets assert the parsers' contracts, not just "no exception"
(see fuzz/targets.py). Crashes found by `make fuzz` and fixed in the same change:

* proxy_header: a PROXY v1 TCP6 address with a scope id (``2001:db8::2%<NULs>``) was accepted
  (Python's IPv6Address takes any text after ``%``), so control characters reached the peer
  address that is logged and forwarded. Now refused.
* control_frames: a control frame holding JSON that is not an object (a number, a list), an
  unhashable reply id, or nesting deep enough for RecursionError escaped ControlPeer.run()
  instead of being treated as garbage on the channel.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from fuzz.targets import TARGETS, fuzz_control_frames
from tlsgate.mqtt import ProxyProtocolError, parse_proxy_header

ROOT = Path(__file__).resolve().parent.parent.parent / "fuzz"
CASES = sorted((d.name, f) for base in ("corpus", "regressions")
               for d in (ROOT / base).glob("*") if d.is_dir() for f in sorted(d.iterdir()))


def test_every_target_has_a_corpus() -> None:
    for name in TARGETS:
        assert any(n == name for n, _ in CASES), f"fuzz/corpus/{name} is empty"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_corpus_replays_clean(name: str) -> None:
    files = [f for n, f in CASES if n == name]
    for f in files:
        TARGETS[name](f.read_bytes())


def test_proxy_v1_scope_id_is_refused() -> None:
    with pytest.raises(ProxyProtocolError, match="scope id"):
        parse_proxy_header(b"PROXY TCP6 2001:db8::1 2001:db8::2%\x00\x00 1 2\r\n")
    with pytest.raises(ProxyProtocolError, match="scope id"):
        parse_proxy_header(b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n")


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("body", [b"5", b"[\"ok\",\"id\"]", b"\"text\"", b"null",
                                  b"{\"id\":[1],\"ok\":true}", b"[" * 100_000])
def test_control_channel_garbage_ends_the_channel_cleanly(body: bytes) -> None:
    fuzz_control_frames(_frame(body) + _frame(json.dumps({"id": 1, "op": "echo"}).encode()))

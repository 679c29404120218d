"""PSK file parsing and the identity table (pure code, no TLS)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlsgate.psk_table import (
    MAX_IDENTITY_LEN,
    MAX_SECRET_LEN,
    PskChange,
    PskError,
    PskFileError,
    PskTable,
    decode_secret,
    parse_psk_file,
    parse_psk_text,
    printable_identity,
)

# A secret distinctive enough that finding it in any message means it leaked.
SECRET = "Zq9-leak-canary-7Xw"


def write(tmp_path: Path, text: str | bytes, name: str = "psk.txt") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return p


# --------------------------------------------------------------------------------------------
# emqx format
# --------------------------------------------------------------------------------------------
def test_emqx_basic_comments_blank_lines(tmp_path: Path) -> None:
    p = write(tmp_path, "# devices\n\nmydevice1:c2VjcmV0\n   \n  # indented comment\n"
                        "dev2:another secret\n")
    assert parse_psk_file(p) == {b"mydevice1": b"c2VjcmV0", b"dev2": b"another secret"}


def test_emqx_secret_is_raw_bytes_not_decoded() -> None:
    # EMQX's own example: the key is the 8 ASCII bytes, not base64-decoded "secret".
    assert parse_psk_text(b"mydevice1:c2VjcmV0\n") == {b"mydevice1": b"c2VjcmV0"}


def test_emqx_splits_at_first_separator_only() -> None:
    assert parse_psk_text(b"dev:a:b:c\n") == {b"dev": b"a:b:c"}


def test_emqx_crlf_and_last_line_without_newline() -> None:
    assert parse_psk_text(b"a:one\r\nb:two") == {b"a": b"one", b"b": b"two"}


def test_emqx_keeps_blanks_like_emqx_and_warns() -> None:
    warnings: list[str] = []
    out = parse_psk_text(b"dev1 : s e c \n", path="f.psk", warnings=warnings)
    assert out == {b"dev1 ": b" s e c "}
    assert len(warnings) == 2
    assert all(w.startswith("f.psk:1:") for w in warnings)
    assert "s e c" not in " ".join(warnings)


def test_emqx_non_utf8_secret_bytes_kept() -> None:
    assert parse_psk_text(b"dev:\xff\xfe\x00\x01\n") == {b"dev": b"\xff\xfe\x00\x01"}


def test_custom_and_multichar_separator() -> None:
    assert parse_psk_text(b"dev1|abc\n", separator="|") == {b"dev1": b"abc"}
    assert parse_psk_text(b"dev1::=abc::=def\n", separator="::=") == {b"dev1": b"abc::=def"}


def test_utf8_bom_ignored() -> None:
    assert parse_psk_text(b"\xef\xbb\xbfdev1:abc\n") == {b"dev1": b"abc"}


def test_unicode_identity() -> None:
    table = PskTable(parse_psk_text("设备-1:密钥\n".encode()))
    assert table.identities() == ["设备-1"]
    assert table.lookup("设备-1".encode()) == "密钥".encode()


# --------------------------------------------------------------------------------------------
# hex format (mosquitto psk_file)
# --------------------------------------------------------------------------------------------
def test_hex_basic() -> None:
    text = b"# mosquitto style\nid1:deadBEEF\n id2 :\t0011 \n"
    assert parse_psk_text(text, fmt="hex") == {b"id1": b"\xde\xad\xbe\xef",
                                               b"id2": b"\x00\x11"}


def test_hex_leading_zero_bytes_kept() -> None:
    assert parse_psk_text(b"d:0000ff\n", fmt="hex") == {b"d": b"\x00\x00\xff"}


@pytest.mark.parametrize(("line", "reason"), [
    (b"d:abc", "odd number of digits"),
    (b"d:zz11", "not a hex digit"),
    (b"d:0x11", "not a hex digit"),
    (b"d:12 34", "not a hex digit"),
    (b"d:", "empty secret"),
    (b"d:  ", "empty secret"),
])
def test_hex_errors(line: bytes, reason: str) -> None:
    with pytest.raises(PskFileError, match=reason) as info:
        parse_psk_text(b"ok:00\n" + line + b"\n", path="keys.psk", fmt="hex")
    assert info.value.line == 2
    assert str(info.value).startswith("keys.psk:2: ")


# --------------------------------------------------------------------------------------------
# Errors: file and line named, secret never shown
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("line", "reason"), [
    (f"no-separator-{SECRET}", "no ':' separator"),
    (f":{SECRET}", "empty identity"),
    ("dev:", "empty secret"),
    ("x" * (MAX_IDENTITY_LEN + 1) + f":{SECRET}", "at most 128"),
    ("dev:" + "s" * (MAX_SECRET_LEN + 1), "at most 256"),
])
def test_malformed_line(tmp_path: Path, line: str, reason: str) -> None:
    p = write(tmp_path, f"# header\ngood:{SECRET}x\n\n{line}\n")
    with pytest.raises(PskFileError, match=reason) as info:
        parse_psk_file(p)
    err = info.value
    assert err.path == str(p) and err.line == 4
    assert str(err).startswith(f"{p}:4: ")
    assert SECRET not in str(err)


def test_limits_are_inclusive() -> None:
    ident, secret = b"i" * MAX_IDENTITY_LEN, b"s" * MAX_SECRET_LEN
    assert parse_psk_text(ident + b":" + secret) == {ident: secret}


def test_identity_bad_bytes() -> None:
    with pytest.raises(PskFileError, match="not valid UTF-8"):
        parse_psk_text(b"\xff\xfe:abc\n")
    with pytest.raises(PskFileError, match="NUL"):
        parse_psk_text(b"a\x00b:abc\n")


def test_duplicate_names_both_lines(tmp_path: Path) -> None:
    p = write(tmp_path, f"dev1:{SECRET}\nother:x\ndev1:{SECRET}2\n")
    with pytest.raises(PskFileError, match="'dev1' is already defined on line 1") as info:
        parse_psk_file(p)
    assert info.value.line == 3
    assert SECRET not in str(info.value)


def test_duplicate_after_hex_trimming() -> None:
    with pytest.raises(PskFileError, match="already defined on line 1"):
        parse_psk_text(b"dev:00\n dev :11\n", fmt="hex")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PskFileError, match="file not found"):
        parse_psk_file(tmp_path / "missing.psk")
    with pytest.raises(PskFileError, match="is a directory"):
        parse_psk_file(tmp_path)


def test_bad_separator() -> None:
    with pytest.raises(PskFileError, match="separator is empty"):
        parse_psk_text(b"a:b", separator="")
    with pytest.raises(PskFileError, match="line break"):
        parse_psk_text(b"a:b", separator="\n")


def test_decode_secret_messages_hide_secret() -> None:
    with pytest.raises(PskError) as info:
        decode_secret(f"{SECRET}g", "hex")
    assert SECRET not in str(info.value)
    assert decode_secret("abc", "emqx") == b"abc"
    assert decode_secret(" 0a0B ", "hex") == b"\x0a\x0b"


def test_printable_identity_escapes() -> None:
    assert printable_identity(b"dev1") == "dev1"
    assert printable_identity("设备".encode()) == "设备"
    assert printable_identity(b"a\nb\x1b[31m\xff") == "a\\nb\\x1b[31m\\xff"
    assert printable_identity(b"x" * 500, limit=10) == "x" * 10 + "..."


# --------------------------------------------------------------------------------------------
# Property: what a file says is what the table holds
# --------------------------------------------------------------------------------------------
_ident = st.text(st.characters(codec="utf-8", exclude_characters="\x00\r\n:#",
                               exclude_categories=["Cs", "Zs", "Cc"]),
                 min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= MAX_IDENTITY_LEN)


@given(st.dictionaries(_ident, st.binary(min_size=1, max_size=MAX_SECRET_LEN), max_size=20))
def test_hex_file_roundtrip(entries: dict[str, bytes]) -> None:
    text = "".join(f"{i}:{k.hex()}\n" for i, k in entries.items())
    assert parse_psk_text(text.encode(), fmt="hex") == {i.encode(): k for i, k in
                                                         entries.items()}


@given(st.dictionaries(_ident, st.binary(min_size=1, max_size=MAX_SECRET_LEN)
                       .filter(lambda b: b"\n" not in b and not b.endswith(b"\r")),
                       max_size=20))
def test_emqx_file_roundtrip(entries: dict[str, bytes]) -> None:
    data = b"".join(i.encode() + b":" + k + b"\n" for i, k in entries.items())
    assert parse_psk_text(data) == {i.encode(): k for i, k in entries.items()}


@given(st.binary(max_size=300))
def test_parser_never_crashes(data: bytes) -> None:
    for fmt in ("emqx", "hex"):
        with contextlib.suppress(PskFileError):
            parse_psk_text(data, fmt=fmt)


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------
def test_table_lookup_and_identities() -> None:
    mixed: dict[bytes | str, bytes] = {b"b": b"2", "a": b"1"}  # str identities are UTF-8
    t = PskTable(mixed)
    assert t.lookup(b"a") == b"1" and t.lookup(b"zz") is None
    assert t.identities() == ["a", "b"]
    assert len(t) == 2 and "a" in t and b"b" in t and "c" not in t
    assert t.version == 1


def test_table_repr_and_identities_hide_secrets() -> None:
    t = PskTable({b"dev": SECRET.encode()})
    assert SECRET not in repr(t) and SECRET not in str(t.identities())
    assert "1 identities" in repr(t)


def test_table_add_update_remove_and_events() -> None:
    t = PskTable()
    events: list[PskChange] = []
    unsubscribe = t.subscribe(events.append)
    t.add("dev1", b"k1")
    t.add("dev1", b"k1")  # no change: no event, no version bump
    t.add(b"dev1", b"k2")
    assert t.remove("dev1") is True
    assert t.remove("dev1") is False
    none: frozenset[str] = frozenset()
    dev1 = frozenset({"dev1"})
    assert [(e.version, e.added, e.updated, e.removed, e.reason) for e in events] == [
        (1, dev1, none, none, "add"),
        (2, none, dev1, none, "add"),
        (3, none, none, dev1, "remove"),
    ]
    assert t.version == 3
    unsubscribe()
    t.add("dev2", b"x")
    assert len(events) == 3


def test_table_add_rejects_bad_entries() -> None:
    t = PskTable()
    with pytest.raises(PskError, match="empty secret"):
        t.add("dev", b"")
    with pytest.raises(PskError, match="empty identity"):
        t.add("", b"x")
    with pytest.raises(PskError, match="at most 128"):
        t.add("x" * 129, b"x")
    assert len(t) == 0 and t.version == 0


def test_replace_all_is_all_or_nothing() -> None:
    t = PskTable({b"a": b"1", b"b": b"2"})
    with pytest.raises(PskError, match=r"'c'.*empty secret"):
        t.replace_all({b"a": b"1", b"c": b""})
    assert t.snapshot() == {b"a": b"1", b"b": b"2"} and t.version == 1
    change = t.replace_all({b"a": b"9", b"c": b"3"})
    assert (change.added, change.removed, change.updated) == (frozenset("c"), frozenset("b"),
                                                              frozenset("a"))
    assert t.snapshot() == {b"a": b"9", b"c": b"3"} and t.version == 2
    assert t.replace_all({b"a": b"9", b"c": b"3"}).empty and t.version == 2


def test_listener_failure_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    t = PskTable()
    got: list[int] = []

    def bad(_c: PskChange) -> None:
        raise RuntimeError("replicator down")

    t.subscribe(bad)
    t.subscribe(lambda c: got.append(c.version))
    with caplog.at_level(logging.ERROR, logger="tlsgate.psk"):
        t.add("dev", SECRET.encode())
    assert got == [1]
    assert "replicator down" in caplog.text and SECRET not in caplog.text


def test_reload_adds_and_removes(tmp_path: Path) -> None:
    p = write(tmp_path, "keep:1\ngone:2\n")
    t = PskTable.from_file(p)
    assert t.identities() == ["gone", "keep"]
    write(tmp_path, "keep:1\nnew:3\n")
    change = t.reload_from_file()
    assert (change.added, change.removed, change.updated) == (frozenset({"new"}),
                                                              frozenset({"gone"}), frozenset())
    assert change.reason == f"reload:{p}"
    assert t.identities() == ["keep", "new"] and t.lookup(b"gone") is None


def test_reload_bad_file_keeps_old_table(tmp_path: Path) -> None:
    p = write(tmp_path, "keep:1\n")
    t = PskTable.from_file(p)
    events: list[PskChange] = []
    t.subscribe(events.append)
    write(tmp_path, f"keep:1\nbroken-line-{SECRET}\n")
    with pytest.raises(PskFileError, match=r"psk\.txt:2: no ':' separator") as info:
        t.reload_from_file()
    assert SECRET not in str(info.value)
    assert t.snapshot() == {b"keep": b"1"} and t.version == 1 and events == []
    (tmp_path / "psk.txt").unlink()
    with pytest.raises(PskFileError, match="file not found"):
        t.reload_from_file()
    assert t.snapshot() == {b"keep": b"1"}


def test_reload_uses_remembered_format(tmp_path: Path) -> None:
    p = write(tmp_path, "d|00ff\n")
    t = PskTable.from_file(p, separator="|", fmt="hex")
    write(tmp_path, "d|0100\n")
    t.reload_from_file()
    assert t.lookup(b"d") == b"\x01\x00"


def test_reload_without_source_needs_path(tmp_path: Path) -> None:
    t = PskTable({b"a": b"1"})
    with pytest.raises(PskFileError, match="give the path"):
        t.reload_from_file()
    t.reload_from_file(write(tmp_path, "b:2\n"))
    assert t.identities() == ["b"]


def test_example_files_agree() -> None:
    """examples/psk: the emqx-format and hex-format files describe the same keys."""
    examples = Path(__file__).resolve().parents[2] / "examples" / "psk"
    emqx = parse_psk_file(examples / "psk.txt")
    assert emqx == parse_psk_file(examples / "psk_hex.txt", fmt="hex")
    assert emqx[b"dev1"] == bytes.fromhex("7365637265742d6b6579")  # what the scripts send

"""Value types shared by the config schema: durations, byte sizes, host:port addresses, secrets.

Each is an ``Annotated`` type whose validator accepts what an operator writes in TOML (``"15s"``,
``"64KB"``, ``"0.0.0.0:8883"``) and yields a plain Python value, so the rest of the code never
parses strings again.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, PlainValidator, WithJsonSchema

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``"15s"``, ``"5m"``, ``"500ms"``, ``"1h"``, ``"2d"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"15s\" or \"5m\"")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration; write e.g. \"15s\", \"5m\", \"500ms\", "
                     "\"1h\"")


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "kib": 1024, "mb": 1 << 20, "mib": 1 << 20, "gb": 1 << 30,
               "gib": 1 << 30}


def parse_size(value: Any) -> int:
    """``65536``, ``"64KB"``, ``"1MB"`` -> bytes (KB and KiB both mean 1024, as in EMQX)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 65536 or \"64KB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    raise ValueError(f"{value!r} is not a size; write e.g. 65536, \"64KB\" or \"1MB\"")


def parse_hostport(value: Any) -> str:
    """Check ``host:port`` / ``[v6]:port`` / ``port`` (= 0.0.0.0:port); return ``host:port``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"0.0.0.0:{value}"
    if not isinstance(value, str):
        raise ValueError("expected \"host:port\"")
    text: str = f"0.0.0.0:{value}" if value.isdigit() else value
    split_hostport(text)
    return text


def split_hostport(value: str) -> tuple[str, int]:
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{value!r}: write an IPv6 address as \"[::1]:8883\"")
        port_s = rest[1:]
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{value!r} is not \"host:port\"")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 0 to 65535")
    return host, int(port_s)


def parse_cidr(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a CIDR such as \"10.0.0.0/8\"")
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP network: {exc}") from None
    return value


def _str_or_list(value: Any) -> Any:
    """EMQX accepts ``ciphers`` both as a list and as one comma-separated string."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class Secret(str):
    """A string that never shows itself in ``repr``/logs (passwords, tokens)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('******')" if self else "Secret('')"

    def reveal(self) -> str:
        """The real value. ``file://path`` secrets are read from the file (first line)."""
        s = str.__str__(self)
        if s.startswith("file://"):
            lines = Path(s[len("file://"):]).read_text().splitlines()
            return lines[0] if lines else ""
        return s


def _to_secret(value: Any) -> Secret:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return Secret(value)


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
HostPort = Annotated[str, BeforeValidator(parse_hostport)]
Cidr = Annotated[str, BeforeValidator(parse_cidr)]
StrList = Annotated[list[str], BeforeValidator(_str_or_list)]
SecretStr = Annotated[Secret, PlainValidator(_to_secret), PlainSerializer(lambda s: "******"),
                      WithJsonSchema({"type": "string", "format": "password"})]

"""Per-listener admission policy that needs no I/O: access rules and the connection rate limit."""

from __future__ import annotations

import ipaddress
import time

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class AccessRules:
    """``["allow 10.0.0.0/8", "deny all"]`` matched in order; no match = allow (as EMQX)."""

    __slots__ = ("_rules", "allow_all")

    def __init__(self, rules: list[str]) -> None:
        parsed: list[tuple[bool, Network | None]] = []
        for rule in rules:
            verdict, target = rule.split()
            net = None if target == "all" else ipaddress.ip_network(target, strict=False)
            parsed.append((verdict == "allow", net))
        self._rules = parsed
        self.allow_all = not parsed or (parsed[0] == (True, None))

    def allows(self, host: str) -> bool:
        if self.allow_all:
            return True
        addr = _ip(host)
        for allow, net in self._rules:
            if net is None or (addr is not None and addr.version == net.version and addr in net):
                return allow
        return True


class Cidrs:
    __slots__ = ("_nets",)

    def __init__(self, cidrs: list[str]) -> None:
        self._nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def contains(self, host: str) -> bool:
        addr = _ip(host)
        return addr is not None and any(addr.version == n.version and addr in n
                                        for n in self._nets)


class RateLimiter:
    """Token bucket: ``rate`` new connections per second with a burst of one second's worth."""

    __slots__ = ("_last", "_tokens", "rate")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._tokens = float(rate)
        self._last = time.monotonic()

    def allow(self) -> bool:
        if not self.rate:
            return True
        now = time.monotonic()
        self._tokens = min(float(self.rate), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

"""`tlsgate check-config`: everything a start would load, without binding a port."""

from __future__ import annotations

from .load import ConfigError, load


def check(path: str) -> list[str]:
    try:
        config = load(path)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    from ..server.app import Gateway

    try:
        Gateway(config, path).build(config)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []

"""`tlsgate check-config`: everything a start would load, without binding a port."""

from __future__ import annotations

from .load import ConfigError, load


def check(path: str) -> list[str]:
    try:
        config = load(path)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    from ..server.app import Gateway

    problems: list[str] = []
    try:
        Gateway(config, path).build(config)
    except ConfigError as exc:
        problems += [str(p) for p in exc.problems]
    if config.cluster.enable:
        from ..cluster.channel import build_contexts

        try:
            build_contexts(config.cluster, path)
        except ConfigError as exc:
            problems += [str(p) for p in exc.problems]
    if config.dashboard.enable:
        from ..admin.server import validate as validate_dashboard

        try:
            validate_dashboard(config.dashboard, path)
        except ConfigError as exc:
            problems += [str(p) for p in exc.problems]
    psk = config.psk_authentication
    if psk.enable:
        from ..psk_table import PskError, parse_psk_file

        try:
            parse_psk_file(psk.init_file, psk.separator, psk.format)
        except (PskError, OSError) as exc:
            problems.append(f"psk_authentication.init_file: {exc}")
    return problems


def notes(path: str) -> list[str]:
    """Things worth saying that are not errors: listener ports held by another process (often
    the running tlsgate itself, when a change is checked before a reload)."""
    try:
        config = load(path)
    except ConfigError:
        return []
    from ..server.node import ports_taken

    return [f"{p} (another process holds it: fine if it is this tlsgate, running)"
            for p in ports_taken(config)]

"""Control operations a worker answers for the node (admin API, reload, state pushes).

Each handler takes the request's ``args`` dict and returns something JSON-serialisable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Gateway

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def handlers(gw_of: Callable[[], Gateway | None]) -> dict[str, Handler]:
    """Operations over the worker's gateway (``gw_of()`` is None until it started)."""

    def gw() -> Gateway:
        g = gw_of()
        if g is None:
            raise RuntimeError("the worker has not started yet")
        return g

    async def connections(args: dict[str, Any]) -> Any:
        filters = {k: v for k, v in args.items()
                   if k in ("clientid", "username", "cn", "psk_identity", "peer", "listener")
                   and v not in (None, "")}
        return [rec.as_dict() for rec in gw().registry.find(**filters)]

    async def connection(args: dict[str, Any]) -> Any:
        rec = gw().registry.get(str(args["id"]))
        return rec.as_dict() if rec is not None else None

    async def kick(args: dict[str, Any]) -> Any:
        return gw().registry.kick(str(args["id"]), str(args.get("reason") or "kicked by operator"))

    return {"connections": connections, "connection": connection, "kick": kick}

"""Listening sockets and process-level tuning (the few things done once at start-up)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import socket

from ..config.types import split_hostport

log = logging.getLogger("tlsgate.server")

# TCP keepalive on every client socket (set on the listening socket; Linux copies these options
# to accepted sockets). tlsgate never closes an idle MQTT connection itself (keepalive is the
# broker's business); this only finds peers that vanished without a FIN.
KEEPIDLE, KEEPINTVL, KEEPCNT = 300, 30, 5


def listening_socket(bind: str, backlog: int, reuse_port: bool) -> socket.socket:
    host, port = split_hostport(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        set_keepalive(sock)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host or "0.0.0.0", port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def set_keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPIDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPINTVL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPCNT)


def tune_malloc() -> None:
    """Raise glibc malloc's mmap/trim thresholds.

    Large short-lived buffers (bulk transfers produce 256 KiB bytes objects) otherwise go
    through mmap/munmap and trim on every chunk: measured up to 17x slower throughput.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 4 * 1024 * 1024)
        libc.mallopt(m_trim_threshold, 32 * 1024 * 1024)
    except (OSError, AttributeError):
        log.debug("mallopt not available; malloc thresholds unchanged")


def raise_fd_limit() -> int:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft

"""国密 (GM/SM) TLS: TLCP and RFC 8998 TLS 1.3 through the Tongsuo library bundled in the
``tongsuopy`` wheel. See ``_lib.py`` for which library it is, what that implies, and why it is
safe in the same process as ``ssl``/``cryptography``/pyOpenSSL; ``engine.py`` for the engine.
"""

from __future__ import annotations

from ._lib import GmUnavailableError, LibraryInfo
from .engine import (
    TLCP_CIPHERS,
    TLS13_CIPHERS,
    GmConfigError,
    GmError,
    GmServerContext,
    GmSession,
    HandshakeError,
    TlsError,
    build_gm_context,
)


def library_info() -> LibraryInfo:
    """Load the library (if not yet) and say which it is; raises GmUnavailableError."""
    from ._lib import load

    return load().info


__all__ = [
    "TLCP_CIPHERS", "TLS13_CIPHERS", "GmConfigError", "GmError", "GmServerContext",
    "GmSession", "GmUnavailableError", "HandshakeError", "LibraryInfo", "TlsError",
    "build_gm_context", "library_info",
]

"""Authentication of CONNECTs against an external HTTP backend (EMQX's HTTP contract)."""

from __future__ import annotations

from .http import (
    AuthConfigError,
    AuthMetrics,
    AuthRequest,
    AuthResult,
    Decision,
    HttpAuthenticator,
    Refusal,
)

__all__ = [
    "AuthConfigError",
    "AuthMetrics",
    "AuthRequest",
    "AuthResult",
    "Decision",
    "HttpAuthenticator",
    "Refusal",
]

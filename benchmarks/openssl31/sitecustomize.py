"""A measuring device, not part of tlsgate: lets the unchanged tlsgate code run on
cryptography 41.0.7 (bundles OpenSSL 3.1.4) + pyOpenSSL 25.0.0, so
benchmarks/openssl_generations.sh can measure what the OpenSSL generation costs per connection
(3.1 has the pre-3.2 record layer, like the OpenSSL 3.0 that HAProxy and nginx link here).

Python imports this file at start-up when its directory is first on PYTHONPATH. It fills in the
three things the older bindings lack, with the same effect for what the benchmark measures:
``Context.clear_mode`` and ``Context.set_tls13_ciphersuites`` (pyOpenSSL 25.0 has neither) and
``SSL_get0_group_name`` (OpenSSL 3.2+; the access log shows ``group=-``). ``SSL_session_reused``
is missing from those bindings too: the access log's ``resumed=`` is always False under this
shim (resumption itself is OpenSSL's and works). OpenSSL 3.1 is past its end of life: never
run tlsgate this way in production.
"""

from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

if not hasattr(SSL.Context, "clear_mode"):
    def _clear_mode(self: Any, mode: int) -> int:
        return int(_lib.SSL_CTX_clear_mode(self._context, mode))

    SSL.Context.clear_mode = _clear_mode

if not hasattr(SSL.Context, "set_tls13_ciphersuites"):
    def _set_tls13_ciphersuites(self: Any, suites: bytes) -> None:
        if _lib.SSL_CTX_set_ciphersuites(self._context, suites) != 1:
            raise SSL.Error(f"OpenSSL refused the TLS 1.3 suites {suites!r}")

    SSL.Context.set_tls13_ciphersuites = _set_tls13_ciphersuites

if not hasattr(_lib, "SSL_get0_group_name"):
    _lib.SSL_get0_group_name = lambda ssl: _ffi.NULL

if not hasattr(_lib, "SSL_session_reused"):
    _lib.SSL_session_reused = lambda ssl: 0

"""Sans-IO MQTT and PROXY protocol codecs: no sockets, no asyncio, no state between calls.

* :mod:`.connect` -- parse the client's first packet (CONNECT, MQTT 3.1/3.1.1/5.0), rewrite its
  user name / client id keeping every other byte, build CONNECTs for tests.
* :mod:`.connack` -- the CONNACK that refuses a client, in its MQTT version.
* :mod:`.proxy_protocol` -- PROXY v1/v2 headers: send to a broker, accept from a load balancer.
* :mod:`.errors` -- :class:`Refusal` and the remote errors the parsers raise.
"""

from __future__ import annotations

from .connack import (
    Connack,
    connack_code,
    connack_for,
    connack_for_error,
    decode_connack,
    encode_connack,
)
from .connect import (
    KEEP,
    Connect,
    decode_properties,
    encode_connect,
    encode_properties,
    parse_connect,
    rewrite_connect,
)
from .errors import ProtocolError, ProxyProtocolError, Refusal, RemoteError
from .proxy_protocol import (
    ProxyHeader,
    TlsInfo,
    encode_v1,
    encode_v2,
    encode_v2_local,
    parse_proxy_header,
)

__all__ = [
    "KEEP", "Connack", "Connect", "ProtocolError", "ProxyHeader", "ProxyProtocolError",
    "Refusal", "RemoteError", "TlsInfo", "connack_code", "connack_for", "connack_for_error",
    "decode_connack", "decode_properties", "encode_connack", "encode_connect",
    "encode_properties", "encode_v1", "encode_v2", "encode_v2_local", "parse_connect",
    "parse_proxy_header", "rewrite_connect",
]

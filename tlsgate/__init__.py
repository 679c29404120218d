"""tlsgate: a TLS-terminating reverse proxy for MQTT."""

__version__ = "0.1.0"

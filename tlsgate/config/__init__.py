"""Configuration: TOML -> frozen, typed objects. See ``schema.py`` for every key."""

from .load import ConfigError, Problem, load, load_default, parse
from .schema import (
    ClientSslOptions,
    Config,
    GmListener,
    ListenerBase,
    MqttConfig,
    ServerSslOptions,
    SslListener,
    UpstreamConfig,
)

__all__ = [
    "ClientSslOptions", "Config", "ConfigError", "GmListener", "ListenerBase", "MqttConfig",
    "Problem", "ServerSslOptions", "SslListener", "UpstreamConfig", "load", "load_default",
    "parse",
]

"""The configuration schema: one frozen pydantic model per TOML table.

This module is the single source of truth for every key: its type, its default and its
description (``Field(description=...)``). The configuration reference in ``docs/`` is generated
from it (``tlsgate config-reference``), so a key documented there cannot drift from the code.

Key names follow EMQX (``listeners.ssl.<name>.ssl_options.*``, ``psk_authentication``,
``crl_cache``, ``peer_cert_as_username``...). Where tlsgate has a clearer name, both are accepted
(``validation_alias``). Cross-field rules (``fail_if_no_peer_cert`` needs ``verify_peer``...) are
``model_validator``s whose message names the keys involved. Checks that need the file system
(certificates that load, keys that match) live in ``tlsgate.tls.context`` and
``tlsgate.config.check``, not here.
"""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from .types import Cidr, Duration, HostPort, SecretStr, Size, StrList

TlsVersion = Literal["tlsv1.3", "tlsv1.2"]
Verify = Literal["verify_none", "verify_peer"]
IdentitySource = Literal["disabled", "cn", "dn", "crt", "pem", "md5"]
GmProtocol = Literal["tlcp", "tlsv1.3"]


def _default_versions() -> list[TlsVersion]:
    return ["tlsv1.3", "tlsv1.2"]


def _default_gm_protocols() -> list[GmProtocol]:
    return ["tlcp", "tlsv1.3"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------------------------
# [node], [log]
# --------------------------------------------------------------------------------------------
class NodeConfig(Section):
    name: str = Field(default_factory=socket.gethostname,
                      description="This node's name (logs, admin API, cluster membership). "
                                  "Default: the host name.")
    data_dir: str = Field("var/tlsgate",
                          description="Directory for state kept across restarts: persisted OCSP "
                                      "staples, the CRL cache, bans (bans.json) and TLS-PSK "
                                      "identities added through the admin API "
                                      "(psk-overlay.json, mode 0600). Created if missing.")
    workers: int = Field(0, ge=0, le=256,
                         description="Worker processes sharing the listening ports "
                                     "(SO_REUSEPORT). 0 = one per CPU.")
    reload_on_change: bool = Field(False,
                                   description="Reload when the config file or any certificate, "
                                               "key, CA, CRL or PSK file it names changes "
                                               "(mtime polling).")
    reload_check_interval: Duration = Field(5.0, description="How often files are polled when "
                                                             "`reload_on_change` is on.")
    shutdown_timeout: Duration = Field(10.0, description="On SIGTERM: how long live connections "
                                                         "may drain before they are closed.")
    handshake_batch_window: Duration = Field(
        0.002, le=0.1,
        description="When a worker is busy with new connections (more than 4 TLS handshake steps, "
                    "or steps taking more than half of this window, within one window), the "
                    "window's further steps run together at its end, and while batches stay full "
                    "the next window batches from its start: the worker, the clients and the "
                    "broker then wake once per burst instead of once per client read (on the hs "
                    "benchmark 2ms cut the worker's CPU per new connection by about 40 %). Under "
                    "light load every step runs at once; under load a step waits at most this "
                    "long. 0 turns batching off.")
    session_ticket_secret_file: str = Field(
        "", description="File of at least 32 random bytes the TLS session-ticket keys are "
                        "derived from, so that sessions also resume on other nodes given the same "
                        "file and after a restart (`head -c 48 /dev/urandom > FILE; chmod 600 "
                        "FILE`; re-read on reload). Empty: a random secret per node process.")
    session_ticket_key_rotation: Duration = Field(
        86400.0, description="Session-ticket keys change at every multiple of this on the "
                             "clock (the same instant on every worker and node), so a leaked "
                             "key exposes at most one period of TLS 1.2 resumptions; a ticket "
                             "from the period before still resumes (and the client gets a "
                             "fresh one), as does one from the next (made where the clock "
                             "is a little ahead), an older one does not (one full "
                             "handshake). "
                             "0 = never.")

    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info",
                                                                description="Log level.")
    format: Literal["text", "json"] = Field("text", description="Log line format.")
    access_log: bool = Field(True, description="One line per connection when it closes: peer, "
                                               "SNI, TLS version, cipher, identity, CONNECT "
                                               "client id/user, bytes each way, duration, reason.")
    file: str = Field("", description="Log file; empty = standard error.")


# --------------------------------------------------------------------------------------------
# MQTT awareness: [mqtt] and [listeners.*.<name>.mqtt]
# --------------------------------------------------------------------------------------------
class MqttConfig(Section):
    peer_cert_as_username: IdentitySource = Field(
        "disabled", description="Put the client certificate's identity in the CONNECT's user "
        "name: cn, dn (CN=..,OU=..,O=..,L=..,ST=..,C=..), crt (DER bytes), pem (base64 of the "
        "DER), md5 (hex MD5 of the DER).")
    peer_cert_as_clientid: IdentitySource = Field(
        "disabled", description="Same as peer_cert_as_username, for the client id.")
    psk_identity_as_username: bool = Field(
        False, description="Put the TLS-PSK identity in the CONNECT's user name.")
    connect_timeout: Duration = Field(
        10.0, description="Time from the end of the TLS handshake to a complete CONNECT.")
    max_connect_size: Size = Field(
        262144, ge=16, description="Largest CONNECT packet accepted (bytes).")


class MqttOverride(Section):
    """Per-listener overrides of [mqtt]; an unset key inherits the global value."""

    peer_cert_as_username: IdentitySource | None = None
    peer_cert_as_clientid: IdentitySource | None = None
    psk_identity_as_username: bool | None = None
    connect_timeout: Duration | None = None
    max_connect_size: Size | None = Field(None, ge=16)

    def apply(self, base: MqttConfig) -> MqttConfig:
        changes = {k: v for k, v in self.model_dump(exclude_none=True).items()}
        return base.model_copy(update={k: getattr(self, k) for k in changes})


# --------------------------------------------------------------------------------------------
# TLS options
# --------------------------------------------------------------------------------------------
class OcspOptions(Section):
    enable_ocsp_stapling: bool = Field(False, description="Staple a validated OCSP response "
                                                          "for the server certificate.")
    responder_url: str = Field("", description="OCSP responder; default: the certificate's AIA "
                                               "OCSP URL.")
    issuer_pem: str = Field("", description="Issuer certificate of `certfile`; default: found "
                                            "in certfile's chain or cacertfile.")
    refresh_interval: Duration = Field(300.0, description="Refresh at the earlier of this and "
                                                          "half-way to the response's nextUpdate.")
    refresh_http_timeout: Duration = Field(15.0, description="HTTP timeout of one OCSP fetch.")
    check_client: bool = Field(False, description="Also check client certificates against "
                                                  "their AIA OCSP responder (cached).")


class SniEntry(Section):
    server_name: str = Field(description="Host name the client asks for (SNI); `*.example.com` "
                                         "matches one label.")
    certfile: str = Field(description="Certificate (leaf first, then chain) for this name.")
    keyfile: str = Field(description="Private key for `certfile`.")
    password: SecretStr | None = Field(None, description="Key password (or `file://path`).")


_DEFAULT_TLS12_CIPHERS = [
    # Mozilla "intermediate": forward secrecy + AEAD only. TLS 1.3 suites are OpenSSL's defaults.
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
]


class ServerSslOptions(Section):
    certfile: str = Field("", description="Server certificate (PEM, leaf first, then the chain).")
    keyfile: str = Field("", description="Private key (PEM). A world-readable key is a warning.")
    password: SecretStr | None = Field(None, description="Key password, or `file://path` to "
                                                         "read it from a file.")
    cacertfile: str = Field("", description="CA certificates (PEM) that client certificates "
                                            "must chain to.")
    verify: Verify = Field("verify_none", description="`verify_peer` asks for and verifies a "
                                                      "client certificate.")
    fail_if_no_peer_cert: bool = Field(False, description="Refuse clients without a certificate "
                                                          "(needs verify_peer).")
    depth: int = Field(10, ge=0, le=100, description="Maximum client chain depth (intermediates).")
    versions: list[TlsVersion] = Field(default_factory=_default_versions,
                                       min_length=1, description="TLS versions offered.")
    ciphers: StrList = Field(default_factory=list,
                             description="OpenSSL suite names, TLS 1.2 (`ECDHE-...`, `PSK-...`) "
                                         "and TLS 1.3 (`TLS_AES_128_GCM_SHA256`) mixed; empty = "
                                         "safe defaults (Mozilla intermediate).")
    honor_cipher_order: bool = Field(True, description="Server's cipher order wins.")
    groups: StrList = Field(default_factory=list,
                            description="Key exchange groups, most preferred first (OpenSSL "
                                        "names: `X25519MLKEM768`, `X25519`, `P-256`, ...); "
                                        "empty = OpenSSL's default, which prefers the "
                                        "post-quantum hybrid X25519MLKEM768. A hybrid "
                                        "handshake costs more CPU and memory per connection "
                                        "(see the deployment guide's sizing notes).")
    handshake_timeout: Duration = Field(15.0, description="Time from TCP accept to a finished "
                                                          "TLS handshake.")
    partial_chain: bool = Field(False, description="Accept a chain that ends at an intermediate "
                                                   "in cacertfile (not only a root).")
    verify_peer_ext_key_usage: str = Field("", description="Required extended key usage of the "
                                                           "client certificate: `clientAuth`, "
                                                           "`serverAuth`, or a dotted OID; "
                                                           "empty = not checked.")
    reuse_sessions: bool = Field(True, description=(
        "TLS session resumption by session ticket; the ticket keys are shared by every worker "
        "of the node and kept across reloads. `false`: no tickets are sent."))
    session_tickets: int = Field(1, ge=0, le=10, description=(
        "TLS 1.3 session tickets sent after a full handshake (one follows each resumed one). An "
        "MQTT client holds one connection and uses one ticket per reconnect, so 1 suffices; "
        "OpenSSL's default of 2 costs ~35 µs of CPU and ~250 bytes more per connection."))
    session_lifetime: Duration = Field(86400.0, ge=1, le=604800, description=(
        "How long a session ticket resumes (the lifetime the client is told; at most 7 days, "
        "RFC 8446). A ticket also stops resuming once the ticket keys have rotated twice "
        "since it was made (node.session_ticket_key_rotation). OpenSSL's default is 2 h; MQTT "
        "clients stay "
        "connected for days and reconnect all at once after an outage, when resuming helps "
        "most."))
    session_ticket_refresh: bool = Field(True, description=(
        "Send each TLS 1.3 connection a fresh session ticket before its last one expires "
        "(every third of session_lifetime; also right after a ticket-key rotation when "
        "that comes more often), so a client that loses a connection it held for days still "
        "resumes. ~250 bytes per ticket. Needs reuse_sessions and session_tickets > 0."))
    alpn: list[str] = Field(default_factory=list, description="ALPN protocols offered, e.g. "
                                                              "[\"mqtt\"]; empty = no ALPN.")
    sni: list[SniEntry] = Field(default_factory=list, description="Extra certificates chosen by "
                                                                  "the client's SNI.")
    enable_crl_check: bool = Field(False, description="Check client certificates against CRLs "
                                                      "(needs verify_peer).")
    crlfile: StrList = Field(default_factory=list, description="Local CRL files (PEM or DER).")
    crl_check_depth: Literal["leaf", "chain"] = Field("chain", description="Check only the leaf, "
                                                                           "or the whole chain.")
    crl_soft_fail: bool = Field(False, description="Allow a client when no CRL is obtainable "
                                                   "(default: refuse).")
    close_revoked_connections: bool = Field(True, description="Close live connections whose "
                                                              "certificate a refreshed CRL "
                                                              "revokes.")
    ocsp: OcspOptions = Field(default_factory=OcspOptions)

    @model_validator(mode="after")
    def _combinations(self) -> ServerSslOptions:
        if self.fail_if_no_peer_cert and self.verify != "verify_peer":
            raise ValueError("fail_if_no_peer_cert = true needs verify = \"verify_peer\"")
        if self.enable_crl_check and self.verify != "verify_peer":
            raise ValueError("enable_crl_check = true needs verify = \"verify_peer\"")
        if self.verify == "verify_peer" and not self.cacertfile:
            raise ValueError("verify = \"verify_peer\" needs cacertfile (the CA that client "
                             "certificates chain to)")
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("certfile and keyfile go together")
        return self

    def tls12_ciphers(self) -> list[str]:
        c = [x for x in self.ciphers if not x.startswith("TLS_")]
        return c if self.ciphers else list(_DEFAULT_TLS12_CIPHERS)

    def tls13_ciphers(self) -> list[str]:
        return [x for x in self.ciphers if x.startswith("TLS_")]


class ClientSslOptions(Section):
    """TLS towards something tlsgate connects to (auth server, broker). EMQX's `ssl {}` block."""

    enable: bool = Field(False, description="Use TLS.")
    cacertfile: str = Field("", description="CA that the server's certificate must chain to; "
                                            "empty = the system's trust store.")
    certfile: str = Field("", description="Client certificate for mutual TLS.")
    keyfile: str = Field("", description="Client key for mutual TLS.")
    password: SecretStr | None = Field(None, description="Key password (or `file://path`).")
    verify: Verify = Field("verify_peer", description="Verify the server's certificate.")
    server_name_indication: str = Field("", description="SNI and the name checked in the "
                                                        "server's certificate; empty = the "
                                                        "host of the address/URL; `disable` = "
                                                        "no SNI and no host name check.")
    versions: list[TlsVersion] = Field(default_factory=_default_versions,
                                       min_length=1, description="TLS versions offered.")
    ciphers: StrList = Field(default_factory=list, description="OpenSSL suite names; empty = "
                                                               "defaults.")
    depth: int = Field(10, ge=0, le=100, description="Maximum server chain depth.")

    @model_validator(mode="after")
    def _pairs(self) -> ClientSslOptions:
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("certfile and keyfile go together")
        return self


# --------------------------------------------------------------------------------------------
# Listeners and upstreams
# --------------------------------------------------------------------------------------------
_PRIVATE_NETS = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                 "fc00::/7"]


class ListenerBase(Section):
    enable: bool = Field(True, description="Start this listener.")
    bind: HostPort = Field("0.0.0.0:8883", description="Address and port to listen on.")
    upstream: str = Field("default", description="Name of the [upstreams.<name>] to forward to.")
    max_connections: int = Field(1_000_000, ge=1, description="Open connections at most; "
                                                              "more are refused (CONNACK 0x03 / "
                                                              "0x97); beyond max_connections + "
                                                              "max(64, 25 %) they are closed at "
                                                              "accept, before any TLS work.")
    max_conn_rate: int = Field(0, ge=0, description="New connections per second at most "
                                                    "(0 = unlimited); more are refused (CONNACK "
                                                    "0x03 / 0x9F).")
    access_rules: list[str] = Field(default_factory=lambda: ["allow all"],
                                    description="`allow|deny CIDR|all`, matched in order before "
                                                "the handshake; no match = allow.")
    proxy_protocol: bool = Field(False, description="Expect a PROXY v1/v2 header from a load "
                                                    "balancer in front.")
    proxy_protocol_trusted: list[Cidr] = Field(default_factory=lambda: list(_PRIVATE_NETS),
                                               description="Peers allowed to send a PROXY "
                                                           "header.")
    proxy_protocol_timeout: Duration = Field(3.0, description="Time to receive the PROXY header.")
    backlog: int = Field(1024, ge=1, description="Listen backlog.")
    mqtt: MqttOverride = Field(default_factory=MqttOverride,
                               description="Per-listener overrides of [mqtt].")

    @model_validator(mode="after")
    def _rules(self) -> ListenerBase:
        for i, rule in enumerate(self.access_rules):
            parts = rule.split()
            if len(parts) != 2 or parts[0] not in ("allow", "deny"):
                raise ValueError(f"access_rules[{i}] = {rule!r}: write \"allow CIDR\", "
                                 "\"deny CIDR\", \"allow all\" or \"deny all\"")
            if parts[1] != "all":
                from .types import parse_cidr
                parse_cidr(parts[1])
        return self


class SslListener(ListenerBase):
    ssl_options: ServerSslOptions = Field(default_factory=ServerSslOptions)


class GmSslOptions(Section):
    sign_certfile: str = Field(description="SM2 signing certificate (PEM, leaf first).")
    sign_keyfile: str = Field(description="SM2 signing key (PEM).")
    enc_certfile: str = Field(description="SM2 encryption certificate (TLCP's second "
                                          "certificate).")
    enc_keyfile: str = Field(description="SM2 encryption key.")
    password: SecretStr | None = Field(None, description="Key password (or `file://path`).")
    cacertfile: str = Field("", description="SM2 CA that client certificates chain to.")
    verify: Verify = Field("verify_none", description="Ask for and verify a client "
                                                      "certificate.")
    fail_if_no_peer_cert: bool = Field(False, description="Refuse clients without a "
                                                          "certificate.")
    depth: int = Field(10, ge=0, le=100, description="Maximum client chain depth.")
    protocols: list[GmProtocol] = Field(default_factory=_default_gm_protocols,
                                        min_length=1, description="TLCP (GB/T 38636-2020) and/or "
                                                                  "TLS 1.3 with RFC 8998 suites.")
    ciphers: StrList = Field(default_factory=list,
                             description="TLCP: ECC-SM2-SM4-GCM-SM3, ECDHE-SM2-SM4-GCM-SM3, "
                                         "ECC-SM2-SM4-CBC-SM3, ECDHE-SM2-SM4-CBC-SM3; TLS 1.3: "
                                         "TLS_SM4_GCM_SM3, TLS_SM4_CCM_SM3; empty = all.")
    handshake_timeout: Duration = Field(15.0, description="Time to a finished handshake.")

    @model_validator(mode="after")
    def _combinations(self) -> GmSslOptions:
        if self.fail_if_no_peer_cert and self.verify != "verify_peer":
            raise ValueError("fail_if_no_peer_cert = true needs verify = \"verify_peer\"")
        if self.verify == "verify_peer" and not self.cacertfile:
            raise ValueError("verify = \"verify_peer\" needs cacertfile")
        return self


class GmListener(ListenerBase):
    bind: HostPort = Field("0.0.0.0:8884", description="Address and port to listen on.")
    ssl_options: GmSslOptions


class Listeners(Section):
    ssl: dict[str, SslListener] = Field(default_factory=dict,
                                        description="TLS listeners, one table each.")
    gm: dict[str, GmListener] = Field(default_factory=dict,
                                      description="国密 (TLCP / RFC 8998) listeners.")


class UpstreamConfig(Section):
    address: HostPort = Field("127.0.0.1:1883", description="The broker's plain MQTT address "
                                                            "(or its TLS port with `ssl`).")
    connect_timeout: Duration = Field(5.0, description="Time to connect to the broker.")
    proxy_protocol: Literal["none", "v1", "v2"] = Field(
        "none", description="Send a PROXY header first; v2 carries the client's TLS details "
        "(PP2_TYPE_SSL with CN, PP2_TYPE_AUTHORITY = SNI, ALPN), like HAProxy's "
        "send-proxy-v2-ssl-cn.")
    ssl: ClientSslOptions = Field(default_factory=ClientSslOptions,
                                  description="Re-encrypt towards the broker.")


# --------------------------------------------------------------------------------------------
# PSK, CRL cache, authentication, cluster, dashboard, demo broker
# --------------------------------------------------------------------------------------------
class PskConfig(Section):
    enable: bool = Field(False, description="Accept TLS-PSK clients.")
    init_file: str = Field("", description="Identities, one `identity<separator>secret` a line; "
                                           "`#` comments and blank lines allowed.")
    separator: str = Field(":", min_length=1, description="Separator between identity and "
                                                          "secret.")
    format: Literal["emqx", "hex"] = Field("emqx", description="`emqx`: the secret is used as "
                                                               "raw bytes (as EMQX does); `hex`: "
                                                               "the secret is hex (mosquitto's "
                                                               "psk_file).")

    @model_validator(mode="after")
    def _file(self) -> PskConfig:
        if self.enable and not self.init_file:
            raise ValueError("enable = true needs init_file")
        return self


class CrlCacheConfig(Section):
    refresh_interval: Duration = Field(900.0, description="Re-fetch each cached CRL this often.")
    http_timeout: Duration = Field(15.0, description="HTTP timeout of one CRL fetch.")
    capacity: int = Field(100, ge=1, description="CRL URLs cached at most (least recently used "
                                                 "evicted).")
    failure_threshold: Duration = Field(60.0, description="After a failed fetch, wait this long "
                                                          "before trying the URL again.")


class AuthenticationConfig(Section):
    enable: bool = Field(True, description="Call the authentication backend for every CONNECT.")
    backend: Literal["http"] = Field("http", description="Only `http` (EMQX's HTTP contract).")
    mechanism: Literal["password_based"] = Field("password_based",
                                                 description="EMQX compatibility; fixed.")
    method: Literal["post", "get"] = Field("post", description="HTTP method.")
    url: str = Field(description="Authentication endpoint, http:// or https://.")
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers.")
    body: dict[str, str] = Field(
        default_factory=lambda: {"username": "${username}", "password": "${password}"},
        description="Request body (JSON for post, query string for get) with placeholders "
                    "${username} ${password} ${clientid} ${peerhost} ${cert_common_name} "
                    "${cert_subject} ${psk_identity}.")
    request_timeout: Duration = Field(5.0, description="Time for one request.")
    pool_size: int = Field(8, ge=1, description="Concurrent connections to the backend.")
    on_error: Literal["deny", "allow"] = Field("deny", description="Decision when the backend is "
                                                                   "down or times out.")
    on_ignore: Literal["allow", "deny"] = Field("allow", description="Decision on `ignore` and "
                                                                     "4xx/5xx: allow leaves the "
                                                                     "decision to the broker.")
    cache_ttl: Duration = Field(0.0, description="Cache decisions this long (0 = no cache).")
    ssl: ClientSslOptions = Field(default_factory=ClientSslOptions)

    @model_validator(mode="after")
    def _https(self) -> AuthenticationConfig:
        if self.url.startswith("https://") and not self.ssl.enable:
            raise ValueError("url is https:// but ssl.enable = false; set ssl.enable = true")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return self


class ClusterSsl(Section):
    cacertfile: str = Field(description="Cluster CA: peers must present a certificate it signed.")
    certfile: str = Field(description="This node's certificate.")
    keyfile: str = Field(description="This node's key.")
    password: SecretStr | None = Field(None, description="Key password (or `file://path`).")


class StaticDiscovery(Section):
    seeds: list[HostPort] = Field(default_factory=list, description="Cluster channel addresses "
                                                                    "of other nodes.")


class ClusterConfig(Section):
    enable: bool = Field(False, description="Join a cluster of tlsgate nodes.")
    name: str = Field("tlsgate", description="Cluster name; nodes of another cluster are "
                                             "refused.")
    listen: HostPort = Field("0.0.0.0:5370", description="Cluster channel (always mutual TLS).")
    discovery_strategy: Literal["static"] = Field("static", description="Only `static`.")
    static: StaticDiscovery = Field(default_factory=StaticDiscovery)
    heartbeat_interval: Duration = Field(1.0, description="Heartbeat period.")
    down_after: Duration = Field(5.0, description="A node silent this long is reported down.")
    ssl: ClusterSsl | None = Field(None, description="Mutual TLS of the cluster channel "
                                                     "(required when enabled).")

    @model_validator(mode="after")
    def _ssl(self) -> ClusterConfig:
        if self.enable and self.ssl is None:
            raise ValueError("enable = true needs [cluster.ssl] cacertfile/certfile/keyfile")
        return self


class DashboardSsl(Section):
    enable: bool = Field(False, description="Serve the admin API over HTTPS.")
    certfile: str = Field("", description="Certificate.")
    keyfile: str = Field("", description="Key.")
    password: SecretStr | None = Field(None, description="Key password (or `file://path`).")
    cacertfile: str = Field("", description="Ask for client certificates from this CA.")


class DashboardConfig(Section):
    enable: bool = Field(True, description="Serve the admin API, /metrics and the dashboard.")
    listen: HostPort = Field("127.0.0.1:18083", description="Admin API address.")
    token: SecretStr | None = Field(None, description="Bearer token for the API.")
    token_file: str = Field("", description="File holding the bearer token.")
    ssl: DashboardSsl = Field(default_factory=DashboardSsl)


class DemoBrokerConfig(Section):
    enable: bool = Field(False, description="DEMO ONLY: run an embedded amqtt broker as a child "
                                            "process, so tlsgate works with no broker installed.")
    listen: HostPort = Field("127.0.0.1:11883", description="Where the demo broker listens.")


# --------------------------------------------------------------------------------------------
# The whole file
# --------------------------------------------------------------------------------------------
class Config(Section):
    node: NodeConfig = Field(default_factory=NodeConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    upstreams: dict[str, UpstreamConfig] = Field(
        default_factory=lambda: {"default": UpstreamConfig()},
        description="Brokers to forward to, by name.")
    listeners: Listeners = Field(default_factory=Listeners)
    psk_authentication: PskConfig = Field(default_factory=PskConfig)
    crl_cache: CrlCacheConfig = Field(default_factory=CrlCacheConfig)
    authentication: AuthenticationConfig | None = Field(
        None, description="HTTP authentication of every CONNECT.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    demo_broker: DemoBrokerConfig = Field(default_factory=DemoBrokerConfig,
                                          validation_alias=AliasChoices("demo_broker", "demo"))

    @model_validator(mode="after")
    def _references(self) -> Config:
        for kind, table in (("ssl", self.listeners.ssl), ("gm", self.listeners.gm)):
            for name, lst in table.items():
                if lst.upstream not in self.upstreams:
                    raise ValueError(f"listeners.{kind}.{name}.upstream = {lst.upstream!r} names "
                                     f"no [upstreams.{lst.upstream}] (have: "
                                     f"{', '.join(sorted(self.upstreams)) or 'none'})")
        for name, slst in self.listeners.ssl.items():
            if slst.enable and not slst.ssl_options.certfile \
                    and not self.psk_authentication.enable:
                raise ValueError(f"listeners.ssl.{name}.ssl_options: certfile and keyfile are "
                                 "required (a listener without a certificate serves TLS-PSK "
                                 "clients only: enable [psk_authentication])")
        binds: dict[str, str] = {}
        for kind, table in (("ssl", self.listeners.ssl), ("gm", self.listeners.gm)):
            for name, lst in table.items():
                if not lst.enable:
                    continue
                key = f"listeners.{kind}.{name}"
                if lst.bind in binds and not lst.bind.endswith(":0"):
                    raise ValueError(f"{key}.bind = {lst.bind!r} is also used by {binds[lst.bind]}")
                binds[lst.bind] = key
        if not binds:
            raise ValueError("no listener is configured: add a [listeners.ssl.<name>] table")
        return self

    def listener_mqtt(self, override: MqttOverride) -> MqttConfig:
        return override.apply(self.mqtt)

"""Chinese translations of the configuration reference (``docs/zh/configuration.md``).

``ZH`` maps each id -- a key's path (``listeners.ssl.<name>.ssl_options.verify``) or a table's
path in brackets (``[node]``; ``[]`` is the whole file) -- to ``(English, 中文)``: the English
description the translation was made from, and the translation. The generator
(:mod:`tlsgate.config.reference`) refuses to write the Chinese page while an id has no entry,
while an entry's English differs from the schema's current description (the English changed: the
Chinese is stale), or while an entry names a key that no longer exists.

After changing a description in ``schema.py``: ``tlsgate config-reference --lang zh --todo``
prints the entries to update, with the new English filled in.

Terms used throughout (same as the Chinese guides in ``docs/zh/``): 监听器 listener, 上游
upstream (the broker), 握手 handshake, 客户端证书 client certificate, 证书吊销列表 (CRL),
OCSP 装订 OCSP stapling, 预共享密钥 (PSK), 国密 GM/SM, 工作进程 worker process, 节点 node.
"""

from __future__ import annotations

# Texts shared by several keys (the same English at several paths).
_START = ("Start this listener.", "启动此监听器。")
_BIND = ("Address and port to listen on.", "监听的地址和端口。")
_UPSTREAM = ("Name of the [upstreams.<name>] to forward to.",
             "转发目标 [upstreams.<name>] 的名称。")
_MAXCONN = ("Open connections at most; more are refused (CONNACK 0x03 / 0x97); beyond "
            "max_connections + max(64, 25 %) they are closed at accept, before any TLS work.",
            "同时打开的连接数上限；超出的连接被拒绝（CONNACK 0x03 / 0x97）；超过 max_connections + "
            "max(64, 25 %) 时在 accept 时直接关闭，不做任何 TLS 处理。")
_RATE = ("New connections per second at most (0 = unlimited); more are refused (CONNACK "
         "0x03 / 0x9F).",
         "每秒新建连接数上限（0 = 不限）；超出的连接被拒绝（CONNACK 0x03 / 0x9F）。")
_RULES = ("`allow|deny CIDR|all`, matched in order before the handshake; no match = allow.",
          "`allow|deny CIDR|all`，在握手之前按顺序匹配；都不匹配则允许。")
_PROXY = ("Expect a PROXY v1/v2 header from a load balancer in front.",
          "期望前置负载均衡器发送 PROXY v1/v2 头。")
_PROXY_TRUSTED = ("Peers allowed to send a PROXY header.", "允许发送 PROXY 头的对端地址。")
_PROXY_TIMEOUT = ("Time to receive the PROXY header.", "接收 PROXY 头的时限。")
_BACKLOG = ("Listen backlog.", "监听队列长度（listen backlog）。")
_MQTT_TABLE = ("Per-listener overrides of [mqtt].", "此监听器对 [mqtt] 的覆盖设置。")
_AS_USER = ("Put the client certificate's identity in the CONNECT's user name: cn, dn "
            "(CN=..,OU=..,O=..,L=..,ST=..,C=..), crt (DER bytes), pem (base64 of the DER), md5 "
            "(hex MD5 of the DER).",
            "把客户端证书中的身份写入 CONNECT 的用户名：cn、"
            "dn（CN=..,OU=..,O=..,L=..,ST=..,C=..）、"
            "crt（DER 字节）、pem（DER 的 base64）、md5（DER 的十六进制 MD5）。")
_AS_CLIENTID = ("Same as peer_cert_as_username, for the client id.",
                "与 peer_cert_as_username 相同，但写入客户端 ID（client id）。")
_PSK_AS_USER = ("Put the TLS-PSK identity in the CONNECT's user name.",
                "把 TLS-PSK 身份（identity）写入 CONNECT 的用户名。")
_CONNECT_TIMEOUT = ("Time from the end of the TLS handshake to a complete CONNECT.",
                    "从 TLS 握手结束到收到完整 CONNECT 报文的时限。")
_MAX_CONNECT = ("Largest CONNECT packet accepted (bytes).", "接受的 CONNECT 报文最大长度（字节）。")
_PASSWORD = ("Key password (or `file://path`).", "私钥密码（或 `file://path`）。")
_VERSIONS = ("TLS versions offered.", "提供的 TLS 版本。")
_ENABLE_TLS = ("Use TLS.", "使用 TLS。")
_C_CACERT = ("CA that the server's certificate must chain to; empty = the system's trust store.",
             "服务端证书必须链接到的 CA；为空 = 使用系统信任库。")
_C_CERT = ("Client certificate for mutual TLS.", "双向 TLS 使用的客户端证书。")
_C_KEY = ("Client key for mutual TLS.", "双向 TLS 使用的客户端私钥。")
_C_VERIFY = ("Verify the server's certificate.", "校验服务端证书。")
_C_SNI = ("SNI and the name checked in the server's certificate; empty = the host of the "
          "address/URL; `disable` = no SNI and no host name check.",
          "发送的 SNI 及在服务端证书中核对的名称；为空 = 地址/URL 中的主机名；`disable` = 不发送 "
          "SNI，也不核对主机名。")
_C_CIPHERS = ("OpenSSL suite names; empty = defaults.", "OpenSSL 密码套件名称；为空 = 默认值。")
_C_DEPTH = ("Maximum server chain depth.", "服务端证书链的最大深度。")


def _listener(kind: str) -> dict[str, tuple[str, str]]:
    p = f"listeners.{kind}.<name>"
    return {
        f"{p}.enable": _START, f"{p}.bind": _BIND, f"{p}.upstream": _UPSTREAM,
        f"{p}.max_connections": _MAXCONN, f"{p}.max_conn_rate": _RATE,
        f"{p}.access_rules": _RULES, f"{p}.proxy_protocol": _PROXY,
        f"{p}.proxy_protocol_trusted": _PROXY_TRUSTED,
        f"{p}.proxy_protocol_timeout": _PROXY_TIMEOUT, f"{p}.backlog": _BACKLOG,
        f"[{p}.mqtt]": _MQTT_TABLE,
        f"{p}.mqtt.peer_cert_as_username": _AS_USER,
        f"{p}.mqtt.peer_cert_as_clientid": _AS_CLIENTID,
        f"{p}.mqtt.psk_identity_as_username": _PSK_AS_USER,
        f"{p}.mqtt.connect_timeout": _CONNECT_TIMEOUT,
        f"{p}.mqtt.max_connect_size": _MAX_CONNECT,
    }


def _client_ssl(p: str) -> dict[str, tuple[str, str]]:
    return {
        f"{p}.enable": _ENABLE_TLS, f"{p}.cacertfile": _C_CACERT, f"{p}.certfile": _C_CERT,
        f"{p}.keyfile": _C_KEY, f"{p}.password": _PASSWORD, f"{p}.verify": _C_VERIFY,
        f"{p}.server_name_indication": _C_SNI, f"{p}.versions": _VERSIONS,
        f"{p}.ciphers": _C_CIPHERS, f"{p}.depth": _C_DEPTH,
    }


_SSL = "listeners.ssl.<name>.ssl_options"
_GM = "listeners.gm.<name>.ssl_options"

ZH: dict[str, tuple[str, str]] = {
    # [node]
    "[node]": (
        "This node: its name, where it keeps state, its worker processes, reloads and "
        "shutdown.",
        "本节点：名称、状态保存位置、工作进程、重新加载与停止。"),
    "node.name": (
        "This node's name (logs, admin API, cluster membership). Default: the host name.",
        "本节点的名称（用于日志、管理 API、集群成员）。默认：主机名。"),
    "node.data_dir": (
        "Directory for state kept across restarts: persisted OCSP staples, the CRL cache, bans "
        "(bans.json) and TLS-PSK identities added through the admin API (psk-overlay.json, "
        "mode 0600). Created if missing.",
        "跨重启保存状态的目录：持久化的 OCSP 装订响应、CRL 缓存、封禁列表（bans.json）以及通过"
        "管理 API 添加的 TLS-PSK 身份（psk-overlay.json，权限 0600）。不存在时自动创建。"),
    "node.workers": (
        "Worker processes sharing the listening ports (SO_REUSEPORT). 0 = one per CPU.",
        "共享监听端口的工作进程数（SO_REUSEPORT）。0 = 每个 CPU 一个。"),
    "node.reload_on_change": (
        "Reload when the config file or any certificate, key, CA, CRL or PSK file it names "
        "changes (mtime polling).",
        "配置文件或其引用的任一证书、私钥、CA、CRL、PSK 文件变化时自动重新加载（轮询 mtime）。"),
    "node.reload_check_interval": (
        "How often files are polled when `reload_on_change` is on.",
        "开启 `reload_on_change` 时轮询文件的间隔。"),
    "node.shutdown_timeout": (
        "On SIGTERM: how long live connections may drain before they are closed.",
        "收到 SIGTERM 后，允许现有连接自然结束的时长，超时后关闭。"),
    "node.handshake_batch_window": (
        "When a worker is busy with new connections (more than 4 TLS handshake steps, or steps "
        "taking more than half of this window, within one window), the window's further steps "
        "run together at its end, and while batches stay full the next window batches from its "
        "start: the worker, the clients and the broker then wake once per burst instead of once "
        "per client read (on the hs benchmark 2ms cut the worker's CPU per new connection by "
        "about 40 %). Under light load every step runs at once; under load a step waits at most "
        "this long. 0 turns batching off.",
        "当工作进程忙于处理新连接时（一个时间窗内超过 4 个 TLS 握手步骤，"
        "或步骤耗时超过半个时间窗），该时间窗内其余的步骤在窗末一起处理；"
        "只要批次仍然满，下一个时间窗从开始就批量处理：工作进程、客户端和 broker "
        "每批只唤醒一次，而不是每次客户端读取都唤醒一次（在 hs 基准测试中，"
        "2ms 使每个新连接的工作进程 CPU 降低约 40%）。轻负载时每个步骤立即执行；"
        "负载下每个步骤最多等待该时长。0 = 关闭批处理。"),
    "node.session_ticket_secret_file": (
        "File of at least 32 random bytes the TLS session-ticket keys are derived from, so "
        "that sessions also resume on other nodes given the same file and after a restart "
        "(`head -c 48 /dev/urandom > FILE; chmod 600 FILE`; re-read on reload). Empty: a "
        "random secret per node process.",
        "至少 32 个随机字节的文件，TLS 会话票据密钥由它派生；使用同一文件的其他节点上以及重启之后，"
        "会话同样可以恢复（`head -c 48 /dev/urandom > FILE; chmod 600 FILE`；重新加载时重新读取）。"
        "为空：每个节点进程使用随机密钥。"),
    "node.session_ticket_key_rotation": (
        "Session-ticket keys change at every multiple of this on the clock (the same instant "
        "on every worker and node), so a leaked key exposes at most one period of TLS 1.2 "
        "resumptions; a ticket from the period before still resumes (and the client gets a "
        "fresh one), as does one from the next (made where the clock is a little ahead), an "
        "older one does not (one full handshake). 0 = never.",
        "会话票据密钥在时钟上每到该时长的整数倍时更换（所有 worker 和节点在同一时刻更换），"
        "因此泄露的密钥最多暴露一个周期内的 TLS 1.2 会话恢复；上一周期的票据仍可恢复"
        "（客户端随即获得新票据），下一周期的票据（由时钟稍快的 worker 或节点签发）同样可以恢复，"
        "更早的票据不再能恢复（客户端做一次完整握手）。0 = 从不更换。"),
    # [log]
    "[log]": (
        "Logging: level, format (text or JSON), the per-connection access log, destination.",
        "日志：级别、格式（文本或 JSON）、每连接一行的访问日志、输出位置。"),
    "log.level": ("Log level.", "日志级别。"),
    "log.format": ("Log line format.", "日志行格式。"),
    "log.access_log": (
        "One line per connection when it closes: peer, SNI, TLS version, cipher, identity, "
        "CONNECT client id/user, bytes each way, duration, reason.",
        "每个连接关闭时写一行：对端地址、SNI、TLS 版本、密码套件、身份、"
        "CONNECT 中的客户端 ID/用户名、"
        "双向字节数、持续时间、关闭原因。"),
    "log.file": ("Log file; empty = standard error.", "日志文件；为空 = 标准错误输出。"),
    # [mqtt]
    "[mqtt]": (
        "MQTT handling for every listener (each listener can override these in its own `mqtt` "
        "table): identity mapping into the CONNECT, CONNECT limits.",
        "所有监听器的 MQTT 处理（每个监听器可在自己的 `mqtt` 表中覆盖）：把身份映射进 CONNECT、"
        "CONNECT 的限制。"),
    "mqtt.peer_cert_as_username": _AS_USER,
    "mqtt.peer_cert_as_clientid": _AS_CLIENTID,
    "mqtt.psk_identity_as_username": _PSK_AS_USER,
    "mqtt.connect_timeout": _CONNECT_TIMEOUT,
    "mqtt.max_connect_size": _MAX_CONNECT,
    # [upstreams.<name>]
    "[upstreams.<name>]": ("Brokers to forward to, by name.", "转发目标 Broker，按名称区分。"),
    "upstreams.<name>.address": (
        "The broker's plain MQTT address (or its TLS port with `ssl`).",
        "Broker 的明文 MQTT 地址（配置 `ssl` 时为其 TLS 端口）。"),
    "upstreams.<name>.connect_timeout": ("Time to connect to the broker.", "连接 Broker 的时限。"),
    "upstreams.<name>.proxy_protocol": (
        "Send a PROXY header first; v2 carries the client's TLS details (PP2_TYPE_SSL with CN, "
        "PP2_TYPE_AUTHORITY = SNI, ALPN), like HAProxy's send-proxy-v2-ssl-cn.",
        "先发送 PROXY 头；v2 携带客户端的 TLS 信息（含 CN 的 PP2_TYPE_SSL、"
        "PP2_TYPE_AUTHORITY = SNI、"
        "ALPN），与 HAProxy 的 send-proxy-v2-ssl-cn 相同。"),
    "[upstreams.<name>.ssl]": (
        "Re-encrypt towards the broker.", "到 Broker 的连接再次使用 TLS 加密。"),
    **_client_ssl("upstreams.<name>.ssl"),
    # [listeners.ssl.<name>]
    "[listeners.ssl.<name>]": ("TLS listeners, one table each.", "TLS 监听器，每个一张表。"),
    **_listener("ssl"),
    f"[{_SSL}]": (
        "TLS of a listener: certificate and key, client certificate verification, versions and "
        "suites, CRL checking.",
        "监听器的 TLS：证书与私钥、客户端证书校验、版本与密码套件、CRL 检查。"),
    f"{_SSL}.certfile": (
        "Server certificate (PEM, leaf first, then the chain).",
        "服务端证书（PEM，先叶子证书，后中间证书链）。"),
    f"{_SSL}.keyfile": (
        "Private key (PEM). A world-readable key is a warning.",
        "私钥（PEM）。私钥文件对所有用户可读时给出警告。"),
    f"{_SSL}.password": (
        "Key password, or `file://path` to read it from a file.",
        "私钥密码，或用 `file://path` 从文件读取。"),
    f"{_SSL}.cacertfile": (
        "CA certificates (PEM) that client certificates must chain to.",
        "客户端证书必须链接到的 CA 证书（PEM）。"),
    f"{_SSL}.verify": (
        "`verify_peer` asks for and verifies a client certificate.",
        "`verify_peer` 表示向客户端索取并校验客户端证书。"),
    f"{_SSL}.fail_if_no_peer_cert": (
        "Refuse clients without a certificate (needs verify_peer).",
        "拒绝不提供证书的客户端（需要 verify_peer）。"),
    f"{_SSL}.depth": (
        "Maximum client chain depth (intermediates).",
        "客户端证书链的最大深度（中间证书数）。"),
    f"{_SSL}.versions": _VERSIONS,
    f"{_SSL}.ciphers": (
        "OpenSSL suite names, TLS 1.2 (`ECDHE-...`, `PSK-...`) and TLS 1.3 "
        "(`TLS_AES_128_GCM_SHA256`) mixed; empty = safe defaults (Mozilla intermediate).",
        "OpenSSL 密码套件名称，TLS 1.2（`ECDHE-...`、`PSK-...`）与 "
        "TLS 1.3（`TLS_AES_128_GCM_SHA256`）"
        "可混写；为空 = 安全默认值（Mozilla intermediate）。"),
    f"{_SSL}.honor_cipher_order": ("Server's cipher order wins.", "以服务端的密码套件顺序为准。"),
    f"{_SSL}.groups": (
        "Key exchange groups, most preferred first (OpenSSL names: `X25519MLKEM768`, `X25519`, "
        "`P-256`, ...); empty = OpenSSL's default, which prefers the post-quantum hybrid "
        "X25519MLKEM768. A hybrid handshake costs more CPU and memory per connection (see the "
        "deployment guide's sizing notes).",
        "密钥交换组，按优先顺序排列（OpenSSL 名称：`X25519MLKEM768`、`X25519`、`P-256` 等）；"
        "为空 = OpenSSL 的默认列表，优先使用后量子混合组 X25519MLKEM768。混合组握手每个连接"
        "消耗更多 CPU 和内存（见部署指南中的容量估算）。"),
    f"{_SSL}.handshake_timeout": (
        "Time from TCP accept to a finished TLS handshake.",
        "从接受 TCP 连接到完成 TLS 握手的时限。"),
    f"{_SSL}.partial_chain": (
        "Accept a chain that ends at an intermediate in cacertfile (not only a root).",
        "接受终止于 cacertfile 中某个中间证书（而不只是根证书）的证书链。"),
    f"{_SSL}.verify_peer_ext_key_usage": (
        "Required extended key usage of the client certificate: `clientAuth`, `serverAuth`, or "
        "a dotted OID; empty = not checked.",
        "要求客户端证书具备的扩展密钥用法：`clientAuth`、`serverAuth` 或点分 OID；为空 = 不检查。"),
    f"{_SSL}.reuse_sessions": (
        "TLS session resumption by session ticket; the ticket keys are shared by every worker "
        "of the node and kept across reloads. `false`: no tickets are sent.",
        "通过会话票据恢复 TLS 会话；票据密钥由节点的所有 worker 共享，"
        "并在重新加载后保留。`false`：不发送票据。"),
    f"{_SSL}.session_tickets": (
        "TLS 1.3 session tickets sent after a full handshake (one follows each resumed one). An "
        "MQTT client holds one connection and uses one ticket per reconnect, so 1 suffices; "
        "OpenSSL's default of 2 costs ~35 µs of CPU and ~250 bytes more per connection.",
        "完整握手后发送的 TLS 1.3 会话票据数（每次会话恢复后发送一张）。MQTT 客户端只保持一个连接，"
        "每次重连使用一张票据，因此 1 张足够；"
        "OpenSSL 默认的 2 张每个连接多花约 35 µs CPU 和约 250 字节。"),
    f"{_SSL}.session_lifetime": (
        "How long a session ticket resumes (the lifetime the client is told; at most 7 days, "
        "RFC 8446). A ticket also stops resuming once the ticket keys have rotated twice "
        "since it was made (node.session_ticket_key_rotation). OpenSSL's default is 2 h; MQTT "
        "clients stay "
        "connected for days and reconnect all at once after an outage, when resuming helps "
        "most.",
        "会话票据可用于恢复会话的时长（告知客户端的有效期；最长 7 天，RFC 8446）。"
        "票据签发后票据密钥轮换两次（node.session_ticket_key_rotation）后同样失效。"
        "OpenSSL 默认为 2 小时；MQTT 客户端往往连续在线数天，并在故障后同时重连，"
        "这时会话恢复最有用。"),
    f"{_SSL}.session_ticket_refresh": (
        "Send each TLS 1.3 connection a fresh session ticket before its last one expires "
        "(every third of session_lifetime; also right after a ticket-key rotation when "
        "that comes more often), so a client that loses a connection it held for days still "
        "resumes. ~250 bytes per ticket. Needs reuse_sessions and session_tickets > 0.",
        "在上一张票据过期前（每隔 session_lifetime 的三分之一；"
        "若票据密钥轮换更频繁，则轮换后立即发送），"
        "向每个 TLS 1.3 连接发送一张新的会话票据，使保持连接数天后断开的客户端仍能恢复会话。"
        "每张票据约 250 字节。需要 reuse_sessions 且 session_tickets > 0。"),
    f"{_SSL}.alpn": (
        "ALPN protocols offered, e.g. [\"mqtt\"]; empty = no ALPN.",
        "提供的 ALPN 协议，例如 [\"mqtt\"]；为空 = 不使用 ALPN。"),
    f"{_SSL}.enable_crl_check": (
        "Check client certificates against CRLs (needs verify_peer).",
        "用证书吊销列表（CRL）检查客户端证书（需要 verify_peer）。"),
    f"{_SSL}.crlfile": ("Local CRL files (PEM or DER).", "本地 CRL 文件（PEM 或 DER）。"),
    f"{_SSL}.crl_check_depth": (
        "Check only the leaf, or the whole chain.", "只检查叶子证书，或检查整条证书链。"),
    f"{_SSL}.crl_soft_fail": (
        "Allow a client when no CRL is obtainable (default: refuse).",
        "无法获得 CRL 时仍允许客户端连接（默认：拒绝）。"),
    f"{_SSL}.close_revoked_connections": (
        "Close live connections whose certificate a refreshed CRL revokes.",
        "CRL 更新后，关闭证书已被吊销的现有连接。"),
    f"[{_SSL}.sni]": (
        "Extra certificates chosen by the client's SNI.", "按客户端 SNI 选择的额外证书。"),
    f"{_SSL}.sni.server_name": (
        "Host name the client asks for (SNI); `*.example.com` matches one label.",
        "客户端请求的主机名（SNI）；`*.example.com` 匹配一级子域名。"),
    f"{_SSL}.sni.certfile": (
        "Certificate (leaf first, then chain) for this name.",
        "此主机名使用的证书（先叶子证书，后证书链）。"),
    f"{_SSL}.sni.keyfile": ("Private key for `certfile`.", "`certfile` 对应的私钥。"),
    f"{_SSL}.sni.password": _PASSWORD,
    f"[{_SSL}.ocsp]": (
        "OCSP stapling of the listener's certificates, and optional OCSP checks of client "
        "certificates.",
        "监听器证书的 OCSP 装订，以及可选的客户端证书 OCSP 检查。"),
    f"{_SSL}.ocsp.enable_ocsp_stapling": (
        "Staple a validated OCSP response for the server certificate.",
        "为服务端证书装订经过校验的 OCSP 响应。"),
    f"{_SSL}.ocsp.responder_url": (
        "OCSP responder; default: the certificate's AIA OCSP URL.",
        "OCSP 响应服务器地址；默认：证书 AIA 扩展中的 OCSP URL。"),
    f"{_SSL}.ocsp.issuer_pem": (
        "Issuer certificate of `certfile`; default: found in certfile's chain or cacertfile.",
        "`certfile` 的签发者证书；默认：从 certfile 的证书链或 cacertfile 中查找。"),
    f"{_SSL}.ocsp.refresh_interval": (
        "Refresh at the earlier of this and half-way to the response's nextUpdate.",
        "刷新时间取此值与响应 nextUpdate 剩余时间一半中较早者。"),
    f"{_SSL}.ocsp.refresh_http_timeout": (
        "HTTP timeout of one OCSP fetch.", "单次 OCSP 请求的 HTTP 超时。"),
    f"{_SSL}.ocsp.check_client": (
        "Also check client certificates against their AIA OCSP responder (cached).",
        "同时向客户端证书 AIA 中的 OCSP 服务器查询客户端证书状态（结果缓存）。"),
    # [listeners.gm.<name>]
    "[listeners.gm.<name>]": (
        "国密 (TLCP / RFC 8998) listeners.", "国密监听器（TLCP / RFC 8998）。"),
    **_listener("gm"),
    f"[{_GM}]": (
        "国密 TLS of a GM listener: the SM2 signing and encryption certificate pairs, client "
        "verification, protocols (TLCP, TLS 1.3 with RFC 8998 suites) and suites.",
        "国密监听器的 TLS：SM2 签名证书与加密证书两对、客户端校验、协议（TLCP、使用 RFC 8998 "
        "套件的 TLS 1.3）与密码套件。"),
    f"{_GM}.sign_certfile": (
        "SM2 signing certificate (PEM, leaf first).", "SM2 签名证书（PEM，先叶子证书）。"),
    f"{_GM}.sign_keyfile": ("SM2 signing key (PEM).", "SM2 签名私钥（PEM）。"),
    f"{_GM}.enc_certfile": (
        "SM2 encryption certificate (TLCP's second certificate).",
        "SM2 加密证书（TLCP 的第二张证书）。"),
    f"{_GM}.enc_keyfile": ("SM2 encryption key.", "SM2 加密私钥。"),
    f"{_GM}.password": _PASSWORD,
    f"{_GM}.cacertfile": (
        "SM2 CA that client certificates chain to.", "客户端证书链接到的 SM2 CA。"),
    f"{_GM}.verify": (
        "Ask for and verify a client certificate.", "向客户端索取并校验客户端证书。"),
    f"{_GM}.fail_if_no_peer_cert": (
        "Refuse clients without a certificate.", "拒绝不提供证书的客户端。"),
    f"{_GM}.depth": ("Maximum client chain depth.", "客户端证书链的最大深度。"),
    f"{_GM}.protocols": (
        "TLCP (GB/T 38636-2020) and/or TLS 1.3 with RFC 8998 suites.",
        "TLCP（GB/T 38636-2020）和/或使用 RFC 8998 套件的 TLS 1.3。"),
    f"{_GM}.ciphers": (
        "TLCP: ECC-SM2-SM4-GCM-SM3, ECDHE-SM2-SM4-GCM-SM3, ECC-SM2-SM4-CBC-SM3, "
        "ECDHE-SM2-SM4-CBC-SM3; TLS 1.3: TLS_SM4_GCM_SM3, TLS_SM4_CCM_SM3; empty = all.",
        "TLCP：ECC-SM2-SM4-GCM-SM3、ECDHE-SM2-SM4-GCM-SM3、ECC-SM2-SM4-CBC-SM3、"
        "ECDHE-SM2-SM4-CBC-SM3；TLS 1.3：TLS_SM4_GCM_SM3、TLS_SM4_CCM_SM3；为空 = 全部。"),
    f"{_GM}.handshake_timeout": ("Time to a finished handshake.", "完成握手的时限。"),
    # [psk_authentication]
    "[psk_authentication]": (
        "TLS-PSK: clients that authenticate with a pre-shared key instead of a certificate, on "
        "every TLS listener.",
        "TLS-PSK：客户端用预共享密钥而不是证书认证，对所有 TLS 监听器生效。"),
    "psk_authentication.enable": ("Accept TLS-PSK clients.", "接受 TLS-PSK 客户端。"),
    "psk_authentication.init_file": (
        "Identities, one `identity<separator>secret` a line; `#` comments and blank lines "
        "allowed.",
        "身份列表，每行一个 `identity<separator>secret`；允许 `#` 注释和空行。"),
    "psk_authentication.separator": (
        "Separator between identity and secret.", "身份与密钥之间的分隔符。"),
    "psk_authentication.format": (
        "`emqx`: the secret is used as raw bytes (as EMQX does); `hex`: the secret is hex "
        "(mosquitto's psk_file).",
        "`emqx`：密钥按原始字节使用（与 EMQX 相同）；"
        "`hex`：密钥为十六进制（mosquitto 的 psk_file）。"),
    # [crl_cache]
    "[crl_cache]": (
        "How CRLs fetched from distribution points are cached and refreshed (for listeners "
        "with `enable_crl_check = true`).",
        "从分发点（CRL Distribution Points）下载的 CRL 如何缓存与刷新（用于 "
        "`enable_crl_check = true` 的监听器）。"),
    "crl_cache.refresh_interval": (
        "Re-fetch each cached CRL this often.", "每个已缓存 CRL 的重新下载间隔。"),
    "crl_cache.http_timeout": ("HTTP timeout of one CRL fetch.", "单次 CRL 下载的 HTTP 超时。"),
    "crl_cache.capacity": (
        "CRL URLs cached at most (least recently used evicted).",
        "最多缓存的 CRL URL 数（淘汰最久未使用的）。"),
    "crl_cache.failure_threshold": (
        "After a failed fetch, wait this long before trying the URL again.",
        "下载失败后，等待这么久再重试该 URL。"),
    # [authentication]
    "[authentication]": (
        "HTTP authentication of every CONNECT.", "对每个 CONNECT 进行 HTTP 认证。"),
    "authentication.enable": (
        "Call the authentication backend for every CONNECT.", "对每个 CONNECT 调用认证服务。"),
    "authentication.backend": (
        "Only `http` (EMQX's HTTP contract).", "只支持 `http`（EMQX 的 HTTP 认证约定）。"),
    "authentication.mechanism": ("EMQX compatibility; fixed.", "为兼容 EMQX 而保留；取值固定。"),
    "authentication.method": ("HTTP method.", "HTTP 请求方法。"),
    "authentication.url": (
        "Authentication endpoint, http:// or https://.", "认证服务地址，http:// 或 https://。"),
    "authentication.headers": ("Request headers.", "请求头。"),
    "authentication.body": (
        "Request body (JSON for post, query string for get) with placeholders ${username} "
        "${password} ${clientid} ${peerhost} ${cert_common_name} ${cert_subject} "
        "${psk_identity}.",
        "请求体（post 时为 JSON，get 时为查询字符串），可用占位符 ${username} ${password} "
        "${clientid} ${peerhost} ${cert_common_name} ${cert_subject} ${psk_identity}。"),
    "authentication.request_timeout": ("Time for one request.", "单次请求的时限。"),
    "authentication.pool_size": (
        "Concurrent connections to the backend.", "到认证服务的并发连接数。"),
    "authentication.on_error": (
        "Decision when the backend is down or times out.", "认证服务不可用或超时时的决定。"),
    "authentication.on_ignore": (
        "Decision on `ignore` and 4xx/5xx: allow leaves the decision to the broker.",
        "认证服务返回 `ignore` 或 4xx/5xx 时的决定：allow 表示交给 Broker 决定。"),
    "authentication.cache_ttl": (
        "Cache decisions this long (0 = no cache).", "认证结果缓存时长（0 = 不缓存）。"),
    "[authentication.ssl]": (
        "TLS towards the HTTP authentication server.", "到 HTTP 认证服务的 TLS。"),
    **_client_ssl("authentication.ssl"),
    # [cluster]
    "[cluster]": ("Several tlsgate nodes as one service.", "多个 tlsgate 节点组成一个服务。"),
    "cluster.enable": ("Join a cluster of tlsgate nodes.", "加入 tlsgate 节点集群。"),
    "cluster.name": (
        "Cluster name; nodes of another cluster are refused.", "集群名称；拒绝其他集群的节点。"),
    "cluster.listen": (
        "Cluster channel (always mutual TLS).", "集群通道地址（始终使用双向 TLS）。"),
    "cluster.discovery_strategy": ("Only `static`.", "只支持 `static`。"),
    "cluster.heartbeat_interval": ("Heartbeat period.", "心跳周期。"),
    "cluster.down_after": (
        "A node silent this long is reported down.", "节点沉默超过此时长即报告为下线。"),
    "[cluster.static]": (
        "Static discovery: the other nodes' cluster channel addresses.",
        "静态发现：其他节点的集群通道地址。"),
    "cluster.static.seeds": (
        "Cluster channel addresses of other nodes.", "其他节点的集群通道地址。"),
    "[cluster.ssl]": (
        "Mutual TLS of the cluster channel (required when enabled).",
        "集群通道的双向 TLS（启用集群时必填）。"),
    "cluster.ssl.cacertfile": (
        "Cluster CA: peers must present a certificate it signed.",
        "集群 CA：对端必须出示由它签发的证书。"),
    "cluster.ssl.certfile": ("This node's certificate.", "本节点的证书。"),
    "cluster.ssl.keyfile": ("This node's key.", "本节点的私钥。"),
    "cluster.ssl.password": _PASSWORD,
    # [dashboard]
    "[dashboard]": (
        "The admin HTTP API, `/metrics` and the dashboard page (served by the node process).",
        "管理 HTTP API、`/metrics` 与 Dashboard 页面（由节点进程提供）。"),
    "dashboard.enable": (
        "Serve the admin API, /metrics and the dashboard.",
        "提供管理 API、/metrics 与 Dashboard。"),
    "dashboard.listen": ("Admin API address.", "管理 API 监听地址。"),
    "dashboard.token": ("Bearer token for the API.", "访问 API 的 Bearer 令牌。"),
    "dashboard.token_file": ("File holding the bearer token.", "保存 Bearer 令牌的文件。"),
    "[dashboard.ssl]": ("HTTPS for the admin API.", "管理 API 的 HTTPS。"),
    "dashboard.ssl.enable": (
        "Serve the admin API over HTTPS.", "通过 HTTPS 提供管理 API。"),
    "dashboard.ssl.certfile": ("Certificate.", "证书。"),
    "dashboard.ssl.keyfile": ("Key.", "私钥。"),
    "dashboard.ssl.password": _PASSWORD,
    "dashboard.ssl.cacertfile": (
        "Ask for client certificates from this CA.", "要求客户端出示由此 CA 签发的证书。"),
    # [demo_broker]
    "[demo_broker]": (
        "DEMO ONLY. The embedded broker the no-config demo (`tlsgate serve` without `-c`) "
        "starts.",
        "仅用于演示。无配置演示模式（不带 `-c` 的 `tlsgate serve`）启动的内嵌 Broker。"),
    "demo_broker.enable": (
        "DEMO ONLY: run an embedded amqtt broker as a child process, so tlsgate works with no "
        "broker installed.",
        "仅用于演示：以子进程运行内嵌的 amqtt Broker，使 tlsgate 在未安装 Broker 时也能运行。"),
    "demo_broker.listen": ("Where the demo broker listens.", "演示 Broker 的监听地址。"),
    # the whole file
    "[]": (
        "Checks across tables, made once the whole file is read.",
        "读完整个文件后进行的跨表检查。"),
}

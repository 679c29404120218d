#!/bin/sh
# Start tlsgate the way ../shared/bench/compare.sh expects a candidate: TLS on 127.0.0.1:$CAND_PORT
# with $BENCH_CERTS/server.crt + server.key, plain MQTT to 127.0.0.1:1883, one worker, the full
# product in the path (MQTT gate, access log, metrics counters). EXTRA_SSL: more lines for the
# listener's [ssl_options] table (e.g. a CRL configuration), EXTRA_NODE: more lines for [node]
# (e.g. handshake_batch_window = "0"), WORKERS, ACCESS_LOG.
#   ../shared/bench/compare.sh -- benchmarks/serve-for-bench.sh
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
work=${BENCH_WORK:-${TMPDIR:-/tmp}/tlsgate-bench}/tlsgate
mkdir -p "$work"
cat > "$work/bench.toml" <<TOML
[node]
name = "bench"
workers = ${WORKERS:-1}
data_dir = "$work/data"
${EXTRA_NODE:-}
[log]
access_log = ${ACCESS_LOG:-true}
file = "$work/tlsgate.log"
[upstreams.default]
address = "127.0.0.1:1883"
[listeners.ssl.bench]
bind = "127.0.0.1:${CAND_PORT:-18005}"
max_connections = 1000000
[listeners.ssl.bench.ssl_options]
certfile = "${BENCH_CERTS}/server.crt"
keyfile = "${BENCH_CERTS}/server.key"
${EXTRA_SSL:-}
[dashboard]
enable = false
TOML
exec "${PYTHON:-$here/.venv/bin/python}" -m tlsgate serve -c "$work/bench.toml"

#!/bin/bash
# openssl_generations.sh [METRIC...]: the same tlsgate code on two OpenSSL generations, A/B.
#
# tlsgate runs on the OpenSSL that the `cryptography` wheel bundles (4.x today); HAProxy, nginx
# and stunnel here link Debian 12's OpenSSL 3.0. OpenSSL 3.2 rebuilt the record layer, and that
# changed what a connection costs. This script makes a second virtualenv (once, under
# $BENCH_WORK) with cryptography 41.0.7, the last wheel with a pre-3.2 OpenSSL (3.1.4), plus
# pyOpenSSL 25.0.0 and tlsgate's other dependencies, and runs benchmarks/quick.sh (one worker on
# CPU 0, the load on CPU 1) alternately on both, REPS times (default 2). METRIC: as quick.sh
# (default: idle hs). benchmarks/openssl31/sitecustomize.py fills in the few bindings the old
# versions lack; tlsgate itself is the working tree, unchanged.
#
#   benchmarks/openssl_generations.sh idle hs
#   PYTHON=$(benchmarks/openssl_generations.sh --python) ../shared/bench/compare.sh -- \
#       benchmarks/serve-for-bench.sh        # the full side-by-side table on OpenSSL 3.1.4
#
# A measurement only: OpenSSL 3.1 is past its end of life, tlsgate does not support running on it.
set -eu
H=$(cd "$(dirname "$0")/.." && pwd)
B=${BENCH_WORK:-${TMPDIR:-/tmp}/tlsgate-bench}
V=$B/venv-openssl31
W=$B/python-openssl31
mkdir -p "$B"
if [ ! -x "$V/bin/python" ] || ! "$V/bin/python" -c "import OpenSSL, uvloop, pydantic" 2>/dev/null; then
  base=$("$H/.venv/bin/python" -c 'import sys; print(sys._base_executable)')
  "$base" -m venv "$V" >&2
  "$V/bin/pip" install -q "cryptography==41.0.7" "pyOpenSSL==25.0.0" cffi uvloop click pydantic \
    aiohttp prometheus-client tongsuopy >&2
fi
cat > "$W" <<SH
#!/bin/sh
PYTHONPATH="$H/benchmarks/openssl31:$H" exec "$V/bin/python" "\$@"
SH
chmod +x "$W"
if [ "${1:-}" = "--python" ]; then echo "$W"; exit 0; fi

ver() { "$1" -c 'from OpenSSL import SSL; print(SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode().split()[1])'; }
new=$(ver "$H/.venv/bin/python")
old=$(ver "$W")
for _ in $(seq "${REPS:-2}"); do
  for py in "$H/.venv/bin/python" "$W"; do
    label=$new; [ "$py" = "$W" ] && label=$old
    PYTHON=$py "$H/benchmarks/quick.sh" "${@:-idle hs}" | awk -v l="$label" -v n="${IDLE_N:-5000}" '
      { extra = "" }
      /proxy_rss_delta_kib=/ { match($0, /proxy_rss_delta_kib=[0-9]+/)
        extra = sprintf(" kib_per_idle_conn=%.2f", substr($0, RSTART + 20, RLENGTH - 20) / n) }
      { print "openssl=" l " " $0 extra }'
  done
done

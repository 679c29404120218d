#!/bin/bash
# mtls.sh [RUNS]: tlsgate's CPU per new *mutual*-TLS connection (the client presents a
# certificate), which compare.sh's load tools do not measure (hsload sends none).
#
# Starts mosquitto (1883, if not running) and tlsgate (benchmarks/serve-for-bench.sh with a
# verify_peer listener: cacertfile = the bench CA, fail_if_no_peer_cert), pins the worker to
# CPU 0, and runs 4 `openssl s_time -new` clients with a client certificate on CPU 1 for DUR
# seconds. Prints connections and the worker's CPU (utime+stime) per connection. The client
# sends no CONNECT (s_time writes an HTTP request, which the MQTT gate refuses), so this is
# accept + full TLS 1.3 handshake with client-certificate verification + identity parsing +
# close. PYTHON selects the interpreter (e.g. a wrapper running another checkout, for A/B);
# MTLS_EXTRA adds [ssl_options] lines (e.g. the CRL check:
#   MTLS_EXTRA='enable_crl_check = true
#   crlfile = ["/tmp/tlsgate-bench/certs/ca.crl"]' benchmarks/mtls.sh 3).
set -u
H=$(cd "$(dirname "$0")/.." && pwd)
B=${BENCH_WORK:-${TMPDIR:-/tmp}/tlsgate-bench}
export BENCH_CERTS=$B/certs CAND_PORT=${CAND_PORT:-18005}
D=${DUR:-6}
[ -f "$BENCH_CERTS/server.crt" ] || "$H/../shared/bench/gen-certs.sh" "$BENCH_CERTS" >/dev/null 2>&1
if [ ! -f "$BENCH_CERTS/bench-client.crt" ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out "$BENCH_CERTS/bench-client.key"
  openssl req -new -key "$BENCH_CERTS/bench-client.key" -subj "/CN=bench-client/O=tlsgate bench" \
    -out "$BENCH_CERTS/bench-client.csr"
  printf "extendedKeyUsage=clientAuth\n" > "$BENCH_CERTS/bench-client.ext"
  openssl x509 -req -in "$BENCH_CERTS/bench-client.csr" -CA "$BENCH_CERTS/ca.crt" \
    -CAkey "$BENCH_CERTS/ca.key" -CAcreateserial -days 365 -extfile "$BENCH_CERTS/bench-client.ext" \
    -out "$BENCH_CERTS/bench-client.crt" 2>/dev/null
fi
export EXTRA_SSL="cacertfile = \"$BENCH_CERTS/ca.crt\"
verify = \"verify_peer\"
fail_if_no_peer_cert = true
${MTLS_EXTRA:-}"
own_broker=""
if ! ss -ltnH "sport = :1883" | grep -q .; then mosquitto -p 1883 >/dev/null 2>&1 & own_broker=$!; sleep 0.5; fi
LOG=$B/tlsgate/tlsgate.log
for run in $(seq "${1:-1}"); do
  "$H/benchmarks/serve-for-bench.sh" >/dev/null 2>&1 &
  served=$!
  for _ in $(seq 100); do ss -ltnH "sport = :$CAND_PORT" | grep -q . && break; sleep 0.1; done
  sleep 0.5
  W=$(ss -ltnpH "sport = :$CAND_PORT" | grep -o 'pid=[0-9]*' | cut -d= -f2 | head -1)
  taskset -a -p -c 0 "$W" >/dev/null
  n0=$(grep -c "connection closed" "$LOG" 2>/dev/null); n0=${n0:-0}
  c0=$(awk '{print $14+$15}' "/proc/$W/stat")
  for _ in 1 2 3 4; do
    taskset -c 1 timeout $((D + 2)) openssl s_time -connect "127.0.0.1:$CAND_PORT" -new \
      -cert "$BENCH_CERTS/bench-client.crt" -key "$BENCH_CERTS/bench-client.key" \
      -CAfile "$BENCH_CERTS/ca.crt" -time "$D" >/dev/null 2>&1 &
  done
  wait_until=$((SECONDS + D + 2))
  while [ $SECONDS -lt $wait_until ] && pgrep -f "s_time -connect 127.0.0.1:$CAND_PORT" >/dev/null; do sleep 0.2; done
  c1=$(awk '{print $14+$15}' "/proc/$W/stat")
  sleep 1.5  # the access log is written in batches
  n1=$(grep -c "connection closed" "$LOG")
  tck=$(getconf CLK_TCK)
  awk -v c=$((c1 - c0)) -v n=$((n1 - n0)) -v t="$tck" 'BEGIN {
    printf "mtls run: connections=%d proxy_us_per_conn=%.1f\n", n, n ? c / t * 1e6 / n : 0 }'
  pkill -f "tlsgate serve -c $B/tlsgate/bench.toml"; wait "$served" 2>/dev/null
done
[ -n "$own_broker" ] && kill "$own_broker" 2>/dev/null

#!/bin/bash
# peer_profile.sh METRIC [PEER]: where the CPU of one operation goes, tlsgate beside a C proxy.
#
# compare.sh says how much more tlsgate costs than a peer; this says in which code. It runs the
# same load (hs | msg | bulk, as quick.sh) against PEER (nginx, default, or haproxy, stunnel;
# ../shared/bench/start-targets.sh starts them if they are not running) and against tlsgate
# (benchmarks/serve-for-bench.sh), each proxy pinned to CPU 0 and the load and broker to CPU 1,
# records each proxy with `perf record` for the middle of the run, and prints the proxy's cost
# per operation split by library:
#   openssl  libssl/libcrypto (tlsgate: cryptography's _rust.abi3.so, which bundles OpenSSL)
#   kernel   system calls, TCP/IP, and interrupt work accounted to the proxy
#   libc     malloc/free, memcpy
#   python   the interpreter (libpython)   uvloop  libuv + uvloop's Cython   cffi  cffi + _relayc
#   own      the proxy's own binary and modules (nginx, ngx_*, haproxy, stunnel)
# Units: µs per connection (hs), µs per message (msg), ns per payload byte (bulk).
# perf samples on-CPU time only, and sampling has ~2 % noise; read the groups, not the decimals.
#
#   benchmarks/peer_profile.sh hs            # the per-connection breakdown in the closing note
#   benchmarks/peer_profile.sh bulk haproxy
# SERVE: profile another candidate instead of tlsgate, as in quick.sh, e.g.
#   SERVE=".venv/bin/python benchmarks/bare_forwarder.py" benchmarks/peer_profile.sh hs
set -u
H=$(cd "$(dirname "$0")/.." && pwd)
S=$H/../shared/bench
B=${BENCH_WORK:-${TMPDIR:-/tmp}/tlsgate-bench}
BIN=$B/bin
export BENCH_CERTS=$B/certs CAND_PORT=${CAND_PORT:-18005}
M=${1:?usage: peer_profile.sh hs|msg|bulk [nginx|haproxy|stunnel]}
PEER=${2:-nginx}
D=${DUR:-10}
case $PEER in haproxy) PORT=18001 ;; nginx) PORT=18002 ;; stunnel) PORT=18003 ;;
  *) echo "peer_profile: unknown peer $PEER" >&2; exit 2 ;; esac
command -v perf >/dev/null || { echo "peer_profile: needs perf (apt install linux-perf)" >&2; exit 2; }
[ -x "$BIN/hsload" ] || "$S/loadgen/build.sh" >/dev/null
[ -f "$BENCH_CERTS/server.crt" ] || "$S/gen-certs.sh" "$BENCH_CERTS" >/dev/null 2>&1

pids_on() { ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | paste -sd,; }
started_targets=""
if [ -z "$(pids_on "$PORT")" ]; then
  "$S/start-targets.sh" "$B" >/dev/null || exit 1
  started_targets=1
fi
${SERVE:-"$H/benchmarks/serve-for-bench.sh"} >/dev/null 2>&1 &
served=$!
cleanup() {
  kill "$served" 2>/dev/null; wait "$served" 2>/dev/null
  [ -n "$started_targets" ] && "$S/stop-targets.sh" "$B" >/dev/null
}
trap cleanup EXIT
for _ in $(seq 100); do [ -n "$(pids_on "$CAND_PORT")" ] && break; sleep 0.1; done
sleep 0.5
BROKER=$(pids_on 1883 | cut -d, -f1)
taskset -a -p -c 1 "$BROKER" >/dev/null

run_one() { # label port -> prints one line
  local label=$1 port=$2 pids out data field unit
  pids=$(pids_on "$port")
  for p in ${pids//,/ }; do taskset -a -p -c 0 "$p" >/dev/null; done
  out=$(mktemp) data=$(mktemp)
  case $M in
    hs) taskset -c 1 env GOMAXPROCS=1 "$BIN/hsload" -p "$port" -c 50 -d "$D" -w 1 -src 4 \
          -mon-proxy "$pids" -mon-broker "$BROKER" >"$out" 2>&1 &
        field=proxy_us_per_op unit="µs/conn" ;;
    msg) taskset -c 1 "$BIN/mqload" -m pub -p "$port" -P 8 -s 100 -d "$D" -w 1 \
          --mon-proxy "$pids" --mon-broker "$BROKER" >"$out" 2>&1 &
        field=proxy_us_per_msg unit="µs/msg" ;;
    bulk) taskset -c 1 "$BIN/mqload" -m pub -p "$port" -P 4 -s 65536 -d "$D" -w 1 \
          --mon-proxy "$pids" --mon-broker "$BROKER" >"$out" 2>&1 &
        field=proxy_ns_per_byte unit="ns/B" ;;
    *) echo "peer_profile: unknown metric $M (hs | msg | bulk)" >&2; exit 2 ;;
  esac
  local load=$!
  sleep 2
  perf record -q -o "$data" -p "$pids" -- sleep $((D - 3)) >/dev/null 2>&1
  wait "$load"
  local cost
  cost=$(grep -oE "$field=[0-9.]+" "$out" | tail -1 | cut -d= -f2)
  [ -n "$cost" ] || { echo "peer_profile: no $field from the load tool:" >&2; tail -3 "$out" >&2; exit 1; }
  perf report -i "$data" --sort dso --stdio 2>/dev/null | awk -v label="$label" -v cost="$cost" -v unit="$unit" '
    /^#/ || NF < 2 { next }
    { pct = $1; sub(/%/, "", pct); dso = $2
      if (dso ~ /libcrypto|libssl|_rust\.abi3/) g = "openssl"
      else if (dso ~ /kernel/) g = "kernel"
      else if (dso ~ /^libc\.so|^libc-/) g = "libc"
      else if (dso ~ /libpython|^python3/) g = "python"
      else if (dso ~ /^loop\.cpython/) g = "uvloop"
      else if (dso ~ /_cffi_backend|_relayc/) g = "cffi"
      else if (dso ~ /^nginx|^ngx_|^haproxy|^stunnel/) g = "own"
      else g = "other"
      share[g] += pct }
    END {
      line = sprintf("%-9s %9.3f %-7s", label, cost, unit)
      n = split("openssl kernel libc python uvloop cffi own other", order, " ")
      for (i = 1; i <= n; i++) line = line sprintf(" %s=%.3f", order[i], cost * share[order[i]] / 100)
      print line }'
  rm -f "$out" "$data"
}
echo "# $M: proxy cost per operation by library (perf, $((D - 3)) s of a $D s run; proxy on CPU 0)"
run_one "$PEER" "$PORT"
run_one tlsgate "$CAND_PORT"

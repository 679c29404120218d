#!/bin/bash
# quick.sh METRIC... : the proxy's own CPU per operation, fast, for iterating on the hot path.
#
# Starts mosquitto (1883, if not running) and tlsgate (benchmarks/serve-for-bench.sh), pins the
# worker to CPU 0 and the load to CPU 1, and runs the harness's load tools for a few seconds.
# Prints the tools' result line with proxy_us_per_conn / proxy_us_per_msg / proxy_ns_per_byte
# (CPU time of the tlsgate worker, so other load on the machine inflates it less than wall time).
# Not a substitute for ../shared/bench/compare.sh (same run, peers side by side), which is what
# the notes quote. METRIC: hs | hs_resume | msg | bulk | lat | idle (default: hs msg bulk).
# SERVE: run another candidate instead (benchmarks/bare_forwarder.py: the engine without the gate).
set -u
H=$(cd "$(dirname "$0")/.." && pwd)
B=${BENCH_WORK:-${TMPDIR:-/tmp}/tlsgate-bench}
BIN=$B/bin
export BENCH_CERTS=$B/certs CAND_PORT=${CAND_PORT:-18005}
[ -x "$BIN/hsload" ] || "$H/../shared/bench/loadgen/build.sh" >/dev/null
[ -f "$BENCH_CERTS/server.crt" ] || "$H/../shared/bench/gen-certs.sh" "$BENCH_CERTS" >/dev/null 2>&1
own_broker=""
if ! ss -ltnH "sport = :1883" | grep -q .; then
  mosquitto -p 1883 >/dev/null 2>&1 & own_broker=$!
  sleep 0.5
fi
${SERVE:-"$H/benchmarks/serve-for-bench.sh"} >/dev/null 2>&1 &
served=$!
for _ in $(seq 100); do ss -ltnH "sport = :$CAND_PORT" | grep -q . && break; sleep 0.1; done
sleep 0.5
W=$(ss -ltnpH "sport = :$CAND_PORT" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | paste -sd,)
B_PID=$(ss -ltnpH "sport = :1883" | grep -o 'pid=[0-9]*' | cut -d= -f2 | head -1)
for p in ${W//,/ }; do taskset -a -p -c 0 "$p" >/dev/null; done
taskset -a -p -c 1 "$B_PID" >/dev/null
MON="--mon-proxy $W --mon-broker $B_PID"
D=${DUR:-4}
for m in ${*:-hs msg bulk}; do
  case $m in
    hs) taskset -c 1 env GOMAXPROCS=1 "$BIN/hsload" -p "$CAND_PORT" -c ${CONC:-50} -d "$D" -w 1 -src 4 -mon-proxy "$W" -mon-broker "$B_PID" ;;
    hs_resume) taskset -c 1 env GOMAXPROCS=1 "$BIN/hsload" -p "$CAND_PORT" -resume -c ${CONC:-50} -d "$D" -w 1 -src 4 -mon-proxy "$W" -mon-broker "$B_PID" ;;
    msg) taskset -c 1 "$BIN/mqload" -m pub -p "$CAND_PORT" -P 8 -s 100 -d "$D" -w 1 $MON ;;
    bulk) taskset -c 1 "$BIN/mqload" -m pub -p "$CAND_PORT" -P 4 -s 65536 -d "$D" -w 1 $MON ;;
    lat) taskset -c 1 "$BIN/mqload" -m lat -p "$CAND_PORT" -s 100 --rate 1000 --samples 3000 $MON ;;
    idle) taskset -c 1 "$BIN/mqload" -m idle -p "$CAND_PORT" -n "${IDLE_N:-5000}" -c 100 --hold 4 --src 8 $MON ;;
  esac 2>&1 | grep -E "^result" | tr ' ' '\n' | grep -E "^(mode|rate|msgs_per_s|MBps|proxy_us_per|proxy_ns_per|proxy_cpu|kib|rss|p50|foreign|done|fails|held|proxy_rss)" | paste -sd' '
done
pkill -f "tlsgate serve -c $B/tlsgate/bench.toml" 2>/dev/null
kill "$served" 2>/dev/null
[ -n "$own_broker" ] && kill "$own_broker" 2>/dev/null
sleep 0.5

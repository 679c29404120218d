#!/bin/bash
# workers_scaling.sh: handshakes per worker-CPU-second with workers = 1 and workers = 2.
#
# On a 2-core machine the load generator needs a core too, so "2 workers do 1.8x the
# handshakes of 1" cannot be shown as raw throughput here. What decides the scaling is whether
# a handshake costs a worker the same CPU when two workers share the port (no lock, no shared
# state on the hot path, SO_REUSEPORT spreading connections): this prints, for each setting,
# connections/s, the workers' total CPU and the CPU per connection. Equal CPU per connection =
# linear scaling given the cores. Nothing is pinned (the workers need both cores).
set -u
H=$(cd "$(dirname "$0")/.." && pwd)
B=${BENCH_WORK:-${TMPDIR:-/tmp}/tlsgate-bench}
export BENCH_CERTS=$B/certs CAND_PORT=${CAND_PORT:-18005}
[ -x "$B/bin/hsload" ] || "$H/../shared/bench/loadgen/build.sh" >/dev/null
own_broker=""
if ! ss -ltnH "sport = :1883" | grep -q .; then mosquitto -p 1883 >/dev/null 2>&1 & own_broker=$!; sleep 0.5; fi
for w in 1 2; do
  WORKERS=$w "$H/benchmarks/serve-for-bench.sh" >/dev/null 2>&1 &
  for _ in $(seq 100); do ss -ltnH "sport = :$CAND_PORT" | grep -q . && break; sleep 0.1; done
  sleep 1.5
  P=$(ss -ltnpH "sport = :$CAND_PORT" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | paste -sd,)
  echo -n "workers=$w pids=$P: "
  env GOMAXPROCS=2 "$B/bin/hsload" -p "$CAND_PORT" -c 100 -d "${DUR:-6}" -w 1 -src 4 -mon-proxy "$P" \
    | grep -o "rate=[0-9.]*\|proxy_cpu=[0-9.]*\|proxy_us_per_op=[0-9.]*" | paste -sd' '
  pkill -f "tlsgate serve -c $B/tlsgate/bench.toml"; sleep 1
done
[ -n "$own_broker" ] && kill "$own_broker" 2>/dev/null

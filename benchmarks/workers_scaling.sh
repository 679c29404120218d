#!/bin/bash
# workers_scaling.sh: handshakes per second with workers = 1 and workers = 2.
#
# On a 2-core machine the load generator needs CPU too, so with whole cores "2 workers do 1.8x
# the handshakes of 1" cannot show as raw throughput. Two ways to look at it:
#
#   benchmarks/workers_scaling.sh            nothing pinned, nothing capped: prints connections/s,
#                                            the workers' total CPU and CPU per connection. Equal
#                                            CPU per connection = linear scaling given the cores.
#   QUOTA=40 benchmarks/workers_scaling.sh   a direct throughput measurement: worker i is pinned
#                                            to CPU i and capped at QUOTA % of that core (its own
#                                            cgroup v1 cpu controller, CFS quota), so the workers,
#                                            not the load generator, run out of CPU; the load
#                                            generator and the broker get the rest of both cores.
#                                            workers=2 then has twice the CPU of workers=1 on two
#                                            cores, and the ratio of the rates is the scaling.
#                                            Needs root and /sys/fs/cgroup/cpu.
set -u
H=$(cd "$(dirname "$0")/.." && pwd)
B=${BENCH_WORK:-${TMPDIR:-/tmp}/tlsgate-bench}
export BENCH_CERTS=$B/certs CAND_PORT=${CAND_PORT:-18005}
QUOTA=${QUOTA:-}
CG=/sys/fs/cgroup/cpu
[ -x "$B/bin/hsload" ] || "$H/../shared/bench/loadgen/build.sh" >/dev/null
own_broker=""
if ! ss -ltnH "sport = :1883" | grep -q .; then mosquitto -p 1883 >/dev/null 2>&1 & own_broker=$!; sleep 0.5; fi
cap() { # cap PID INDEX: pin to CPU INDEX, own cgroup with QUOTA % of a core
  local d=$CG/tlsgate-scaling-w$2
  mkdir -p "$d" && echo 100000 > "$d/cpu.cfs_period_us" && echo $((QUOTA * 1000)) > "$d/cpu.cfs_quota_us" \
    && echo "$1" > "$d/cgroup.procs" && taskset -a -p -c "$2" "$1" >/dev/null \
    || { echo "cannot cap worker $1 (need root and $CG)" >&2; exit 1; }
}
uncap() { for d in "$CG"/tlsgate-scaling-w*; do [ -d "$d" ] || continue
  while read -r p; do echo "$p" > "$CG/cgroup.procs"; done < "$d/cgroup.procs"; rmdir "$d"; done 2>/dev/null; }
declare -A RATE
for w in 1 2; do
  WORKERS=$w "$H/benchmarks/serve-for-bench.sh" >/dev/null 2>&1 &
  for _ in $(seq 100); do ss -ltnH "sport = :$CAND_PORT" | grep -q . && break; sleep 0.1; done
  sleep 1.5
  P=$(ss -ltnpH "sport = :$CAND_PORT" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -un | paste -sd,)
  if [ -n "$QUOTA" ]; then i=0; for p in ${P//,/ }; do cap "$p" $i; i=$((i + 1)); done; fi
  echo -n "workers=$w pids=$P${QUOTA:+ cap=$QUOTA%/worker}: "
  line=$(env GOMAXPROCS=2 "$B/bin/hsload" -p "$CAND_PORT" -c 100 -d "${DUR:-6}" -w 1 -src 4 -mon-proxy "$P" \
    | grep -o "rate=[0-9.]*\|proxy_cpu=[0-9.]*\|proxy_us_per_op=[0-9.]*\|client_cpu=[0-9.]*\|fails=[0-9]*" | paste -sd' ')
  echo "$line"
  RATE[$w]=$(echo "$line" | grep -o "rate=[0-9.]*" | cut -d= -f2)
  case $line in *fails=0*) ;; *) echo "  connections failed: see $B/tlsgate/tlsgate.log; no ratio" >&2; RATE[1]=0 ;; esac
  pkill -f "tlsgate serve -c $B/tlsgate/bench.toml"; sleep 1
  uncap
done
awk -v a="${RATE[1]:-0}" -v b="${RATE[2]:-0}" 'BEGIN{ if (a > 0) printf "workers=2 / workers=1: %.2fx handshakes per second\n", b / a }'
# wait for our broker to be gone: a run started right after this one must not find it exiting
[ -n "$own_broker" ] && kill "$own_broker" 2>/dev/null && wait "$own_broker" 2>/dev/null
true

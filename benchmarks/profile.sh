#!/bin/bash
# profile.sh METRIC [--native]: where one worker's CPU goes for one load (py-spy sampling).
#
# Starts tlsgate like compare.sh does (benchmarks/serve-for-bench.sh, one worker pinned to CPU 0),
# runs the harness's load tool for METRIC (hs | msg | bulk) pinned to CPU 1, records the worker
# with py-spy for DUR seconds, and prints the functions by own and inclusive share of samples.
# SERVE: profile another candidate, as in quick.sh (benchmarks/bare_forwarder.py).
# --native adds C frames (OpenSSL, libuv, libc); py-spy's ptrace sampling over-weights syscalls
# there, so read those shares as an upper bound. Needs: pip install py-spy.
set -u
H=$(cd "$(dirname "$0")/.." && pwd)
M=${1:-hs}; NATIVE=${2:-}
B=${BENCH_WORK:-${TMPDIR:-/tmp}/tlsgate-bench}
export BENCH_CERTS=$B/certs CAND_PORT=${CAND_PORT:-18005}
D=${DUR:-6}
[ -x "$B/bin/hsload" ] || "$H/../shared/bench/loadgen/build.sh" >/dev/null
[ -f "$BENCH_CERTS/server.crt" ] || "$H/../shared/bench/gen-certs.sh" "$BENCH_CERTS" >/dev/null 2>&1
PYSPY=$(command -v py-spy || echo "$H/.venv/bin/py-spy")
own_broker=""
if ! ss -ltnH "sport = :1883" | grep -q .; then mosquitto -p 1883 >/dev/null 2>&1 & own_broker=$!; sleep 0.5; fi
${SERVE:-"$H/benchmarks/serve-for-bench.sh"} >/dev/null 2>&1 &
served=$!
for _ in $(seq 100); do ss -ltnH "sport = :$CAND_PORT" | grep -q . && break; sleep 0.1; done
sleep 0.5
W=$(ss -ltnpH "sport = :$CAND_PORT" | grep -o 'pid=[0-9]*' | cut -d= -f2 | head -1)
taskset -a -p -c 0 "$W" >/dev/null
OUT=$(mktemp)
"$PYSPY" record -p "$W" -o "$OUT" -f raw -d "$D" -r 250 $NATIVE >/dev/null 2>&1 &
SPY=$!
sleep 0.5
case $M in
  hs) taskset -c 1 env GOMAXPROCS=1 "$B/bin/hsload" -p "$CAND_PORT" -c 50 -d "$D" -w 0 -src 4 | grep -o "rate=[0-9.]*" ;;
  msg) taskset -c 1 "$B/bin/mqload" -m pub -p "$CAND_PORT" -P 8 -s 100 -d "$D" -w 0 | grep -o "msgs_per_s=[0-9]*" ;;
  bulk) taskset -c 1 "$B/bin/mqload" -m pub -p "$CAND_PORT" -P 4 -s 65536 -d "$D" -w 0 | grep -o "MBps=[0-9.]*" ;;
esac
wait "$SPY"
pkill -f "tlsgate serve -c $B/tlsgate/bench.toml"
kill "$served" 2>/dev/null
[ -n "$own_broker" ] && kill "$own_broker" 2>/dev/null
python3 - "$OUT" <<'PY'
import collections, sys
own, incl, total = collections.Counter(), collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    if not stack:
        continue
    n = int(n); total += n
    frames = stack.split(";")
    own[frames[-1]] += n
    for f in set(f.split(" (")[0] for f in frames):
        incl[f] += n
print(f"{total} samples")
print("own time:")
for f, c in own.most_common(20):
    print(f"  {100 * c / total:5.1f}%  {f[:120]}")
print("inclusive:")
for f, c in incl.most_common(30):
    print(f"  {100 * c / total:5.1f}%  {f[:120]}")
PY
rm -f "$OUT"

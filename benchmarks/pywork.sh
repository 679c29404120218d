#!/bin/bash
# pywork.sh [hs|msg] [TOP]: the Python work of one operation, counted instead of timed.
#
# quick.sh's CPU figures move by ±3 % between runs on a shared VM, more than most single changes
# to the connection path are worth. This counts what the interpreter executes instead: it starts
# the candidate (benchmarks/serve-for-bench.sh, or SERVE as in quick.sh) with
# benchmarks/pywork/sitecustomize.py loaded, warms it up, traces the worker's main thread
# (sys.settrace, opcode events) during a short load from the harness's tools, and prints the
# bytecode instructions and Python function calls per operation -- in total and by function.
# The same tree gives the same counts run after run, so a change's effect on the Python work is
# exact; what an instruction costs still has to be measured (quick.sh, compare.sh, perf). It
# depends on how warm the code runs: before handshake batching, a trial that removed 17 % of
# a connection's bytecodes (4,106 -> 3,409) measured 4 µs less interpreter time of ~640 µs;
# with batching (30 Nov), cutting 4,137 -> 3,188 took quick.sh hs from ~456 to ~423 µs
# (-7 %), i.e. ~35 ns per bytecode with what it calls -- and the bare forwarder below (1,331
# bytecodes) costs 320-357 µs where tlsgate then cost 413-513.
#   hs:  full TLS 1.3 handshake + CONNECT/CONNACK + close, per connection (hsload, 4 clients)
#   msg: 100-byte QoS 0 PUBLISH through an established connection, per message (mqload)
#   benchmarks/pywork.sh hs 40
#   SERVE=".venv/bin/python benchmarks/bare_forwarder.py" benchmarks/pywork.sh hs
set -u
H=$(cd "$(dirname "$0")/.." && pwd)
M=${1:-hs}; TOP=${2:-30}
B=${BENCH_WORK:-${TMPDIR:-/tmp}/tlsgate-bench}
BIN=$B/bin
export BENCH_CERTS=$B/certs CAND_PORT=${CAND_PORT:-18005}
[ -x "$BIN/hsload" ] || "$H/../shared/bench/loadgen/build.sh" >/dev/null
[ -f "$BENCH_CERTS/server.crt" ] || "$H/../shared/bench/gen-certs.sh" "$BENCH_CERTS" >/dev/null 2>&1
OUT=$(mktemp -d)
own_broker=""
if ! ss -ltnH "sport = :1883" | grep -q .; then mosquitto -p 1883 >/dev/null 2>&1 & own_broker=$!; sleep 0.5; fi
PYTHONPATH="$H/benchmarks/pywork${PYTHONPATH:+:$PYTHONPATH}" TLSGATE_PYWORK=$OUT \
  ${SERVE:-"$H/benchmarks/serve-for-bench.sh"} >/dev/null 2>&1 &
served=$!
cleanup() {
  pkill -f "tlsgate serve -c $B/tlsgate/bench.toml" 2>/dev/null
  kill "$served" 2>/dev/null
  [ -n "$own_broker" ] && kill "$own_broker" 2>/dev/null
  rm -rf "$OUT"
}
trap cleanup EXIT
for _ in $(seq 100); do ss -ltnH "sport = :$CAND_PORT" | grep -q . && break; sleep 0.1; done
sleep 1
W=$(ss -ltnpH "sport = :$CAND_PORT" | grep -o 'pid=[0-9]*' | cut -d= -f2 | head -1)
[ -n "$W" ] || { echo "pywork: nothing listens on $CAND_PORT" >&2; exit 1; }
START=$(( $(kill -l RTMIN) + 3 )); STOP=$((START + 1))
case $M in
  hs) load() { "$BIN/hsload" -p "$CAND_PORT" -c 4 -d "$1" -w 0 -src 1 2>&1; }; field=done ;;
  msg) load() { "$BIN/mqload" -m pub -p "$CAND_PORT" -P 8 -s 100 -d "$1" -w 0 2>&1; }; field=msgs ;;
  *) echo "pywork: unknown metric $M (hs | msg)" >&2; exit 2 ;;
esac
load 1 >/dev/null                 # warm-up: imports, caches, the interpreter's specialisation
kill -s "$START" "$W"; sleep 0.2
res=$(load "${DUR:-3}")
kill -s "$STOP" "$W"; sleep 1
ops=$(grep -oE "(^| )$field=[0-9]+" <<<"$res" | tail -1 | cut -d= -f2)
if [ -z "$ops" ] && [ "$M" = msg ]; then   # mqload reports a rate: messages = rate x duration
  rate=$(grep -oE "msgs_per_s=[0-9.]+" <<<"$res" | tail -1 | cut -d= -f2)
  [ -n "$rate" ] && ops=$(python3 -c "print(int($rate * ${DUR:-3}))")
fi
[ -n "$ops" ] && [ "$ops" -gt 0 ] || { echo "pywork: the load tool reported no $field:" >&2; echo "$res" | tail -3 >&2; exit 1; }
[ -f "$OUT/$W.tsv" ] || { echo "pywork: the worker wrote no counts (sitecustomize not loaded?)" >&2; exit 1; }
python3 - "$OUT/$W.tsv" "$ops" "$M" "$TOP" "$H/" <<'PY'
import sys
path, n, metric, top, root = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
rows = []
for line in open(path):
    ops, calls, where = line.rstrip("\n").split("\t")
    where = where.replace(root, "")
    for cut in ("site-packages/", "/lib/python3."):
        if cut in where:
            where = where.split(cut, 1)[1].split("/", 1)[-1] if cut[0] == "/" else where.split(cut, 1)[1]
    rows.append((int(ops), int(calls), where))
unit = "connection" if metric == "hs" else "message"
print(f"# {metric}: Python work per {unit} ({n} {unit}s traced)")
print(f"bytecodes={sum(r[0] for r in rows) / n:.1f} calls={sum(r[1] for r in rows) / n:.1f}")
print(f"{'bytecodes':>10} {'calls':>6}  function")
for ops, calls, where in rows[:top]:
    print(f"{ops / n:10.1f} {calls / n:6.2f}  {where}")
PY

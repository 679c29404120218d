"""Loaded by benchmarks/pywork.sh through PYTHONPATH: counts the bytecode a process executes.

Inert unless TLSGATE_PYWORK names an output directory. Then real-time signal SIGRTMIN+3 starts
counting in the main thread (sys.settrace with per-opcode events; every Python function called
from then on is counted) and SIGRTMIN+4 stops and writes ``<dir>/<pid>.tsv``: per code object,
opcodes executed, calls, and ``file:line:name``. Tracing makes the process tens of times slower:
the counts are the measurement, not the time.
"""

import os
import sys

_OUT = os.environ.get("TLSGATE_PYWORK")
if _OUT:
    import collections
    import signal

    _ops: collections.Counter = collections.Counter()
    _calls: collections.Counter = collections.Counter()

    def _trace(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "opcode":
            _ops[frame.f_code] += 1
        elif event == "call":
            _calls[frame.f_code] += 1
            frame.f_trace_opcodes = True
        return _trace

    def _start(signum, frame):  # type: ignore[no-untyped-def]
        _ops.clear()
        _calls.clear()
        sys.settrace(_trace)

    def _stop(signum, frame):  # type: ignore[no-untyped-def]
        sys.settrace(None)
        with open(os.path.join(_OUT, f"{os.getpid()}.tsv"), "w") as f:
            for code, n in _ops.most_common():
                f.write(f"{n}\t{_calls[code]}\t{code.co_filename}:{code.co_firstlineno}:"
                        f"{code.co_name}\n")

    signal.signal(signal.SIGRTMIN + 3, _start)
    signal.signal(signal.SIGRTMIN + 4, _stop)

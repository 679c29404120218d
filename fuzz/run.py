"""``make fuzz``: run every fuzz target for a bounded time and print executions and crashes.

    python -m fuzz.run [--seconds 60] [--targets mqtt_connect,proxy_header] [--merge] [--seed]

Engine: atheris (libFuzzer, coverage-guided; ``pip install -e '.[fuzz]'``) when it imports,
else (or with FUZZ_ENGINE=hypothesis) a hypothesis-driven run of the same targets (random
and corpus-derived inputs, not coverage-guided: it says so).

Corpus: ``fuzz/corpus/<target>/`` is the checked-in seed corpus, read but never written by a
plain run; what a run discovers goes to ``var/fuzz/corpus/<target>/``. ``--merge`` then folds
the new inputs that add coverage into ``fuzz/corpus/`` (libFuzzer ``-merge=1``), so the
checked-in corpus only grows by inputs that matter. ``--seed`` (re)writes the seeds built by
:func:`fuzz.targets.seeds` (valid packets, real client captures) into ``fuzz/corpus/``.
Crashes are written to ``var/fuzz/crashes/<target>-crash-<sha1>``; reproduce one with
``python -m fuzz.one <target> <file>``. Exit status 1 if any target crashed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
WORK = ROOT / "var" / "fuzz"


@dataclass
class Result:
    target: str
    seconds: float
    executions: int
    new_units: int
    crashes: list[str]
    note: str = ""


def _have_atheris() -> bool:
    if os.environ.get("FUZZ_ENGINE") == "hypothesis":  # force the fallback
        return False
    try:
        import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def write_seeds() -> None:
    from fuzz.targets import seeds

    for name, items in seeds().items():
        d = CORPUS / name
        d.mkdir(parents=True, exist_ok=True)
        for data in items:
            (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
        print(f"seeded {name}: {len(items)} inputs in {d.relative_to(ROOT)}")


def _stat(text: str, key: str) -> int | None:
    m = re.search(rf"stat::{key}:\s+(\d+)", text)
    return int(m.group(1)) if m else None


def run_atheris(name: str, seconds: int) -> Result:
    work = WORK / "corpus" / name
    crashes = WORK / "crashes"
    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    seed = CORPUS / name
    seed.mkdir(parents=True, exist_ok=True)
    before = set(crashes.glob(f"{name}-*"))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz.one", name, f"-max_total_time={seconds}",
         "-print_final_stats=1", f"-artifact_prefix={crashes}/{name}-", "-timeout=10",
         "-rss_limit_mb=2048", "-max_len=8192", str(work), str(seed)],
        cwd=ROOT, env=env, capture_output=True, text=True, errors="replace")
    elapsed = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    (WORK / f"{name}.log").write_text(log)
    execs = _stat(log, "number_of_executed_units")
    if execs is None:  # crashed before the final stats: the last status line counts
        runs = re.findall(r"^#(\d+)\s", log, flags=re.M)
        execs = int(runs[-1]) if runs else 0
    found = sorted(str(p.relative_to(ROOT)) for p in set(crashes.glob(f"{name}-*")) - before)
    note = ""
    if proc.returncode != 0 and not found:
        note = f"libFuzzer exited {proc.returncode}: see var/fuzz/{name}.log"
        found = [note]
    return Result(name, elapsed, execs, _stat(log, "new_units_added") or 0, found, note)


def merge_atheris(name: str) -> None:
    work = WORK / "corpus" / name
    seed = CORPUS / name
    if not work.is_dir():
        return
    before = len(list(seed.iterdir()))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-m", "fuzz.one", name, "-merge=1", str(seed), str(work)],
                   cwd=ROOT, env=env, capture_output=True, check=True)
    print(f"merged {name}: {before} -> {len(list(seed.iterdir()))} inputs in "
          f"{seed.relative_to(ROOT)}")


def run_hypothesis(name: str, seconds: int) -> Result:
    """Fallback without atheris: hypothesis feeds random bytes and mutations of the corpus."""
    from hypothesis import HealthCheck, Phase, example, given, settings
    from hypothesis import strategies as st

    from fuzz.targets import TARGETS

    target = TARGETS[name]
    corpus = [p.read_bytes() for p in sorted((CORPUS / name).glob("*"))]
    data_st = st.one_of(st.binary(max_size=4096),
                        st.sampled_from(corpus or [b""]).flatmap(
                            lambda seed: st.binary(max_size=64).map(
                                lambda tail: seed[:len(seed) // 2] + tail)))
    count = 0

    def body(data: bytes) -> None:
        nonlocal count
        count += 1
        target(data)

    # Calibrate: how many examples fit in the budget.
    t0 = time.monotonic()
    for item in corpus[:50] or [b""]:
        target(item)
    per = max((time.monotonic() - t0) / max(len(corpus[:50]), 1), 2e-5) * 3
    budget = max(int(seconds / per), 100)
    test = given(data_st)(body)
    for item in corpus[:20]:
        test = example(item)(test)
    test = settings(max_examples=budget, deadline=None, database=None, derandomize=False,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=list(HealthCheck))(test)
    t0 = time.monotonic()
    crashes: list[str] = []
    try:
        test()
    except Exception as exc:  # a crash: hypothesis shrank it and re-raised
        crashes.append(f"{type(exc).__name__}: {exc}")
    return Result(name, time.monotonic() - t0, count, 0, crashes,
                  "hypothesis fallback (random, not coverage-guided)")


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.disable(logging.CRITICAL)  # the parsers' garbage log lines would drown the stats
    from fuzz.targets import TARGETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")),
                    help="time per target (default 60, or $FUZZ_SECONDS)")
    ap.add_argument("--targets", default=os.environ.get("FUZZ_TARGETS", ""),
                    help=f"comma-separated subset of: {', '.join(TARGETS)}")
    ap.add_argument("--merge", action="store_true",
                    help="fold new coverage-adding inputs into fuzz/corpus/ afterwards")
    ap.add_argument("--seed", action="store_true", help="write the built-in seeds first")
    args = ap.parse_args(argv)
    names = [t for t in args.targets.split(",") if t] or list(TARGETS)
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; targets: {', '.join(TARGETS)}")
    if args.seed:
        write_seeds()
    atheris = _have_atheris()
    engine = "atheris (libFuzzer, coverage-guided)" if atheris else \
        "hypothesis fallback (atheris not installed: pip install -e '.[fuzz]')"
    print(f"fuzzing {len(names)} target(s), {args.seconds}s each, engine: {engine}", flush=True)
    results = []
    for name in names:
        r = run_atheris(name, args.seconds) if atheris else run_hypothesis(name, args.seconds)
        results.append(r)
        print(f"  {r.target:<16} {r.executions:>10} execs in {r.seconds:6.1f}s "
              f"({r.executions / max(r.seconds, 1e-9):8.0f}/s)  new units {r.new_units:>4}  "
              f"crashes {len(r.crashes)}", flush=True)
        for c in r.crashes:
            print(f"      crash: {c}")
        if args.merge and atheris:
            merge_atheris(name)
    total = sum(r.executions for r in results)
    crashed = sum(len(r.crashes) for r in results)
    print(f"total: {total} executions, {crashed} crash(es)")
    if "cluster_frames" not in TARGETS:
        print("cluster_frames: not run (tlsgate/cluster/protocol.py is not on this branch yet)")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())

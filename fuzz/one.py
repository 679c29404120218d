"""Run one fuzz target under atheris (libFuzzer): ``python -m fuzz.one TARGET [libFuzzer args]``.

Used by :mod:`fuzz.run` (``make fuzz``); also handy alone to reproduce a crash::

    python -m fuzz.one mqtt_connect var/fuzz/crashes/mqtt_connect-crash-<sha1>
"""

from __future__ import annotations

import sys


def main() -> None:
    import logging

    logging.disable(logging.CRITICAL)  # the parsers' garbage log lines would drown the stats
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m fuzz.one TARGET [libFuzzer options] [corpus dirs]")
    name = sys.argv.pop(1)
    # Coverage feedback for tlsgate's own code (the parsers and what they call).
    with atheris.instrument_imports(include=["tlsgate", "fuzz"]):
        from fuzz.targets import TARGETS
    if name not in TARGETS:
        raise SystemExit(f"unknown target {name!r}; targets: {', '.join(TARGETS)}")
    # libFuzzer re-executes argv[0] for -merge=1 (fuzz.run --merge): make that a script that
    # runs this module with the same interpreter and target.
    import os
    from pathlib import Path

    work = Path(__file__).resolve().parent.parent / "var" / "fuzz"
    work.mkdir(parents=True, exist_ok=True)
    wrapper = work / f"one-{name}.sh"
    wrapper.write_text(f"#!/bin/sh\nexec '{sys.executable}' -m fuzz.one '{name}' \"$@\"\n")
    os.chmod(wrapper, 0o755)
    sys.argv[0] = str(wrapper)
    atheris.Setup(sys.argv, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()

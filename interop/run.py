"""Run the interoperability matrix and print it: ``python -m interop.run`` / ``make interop``.

Every client example in ``examples/`` × every broker (mosquitto, amqtt, RabbitMQ's MQTT plugin)
× TLS mode (one-way, mutual, TLS-PSK over TLS 1.3 and over TLS 1.2) × MQTT version (3.1.1, 5.0),
each through a real ``tlsgate serve``. Exit status 0 when no cell failed (unsupported and skipped
cells carry their reason and do not fail the run), 1 otherwise.

    python -m interop.run                       # everything
    python -m interop.run --brokers mosquitto --clients paho-c,mqttjs --versions 5
    python -m interop.run --offline --json var/interop/matrix.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tests.procs import REPO

from .brokers import BROKERS, Broker, BrokerUnavailable
from .clients import CLIENTS, MODES, Client, Toolchain
from .matrix import VERSIONS, Pki, Result, Secrets, Stage, format_matrix, repo_env, run_cell


def _csv(choices: list[str] | tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated subset of ``choices``."""
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from "
                                             f"{', '.join(choices)}")
        return items
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m interop.run",
                                 description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--brokers", type=_csv(list(BROKERS)), default=list(BROKERS),
                    help=f"comma-separated, from {', '.join(BROKERS)}")
    ap.add_argument("--clients", type=_csv(list(CLIENTS)), default=list(CLIENTS),
                    help=f"comma-separated, from {', '.join(CLIENTS)}")
    ap.add_argument("--modes", type=_csv(list(MODES)), default=list(MODES),
                    help=f"comma-separated, from {', '.join(MODES)}")
    ap.add_argument("--versions", type=_csv(VERSIONS), default=list(VERSIONS),
                    help="MQTT versions: 3.1.1, 5")
    ap.add_argument("--workdir", type=Path, default=REPO / "var/interop",
                    help="certificates, builds, broker and tlsgate state and logs")
    ap.add_argument("--host", default="localhost",
                    help="the name clients connect to (127.0.0.1: no SNI, IP SAN check)")
    ap.add_argument("--key-type", choices=["ec", "rsa"], default="ec",
                    help="key type of the certificates `tlsgate certs init` makes")
    ap.add_argument("--message-size", type=int, default=0, metavar="BYTES",
                    help="pad each message to this size (more than one TLS record; max 120000)")
    ap.add_argument("--offline", action="store_true",
                    help="never download (npm ci, pip install); such cells are skipped")
    ap.add_argument("--timeout", type=float, default=10.0, help="per step of a cell, seconds")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each cell as it ends")
    args = ap.parse_args(argv)
    if not 0 <= args.message_size <= 120_000:
        ap.error("--message-size must be between 0 and 120000 (it travels in an environment "
                 "variable)")
    return args


def run_matrix(args: argparse.Namespace) -> tuple[list[Result], list[str]]:
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tc = Toolchain(workdir, offline=args.offline)
    pki = Pki.make(workdir / f"certs-{args.key_type}", repo_env(), args.key_type)
    creds = Secrets()
    clients: dict[str, Client] = {k: CLIENTS[k]() for k in args.clients}
    print("Preparing clients ...", flush=True)
    not_here: dict[str, str] = {}
    for key, client in clients.items():
        why = client.prepare(tc)
        if why:
            not_here[key] = why
            print(f"  {client.label}: skipped ({why})", flush=True)
    header = [f"tlsgate interoperability matrix — {platform.node()}, "
              f"Python {platform.python_version()}"]
    header.append("clients: " + "; ".join(
        f"{c.label} {c.version() if k not in not_here else '(not here)'}"
        for k, c in clients.items()))
    results: list[Result] = []
    broker_versions = []
    for bkey in args.brokers:
        broker: Broker = BROKERS[bkey](workdir)
        stage = Stage(broker, workdir, pki, creds)
        print(f"Starting {bkey} and tlsgate in front of it ...", flush=True)
        try:
            stage.start()
        except (BrokerUnavailable, RuntimeError) as exc:
            stage.stop()
            broker_versions.append(f"{bkey} (not here)")
            for ckey in clients:
                for mkey in args.modes:
                    for v in args.versions:
                        results.append(Result(ckey, bkey, mkey, v, "skipped",
                                              f"{bkey} could not start: {exc}"))
            print(f"  {bkey}: {exc}", flush=True)
            continue
        broker_versions.append(f"{bkey} {broker.version}")
        try:
            for ckey, client in clients.items():
                for mkey in args.modes:
                    for v in args.versions:
                        if ckey in not_here:
                            res = Result(ckey, bkey, mkey, v, "skipped", not_here[ckey])
                        else:
                            res = run_cell(client, stage, MODES[mkey], v, tc, args.timeout,
                                           args.host, args.message_size)
                        results.append(res)
                        if args.verbose or res.status == "fail":
                            print(f"  {ckey:<12} {bkey:<9} {mkey:<10} {v:<5} {res.status:<11} "
                                  f"{res.detail} [{res.seconds}s]", flush=True)
        finally:
            stage.stop()
    header.append("brokers: " + "; ".join(broker_versions))
    return results, header


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit unwinds through the `finally` that stops the brokers and tlsgate.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if shutil.which("openssl") is None:
        print("note: openssl is not installed; the s_client example will be skipped",
              file=sys.stderr)
    results, header = run_matrix(args)
    labels = {k: CLIENTS[k].label for k in CLIENTS}
    print(format_matrix(results, labels, header))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 1 if any(r.status == "fail" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

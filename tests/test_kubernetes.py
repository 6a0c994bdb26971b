"""The Kubernetes DaemonSet: a privileged binfmtd daemon on every node, ready while the daemon
keeps its node as configured."""

import os
import subprocess
import time

import yaml

from binfmtd.config import parse_config

from conftest import ROOT

MANIFEST = ROOT / "packaging" / "kubernetes" / "daemonset.yaml"


def documents() -> dict:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def test_daemonset_runs_the_privileged_daemon_on_every_node_with_limits():
    docs = documents()
    spec = docs["DaemonSet"]["spec"]["template"]["spec"]
    container, = spec["containers"]
    assert container["args"] == ["daemon"] and container["securityContext"]["privileged"] is True
    assert {"operator": "Exists"} in spec["tolerations"]
    assert set(container["resources"]) == {"requests", "limits"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/var/lib/binfmtd"]]["hostPath"]["path"] == "/var/lib/binfmtd"
    config = docs["ConfigMap"]["data"]["binfmtd.toml"]
    assert parse_config(config).daemon_interval == 5.0
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["BINFMTD_CONFIG"] == f"{next(iter(k for k, v in mounts.items() if v == 'config'))}/binfmtd.toml"


def test_readiness_probe_follows_the_daemons_ready_file(tmp_path):
    command = documents()["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    script = command[-1].replace("/var/lib/binfmtd", str(tmp_path))

    def probe() -> int:
        return subprocess.run([*command[:-1], script]).returncode

    assert probe() != 0  # no file: the daemon never got the node right
    (tmp_path / "daemon.ready").touch()
    assert probe() == 0
    old = time.time() - 120
    os.utime(tmp_path / "daemon.ready", (old, old))
    assert probe() != 0  # stale: the daemon stopped keeping up

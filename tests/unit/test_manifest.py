"""`vipd manifest static-pod`: the pod follows the config (paths, listeners, group), and the YAML
emitter writes what a YAML parser reads back as the same document."""
from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from vipd.cli import app
from vipd.config import parse
from vipd.manifest import DEFAULT_IMAGE, static_pod, static_pod_yaml, to_yaml

VRRP = {"name": "api", "interface": "eth0", "vrid": 51, "priority": 150, "virtual_ips": ["198.18.0.100/24"]}


def config(node: dict | None = None, path: str = "/etc/vipd/vipd.toml"):
    return parse({"node": node or {}, "vrrp": [VRRP]}, path, require_vrrp=True)


def pod(node: dict | None = None, path: str = "/etc/vipd/vipd.toml", image: str = DEFAULT_IMAGE) -> dict:
    document = yaml.safe_load(static_pod_yaml(config(node, path), image))
    assert document == static_pod(config(node, path), image)
    return document


def test_static_pod_for_kubeadm():
    document = pod({"metrics_listen": "127.0.0.1:9477"}, image="registry.example/vipd:0.1.0")
    assert (document["apiVersion"], document["kind"]) == ("v1", "Pod")
    assert document["metadata"]["namespace"] == "kube-system"
    spec = document["spec"]
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["terminationGracePeriodSeconds"] > 30     # the default drain_timeout
    container, = spec["containers"]
    assert container["image"] == "registry.example/vipd:0.1.0"
    assert container["command"] == ["vipd", "run", "-c", "/etc/vipd/vipd.toml"]
    assert container["securityContext"]["capabilities"] == {
        "drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"]}
    volumes = {v["name"]: v["hostPath"] for v in spec["volumes"]}
    assert volumes == {"config": {"path": "/etc/vipd", "type": "Directory"},
                       "run": {"path": "/run/vipd", "type": "DirectoryOrCreate"},
                       "state": {"path": "/var/lib/vipd", "type": "DirectoryOrCreate"}}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["config"] == {"name": "config", "mountPath": "/etc/vipd", "readOnly": True}
    assert mounts["run"] == {"name": "run", "mountPath": "/run/vipd"}
    assert mounts["state"] == {"name": "state", "mountPath": "/var/lib/vipd"}
    probe = container["livenessProbe"]
    assert probe["httpGet"] == {"host": "127.0.0.1", "port": 9477, "path": "/metrics", "scheme": "HTTP"}


def test_probe_reaches_a_wildcard_metrics_listener_on_loopback():
    assert pod({"metrics_listen": "0.0.0.0:9100"})["spec"]["containers"][0]["livenessProbe"]["httpGet"]["host"] \
        == "127.0.0.1"
    assert pod({"metrics_listen": "[::]:9100"})["spec"]["containers"][0]["livenessProbe"]["httpGet"]["host"] \
        == "::1"


def test_without_metrics_the_probe_asks_lbctl_on_the_configured_socket():
    document = pod({"control_socket": "/run/edge/ctl.sock"}, path="/srv/edge/vipd.toml")
    container = document["spec"]["containers"][0]
    assert container["livenessProbe"]["exec"]["command"] == [
        "lbctl", "--socket", "/run/edge/ctl.sock", "status", "--json"]
    assert "httpGet" not in container["livenessProbe"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in document["spec"]["volumes"]}
    assert (volumes["config"], volumes["run"]) == ("/srv/edge", "/run/edge")
    assert container["command"][-1] == "/srv/edge/vipd.toml"


def test_a_control_group_adds_chown_for_the_socket():
    caps = pod({"control_group": "vipd"})["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
    assert caps == ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "CHOWN"]


def test_cli_prints_the_manifest_and_refuses_a_bad_config(tmp_path):
    good = tmp_path / "vipd.toml"
    good.write_text('[[vrrp]]\nname = "api"\ninterface = "eth0"\nvrid = 51\npriority = 150\n'
                    'virtual_ips = ["198.18.0.100/24"]\n')
    result = CliRunner().invoke(app, ["manifest", "static-pod", "-c", str(good), "--image", "vipd:test"])
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(result.stdout)
    assert document["spec"]["containers"][0]["image"] == "vipd:test"
    assert document["spec"]["volumes"][0]["hostPath"]["path"] == str(tmp_path)

    bad = tmp_path / "bad.toml"
    bad.write_text('[[vrrp]]\nname = "api"\n')
    refused = CliRunner().invoke(app, ["manifest", "static-pod", "-c", str(bad)])
    assert refused.exit_code == 2
    assert "kind: Pod" not in refused.stdout


TRICKY = ["yes", "No", "on", "OFF", "true", "null", "~", "y", "n", "123", "1.5", "-c", "--json", "a: b", "#x",
          "", " lead", "trail ", "[x]", "{x}", "*a", "&a", "!t", "%p", "@a", "`a", "'q'", '"q"', "x\ny", "\x7f",
          ".inf", "0x1F", "1e3", "2026-11-29", "=", "<<", "é", "\u2028", "\t"]

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = st.one_of(st.booleans(), st.integers(), text, st.sampled_from(TRICKY))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(text, st.sampled_from(TRICKY)),
                                                                         inner, max_size=4)),
    max_leaves=20)


def test_tricky_scalars_survive():
    document = {value: [value, {value: value}] for value in TRICKY}
    assert yaml.safe_load(to_yaml(document)) == document


@given(st.dictionaries(text, documents, max_size=5))
def test_yaml_round_trips(document):
    assert yaml.safe_load(to_yaml(document)) == document


def test_the_kubeadm_guide_config_is_valid_and_checks_readyz():
    text = (Path(__file__).resolve().parents[2] / "docs" / "kubeadm.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    loaded = parse(tomllib.loads(block), "docs/kubeadm.md", require_vrrp=True)
    frontend, = loaded.frontends
    assert frontend.health.path == "/readyz" and frontend.health.tls_verify is False
    assert frontend.listen == f"{loaded.vrrp[0].virtual_ips[0].ip}:8443"    # the VIP only
    assert all(t.weight != 0 for t in loaded.vrrp[0].tracks)

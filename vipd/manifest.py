"""`vipd manifest static-pod`: the kubeadm static pod that runs vipd on a control-plane node, in
place of the keepalived and haproxy pods of kubeadm's HA guide. The pod is built from the config it
will run, so the mounts and the liveness probe follow the config's paths and listeners."""
from __future__ import annotations

import ipaddress
import os
import re
from typing import Any

from lbproxy.configreader import split_host_port
from vipd import __version__
from vipd.config import Config

DEFAULT_IMAGE = f"localhost/vipd:{__version__}"    # what packaging/container/Containerfile builds
STATE_DIR = "/var/lib/vipd"
# VIPs and nftables (NET_ADMIN), VRRP raw sockets and GARP (NET_RAW), listeners below 1024.
CAPABILITIES = ("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE")
# Above the largest default drain_timeout (30 s) plus the VRRP hand-over, as in vipd.service.
GRACE_SECONDS = 45
LOOPBACK = {4: "127.0.0.1", 6: "::1"}


def liveness_probe(config: Config) -> dict[str, Any]:
    """An HTTP GET on the metrics listener when there is one (cheap, answered by the daemon's own
    loop); otherwise `lbctl status --json` over the control socket."""
    timing = {"initialDelaySeconds": 15, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3}
    if config.node.metrics_listen:
        host, port = split_host_port(config.node.metrics_listen)
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            host = LOOPBACK[address.version]
        return {"httpGet": {"host": host, "port": port, "path": "/metrics", "scheme": "HTTP"}, **timing}
    command = ["lbctl", "--socket", config.node.control_socket, "status", "--json"]
    return {"exec": {"command": command}, **timing}


def capabilities(config: Config) -> list[str]:
    # Giving the control socket to control_group is a chown to a group root is not in.
    return list(CAPABILITIES) + (["CHOWN"] if config.node.control_group else [])


def static_pod(config: Config, image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    config_path = os.path.abspath(config.path)
    config_dir = os.path.dirname(config_path)
    run_dir = os.path.dirname(config.node.control_socket)
    container = {
        "name": "vipd",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["vipd", "run", "-c", config_path],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": capabilities(config)},
        },
        "livenessProbe": liveness_probe(config),
        "volumeMounts": [
            {"name": "config", "mountPath": config_dir, "readOnly": True},
            {"name": "run", "mountPath": run_dir},
            {"name": "state", "mountPath": STATE_DIR},
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "vipd",
            "namespace": "kube-system",
            "labels": {"component": "vipd", "tier": "control-plane"},
        },
        "spec": {
            "hostNetwork": True,
            "priorityClassName": "system-node-critical",
            "terminationGracePeriodSeconds": GRACE_SECONDS,
            "containers": [container],
            "volumes": [
                {"name": "config", "hostPath": {"path": config_dir, "type": "Directory"}},
                {"name": "run", "hostPath": {"path": run_dir, "type": "DirectoryOrCreate"}},
                {"name": "state", "hostPath": {"path": STATE_DIR, "type": "DirectoryOrCreate"}},
            ],
        },
    }


_PLAIN = re.compile(r"[A-Za-z/][A-Za-z0-9_./-]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _quoted_char(char: str) -> str:
    """In a YAML double-quoted scalar: printable ASCII as is, everything else escaped."""
    if char in '"\\':
        return "\\" + char
    if " " <= char <= "~":
        return char
    return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"


def _scalar(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"    # only ever empty here
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS:
            return value
        return '"' + "".join(map(_quoted_char, value)) + '"'
    raise TypeError(f"no YAML form for {type(value).__name__}")


def _block(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{_scalar(key)}:")
                lines.extend(_block(item, indent + 2))
            else:
                lines.append(f"{pad}{_scalar(key)}: {_scalar(item)}")
    else:
        for item in value:
            if isinstance(item, (dict, list)) and item:
                nested = _block(item, indent + 2)
                lines.append(f"{pad}- {nested[0].lstrip()}")
                lines.extend(nested[1:])
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    return lines


def to_yaml(document: dict[str, Any]) -> str:
    """Block-style YAML for what manifests hold: mappings, sequences, strings, ints and bools."""
    return "\n".join(_block(document, 0) or [_scalar(document)]) + "\n"


def static_pod_yaml(config: Config, image: str = DEFAULT_IMAGE) -> str:
    header = (f"# vipd {__version__} as a kubeadm static pod: save as /etc/kubernetes/manifests/vipd.yaml\n"
              f"# on each control-plane node, next to {os.path.abspath(config.path)}.\n")
    return header + to_yaml(static_pod(config, image))

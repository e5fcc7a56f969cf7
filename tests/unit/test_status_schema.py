"""The status document's schema (vipd.control.schema): one definition, rendered to the published
docs/status.schema.json, holding the contract's fields and the one vocabulary of states."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from lbproxy.config import Balance
from lbproxy.health import BackendState
from vipd.control import schema
from vipd.control.schema import (
    SCHEMA,
    Backend,
    DrainAnswer,
    ErrorAnswer,
    Frontend,
    MaintenanceAnswer,
    ReloadAnswer,
    StatusDocument,
    Track,
    VrrpInstance,
    WeightAnswer,
    check,
)
from vipd.vrrp.fsm import State

PUBLISHED = Path(__file__).resolve().parents[2] / "docs" / "status.schema.json"

# The example of ../shared/CONTRACT.md, "`lbctl status --json`", as written there.
CONTRACT_EXAMPLE = {
    "node": "edge-1",
    "vrrp": [
        {"name": "api", "state": "MASTER", "vrid": 51, "interface": "eth0", "version": 3,
         "priority": 150, "effective_priority": 150, "virtual_ips": ["198.18.0.100/24"],
         "master": "198.18.0.11", "since": "2026-11-26T23:00:00Z",
         "tracks": [{"name": "frontend:api", "ok": True, "weight": -60}]}
    ],
    "frontends": [
        {"name": "api", "listen": "0.0.0.0:6443", "active_connections": 3,
         "backends": [
             {"address": "198.18.0.21:6443", "state": "up", "active_connections": 1,
              "total_connections": 10, "failed_connections": 0}
         ]}
    ],
}

# Every field the daemon returns, with the values' shapes it gives them.
FULL = {
    "node": "edge-1", "pid": 4242, "config": "/etc/vipd/vipd.toml",
    "vrrp": [{
        "name": "api", "state": "FAULT", "vrid": 51, "interface": "eth0", "version": 2,
        "priority": 255, "effective_priority": 255, "virtual_ips": ["198.18.0.100/24"],
        "master": None, "since": "2026-11-26T23:00:00Z",
        "tracks": [{"name": "interface:eth1", "ok": False, "weight": 0, "health": "0/1 DOWN"}],
        "adverts_sent": 0, "adverts_received": 3, "invalid": {"checksum": 2, "unknown_peer": 1},
        "transitions": 1, "fault_reasons": ["track:interface:eth1"],
        "fault_reason": "track interface:eth1 is failing (weight 0)", "master_advert_interval": 1.0,
        "unicast_peers": ["198.18.0.12"], "handing_over": False, "maintenance": True,
    }],
    "frontends": [{
        "name": "api", "listen": "[::]:6443", "balance": "least_conn", "active_connections": 0,
        "total_connections": 9, "failed_connections": 1, "refused": 2, "bytes_in": 10,
        "bytes_out": 20, "all_down": True, "using_backups": False, "serving": False, "workers": 2, "mode": "proxy",
        "backends": [{
            "address": "[2001:db8::21]:6443", "state": "drain", "weight": 3, "active_connections": 0,
            "overrides": {"drain": True, "weight": 3}, "backup": True, "effective_weight": 1.5,
            "slow_start_remaining": 2.5, "total_connections": 9, "failed_connections": 1, "bytes_in": 10, "bytes_out": 20,
            "health": "0/2 DOWN", "last_error": "HTTP 503", "health_reason": "HTTP 503",
            "check_latency_seconds": 0.004,
            "checks": 5, "check_failures": 5, "passive_failures": 1,
        }],
    }],
    "elections": [{
        "name": "api-etcd", "state": "FAULT", "holder": None, "virtual_ips": ["198.18.0.101/24"],
        "maintenance": False, "since": "2026-11-26T23:00:00Z",
        "reason": "etcd: lease not renewed in time (no leader)", "interface": "eth0",
        "key": "/vipd/elections/api-etcd", "priority": 100, "effective_priority": 100, "lease_ttl": 5.0,
        "fence_remaining": 0.0, "keepalive_failures": 4, "transitions": 2,
        "tracks": [{"name": "frontend:api", "ok": True, "weight": 0, "health": "1/1 UP"}],
    }],
    "anycast": [{
        "name": "api-anycast", "state": "WITHDRAWN", "virtual_ips": ["198.18.1.100/32"], "device": "vipd0",
        "maintenance": False, "since": "2026-11-26T23:00:00Z", "reason": "failing: frontend:api",
        "transitions": 2, "tracks": [{"name": "frontend:api", "ok": False, "weight": 0, "health": "0/1 DOWN"}],
    }],
}

ANSWERS = [
    (DrainAnswer, {"frontend": "api", "backend": "198.18.0.21:6443", "state": "drain",
                   "warning": "not saved to /var/lib/vipd/runtime.json (Read-only file system): lost on restart"}),
    (WeightAnswer, {"frontend": "api", "backend": "198.18.0.21:6443", "weight": 0, "state": "drain",
                    "overrides": {"weight": 0}, "warning": "not saved"}),
    (MaintenanceAnswer, {"maintenance": True, "warning": "not saved",
                         "owners": [{"name": "api", "kind": "vrrp", "state": "MASTER", "maintenance": True}]}),
    (ReloadAnswer, {"ok": True, "config": "/etc/vipd/vipd.toml",
                    "summary": "1 vrrp instance(s), 1 frontend(s)",
                    "warnings": ["/etc/vipd/vipd.toml: WARNING: node.script_security: false: ..."]}),
    (ErrorAnswer, {"error": "no frontend 'nope'"}),
]


def test_published_schema_is_the_rendered_one() -> None:
    rendered = json.dumps(SCHEMA, indent=2) + "\n"
    assert PUBLISHED.exists() and PUBLISHED.read_text() == rendered, (
        "docs/status.schema.json is stale; regenerate it with: "
        "python -m vipd.control.schema > docs/status.schema.json")


def test_contract_fields_are_exactly_the_required_ones() -> None:
    contract_objects = [
        (StatusDocument, CONTRACT_EXAMPLE),
        (VrrpInstance, CONTRACT_EXAMPLE["vrrp"][0]),
        (Track, CONTRACT_EXAMPLE["vrrp"][0]["tracks"][0]),
        (Frontend, CONTRACT_EXAMPLE["frontends"][0]),
        (Backend, CONTRACT_EXAMPLE["frontends"][0]["backends"][0]),
    ]
    for typed, example in contract_objects:
        assert set(SCHEMA["$defs"][typed.__name__]["required"]) == set(example), typed.__name__
    assert check(CONTRACT_EXAMPLE, strict=True).problems == []


@pytest.mark.parametrize("path", [
    ("node",), ("vrrp",), ("frontends",),
    ("vrrp", 0, "state"), ("vrrp", 0, "master"), ("vrrp", 0, "tracks", 0, "weight"),
    ("frontends", 0, "listen"), ("frontends", 0, "backends", 0, "failed_connections"),
])
def test_a_missing_contract_field_is_a_problem(path: tuple) -> None:
    document = copy.deepcopy(CONTRACT_EXAMPLE)
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    shown = ".".join(str(s) for s in path).replace(".0", "[0]")
    assert check(document).problems == [f"{shown}: missing"]


def test_states_come_from_the_one_vocabulary() -> None:
    defs = SCHEMA["$defs"]
    assert defs["VrrpInstance"]["properties"]["state"]["enum"] == [s.value for s in State]
    assert defs["Backend"]["properties"]["state"]["enum"] == [s.value for s in BackendState]
    assert defs["DrainAnswer"]["properties"]["state"]["enum"] == [s.value for s in BackendState]
    assert defs["Frontend"]["properties"]["balance"]["enum"] == [b.value for b in Balance]


def test_the_full_document_and_the_answers_are_valid_and_fully_described() -> None:
    assert check(FULL, strict=True) == schema.Checked(FULL, [])
    assert set(FULL) == schema.described_keys(StatusDocument)
    assert set(FULL["vrrp"][0]) == schema.described_keys(VrrpInstance)
    assert set(FULL["vrrp"][0]["tracks"][0]) == schema.described_keys(Track)
    assert set(FULL["frontends"][0]) == schema.described_keys(Frontend)
    assert set(FULL["frontends"][0]["backends"][0]) == schema.described_keys(Backend)
    for typed, answer in ANSWERS:
        assert check(answer, typed, strict=True).problems == [], typed.__name__
        assert set(answer) == schema.described_keys(typed)


def test_enum_members_from_the_daemon_are_valid_before_json() -> None:
    document = copy.deepcopy(CONTRACT_EXAMPLE)
    document["vrrp"][0]["state"] = State.BACKUP
    document["frontends"][0]["backends"][0]["state"] = BackendState.DRAIN
    assert check(document).problems == []


def test_mismatches_are_named_and_left_out() -> None:
    document = copy.deepcopy(FULL)
    vrrp = document["vrrp"][0]
    vrrp.update(state="LEADER", vrid=0, priority=True, adverts_sent=float("nan"),
                invalid={"checksum": -1, "ttl": 4})
    vrrp["tracks"].append("junk")
    backend = document["frontends"][0]["backends"][0]
    backend.update(state="enabled", check_latency_seconds="fast", health=None)
    document["frontends"].append({"name": 7})
    result = check(document)
    assert result.problems == [
        "vrrp[0].state: 'LEADER' is not one of INIT, BACKUP, MASTER, FAULT",
        "vrrp[0].vrid: 0 is below 1",
        "vrrp[0].priority: expected integer, got True",
        "vrrp[0].tracks[1]: expected object, got 'junk'",
        "vrrp[0].adverts_sent: expected integer, got nan",
        "vrrp[0].invalid.checksum: -1 is below 0",
        "frontends[0].backends[0].state: 'enabled' is not one of up, down, drain",
        "frontends[0].backends[0].check_latency_seconds: expected number or null, got 'fast'",
        "frontends[1].name: expected string, got 7",
        "frontends[1].listen: missing",
        "frontends[1].active_connections: missing",
        "frontends[1].backends: missing",
    ]
    kept_vrrp = result.value["vrrp"][0]
    assert not {"state", "vrid", "priority", "adverts_sent"} & set(kept_vrrp)
    assert kept_vrrp["invalid"] == {"ttl": 4}
    assert kept_vrrp["tracks"] == FULL["vrrp"][0]["tracks"]
    kept_backend = result.value["frontends"][0]["backends"][0]
    assert "state" not in kept_backend and "check_latency_seconds" not in kept_backend
    assert kept_backend["health"] is None and kept_backend["address"] == "[2001:db8::21]:6443"
    assert result.value["frontends"][1] == {}
    assert result.summary() == f"{result.problems[0]} (and 11 more)"


def test_not_a_document_at_all() -> None:
    result = check(["not", "an", "object"])
    assert result.value is None and result.problems == ["document: expected object, got ['not', 'an', 'object']"]
    assert check(None, ReloadAnswer).problems == ["document: expected object, got None"]
    assert check({"ok": False, "config": "x", "summary": "y"}, ReloadAnswer).problems == [
        "ok: expected True, got False"]


def test_strict_reports_undescribed_fields_and_readers_ignore_them() -> None:
    document = copy.deepcopy(CONTRACT_EXAMPLE)
    document["no_such_list"] = []
    document["frontends"][0]["backends"][0]["no_such_field"] = False
    assert check(document).problems == []
    assert check(document, strict=True).problems == [
        "frontends[0].backends[0].no_such_field: not described by the schema",
        "no_such_list: not described by the schema",
    ]
    assert check(document).value == document


def test_agrees_with_a_reference_validator() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="the reference validator is optional")
    validator = jsonschema.Draft202012Validator(SCHEMA)
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    bad_state = copy.deepcopy(FULL)
    bad_state["frontends"][0]["backends"][0]["state"] = "enabled"
    no_master = copy.deepcopy(CONTRACT_EXAMPLE)
    del no_master["vrrp"][0]["master"]
    wrong_version = copy.deepcopy(CONTRACT_EXAMPLE)
    wrong_version["vrrp"][0]["version"] = 4
    for document in (CONTRACT_EXAMPLE, FULL, bad_state, no_master, wrong_version, {"node": None}):
        ours = check(document).problems
        theirs = [e.message for e in validator.iter_errors(document)]
        assert bool(ours) == bool(theirs), (ours, theirs)
    for typed, answer in ANSWERS:
        answer_validator = jsonschema.Draft202012Validator(
            {**SCHEMA, "$ref": f"#/$defs/{typed.__name__}"})
        assert list(answer_validator.iter_errors(answer)) == []

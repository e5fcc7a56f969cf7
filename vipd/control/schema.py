"""The status document (`lbctl status --json`, GET /v1/status) and the control socket's answers,
described once as typed dicts. The JSON Schema published as docs/status.schema.json is rendered
from them, and `check` validates against that rendered schema, so what users read is what the
tests, lbctl and the metrics enforce.

Fields of ../shared/CONTRACT.md are required; the daemon's extra fields are optional here, so a
reader of the contract's document alone stays valid. Standard library only: lbctl imports this.

Regenerate the published file:  python -m vipd.control.schema > docs/status.schema.json
"""
import enum
import json
import math
import sys
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from lbproxy.config import Balance, FrontendMode
from lbproxy.health import BackendState
from vipd.anycast.core import AnycastState
from vipd.election.core import State as ElectionState
from vipd.events import Kind, Level
from vipd.vrrp.fsm import State

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class Doc:
    """A field's description in the published schema."""
    text: str


@dataclass(frozen=True)
class Range:
    minimum: int | None = None
    maximum: int | None = None


Count = Annotated[int, Range(0)]
Seconds = Annotated[float, Range(0)]


class Track(TypedDict):
    """A track of a VRRP instance."""
    name: Annotated[str, Doc("`script:PROGRAM` (the file name of the program the script line starts, never "
                             "its arguments; `#2`, `#3`... when names repeat), `frontend:NAME` or `interface:NAME`")]
    ok: Annotated[bool, Doc("true while the track passes")]
    weight: Annotated[int, Range(-254, 254), Doc(
        "a negative weight is added to the priority while failing, a positive one while ok; "
        "0 = FAULT while failing")]
    health: NotRequired[Annotated[str, Doc("rise/fall progress as HAProxy shows it: `2/2 UP`, `0/3 DOWN`")]]


class VrrpInstance(TypedDict):
    """One `[[vrrp]]` instance."""
    name: str
    state: State
    vrid: Annotated[int, Range(1, 255)]
    interface: str
    version: Literal[2, 3]
    priority: Annotated[int, Range(1, 255), Doc("configured priority; 255 = address owner")]
    effective_priority: Annotated[int, Range(1, 255), Doc("priority after the track weights")]
    virtual_ips: Annotated[list[str], Doc("as configured, with prefix length")]
    master: Annotated[str | None, Doc("the current master's address as this node sees it "
                                      "(its own when MASTER), or null")]
    since: Annotated[str, Doc("UTC time of the last state change, `YYYY-MM-DDTHH:MM:SSZ`")]
    tracks: list[Track]
    adverts_sent: NotRequired[Count]
    adverts_received: NotRequired[Annotated[Count, Doc("valid advertisements received")]]
    invalid: NotRequired[Annotated[dict[str, Count], Doc(
        "packets dropped, counted by reason (only reasons seen)")]]
    transitions: NotRequired[Annotated[Count, Doc("state changes since start")]]
    fault_reasons: NotRequired[Annotated[list[str], Doc("why the instance is in FAULT, e.g. `link:eth0`")]]
    fault_reason: NotRequired[Annotated[str | None, Doc(
        "the fault_reasons in words (`link eth0 is down`), or null when there is no fault")]]
    master_advert_interval: NotRequired[Annotated[Seconds, Doc("the master's advertisement interval")]]
    unicast_peers: NotRequired[Annotated[list[str], Doc("empty: multicast")]]
    handing_over: NotRequired[Annotated[bool, Doc("a stopping master waiting for a successor")]]
    maintenance: NotRequired[Annotated[bool, Doc(
        "taken out of service by `lbctl maintenance on`: never MASTER until `off` (kept across restarts)")]]


class Election(TypedDict):
    """One `[[election]]`: VIPs held by whichever node holds an etcd lease on its key."""
    name: str
    state: Annotated[ElectionState, Doc("LEADER holds the VIPs; FOLLOWER does not; FAULT has no valid "
                                        "etcd lease (etcd unreachable or without quorum)")]
    holder: Annotated[str | None, Doc("the node holding the key as this node last read it, or null")]
    virtual_ips: Annotated[list[str], Doc("as configured, with prefix length")]
    maintenance: Annotated[bool, Doc("taken out of service by `lbctl maintenance on` (kept across restarts)")]
    since: Annotated[str, Doc("UTC time of the last state change, `YYYY-MM-DDTHH:MM:SSZ`")]
    reason: NotRequired[Annotated[str, Doc("why it is in this state, e.g. `held by edge-2`, "
                                           "`etcd: lease not renewed in time (...)`")]]
    interface: NotRequired[str]
    key: NotRequired[Annotated[str, Doc("the etcd key whose holder holds the VIPs")]]
    priority: NotRequired[Annotated[int, Range(1, 255)]]
    effective_priority: NotRequired[Annotated[int, Range(1, 255), Doc("priority after the track weights")]]
    lease_ttl: NotRequired[Annotated[Seconds, Doc("the lease TTL etcd granted (or the configured one)")]]
    fence_remaining: NotRequired[Annotated[Seconds, Doc(
        "seconds until this node must stop serving unless a renewal succeeds; 0 without a lease")]]
    keepalive_failures: NotRequired[Annotated[Count, Doc("lease renewals that failed since start")]]
    transitions: NotRequired[Annotated[Count, Doc("state changes since start")]]
    tracks: NotRequired[list[Track]]


class Anycast(TypedDict):
    """One `[[anycast]]` section: VIPs announced by the local routing daemon (FRR) while on `device`."""
    name: str
    state: Annotated[AnycastState, Doc("ANNOUNCED: the VIPs are on the device, so the routing daemon "
                                       "announces them; WITHDRAWN: they are not (still served locally)")]
    virtual_ips: Annotated[list[str], Doc("as configured, /32 or /128")]
    device: Annotated[str, Doc("the TUN device vipd owns; it vanishes with the vipd process")]
    maintenance: Annotated[bool, Doc("withdrawn by `lbctl maintenance on` until `off` (kept across restarts)")]
    since: Annotated[str, Doc("UTC time of the last state change, `YYYY-MM-DDTHH:MM:SSZ`")]
    reason: NotRequired[Annotated[str, Doc(
        "why it is in its state: `serving`, `starting`, `maintenance`, `stopping` or `failing: TRACKS`")]]
    transitions: NotRequired[Annotated[Count, Doc("state changes since start")]]
    tracks: NotRequired[Annotated[list[Track], Doc("withdrawn while any of them fails")]]


class BackendOverrides(TypedDict):
    """What the operator set at runtime on a backend (kept in `node.state_dir` across reloads and
    restarts); a field is present only while it overrides the config."""
    drain: NotRequired[Annotated[bool, Doc("`lbctl drain`, until `lbctl enable`")]]
    weight: NotRequired[Annotated[int, Range(0, 256), Doc(
        "`lbctl weight`, until set to the configured weight or `reset`")]]


class Backend(TypedDict):
    """A `[[frontend.backend]]`."""
    address: Annotated[str, Doc("as written in the config")]
    state: Annotated[BackendState, Doc("up takes new connections; down failed its checks; "
                                       "drain was taken out by the operator")]
    active_connections: Count
    total_connections: Count
    failed_connections: Annotated[Count, Doc("connects that failed")]
    weight: NotRequired[Annotated[Count, Doc("the weight in force: the configured one or a runtime override; "
                                             "0 takes no new connections (state `drain`)")]]
    overrides: NotRequired[BackendOverrides]
    backup: NotRequired[Annotated[bool, Doc("a backup backend: takes new connections only while no "
                                            "non-backup backend is up")]]
    effective_weight: NotRequired[Annotated[float, Range(0), Doc(
        "the weight the balancer uses now: below `weight` while the backend ramps up after coming "
        "up (`slow_start`), else equal to it")]]
    slow_start_remaining: NotRequired[Annotated[Seconds, Doc(
        "seconds until the backend reaches its full weight; 0 when it is not ramping up")]]
    bytes_in: NotRequired[Annotated[Count, Doc("bytes received from clients for this backend")]]
    bytes_out: NotRequired[Annotated[Count, Doc("bytes sent to clients from this backend")]]
    health: NotRequired[Annotated[str | None, Doc(
        "rise/fall progress as HAProxy shows it: `2/2 UP`, `0/3 DOWN`")]]
    last_error: NotRequired[Annotated[str | None, Doc("why the last failed check failed, or null")]]
    health_reason: NotRequired[Annotated[str | None, Doc(
        "why the backend is failing its checks now (the last failing check), or null while they pass")]]
    check_latency_seconds: NotRequired[Annotated[Seconds | None, Doc(
        "duration of the last health check, or null before the first")]]
    checks: NotRequired[Annotated[Count, Doc("active health checks run")]]
    check_failures: NotRequired[Annotated[Count, Doc("active health checks failed")]]
    passive_failures: NotRequired[Annotated[Count, Doc("failed connects counted against health")]]


class Frontend(TypedDict):
    """A `[[frontend]]`."""
    name: str
    listen: str
    active_connections: Count
    backends: list[Backend]
    balance: NotRequired[Balance]
    total_connections: NotRequired[Annotated[Count, Doc("client connections accepted")]]
    failed_connections: NotRequired[Annotated[Count, Doc("client connections no backend took")]]
    refused: NotRequired[Annotated[Count, Doc("client connections refused at max_connections")]]
    bytes_in: NotRequired[Count]
    bytes_out: NotRequired[Count]
    all_down: NotRequired[Annotated[bool, Doc("true while no backend takes new connections")]]
    using_backups: NotRequired[Annotated[bool, Doc("true while no primary backend is up and the "
                                                   "backup backends take new connections")]]
    serving: NotRequired[Annotated[bool, Doc("listening and at least one backend up "
                                             "(what a `frontend:NAME` track sees)")]]
    workers: NotRequired[Annotated[Count, Doc("worker processes accepting on this frontend")]]
    mode: NotRequired[Annotated[FrontendMode, Doc(
        "proxy: worker processes carry the connections; nat: the kernel forwards the packets (nftables "
        "DNAT): a backend's total_connections counts connections sent to it since the start, its "
        "active_connections the established conntrack entries, bytes and failed connects are not counted, "
        "refused counts connections reset while no backend was in the map")]]


class StatusDocument(TypedDict):
    """The state of one node: GET /v1/status on the control socket, `lbctl status --json`."""
    node: Annotated[str, Doc("the node's name (`node.name`)")]
    vrrp: list[VrrpInstance]
    frontends: list[Frontend]
    elections: NotRequired[list[Election]]
    pid: NotRequired[Annotated[int, Range(1)]]
    config: NotRequired[Annotated[str, Doc("path of the config file in force")]]
    anycast: NotRequired[list[Anycast]]


Warning = Annotated[str, Doc("the change is in force but was not saved in `node.state_dir`: why")]


class DrainAnswer(TypedDict):
    """The answer to POST /v1/frontends/F/backends/B/drain and .../enable."""
    frontend: str
    backend: str
    state: Annotated[BackendState, Doc("the backend's state after the change")]
    warning: NotRequired[Warning]


class WeightAnswer(TypedDict):
    """The answer to POST /v1/frontends/F/backends/B/weight/N (N: 0..256 or `reset`)."""
    frontend: str
    backend: str
    weight: Annotated[Count, Doc("the weight now in force")]
    state: BackendState
    overrides: BackendOverrides
    warning: NotRequired[Warning]


class OwnerMaintenance(TypedDict):
    """A VIP owner after `lbctl maintenance`."""
    name: str
    kind: Literal["vrrp", "election", "anycast"]
    state: Annotated[str, Doc("its state now; a MASTER going into maintenance hands over first")]
    maintenance: bool


class MaintenanceAnswer(TypedDict):
    """The answer to POST /v1/maintenance/on|off[/OWNER]: the owners it applied to."""
    maintenance: bool
    owners: list[OwnerMaintenance]
    warning: NotRequired[Warning]


class ReloadAnswer(TypedDict):
    """The answer to POST /v1/reload when the new config is in force."""
    ok: Literal[True]
    config: Annotated[str, Doc("path of the config file now in force")]
    summary: Annotated[str, Doc("what runs now, e.g. `1 vrrp instance(s), 1 frontend(s)`")]
    warnings: NotRequired[Annotated[list[str], Doc("the new config's warnings, as `vipd check` prints them "
                                                   "(also logged); empty when none")]]


class Event(TypedDict):
    """One record of the node's event stream: GET /v1/events, one per line of its `follow=1`
    stream and of `lbctl events --json`."""
    seq: Annotated[int, Range(1), Doc("position in the stream, increasing by one per event since the "
                                      "daemon started; an `events.dropped` record carries the last it stands for")]
    time: Annotated[str, Doc("UTC, `YYYY-MM-DDTHH:MM:SS.mmmZ`")]
    kind: Kind
    subject: Annotated[str, Doc("what it is about: an instance, `FRONTEND/BACKEND`, a worker, the config file")]
    level: Level
    message: Annotated[str, Doc("one line for a person")]
    fields: Annotated[dict[str, Any], Doc("the kind's details, e.g. old, new and reason of a transition")]


class EventsAnswer(TypedDict):
    """The answer to GET /v1/events?after=SEQ&limit=N: the newest N held events after SEQ, oldest first."""
    events: list[Event]


class ErrorAnswer(TypedDict):
    """Any refused or failed call (HTTP 4xx/5xx): one line for the operator."""
    error: str


DOCUMENTS = (StatusDocument, DrainAnswer, ReloadAnswer, WeightAnswer, MaintenanceAnswer, EventsAnswer, ErrorAnswer)


# --- rendering the typed dicts as JSON Schema

_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def _render(hint: Any, defs: dict[str, dict]) -> dict:
    if hint is Any:
        return {}
    origin = typing.get_origin(hint)
    if origin is Annotated:
        schema = dict(_render(hint.__origin__, defs))
        for extra in hint.__metadata__:
            if isinstance(extra, Doc):
                schema["description"] = extra.text
            elif isinstance(extra, Range):
                schema.update({k: v for k, v in (("minimum", extra.minimum),
                                                  ("maximum", extra.maximum)) if v is not None})
        return schema
    if origin is NotRequired:
        return _render(typing.get_args(hint)[0], defs)
    if origin in (typing.Union, types.UnionType):
        members = [_render(arg, defs) for arg in typing.get_args(hint)]
        if all(set(m) <= {"type", "minimum", "maximum"} for m in members[:-1]) and members[-1] == {"type": "null"}:
            return {**{k: v for m in members for k, v in m.items()}, "type": [m["type"] for m in members]}
        return {"anyOf": members}
    if origin is Literal:
        values = list(typing.get_args(hint))
        kind = _SIMPLE[type(values[0])]
        return {"type": kind, "const": values[0]} if len(values) == 1 else {"type": kind, "enum": values}
    if origin is list:
        return {"type": "array", "items": _render(typing.get_args(hint)[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _render(typing.get_args(hint)[1], defs)}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"type": "string", "enum": [member.value for member in hint]}
    if typing.is_typeddict(hint):
        if hint.__name__ not in defs:
            defs[hint.__name__] = {}  # placeholder: a type may refer to itself
            hints = typing.get_type_hints(hint, include_extras=True)
            defs[hint.__name__] = {
                "type": "object",
                "description": " ".join(hint.__doc__.split()),
                "properties": {key: _render(h, defs) for key, h in hints.items()},
                "required": [key for key in hints if key in hint.__required_keys__],
            }
        return {"$ref": f"#/$defs/{hint.__name__}"}
    return {"type": _SIMPLE[hint]}


def json_schema() -> dict:
    """The published schema: the status document, with the answers under $defs."""
    defs: dict[str, dict] = {}
    for document in DOCUMENTS:
        _render(document, defs)
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "vipd status document",
        "description": "What `lbctl status --json` prints and the control socket's GET /v1/status "
                       "answers; its calls' answers are under $defs. Generated by "
                       "`python -m vipd.control.schema`; readers must ignore fields they do not know.",
        "$ref": f"#/$defs/{StatusDocument.__name__}",
        "$defs": defs,
    }


SCHEMA = json_schema()


# --- checking a value against the rendered schema (the subset it uses)

@dataclass(frozen=True)
class Checked:
    """`value` keeps what matches the schema (fields and entries that do not are left out);
    `problems` names each mismatch as `path: what`, empty when the value is valid."""
    value: Any
    problems: list[str]

    def summary(self) -> str:
        more = len(self.problems) - 1
        return self.problems[0] + (f" (and {more} more)" if more > 0 else "")


_INVALID = object()
_TYPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Checker:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.problems: list[str] = []

    def walk(self, value: Any, schema: dict, path: str) -> Any:
        where = path or "document"
        if "$ref" in schema:
            value = self.walk(value, SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[1]], path)
            if value is _INVALID:
                return value
        if "anyOf" in schema:
            for branch in schema["anyOf"]:
                trial = _Checker(self.strict)
                kept = trial.walk(value, branch, path)
                if not trial.problems:
                    return kept
            self.problems.append(f"{where}: {_shown(value)} matches none of the allowed forms")
            return _INVALID
        kinds = schema.get("type")
        if kinds is not None:
            kinds = [kinds] if isinstance(kinds, str) else kinds
            if not any(_TYPES[kind](value) for kind in kinds):
                self.problems.append(f"{where}: expected {' or '.join(kinds)}, got {_shown(value)}")
                return _INVALID
        if "const" in schema and value != schema["const"]:
            self.problems.append(f"{where}: expected {schema['const']!r}, got {_shown(value)}")
            return _INVALID
        if "enum" in schema and value not in schema["enum"]:
            self.problems.append(f"{where}: {_shown(value)} is not one of "
                                 f"{', '.join(str(v) for v in schema['enum'])}")
            return _INVALID
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                self.problems.append(f"{where}: {value} is below {schema['minimum']}")
                return _INVALID
            if "maximum" in schema and value > schema["maximum"]:
                self.problems.append(f"{where}: {value} is above {schema['maximum']}")
                return _INVALID
        if isinstance(value, list) and "items" in schema:
            kept = (self.walk(item, schema["items"], f"{path}[{i}]") for i, item in enumerate(value))
            return [item for item in kept if item is not _INVALID]
        if isinstance(value, dict) and ("properties" in schema or "additionalProperties" in schema):
            return self._object(value, schema, path)
        return value

    def _object(self, value: dict, schema: dict, path: str) -> dict:
        properties = schema.get("properties", {})
        out = {}
        for key, item in value.items():
            inner = properties.get(key, schema.get("additionalProperties"))
            if inner is None:
                if self.strict:
                    self.problems.append(f"{_join(path, str(key))}: not described by the schema")
                out[key] = item
                continue
            kept = self.walk(item, inner, _join(path, str(key)))
            if kept is not _INVALID:
                out[key] = kept
        for key in schema.get("required", ()):
            if key not in value:
                self.problems.append(f"{_join(path, key)}: missing")
        return out


def check(value: Any, document: type = StatusDocument, *, strict: bool = False) -> Checked:
    """Validate `value` as a `document` (one of DOCUMENTS). `strict` also reports fields the schema
    does not describe: the tests' mode, while readers ignore what a newer daemon added."""
    checker = _Checker(strict)
    kept = checker.walk(value, {"$ref": f"#/$defs/{document.__name__}"}, "")
    return Checked(None if kept is _INVALID else kept, checker.problems)


def described_keys(document: type) -> set[str]:
    """Every field the schema describes for `document`, required or not."""
    return set(document.__required_keys__ | document.__optional_keys__)


def main() -> None:
    json.dump(SCHEMA, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

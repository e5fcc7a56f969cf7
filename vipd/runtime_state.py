"""What the operator changed at runtime (drains, weights, maintenance), kept in `node.state_dir` so
it survives a reload and a restart until changed back.

`RuntimeState` is the pure record (decode, change, prune); `StateFile` reads and writes it: JSON
with a version, replaced atomically (a temporary file, fsync, rename, fsync of the directory), so
a crash leaves the old file or the new one, never half of one. A missing file is no overrides; an
unreadable or corrupt one is a warning and no overrides: the daemon never fails to start for it.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

log = logging.getLogger("vipd")

STATE_VERSION = 1
STATE_FILE = "runtime.json"
DIRECTORY_MODE = 0o750
FILE_MODE = 0o640
# `lbctl weight`'s range, HAProxy's runtime one; configured weights may go higher (1..1000).
RUNTIME_WEIGHT_MAX = 256
RESET = "reset"


@dataclass(frozen=True)
class Invalid:
    reason: str


def decode_weight(text: str) -> int | None | Invalid:
    """`lbctl weight`'s N: an integer 0..256 (0 = no new connections), or `reset` (None: back to
    the configured weight)."""
    if text.strip().lower() == RESET:
        return None
    try:
        weight = int(text, 10)
    except ValueError:
        return Invalid(f"weight must be an integer 0..{RUNTIME_WEIGHT_MAX} or {RESET!r}, not {text!r}")
    if not 0 <= weight <= RUNTIME_WEIGHT_MAX:
        return Invalid(f"weight {weight} is out of range 0..{RUNTIME_WEIGHT_MAX}")
    return weight


@dataclass
class RuntimeState:
    maintenance_all: bool = False                  # every VIP owner, present and future
    maintenance: set[str] = field(default_factory=set)
    drains: dict[str, set[str]] = field(default_factory=dict)           # frontend -> backends
    weights: dict[str, dict[str, int]] = field(default_factory=dict)    # frontend -> backend -> weight

    # --- reading

    def in_maintenance(self, owner: str) -> bool:
        return self.maintenance_all or owner in self.maintenance

    def drained(self, frontend: str, backend: str) -> bool:
        return backend in self.drains.get(frontend, ())

    def weight(self, frontend: str, backend: str) -> int | None:
        return self.weights.get(frontend, {}).get(backend)

    def backends(self, frontend: str) -> set[str]:
        """Backends of `frontend` with an override."""
        return set(self.drains.get(frontend, ())) | set(self.weights.get(frontend, {}))

    # --- changing

    def set_maintenance(self, on: bool, owner: str | None, owners: Iterable[str]) -> None:
        """`owner` None: all of them. Turning one off while all are on keeps the others on."""
        if owner is None:
            self.maintenance_all, self.maintenance = on, set()
        elif on:
            self.maintenance.add(owner)
        else:
            if self.maintenance_all:
                self.maintenance_all, self.maintenance = False, set(owners)
            self.maintenance.discard(owner)

    def set_drain(self, frontend: str, backend: str, drained: bool) -> None:
        if drained:
            self.drains.setdefault(frontend, set()).add(backend)
        else:
            self.drains.get(frontend, set()).discard(backend)
        self._tidy()

    def set_weight(self, frontend: str, backend: str, weight: int | None) -> None:
        """None removes the override."""
        if weight is None:
            self.weights.get(frontend, {}).pop(backend, None)
        else:
            self.weights.setdefault(frontend, {})[backend] = weight
        self._tidy()

    def prune(self, owners: Iterable[str] | None, frontends: Mapping[str, Iterable[str]]) -> list[str]:
        """Forget overrides naming what the config no longer has (`owners` None: VIP owners are not
        this process's business); what was dropped, one line each."""
        known = {name: set(backends) for name, backends in frontends.items()}
        dropped = []
        if owners is not None:
            owners = set(owners)
            dropped = [f"maintenance of {name!r}: no such VIP owner" for name in sorted(self.maintenance - owners)]
            self.maintenance &= owners
        for kind, table in (("drain", self.drains), ("weight", self.weights)):
            for frontend in sorted(table):
                gone = sorted(b for b in table[frontend] if b not in known.get(frontend, ()))
                for backend in gone:
                    dropped.append(f"{kind} of {frontend} {backend}: no such "
                                   + ("frontend" if frontend not in known else "backend"))
                    if isinstance(table[frontend], set):
                        table[frontend].discard(backend)
                    else:
                        table[frontend].pop(backend)
        self._tidy()
        return dropped

    def _tidy(self) -> None:
        self.drains = {f: b for f, b in self.drains.items() if b}
        self.weights = {f: w for f, w in self.weights.items() if w}

    # --- the file's form

    def to_json(self) -> dict:
        return {
            "version": STATE_VERSION,
            "maintenance": {"all": self.maintenance_all, "owners": sorted(self.maintenance)},
            "drains": {f: sorted(b) for f, b in sorted(self.drains.items())},
            "weights": {f: dict(sorted(w.items())) for f, w in sorted(self.weights.items())},
        }

    @classmethod
    def decode(cls, data: Any) -> RuntimeState | Invalid:
        """The file's JSON as a RuntimeState, or why it is not one."""
        if not isinstance(data, dict):
            return Invalid("not a JSON object")
        if data.get("version") != STATE_VERSION:
            return Invalid(f"version {data.get('version')!r} is not {STATE_VERSION}")
        maintenance = data.get("maintenance", {})
        drains = data.get("drains", {})
        weights = data.get("weights", {})
        if not (isinstance(maintenance, dict) and isinstance(maintenance.get("all", False), bool)
                and _strings(maintenance.get("owners", []))):
            return Invalid("maintenance: expected {\"all\": bool, \"owners\": [names]}")
        if not (isinstance(drains, dict) and all(_strings(b) for b in drains.values())):
            return Invalid("drains: expected {frontend: [backends]}")
        if not (isinstance(weights, dict) and all(
                isinstance(w, dict) and all(type(n) is int and 0 <= n <= RUNTIME_WEIGHT_MAX for n in w.values())
                for w in weights.values())):
            return Invalid(f"weights: expected {{frontend: {{backend: 0..{RUNTIME_WEIGHT_MAX}}}}}")
        state = cls(maintenance.get("all", False), set(maintenance.get("owners", [])),
                    {f: set(b) for f, b in drains.items()}, {f: dict(w) for f, w in weights.items()})
        state._tidy()
        return state


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


class StateFile:
    """`runtime.json` in the state directory; the directory is made (0750) on the first save."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, STATE_FILE)
        self._tmp = os.path.join(directory, f".{STATE_FILE}.tmp")

    def load(self) -> RuntimeState:
        """The saved state; no overrides (and a one-line warning) when it cannot be used."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return RuntimeState()
        except OSError as exc:
            log.warning("runtime state %s unreadable (%s); starting without runtime overrides",
                        self.path, exc.strerror or exc)
            return RuntimeState()
        try:
            decoded = RuntimeState.decode(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, ValueError) as exc:
            decoded = Invalid(f"not JSON: {str(exc).splitlines()[0]}")
        if isinstance(decoded, Invalid):
            log.warning("runtime state %s ignored (%s); starting without runtime overrides",
                        self.path, decoded.reason)
            return RuntimeState()
        return decoded

    def save(self, state: RuntimeState) -> None:
        """Replace the file atomically; OSError when that cannot be done (the old file stays)."""
        if not os.path.isdir(self.directory):
            os.makedirs(self.directory, mode=DIRECTORY_MODE, exist_ok=True)
            os.chmod(self.directory, DIRECTORY_MODE)
        payload = (json.dumps(state.to_json(), indent=2) + "\n").encode()
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
        except BaseException:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            raise
        directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

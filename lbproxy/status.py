"""The proxy's part of the status document: the workers' traffic counters, summed, joined with
the health checker's view of each backend."""
from __future__ import annotations

from typing import Iterable

from lbproxy.config import FrontendConfig
from lbproxy.health import BackendState


def add_counters(a: dict, b: dict) -> dict:
    """Sum two counter documents (numbers add, nested dicts merge, flags or)."""
    out = dict(a)
    for key, value in b.items():
        mine = out.get(key)
        if isinstance(value, dict):
            out[key] = add_counters(mine if isinstance(mine, dict) else {}, value)
        elif isinstance(value, bool):
            out[key] = bool(mine) or value
        elif isinstance(value, (int, float)):
            out[key] = (mine if isinstance(mine, (int, float)) and not isinstance(mine, bool) else 0) + value
    return out


class TrafficTotals:
    """Per-frontend counters of every worker, the exited ones included (their open
    connections excepted): totals never go backwards when a worker is replaced."""

    def __init__(self) -> None:
        self._retired: dict[str, dict] = {}

    def retire(self, stats: dict[str, dict]) -> None:
        """A worker is gone: keep its counters, drop its `active` gauges."""
        for name, frontend in stats.items():
            kept = {k: v for k, v in frontend.items() if k != "active"}
            kept["backends"] = {a: {k: v for k, v in b.items() if k != "active"}
                                for a, b in frontend.get("backends", {}).items()}
            self._retired[name] = add_counters(self._retired.get(name, {}), kept)

    def frontends(self, live: Iterable[dict[str, dict]]) -> dict[str, dict]:
        """Live workers' stats documents plus the retired counters, per frontend name."""
        totals = {name: dict(counters) for name, counters in self._retired.items()}
        for stats in live:
            for name, counters in stats.items():
                totals[name] = add_counters(totals.get(name, {}), counters)
        return totals


def frontend_status(frontend: FrontendConfig, counters: dict, health: list[dict], all_down: bool,
                    serving: bool, workers: int, using_backups: bool = False) -> dict:
    """One entry of the status document's `frontends`."""
    checked = {h["address"]: h for h in health}
    traffic = counters.get("backends", {})
    backends = []
    for backend in frontend.backends:
        c = traffic.get(backend.address, {})
        h = checked.get(backend.address, {})
        weight = h.get("weight", backend.weight)
        backends.append({
            "address": backend.address,
            "state": h.get("state", BackendState.UP),
            "weight": weight,
            "backup": backend.backup,
            "effective_weight": h.get("effective_weight", float(weight)),
            "slow_start_remaining": h.get("slow_start_remaining", 0.0),
            "active_connections": c.get("active", 0),
            "total_connections": c.get("total", 0),
            "failed_connections": c.get("failed", 0),
            "bytes_in": c.get("bytes_in", 0),
            "bytes_out": c.get("bytes_out", 0),
            "health": h.get("health"),
            "last_error": h.get("last_error"),
            "health_reason": h.get("health_reason"),
            "check_latency_seconds": h.get("check_latency_seconds"),
            "checks": h.get("checks", 0),
            "check_failures": h.get("check_failures", 0),
            "passive_failures": h.get("passive_failures", 0),
            "overrides": h.get("overrides", {}),      # what lbctl drain / weight set, if anything
        })
    return {
        "name": frontend.name,
        "listen": frontend.listen,
        "balance": frontend.balance,
        "mode": frontend.mode,
        "active_connections": counters.get("active", 0),
        "total_connections": counters.get("accepted", 0),
        "failed_connections": counters.get("failed", 0),
        "refused": counters.get("refused", 0),
        "bytes_in": sum(b["bytes_in"] for b in backends),
        "bytes_out": sum(b["bytes_out"] for b in backends),
        "all_down": all_down,
        "using_backups": using_backups,
        "serving": serving,
        "workers": workers,
        "backends": backends,
    }

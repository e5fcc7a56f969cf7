"""The live status page at GET / of the metrics listener: HTML rendered on the server from the
status document (vipd.control.schema), so curl and a browser without JavaScript see the same
content. Where JavaScript runs, a small inline script fetches the page again every 2 s and swaps
its <main> in place, so there is one renderer and no escaping in the browser.

Self-contained for air-gapped hosts: inline CSS and script, no fonts or files from elsewhere. Every
value from the document is escaped, and the Content-Security-Policy allows only the one inline
script by its hash, so a backend or track named `<script>` is text and could not run anyway.
"""
from __future__ import annotations

import base64
import hashlib
import html
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from lbproxy.health import BackendState
from vipd.control.schema import StatusDocument, check
from vipd.vrrp.fsm import State

REFRESH_SECONDS = 2
HISTORY_LENGTH = 6
EVENTS_SHOWN = 30

# Colour of a state, by tone. Elections and anycast have no enum in the code base yet: their
# states are written as the contract spells them.
_TONES: dict[str, str] = {
    State.MASTER: "good", State.BACKUP: "info", State.INIT: "idle", State.FAULT: "bad",
    BackendState.UP: "good", BackendState.DOWN: "bad", BackendState.DRAIN: "warn",
    "LEADER": "good", "FOLLOWER": "info", "ANNOUNCED": "good", "WITHDRAWN": "idle",
}

STYLE = """
:root { --fg:#1d2330; --muted:#5d6677; --line:#dde1e8; --bg:#f6f7f9; --card:#fff;
  --good:#1a7f37; --good-bg:#dcf5e3; --info:#2456a6; --info-bg:#e1ebfa; --warn:#8a5a00;
  --warn-bg:#fdf0d2; --bad:#b42318; --bad-bg:#fde4e1; --idle:#4b5563; --idle-bg:#eceef2; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 18px 24px 32px; }
header { display: flex; align-items: baseline; gap: 14px; flex-wrap: wrap; }
h1 { font-size: 22px; margin: 0; }
h1 .node { color: var(--info); }
h2 { font-size: 15px; margin: 26px 0 8px; text-transform: uppercase; letter-spacing: .06em;
  color: var(--muted); }
h3 { font-size: 15px; margin: 0; }
.meta { color: var(--muted); font-size: 12.5px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; margin: 0 0 14px;
  overflow-x: auto; }
.card > .title { display: flex; gap: 12px; align-items: baseline; flex-wrap: wrap; padding: 10px 14px;
  border-bottom: 1px solid var(--line); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 7px 14px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: #fafbfc; white-space: nowrap; }
tr:last-child td { border-bottom: none; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 700;
  letter-spacing: .02em; white-space: nowrap; }
.good { color: var(--good); background: var(--good-bg); }
.info { color: var(--info); background: var(--info-bg); }
.warn { color: var(--warn); background: var(--warn-bg); }
.bad { color: var(--bad); background: var(--bad-bg); }
.idle { color: var(--idle); background: var(--idle-bg); }
.reason { color: var(--bad); font-size: 12.5px; }
.small { font-size: 12px; color: var(--muted); }
ul.plain { list-style: none; margin: 0; padding: 0; }
ul.plain li { margin: 1px 0; white-space: nowrap; }
.history li { white-space: nowrap; margin: 0 0 2px; }
.history .arrow { color: var(--muted); padding-right: 3px; }
.nowrap { white-space: nowrap; }
.empty { color: var(--muted); padding: 10px 14px; margin: 0; }
#conn { position: absolute; right: 24px; top: 14px; margin: 0; font-size: 12px; padding: 3px 10px; border-radius: 10px;
  background: var(--idle-bg); color: var(--idle); }
#conn.live { background: var(--good-bg); color: var(--good); }
#conn.stale { background: var(--bad-bg); color: var(--bad); }
"""

# Swaps <main> for the freshly rendered one; on failure says so and keeps the last content.
SCRIPT = """
(function () {
  var conn = document.getElementById("conn");
  function say(text, tone) { conn.textContent = text; conn.className = tone; }
  function refresh() {
    fetch(window.location.pathname, {cache: "no-store", headers: {"Accept": "text/html"}})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html");
        var main = fresh.querySelector("main");
        if (!main) { throw new Error("no content"); }
        document.querySelector("main").replaceWith(document.adoptNode(main));
        document.title = fresh.title;
        say("live: updated every %(seconds)d s", "live");
      })
      .catch(function (err) { say("cannot reach vipd (" + err.message + "): showing older data", "stale"); })
      .finally(function () { window.setTimeout(refresh, %(millis)d); });
  }
  say("live: updated every %(seconds)d s", "live");
  window.setTimeout(refresh, %(millis)d);
})();
""" % {"seconds": REFRESH_SECONDS, "millis": REFRESH_SECONDS * 1000}

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; style-src 'unsafe-inline'; "
                               f"script-src 'sha256-{_SCRIPT_HASH}'; connect-src 'self'; "
                               f"img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def e(value: Any) -> str:
    """A value as HTML text (also safe inside a quoted attribute)."""
    return html.escape("" if value is None else str(value), quote=True)


@dataclass(frozen=True)
class Change:
    """A state an owner of a VIP was seen in, from the `since` the document gave for it."""
    state: str
    since: str


class History:
    """The last few states of each VIP owner, from successive status reads. A read keyed by the
    document's own `since` records a change at its true time even when reads are sparse; changes
    between two reads are missed (the instance's `transitions` counter says how many)."""

    def __init__(self, length: int = HISTORY_LENGTH) -> None:
        self.length = length
        self.changes: dict[tuple[str, str], deque[Change]] = {}

    def remember(self, document: dict) -> None:
        seen = set()
        for kind, owner in _owners(document):
            if not isinstance(owner.get("state"), str) or not isinstance(owner.get("name"), str):
                continue
            key = (kind, owner["name"])
            seen.add(key)
            change = Change(owner["state"], str(owner.get("since") or ""))
            kept = self.changes.setdefault(key, deque(maxlen=self.length))
            if not kept or kept[-1] != change:
                kept.append(change)
        for gone in set(self.changes) - seen:
            del self.changes[gone]

    def of(self, kind: str, name: str) -> list[Change]:
        return list(self.changes.get((kind, name), ()))


def _owners(document: dict) -> Iterable[tuple[str, dict]]:
    for kind in ("vrrp", "elections", "anycast"):
        for owner in document.get(kind) or ():
            if isinstance(owner, dict):
                yield kind, owner


class StatusPage:
    """Reads the status document for the page and /status.json, and keeps the VIP owners' history.
    `events`, when given, returns the recent events (oldest first) for the events panel."""

    def __init__(self, status: Callable[[], dict],
                 events: Callable[[], list[dict]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.status = status
        self.events = events
        self.clock = clock
        self.history = History()

    def document(self) -> dict:
        document = self.status()
        if isinstance(document, dict):
            self.history.remember(document)
        return document

    def html(self) -> str:
        document = self.document()
        events = self.events() if self.events is not None else None
        return render_page(document, self.history, events, self.clock())


# --- rendering: pure functions of the document


def render_page(document: Any, history: History, events: list[dict] | None, now: float) -> str:
    doc: StatusDocument = check(document, StatusDocument).value or {}
    node = doc.get("node", "?")
    return "".join([
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>vipd · {e(node)}</title>",
        f"<noscript><meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS * 5}\"></noscript>",
        f"<style>{STYLE}</style></head><body>\n<main>",
        _header(doc, now),
        _owners_section(doc, history, now),
        _frontends_section(doc),
        _events_section(events),
        "</main>\n",
        f"<p id=\"conn\">static page: reloads every {REFRESH_SECONDS * 5} s without JavaScript</p>",
        f"<script>{SCRIPT}</script>\n</body></html>\n",
    ])


def render_error(reason: str, now: float) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>vipd · status unavailable"
            f"</title><style>{STYLE}</style></head><body><main><h1>vipd</h1><p class=\"reason\">"
            f"the status document could not be read: {e(reason)}</p><p class=\"meta\">at {_clock(now)}</p>"
            f"</main><p id=\"conn\"></p><script>{SCRIPT}</script></body></html>\n")


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(since: str, now: float) -> str:
    """`since` (YYYY-MM-DDTHH:MM:SSZ) as a short age, or "" when it does not parse."""
    try:
        at = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return ""
    s = max(0, int(now - at))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m {s % 60}s ago"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m ago"
    return f"{s // 86400}d {s % 86400 // 3600}h ago"


def _badge(state: Any) -> str:
    text = "?" if state is None else str(state)
    return f"<span class=\"badge {_TONES.get(text, 'idle')}\">{e(text.upper())}</span>"


def _tag(text: str, tone: str, title: str = "") -> str:
    hint = f" title=\"{e(title)}\"" if title else ""
    return f"<span class=\"badge {tone}\"{hint}>{e(text)}</span>"


def _header(doc: dict, now: float) -> str:
    bits = [f"read {_clock(now)}"]
    if "pid" in doc:
        bits.append(f"pid {e(doc['pid'])}")
    if "config" in doc:
        bits.append(f"config <code>{e(doc['config'])}</code>")
    return (f"<header><h1>vipd <span class=\"node\">{e(doc.get('node', '?'))}</span></h1>"
            f"<span class=\"meta\">{' · '.join(bits)}</span>"
            "<span class=\"meta\">· <a href=\"status.json\">status.json</a> · <a href=\"metrics\">metrics</a></span>"
            "</header>\n")


def _since_cell(owner: dict, now: float) -> str:
    since = owner.get("since")
    if not isinstance(since, str):
        return ""
    ago = _ago(since, now)
    return f"<div class=\"small nowrap\" title=\"{e(since)}\">since {e(since[11:19] or since)}{' · ' + e(ago) if ago else ''}</div>"


def _history_cell(changes: list[Change], transitions: Any) -> str:
    if not changes:
        return ""
    arrow = "<span class=\"arrow\">→</span>"
    chips = "".join(
        f"<li title=\"{e(c.since)}\">{arrow if i else ''}{_badge(c.state)}"
        f"<span class=\"small\"> {e(c.since[11:19])}</span></li>"
        for i, c in enumerate(changes))
    total = f"<div class=\"small\">{e(transitions)} transition(s) since start</div>" if isinstance(transitions, int) else ""
    return f"<ul class=\"plain history\">{chips}</ul>{total}"


def _notes(owner: dict) -> list[str]:
    """Maintenance, fault reasons and hand-over, for whichever of them the document has."""
    notes = []
    if owner.get("maintenance"):
        notes.append(_tag("MAINTENANCE", "warn", "taken out of VIP ownership by the operator"))
    if owner.get("handing_over"):
        notes.append(_tag("HANDING OVER", "info", "a stopping master waiting for a successor"))
    reasons = []
    if isinstance(owner.get("fault_reason"), str) and owner["fault_reason"]:
        reasons.append(owner["fault_reason"])
    for reason in owner.get("fault_reasons") or ():
        if isinstance(reason, str) and reason not in reasons:
            reasons.append(reason)
    notes.extend(f"<div class=\"reason\">{e(r)}</div>" for r in reasons)
    return notes


def _vips(owner: dict) -> str:
    return "<br>".join(f"<code>{e(v)}</code>" for v in owner.get("virtual_ips") or ())


def _tracks(tracks: list[dict]) -> str:
    if not tracks:
        return "<span class=\"small\">none</span>"
    items = []
    for t in tracks:
        ok = t.get("ok")
        state = _tag("ok" if ok else "failing", "good" if ok else "bad")
        weight = t.get("weight")
        effect = "FAULT while failing" if weight == 0 else f"weight {weight:+d}" if isinstance(weight, int) else ""
        health = f" · {e(t['health'])}" if isinstance(t.get("health"), str) else ""
        items.append(f"<li>{state} <code>{e(t.get('name', '?'))}</code>"
                     f" <span class=\"small\">{e(effect)}{health}</span></li>")
    return f"<ul class=\"plain\">{''.join(items)}</ul>"


def _owners_section(doc: dict, history: History, now: float) -> str:
    parts = ["<h2>VIP owners</h2>"]
    vrrp = doc.get("vrrp") or []
    parts.append("<div class=\"card\">" + (
        "<table id=\"vrrp\"><thead><tr><th>VRRP instance</th><th>State</th><th class=\"num\">Priority</th>"
        "<th>Master</th><th>Virtual IPs</th><th>Tracks</th><th>History</th></tr></thead><tbody>"
        + "".join(_vrrp_row(v, history, now) for v in vrrp) + "</tbody></table>"
        if vrrp else "<p class=\"empty\">no [[vrrp]] instances</p>") + "</div>")
    if "elections" in doc:
        parts.append(_other_owners(doc["elections"], "elections", "Election", "Holder", "holder", history, now))
    if "anycast" in doc:
        parts.append(_other_owners(doc["anycast"], "anycast", "Anycast", "Device", "device", history, now))
    return "".join(parts) + "\n"


def _vrrp_row(v: dict, history: History, now: float) -> str:
    name = v.get("name", "?")
    details = f"VRID {e(v.get('vrid'))} · {e(v.get('interface'))} · v{e(v.get('version'))}"
    peers = v.get("unicast_peers")
    if peers:
        details += " · unicast " + ", ".join(e(p) for p in peers)
    prio, eff = v.get("priority"), v.get("effective_priority")
    priority = e(eff) if eff == prio else f"<b>{e(eff)}</b> <span class=\"small\">of {e(prio)}</span>"
    return (f"<tr data-instance=\"{e(name)}\"><td><b>{e(name)}</b><div class=\"small nowrap\">{details}</div></td>"
            f"<td>{_badge(v.get('state'))}{''.join(_notes(v))}{_since_cell(v, now)}</td>"
            f"<td class=\"num\">{priority}</td>"
            f"<td><code>{e(v.get('master') or '—')}</code></td>"
            f"<td>{_vips(v)}</td><td>{_tracks(v.get('tracks') or [])}</td>"
            f"<td>{_history_cell(history.of('vrrp', name), v.get('transitions'))}</td></tr>")


def _other_owners(owners: Any, kind: str, title: str, column: str, key: str,
                  history: History, now: float) -> str:
    rows = []
    for o in owners if isinstance(owners, list) else ():
        if not isinstance(o, dict):
            continue
        name = o.get("name", "?")
        rows.append(f"<tr data-{kind}=\"{e(name)}\"><td><b>{e(name)}</b></td>"
                    f"<td>{_badge(o.get('state'))}{''.join(_notes(o))}{_since_cell(o, now)}</td>"
                    f"<td><code>{e(o.get(key) or '—')}</code></td><td>{_vips(o)}</td>"
                    f"<td>{_history_cell(history.of(kind, name), None)}</td></tr>")
    if not rows:
        return ""
    return (f"<div class=\"card\"><table id=\"{kind}\"><thead><tr><th>{title}</th><th>State</th>"
            f"<th>{column}</th><th>Virtual IPs</th><th>History</th></tr></thead><tbody>{''.join(rows)}"
            "</tbody></table></div>")


def _frontends_section(doc: dict) -> str:
    frontends = doc.get("frontends") or []
    if not frontends:
        return "<h2>Frontends</h2><div class=\"card\"><p class=\"empty\">no [[frontend]] sections</p></div>\n"
    return "<h2>Frontends</h2>" + "".join(_frontend(f) for f in frontends) + "\n"


def _frontend(f: dict) -> str:
    name = f.get("name", "?")
    facts = [f"listen <code>{e(f.get('listen'))}</code>"]
    if "balance" in f:
        facts.append(f"balance {e(f['balance'])}")
    facts.append(f"{e(f.get('active_connections', 0))} active")
    if "total_connections" in f:
        facts.append(f"{e(f['total_connections'])} total")
    if f.get("failed_connections"):
        facts.append(f"{e(f['failed_connections'])} failed")
    if f.get("refused"):
        facts.append(f"{e(f['refused'])} refused")
    if "workers" in f:
        facts.append(f"{e(f['workers'])} worker(s)")
    serving = ""
    if f.get("all_down") is True or f.get("serving") is False:
        serving = _tag("NOT SERVING", "bad", "no backend takes new connections")
    elif f.get("serving") is True:
        serving = _tag("SERVING", "good")
    backends = f.get("backends") or []
    table = ("<table class=\"backends\"><thead><tr><th>Backend</th><th>State</th><th>Health</th>"
             "<th class=\"num\">Weight</th><th class=\"num\">Active</th><th class=\"num\">Total</th>"
             "<th class=\"num\">Failed</th><th>Last error</th></tr></thead><tbody>"
             + "".join(_backend_row(name, b) for b in backends) + "</tbody></table>"
             if backends else "<p class=\"empty\">no backends</p>")
    return (f"<div class=\"card\" data-frontend=\"{e(name)}\"><div class=\"title\"><h3>{e(name)}</h3>"
            f"{serving}<span class=\"meta\">{' · '.join(facts)}</span></div>{table}</div>")


def _backend_row(frontend: str, b: dict) -> str:
    address = b.get("address", "?")
    backup = " " + _tag("backup", "idle", "used only while no other backend is up") if b.get("backup") else ""
    health = e(b["health"]) if isinstance(b.get("health"), str) else ""
    latency = b.get("check_latency_seconds")
    if isinstance(latency, (int, float)):
        health += f" <span class=\"small\">{latency * 1000:.1f} ms</span>"
    error = next((b[k] for k in ("health_reason", "last_error") if isinstance(b.get(k), str) and b[k]), "")
    return (f"<tr data-backend=\"{e(address)}\" data-frontend=\"{e(frontend)}\">"
            f"<td><code>{e(address)}</code>{backup}</td>"
            f"<td class=\"state\">{_badge(b.get('state'))}</td><td>{health}</td>"
            f"<td class=\"num\">{e(b.get('weight', ''))}</td>"
            f"<td class=\"num\">{e(b.get('active_connections'))}</td>"
            f"<td class=\"num\">{e(b.get('total_connections'))}</td>"
            f"<td class=\"num\">{e(b.get('failed_connections'))}</td>"
            f"<td class=\"reason\">{e(error)}</td></tr>")


_EVENT_TIME = ("time", "at", "ts", "timestamp")
_EVENT_KIND = ("type", "kind", "event")


def _event_time(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, timezone.utc).strftime("%H:%M:%S")
    return str(value) if value is not None else ""


def _events_section(events: list[dict] | None) -> str:
    head = "<h2>Recent events</h2><div class=\"card\">"
    if events is None:
        return head + "<p class=\"empty\">no event stream</p></div>\n"
    shown = [ev for ev in events if isinstance(ev, dict)][-EVENTS_SHOWN:]
    if not shown:
        return head + "<p class=\"empty\">no events yet</p></div>\n"
    rows = []
    for ev in reversed(shown):
        when = next((ev[k] for k in _EVENT_TIME if k in ev), None)
        kind = next((ev[k] for k in _EVENT_KIND if k in ev), "")
        rest = " ".join(f"{k}={v}" for k, v in ev.items() if k not in _EVENT_TIME + _EVENT_KIND)
        rows.append(f"<tr><td class=\"mono\">{e(_event_time(when))}</td><td><b>{e(kind)}</b></td>"
                    f"<td class=\"mono\">{e(rest)}</td></tr>")
    return (head + "<table id=\"events\"><thead><tr><th>Time</th><th>Event</th><th>Details</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>\n")

"""What a client saw through a failover, as a picture: `vipd demo --plot` and `bench/failover.py
--plot`. One panel per fault: every connection attempt at its start time (replies as dots at their
latency, failures as red marks at the time they took to fail; log scale), who held the VIP as a
coloured band, the fault as a vertical line at 0 s.

matplotlib is imported only when drawing (it is in the test extra, not a dependency of vipd).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vipd.lab import connclient, edges

NOBODY = "none"
BOTH = "both edges"
_HOLDER_COLOURS = {"edge-1": "#2f6fd0", "edge-2": "#e8891d", NOBODY: "#b8bcc4", BOTH: "#8e44ad"}
_HOLDER_LABELS = {NOBODY: "VIP on no running edge", BOTH: "VIP on both edges"}
_OK_COLOUR = "#1d3f66"
_FAILED_COLOUR = "#d62728"
_FAULT_COLOUR = "#b42318"
_MARK_COLOUR = "#3d4451"


class HolderSampler:
    """Who holds the VIP, sampled every 50 ms in a thread: `changes` is [(monotonic time, holder)],
    the first entry being the holder when sampling began. An edge counts while it has the VIP and
    `running(i)` says its daemon runs: after a kill -9 the address stays in the dead node's kernel,
    but nothing there serves it any more."""

    def __init__(self, edge_lab: edges.EdgeLab, running: Callable[[int], bool], every: float = 0.05) -> None:
        self.edge_lab = edge_lab
        self.running = running
        self.every = every
        self.changes: list[tuple[float, str]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        last = None
        while not self.stopped.is_set():
            now = holder_name([i for i in self.edge_lab.holders() if self.running(i)])
            if now != last:
                self.changes.append((time.monotonic(), now))
                last = now
            self.stopped.wait(self.every)

    def start(self) -> "HolderSampler":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(2)

    def __enter__(self) -> "HolderSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def holder_name(holders: list[int]) -> str:
    if len(holders) > 1:
        return BOTH
    return f"edge-{holders[0] + 1}" if holders else NOBODY


@dataclass
class Panel:
    """One fault: attempts and holder changes on the monotonic clock, drawn from `since` to `until`
    with the fault at x = 0; `marks` are later instants worth a line (a partition's heal)."""
    title: str
    attempts: list[connclient.Attempt]
    holders: list[tuple[float, str]]
    fault: float
    fault_label: str
    since: float
    until: float
    marks: list[tuple[float, str]] = field(default_factory=list)

    def summary(self) -> str:
        seen = connclient.summarize(self.attempts, self.since, self.until)
        return (f"{seen['requests']} requests, {seen['failed']} failed, "
                f"longest gap {seen['longest_gap'] * 1000:.0f} ms")


def _holder_spans(panel: Panel) -> list[tuple[float, float, str]]:
    """(start, end, holder) in seconds from the fault, clipped to the panel's window."""
    spans = []
    for n, (at, who) in enumerate(panel.holders):
        end = panel.holders[n + 1][0] if n + 1 < len(panel.holders) else panel.until
        start, end = max(at, panel.since), min(end, panel.until)
        if end > start:
            spans.append((start - panel.fault, end - panel.fault, who))
    return spans


def _seconds(value: float, _position) -> str:
    if value >= 1:
        return f"{value:g} s"
    return f"{value * 1000:g} ms"


def draw(panels: list[Panel], columns: int = 1, title: str | None = None):
    """A matplotlib Figure with one axes per panel, laid out `columns` wide."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(6.4 * columns if columns > 1 else 11, 2.9 * rows + (0.5 if title else 0)),
                    dpi=110, layout="constrained")
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    durations = [a.duration for p in panels for a in p.attempts if p.since <= a.start < p.until] or [0.001]
    low = min(1e-4, min(d for d in durations if d > 0) / 3 if any(d > 0 for d in durations) else 1e-4)
    high = max(5.0, max(durations) * 2)
    holders_seen: dict[str, str] = {}
    for n, axes in enumerate(axes_grid.flat):
        if n >= len(panels):
            axes.remove()
            continue
        panel = panels[n]
        shown = [a for a in panel.attempts if panel.since <= a.start < panel.until]
        ok = [a for a in shown if a.ok]
        failed = [a for a in shown if not a.ok]
        axes.set_yscale("log")
        axes.set_ylim(low, high)
        axes.set_xlim(panel.since - panel.fault, panel.until - panel.fault)
        for start, end, who in _holder_spans(panel):
            colour = _HOLDER_COLOURS[who]
            holders_seen[who] = colour
            axes.axvspan(start, end, ymin=0, ymax=0.07, color=colour, lw=0)
            axes.axvspan(start, end, ymin=0.07, ymax=1, color=colour, alpha=0.07, lw=0)
        axes.scatter([a.start - panel.fault for a in ok], [a.duration for a in ok], s=5,
                     color=_OK_COLOUR, alpha=0.7, lw=0, zorder=3)
        axes.scatter([a.start - panel.fault for a in failed], [max(a.duration, low * 2) for a in failed],
                     s=28, marker="x", color=_FAILED_COLOUR, lw=1.3, zorder=4)
        axes.axvline(0, color=_FAULT_COLOUR, lw=1.4, ls="--", zorder=5)
        # Left of the line and just above the band: the steady traffic before the fault is far higher.
        axes.annotate(panel.fault_label, (0, 0.09), xycoords=("data", "axes fraction"), xytext=(-4, 0),
                      textcoords="offset points", va="bottom", ha="right", color=_FAULT_COLOUR, fontsize=8.5,
                      fontweight="bold")
        for at, label in panel.marks:
            axes.axvline(at - panel.fault, color=_MARK_COLOUR, lw=1.2, ls=":", zorder=5)
            axes.annotate(label, (at - panel.fault, 0.09), xycoords=("data", "axes fraction"), xytext=(4, 0),
                          textcoords="offset points", va="bottom", ha="left", color=_MARK_COLOUR,
                          fontsize=8.5, fontweight="bold")
        axes.set_title(f"{panel.title}  ·  {panel.summary()}", fontsize=10, loc="left")
        axes.yaxis.set_major_formatter(FuncFormatter(_seconds))
        axes.set_ylabel("latency", fontsize=9)
        axes.set_xlabel("seconds from the fault", fontsize=9)
        axes.tick_params(labelsize=8)
        axes.grid(True, which="major", axis="both", color="#e3e5e9", lw=0.6, zorder=0)
        axes.set_axisbelow(True)
    legend = [Line2D([], [], ls="", marker="o", ms=4, color=_OK_COLOUR, label="reply (latency)"),
              Line2D([], [], ls="", marker="x", ms=6, color=_FAILED_COLOUR, label="failed (time to fail)"),
              Line2D([], [], ls="--", color=_FAULT_COLOUR, label="fault")]
    legend += [Patch(color=colour, label=_HOLDER_LABELS.get(who, f"VIP on {who}"))
               for who, colour in sorted(holders_seen.items())]
    figure.legend(handles=legend, loc="outside lower center", ncols=len(legend), fontsize=8.5, frameon=False)
    if title:
        figure.suptitle(title, fontsize=12, fontweight="bold")
    return figure


def save(panels: list[Panel], path: str | Path, columns: int = 1, title: str | None = None) -> None:
    draw(panels, columns, title).savefig(path)


def matplotlib_missing() -> str | None:
    """Why a plot cannot be drawn here (one line), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib (pip install matplotlib, or the test extra: pip install -e '.[test]')"
    return None

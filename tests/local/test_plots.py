"""The failover timeline (vipd.lab.timeline) drawn from synthetic attempts: what `vipd demo --plot`
and `bench/failover.py --plot` write."""
from __future__ import annotations

import struct

import pytest

from vipd.lab.connclient import Attempt
from vipd.lab.timeline import BOTH, NOBODY, Panel, draw, save

pytest.importorskip("matplotlib", reason="the test extra installs matplotlib")


def scenario(fault: float, label: str, outage: float) -> Panel:
    """A new connection every 10 ms from 1 s before the fault to 2 s after it; those started during
    the outage are refused, the VIP moves from edge-1 through nobody to edge-2."""
    attempts = []
    for n in range(300):
        start = fault - 1.0 + n * 0.01
        refused = fault <= start < fault + outage
        attempts.append(Attempt(start, 0.0004 if refused else 0.002 + (n % 7) * 0.0003, not refused,
                                "Connection refused" if refused else "backend-1"))
    holders = [(fault - 5.0, "edge-1"), (fault + 0.02, NOBODY), (fault + outage, "edge-2"),
               (fault + outage + 0.5, BOTH), (fault + outage + 0.6, "edge-2")]
    return Panel(label, attempts, holders, fault, label, fault - 1.0, fault + 2.0,
                 marks=[(fault + 1.5, "heal")])


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_one_panel_per_scenario_with_its_summary():
    panels = [scenario(100.0, "kill", 0.3), scenario(200.0, "term", 0.0), scenario(300.0, "link", 0.5)]
    figure = draw(panels, title="failover")
    plotted = [a for a in figure.axes if a.get_title(loc="left")]
    assert [a.get_title(loc="left") for a in plotted] == [
        "kill  ·  300 requests, 30 failed, longest gap 311 ms",
        "term  ·  300 requests, 0 failed, longest gap 10 ms",
        "link  ·  300 requests, 50 failed, longest gap 511 ms",
    ]
    assert len(figure.axes) == 3
    first = plotted[0]
    assert first.get_yscale() == "log"
    assert first.get_xlim() == pytest.approx((-1.0, 2.0))
    # Replies and failures as two scatter collections, with every attempt of the window.
    replies, failures = first.collections[-2:]
    assert (len(replies.get_offsets()), len(failures.get_offsets())) == (270, 30)
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["reply (latency)", "failed (time to fail)", "fault", "VIP on both edges",
                      "VIP on edge-1", "VIP on edge-2", "VIP on no running edge"]


def test_the_png_is_written_with_a_grid_of_panels(tmp_path):
    out = tmp_path / "timeline.png"
    save([scenario(100.0, "kill", 0.3), scenario(200.0, "term", 0.0)], out, title="failover")
    width, height = png_size(out.read_bytes())
    assert 1000 <= width <= 1400 and 600 <= height <= 800, (width, height)
    assert out.stat().st_size > 20_000

    wide = tmp_path / "grid.png"
    save([scenario(t, str(t), 0.2) for t in (100.0, 200.0, 300.0, 400.0)], wide, columns=2)
    width, height = png_size(wide.read_bytes())
    assert width > height > 600, (width, height)

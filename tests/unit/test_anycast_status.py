"""An anycast owner in the status document, as lbctl's table and the metrics show it."""
from vipd.control.lbctl import render_status
from vipd.control.metrics import families_from_status
from vipd.control.schema import check

DOCUMENT = {
    "node": "edge-1", "vrrp": [], "frontends": [],
    "anycast": [
        {"name": "api-anycast", "state": "ANNOUNCED", "virtual_ips": ["198.18.1.100/32"], "device": "vipd0",
         "maintenance": False, "since": "2026-11-26T23:00:00Z", "reason": "serving", "transitions": 1,
         "tracks": [{"name": "frontend:api", "ok": True, "weight": 0}]},
        {"name": "web-anycast", "state": "WITHDRAWN", "virtual_ips": ["198.18.1.101/32", "2001:db8::101/128"],
         "device": "vipd1", "maintenance": True, "since": "2026-11-26T23:05:00Z", "reason": "maintenance",
         "transitions": 4, "tracks": [{"name": "frontend:web", "ok": False, "weight": 0}]},
    ],
}


def test_the_document_is_valid():
    assert check(DOCUMENT, strict=True).problems == []


def test_lbctl_shows_one_row_per_anycast_owner():
    assert render_status(DOCUMENT).splitlines() == [
        "node edge-1",
        "VRRP      none on this node",
        "ANYCAST      STATE              DEVICE  VIPS                               SINCE"
        "                 REASON       TRACKS",
        "api-anycast  ANNOUNCED          vipd0   198.18.1.100/32                    2026-11-26T23:00:00Z"
        "  serving      frontend:api ok",
        "web-anycast  WITHDRAWN (maint)  vipd1   198.18.1.101/32,2001:db8::101/128  2026-11-26T23:05:00Z"
        "  maintenance  frontend:web FAIL",
    ]


def test_metrics_per_anycast_owner():
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in families_from_status(DOCUMENT) for s in family.samples}
    assert samples[("vipd_anycast_announced", (("name", "api-anycast"),))] == 1
    assert samples[("vipd_anycast_announced", (("name", "web-anycast"),))] == 0
    assert samples[("vipd_anycast_maintenance", (("name", "web-anycast"),))] == 1
    assert samples[("vipd_anycast_transitions_total", (("name", "web-anycast"),))] == 4
    assert samples[("vipd_anycast_track_ok", (("name", "web-anycast"), ("track", "frontend:web")))] == 0
    assert samples[("vipd_status_problems", ())] == 0

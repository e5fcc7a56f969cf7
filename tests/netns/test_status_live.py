"""The status document of live `vipd run` edges with VRRP, tracks and the proxy: every field
matches the schema (vipd.control.schema), strictly, and every field it describes is there."""
import signal

import pytest

from vipd.control import schema
from vipd.lab.edges import build, wait_for


@pytest.mark.timeout(120)
def test_master_and_backup_documents_match_the_schema(lab, tmp_path):
    edges = build(lab, tmp_path / "lab", backends=2, advert_interval=0.1)
    try:
        edges.start_edge(0)
        assert wait_for(lambda: edges.state(0) == "MASTER", 20), edges.log(0)
        edges.start_edge(1)
        assert wait_for(lambda: edges.state(1) == "BACKUP", 20), edges.log(1)
        for i, state in ((0, "MASTER"), (1, "BACKUP")):
            document = edges.status(i)
            assert schema.check(document, schema.StatusDocument, strict=True).problems == [], edges.log(i)
            assert set(document) == schema.described_keys(schema.StatusDocument)
            (instance,) = document["vrrp"]
            assert instance["state"] == state and instance["master"] == "198.18.0.11"
            assert set(instance) == schema.described_keys(schema.VrrpInstance)
            (track,) = instance["tracks"]
            assert set(track) == schema.described_keys(schema.Track)
            (frontend,) = document["frontends"]
            assert set(frontend) == schema.described_keys(schema.Frontend)
            assert [set(b) for b in frontend["backends"]] == [schema.described_keys(schema.Backend)] * 2
            table = edges.lbctl(i, "status")
            assert table.returncode == 0 and table.stderr == "", table.stderr
    finally:
        for i in list(edges.procs):
            edges.stop_edge(i, signal.SIGKILL, timeout=5)

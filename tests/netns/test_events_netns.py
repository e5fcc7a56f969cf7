"""Events and the generic notify script on a live VRRP pair: a preemption shows up on both edges
as a `vrrp.state` event with its reason, and `[vrrp.notify] notify` gets INSTANCE NAME STATE PRIORITY."""
import json
import signal

import pytest

from vipd.lab.edges import build, wait_for


def events(edges, i: int, kind: str) -> list[dict]:
    done = edges.lbctl(i, "events", "--json")
    assert done.returncode == 0, done.stderr
    return [r for r in map(json.loads, done.stdout.splitlines()) if r["kind"] == kind]


@pytest.mark.timeout(120)
def test_preemption_is_an_event_on_both_edges_and_runs_the_generic_notify(lab, tmp_path):
    edges = build(lab, tmp_path / "lab", advert_interval=0.1, preempt=True)
    outputs = []
    for i in range(2):
        out = tmp_path / f"edge{i + 1}.notify"
        outputs.append(out)
        text = edges.config_text(i).replace(
            "[[frontend]]", f'  [vrrp.notify]\n  notify = "echo >> {out}"\n\n[[frontend]]', 1)
        (edges.workdir / f"edge{i + 1}.toml").write_text(text)
    try:
        edges.start_edge(0)
        assert wait_for(lambda: edges.state(0) == "MASTER", 20), edges.log(0)
        edges.start_edge(1)
        assert wait_for(lambda: edges.state(1) == "BACKUP", 20), edges.log(1)
        config = edges.workdir / "edge2.toml"
        config.write_text(config.read_text().replace("priority = 100", "priority = 200"))
        assert edges.lbctl(1, "reload").returncode == 0
        assert wait_for(lambda: edges.state(1) == "MASTER" and edges.state(0) == "BACKUP", 10), edges.log(1)

        (*_, resigned) = events(edges, 0, "vrrp.state")
        assert resigned["subject"] == "api" and resigned["fields"]["old"] == "MASTER"
        assert resigned["fields"]["new"] == "BACKUP" and resigned["fields"]["reason"]
        assert resigned["message"].startswith("vrrp api: MASTER -> BACKUP (")
        (*_, took_over) = events(edges, 1, "vrrp.state")
        assert (took_over["fields"]["old"], took_over["fields"]["new"]) == ("BACKUP", "MASTER")
        assert took_over["fields"]["reason"] and took_over["fields"]["priority"] == 200
        raised = events(edges, 1, "vrrp.priority") + events(edges, 1, "config.reload")
        assert any(r["kind"] == "config.reload" and r["fields"]["ok"] for r in raised)

        assert wait_for(lambda: outputs[1].exists() and outputs[1].read_text().splitlines()[-1:] ==
                        ["INSTANCE api MASTER 200"], 10), outputs[1].read_text() if outputs[1].exists() else ""
        assert wait_for(lambda: outputs[0].read_text().splitlines()[-1:] == ["INSTANCE api BACKUP 150"], 10)
        assert "INSTANCE api MASTER 150" in outputs[0].read_text().splitlines()
        assert "INSTANCE api BACKUP 100" in outputs[1].read_text().splitlines()
    finally:
        for i in list(edges.procs):
            edges.stop_edge(i, signal.SIGKILL, timeout=5)

"""nat mode: the nftables ruleset rendered from config + health, what nat mode refuses, and the
parsing of what nft and conntrack report back."""
import collections
import json
import re
import tomllib

import pytest

from lbproxy.config import BackendConfig, FrontendConfig
from lbproxy.natpath import counter_packets, established_by_reply_source
from lbproxy.natrules import (
    Target,
    in_map,
    object_name,
    render,
    render_removal,
    slot_order,
)
from vipd.config import ConfigError, parse

pytestmark = pytest.mark.timeout(10)

ADDRESSES = ("198.18.0.21:6443", "198.18.0.22:6443", "198.18.0.23:6443")


def frontend(balance="round_robin", listen="198.18.0.100:6443", addresses=ADDRESSES, name="api"):
    backends = []
    for a in addresses:
        host, _, port = a.rpartition(":")
        backends.append(BackendConfig(a, host.strip("[]"), int(port)))
    host, _, port = listen.rpartition(":")
    return FrontendConfig(name, listen, host.strip("[]"), int(port), tuple(backends), balance=balance, mode="nat")


def targets(f, states=None, weights=None, backup=()):
    states, weights = states or {}, weights or {}
    return [Target(b.address, b.host, b.port, weights.get(b.address, 1), states.get(b.address, "up"),
                   b.address in backup) for b in f.backends]


def vmap(text, f):
    """The frontend chain's rule: (selector, [backend address per slot]) or ("goto", [address])."""
    chain = object_name("f", f.name)
    names = {object_name("b", f.name, b.address): b.address for b in f.backends}
    rules = [line for line in text.splitlines() if line.startswith(f"add rule inet vipd_nat {chain} ")]
    if not rules:
        return None, []
    assert len(rules) == 1
    rule = rules[0].removeprefix(f"add rule inet vipd_nat {chain} ")
    if rule.startswith("goto "):
        return "goto", [names[rule.split()[1]]]
    selector, _, elements = rule.partition(" vmap ")
    slots = re.findall(r"(\d+) : goto (\w+)", elements)
    assert [int(s) for s, _ in slots] == list(range(len(slots)))
    return selector, [names[c] for _, c in slots]


def test_round_robin_expands_weights_into_spread_slots():
    f = frontend()
    text = render([(f, targets(f, weights={ADDRESSES[0]: 3, ADDRESSES[1]: 1, ADDRESSES[2]: 2}))]).text
    selector, slots = vmap(text, f)
    assert selector == "numgen inc mod 6"
    assert collections.Counter(slots) == {ADDRESSES[0]: 3, ADDRESSES[1]: 1, ADDRESSES[2]: 2}
    assert slots[0] == ADDRESSES[0] and slots[1] != ADDRESSES[0]      # smooth: not 0 0 0 2 2 1


def test_slot_order_is_nginx_smooth_and_reduced():
    assert slot_order([5, 1, 1]) == [0, 0, 1, 0, 2, 0, 0]
    assert slot_order([200, 100]) == [0, 1, 0]


@pytest.mark.parametrize("balance, selector", [
    ("random2", r"numgen random mod 3"),
    ("source_hash", r"jhash ip saddr mod 3 seed 0x[0-9a-f]+"),
])
def test_algorithms(balance, selector):
    f = frontend(balance)
    got, slots = vmap(render([(f, targets(f))]).text, f)
    assert re.fullmatch(selector, got)
    assert sorted(slots) == sorted(ADDRESSES)


def test_source_hash_seed_is_the_same_on_every_edge_and_ipv6_hashes_ip6():
    f = frontend("source_hash")
    assert vmap(render([(f, targets(f))]).text, f)[0] == vmap(render([(f, targets(f))]).text, f)[0]
    six = frontend("source_hash", "[2001:db8::100]:443", ("[2001:db8::1]:443", "[2001:db8::2]:443"))
    text = render([(six, targets(six))]).text
    assert vmap(text, six)[0].startswith("jhash ip6 saddr mod 2 ")
    assert "dnat ip6 to [2001:db8::1]:443" in text
    assert "ip6 daddr 2001:db8::100 tcp dport 443 goto" in text


def test_drained_and_down_backends_are_out_of_the_map_but_keep_their_chain():
    f = frontend()
    text = render([(f, targets(f, states={ADDRESSES[0]: "drain", ADDRESSES[1]: "down"}))]).text
    assert vmap(text, f) == ("goto", [ADDRESSES[2]])
    # Their DNAT chains stay: nothing refers to them, and their counters keep counting totals.
    assert "dnat ip to 198.18.0.21:6443" in text and "dnat ip to 198.18.0.22:6443" in text


def test_weight_zero_is_out_of_the_map():
    f = frontend()
    _, slots = vmap(render([(f, targets(f, weights={ADDRESSES[1]: 0}))]).text, f)
    assert sorted(set(slots)) == [ADDRESSES[0], ADDRESSES[2]]


def test_down_primaries_come_before_down_backups():
    f = frontend()
    ts = targets(f, states={a: "down" for a in ADDRESSES}, backup={ADDRESSES[2]})
    assert [t.address for t in in_map(ts)] == [ADDRESSES[0], ADDRESSES[1]]


def test_all_down_uses_the_down_ones_like_the_proxy_but_never_drained():
    f = frontend()
    ts = targets(f, states={ADDRESSES[0]: "down", ADDRESSES[1]: "down", ADDRESSES[2]: "drain"})
    assert sorted(vmap(render([(f, ts)]).text, f)[1]) == [ADDRESSES[0], ADDRESSES[1]]


def test_backups_only_while_no_primary_is_up():
    f = frontend()
    primaries_up = targets(f, backup={ADDRESSES[2]})
    assert [t.address for t in in_map(primaries_up)] == [ADDRESSES[0], ADDRESSES[1]]
    drained = targets(f, states={ADDRESSES[0]: "drain", ADDRESSES[1]: "down"}, backup={ADDRESSES[2]})
    assert [t.address for t in in_map(drained)] == [ADDRESSES[2]]


def test_empty_map_resets_new_connections_and_counts_them():
    f = frontend()
    text = render([(f, targets(f, states={a: "drain" for a in ADDRESSES}))]).text
    assert vmap(text, f) == (None, [])
    refused = object_name("r", f.name)
    assert (f'add rule inet vipd_nat input ip daddr 198.18.0.100 tcp dport 6443 ct status != dnat '
            f'counter name "{refused}" reject with tcp reset') in text
    # stop_accepting: the same table with every map emptied.
    assert vmap(render([(f, targets(f))], accepting=False).text, f) == (None, [])


def test_replies_return_through_the_edge_for_this_frontends_flows_only():
    f = frontend()
    text = render([(f, targets(f))]).text
    masquerade = [line for line in text.splitlines() if " postrouting " in line and line.startswith("add rule")]
    assert masquerade == [
        "add rule inet vipd_nat postrouting meta nfproto ipv4 ct status dnat ct original ip daddr 198.18.0.100 "
        "meta l4proto tcp ct original proto-dst 6443 ip daddr . tcp dport { 198.18.0.21 . 6443, "
        "198.18.0.22 . 6443, 198.18.0.23 . 6443 } masquerade"]


def test_unspecified_listen_matches_the_port_on_local_addresses():
    f = frontend(listen="0.0.0.0:6443")
    text = render([(f, targets(f))]).text
    chain = object_name("f", f.name)
    assert f"add rule inet vipd_nat prerouting meta nfproto ipv4 tcp dport 6443 fib daddr type local goto {chain}" in text
    assert "ct original ip daddr" not in text


def test_start_replaces_the_table_and_later_changes_flush_it_in_place():
    f, g = frontend(), frontend(name="other", listen="198.18.0.100:7443", addresses=("198.18.0.31:80",))
    first = render([(f, targets(f)), (g, targets(g))])
    lines = first.text.splitlines()
    assert lines[:3] == ["add table inet vipd_nat", "delete table inet vipd_nat", "add table inet vipd_nat"]
    second = render([(f, targets(f))], previous=first)
    lines = second.text.splitlines()
    assert lines[:2] == ["add table inet vipd_nat", "flush table inet vipd_nat"]
    gone = object_name("b", "other", "198.18.0.31:80")
    assert {
        f"delete chain inet vipd_nat {object_name('f', 'other')}",
        f"delete counter inet vipd_nat {object_name('r', 'other')}",
        f"delete chain inet vipd_nat {gone}", f"delete counter inet vipd_nat {gone}"} == set(lines[-4:])
    assert "delete" not in "\n".join(lines[2:-4])
    assert render_removal() == "add table inet vipd_nat\ndelete table inet vipd_nat\n"


def test_nothing_outside_vipds_table():
    f = frontend()
    for line in render([(f, targets(f))]).text.splitlines():
        assert line.split()[1:4] in (["table", "inet", "vipd_nat"], ["chain", "inet", "vipd_nat"],
                                     ["counter", "inet", "vipd_nat"], ["rule", "inet", "vipd_nat"]), line


def test_conntrack_reply_sources_count_established_flows():
    out = ("tcp      6 431999 ESTABLISHED src=198.18.1.2 dst=198.18.0.100 sport=40001 dport=6443 "
           "src=198.18.0.21 dst=198.18.0.10 sport=6443 dport=40001 [ASSURED] mark=0 use=1\n"
           "tcp      6 431999 ESTABLISHED src=198.18.1.2 dst=198.18.0.100 sport=40002 dport=6443 "
           "src=198.18.0.21 dst=198.18.0.10 sport=6443 dport=40002 [ASSURED] mark=0 use=1\n"
           "tcp      6 431999 ESTABLISHED src=2001:db8::9 dst=2001:db8::100 sport=40003 dport=443 "
           "src=2001:0db8::1 dst=2001:db8::10 sport=443 dport=40003 [ASSURED] mark=0 use=1\n")
    assert established_by_reply_source(out) == {("198.18.0.21", 6443): 2, ("2001:db8::1", 443): 1}


def test_nft_counters_json():
    doc = {"nftables": [{"metainfo": {"version": "1.0.6"}},
                        {"counter": {"family": "inet", "name": "b_1", "table": "vipd_nat", "packets": 7, "bytes": 420}}]}
    assert counter_packets(json.dumps(doc)) == {"b_1": 7}


NAT = """
[[frontend]]
name = "api"
listen = "LISTEN"
mode = "nat"
EXTRA
  [[frontend.backend]]
  address = "BACKEND"
"""


def nat_problems(extra="", listen="198.18.0.100:6443", backend="198.18.0.21:6443"):
    text = NAT.replace("LISTEN", listen).replace("EXTRA", extra).replace("BACKEND", backend)
    try:
        parse(tomllib.loads(text), "F.toml", require_frontend=True)
    except ConfigError as exc:
        return exc.problems
    return []


def test_a_plain_nat_frontend_is_valid_also_on_unspecified_addresses():
    assert nat_problems() == []
    assert nat_problems(listen="0.0.0.0:6443") == []
    assert nat_problems(listen="[::]:6443", backend="[2001:db8::1]:6443") == []
    data = tomllib.loads(NAT.replace("LISTEN", "198.18.0.100:6443").replace("EXTRA", "")
                         .replace("BACKEND", "198.18.0.21:6443"))
    assert parse(data, "F.toml", require_frontend=True).frontends[0].mode == "nat"


@pytest.mark.parametrize("extra, key", [
    ('balance = "least_conn"', "balance"),
    ('proxy_protocol = "v2"', "proxy_protocol"),
    ("accept_proxy_protocol = true", "accept_proxy_protocol"),
    ("access_log = true", "access_log"),
    ("max_connections_per_source = 10", "max_connections_per_source"),
    ("retries = 1", "retries"),
    ("connect_timeout = 1.0", "connect_timeout"),
    ("slow_start = 30.0", "slow_start"),
])
def test_nat_refuses_what_the_kernel_cannot_honour_naming_the_key(extra, key):
    problems = [p for p in nat_problems(extra) if "nat" in p]
    assert len(problems) == 1 and problems[0].startswith(f"F.toml: frontend[0].{key}: not with mode = \"nat\": ")


@pytest.mark.parametrize("listen, backend, why", [
    ("198.18.0.100:6443", "[2001:db8::1]:6443", "cannot translate between IPv4 (listen) and IPv6"),
    ("198.18.0.100:6443", "backend.example:6443", "needs an IP address"),
    ("198.18.0.100:6443", "127.0.0.1:6443", "loopback"),
])
def test_nat_backends_must_be_reachable_by_dnat(listen, backend, why):
    problems = nat_problems(listen=listen, backend=backend)
    assert len(problems) == 1 and problems[0].startswith("F.toml: frontend[0].backend[0].address: ") and why in problems[0]


def test_unknown_mode_is_refused():
    text = NAT.replace("LISTEN", "198.18.0.100:6443").replace("EXTRA", "").replace("BACKEND", "198.18.0.21:6443")
    with pytest.raises(ConfigError) as caught:
        parse(tomllib.loads(text.replace('mode = "nat"', 'mode = "lvs"')), "F.toml", require_frontend=True)
    assert caught.value.problems == ["F.toml: frontend[0].mode: must be one of proxy, nat, got 'lvs'"]


def test_a_nat_frontend_on_every_address_cannot_share_its_port():
    text = """
[[frontend]]
name = "web"
listen = "198.18.0.100:6443"
  [[frontend.backend]]
  address = "198.18.0.21:6443"
""" + NAT.replace("LISTEN", "0.0.0.0:6443").replace("EXTRA", "").replace("BACKEND", "198.18.0.22:6443")
    with pytest.raises(ConfigError) as caught:
        parse(tomllib.loads(text), "F.toml", require_frontend=True)
    assert caught.value.problems == [
        "F.toml: frontend[0].listen: port 6443 is taken on every local address by the nat frontend[1] "
        "(0.0.0.0); give that one a specific address"]

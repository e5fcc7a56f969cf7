"""`vipd import --keepalived`: realistic keepalived.conf files become [[vrrp]] instances that vipd's
parser accepts; what is not translated is named on stderr with FILE:LINE."""
from __future__ import annotations

import pytest
from migrate_support import INPUTS, notes_about, translated, vipd_import

from vipd.migrate import InputError, translate

KUBEADM = INPUTS / "kubeadm-keepalived.conf"
UNICAST = INPUTS / "unicast-v2-keepalived.conf"


def test_kubeadm_guide_keepalived_conf():
    config, result = translated(keepalived=KUBEADM)
    (vrrp,) = config.vrrp
    assert (vrrp.name, vrrp.interface, vrrp.vrid, vrrp.priority) == ("VI_1", "eth0", 51, 101)
    # keepalived speaks VRRPv2 unless told otherwise, so the translation says so explicitly.
    assert vrrp.version == 2 and vrrp.auth_pass == "42"
    assert [str(v) for v in vrrp.virtual_ips] == ["192.168.10.100/32"]
    assert vrrp.preempt is True and vrrp.unicast_peers == ()
    (track,) = vrrp.tracks
    assert (track.kind, track.target) == ("script", "/etc/keepalived/check_apiserver.sh")
    assert (track.interval, track.rise, track.fall, track.weight) == (3.0, 2, 10, -2)
    assert notes_about(result, "state MASTER") == [
        f"{KUBEADM}:17: state MASTER: not translated: vipd elects by priority; there is no configured start state"]
    assert notes_about(result, "router_id LVS_DEVEL: not translated")
    assert "virtual_router_id 51" in result.toml     # each value names its source line


def test_the_unfilled_kubeadm_template_has_nothing_to_run(tmp_path):
    template = tmp_path / "keepalived.conf"
    template.write_text(KUBEADM.read_text().replace("virtual_router_id 51", "virtual_router_id ${ROUTER_ID}")
                        .replace("        192.168.10.100\n", "        ${APISERVER_VIP}\n"))
    result = translate(keepalived_path=str(template))
    assert result.toml is None
    assert f"{template}:19: virtual_router_id ${{ROUTER_ID}}: not translated: must be 1..255" in result.notes
    assert f"{template}:16: vrrp_instance VI_1: not translated: no usable virtual_router_id, virtual_ipaddress" \
        in result.notes
    done = vipd_import("--keepalived", str(template))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines()[-1].startswith("vipd import: nothing to translate")


def test_unicast_v2_with_password_includes_and_overrides():
    config, result = translated(keepalived=UNICAST)
    assert config.node.name == "edge-a"
    api, api6 = config.vrrp
    assert (api.name, api.interface, api.vrid, api.priority, api.version) == ("API", "eth0", 52, 150, 2)
    assert api.advert_interval == 2.0 and api.preempt is False and api.preempt_delay == 5.0
    assert api.unicast_src == "198.18.0.11" and api.unicast_peers == ("198.18.0.12",)
    assert api.garp_repeat == 4                              # from global_defs
    assert [str(v) for v in api.virtual_ips] == ["198.18.0.100/24"]
    # keepalived sends the first 8 bytes of a longer password; so must vipd to interoperate.
    assert api.auth_pass == "Xk9#pw!l"
    script, link = api.tracks
    assert (script.kind, script.target, script.weight) == ("script", "killall -0 haproxy", -60)
    assert (script.interval, script.timeout, script.rise, script.fall) == (2.0, 1.0, 2, 2)
    assert (link.kind, link.target, link.weight) == ("interface", "eth1", -30)
    assert api.notify.master == "/usr/local/bin/vip-notify.sh master 'api vip'"
    assert api.notify.backup == "/usr/local/bin/vip-notify.sh backup"
    assert api.notify.fault == "/usr/local/bin/vip-notify.sh fault" and api.notify.stop is None
    assert api.notify.generic == "/usr/local/bin/vip-notify-all.sh"      # keepalived's generic notify
    # IPv6 needs VRRPv3 (keepalived switches too), and v3 allows a 0.5 s advert.
    assert (api6.name, api6.version, api6.advert_interval) == ("API6", 3, 0.5)
    assert [str(v) for v in api6.virtual_ips] == ["2001:db8::100/64"] and api6.auth_pass is None

    f = str(UNICAST)
    for expected in (
        f"{f}:26: garp_master_delay 1: not translated: vipd sends one burst of garp_repeat announcements "
        "on becoming master",
        f"{f}:34: 198.18.1.100/24 dev eth1: not translated: vipd puts an instance's addresses on its own "
        "interface (eth0)",
        f"{f}:41: chk_gone: not translated: no vrrp_script with this name",
        f"{f}:57: vrrp_sync_group VG1: not translated: vipd has no sync groups; each [[vrrp]] instance elects "
        "on its own",
        f"{INPUTS / 'keepalived.d' / 'scripts.conf'}:10: vrrp_script chk_unused: not translated: "
        "no vrrp_instance tracks it",
    ):
        assert expected in result.notes
    assert all(line.count(":") >= 2 for line in result.notes)
    # The password is in the TOML (it has to be) and never on stderr.
    assert not [line for line in result.notes if "Xk9" in line]


def write(tmp_path, text: str, name: str = "keepalived.conf"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_keepalived_syntax_quotes_comments_and_braces(tmp_path):
    path = write(tmp_path, """\
vrrp_script chk { script "/usr/local/bin/check 'two words'" }  # braces on one line
vrrp_script chk2 {
  script /usr/local/bin/check2 --port 6443   ! unquoted words are joined
}
vrrp_instance "A"
{
    interface eth0 ! comment
    virtual_router_id 7 # comment
    vrrp_version 3
    advert_int 0.25
    virtual_ipaddress { 198.18.0.7/24 }
    track_script { chk
        chk2 weight 20 }
}
""")
    config, result = translated(keepalived=path)
    (a,) = config.vrrp
    assert (a.name, a.vrid, a.version, a.advert_interval) == ("A", 7, 3, 0.25)
    assert [t.target for t in a.tracks] == ["/usr/local/bin/check 'two words'", "/usr/local/bin/check2 --port 6443"]
    assert [t.weight for t in a.tracks] == [0, 20]


def test_out_of_range_values_are_named_and_left_out(tmp_path):
    path = write(tmp_path, """\
vrrp_script chk {
    script /bin/true
    interval 2
    timeout 5
    weight 300
}
vrrp_instance A {
    interface eth0
    virtual_router_id 9
    priority 0
    advert_int 1.5
    preempt_delay 9000
    garp_master_repeat 500
    authentication {
        auth_type AH
        auth_pass secret
    }
    virtual_ipaddress {
        198.18.0.9/24
        not-an-address
    }
    track_script {
        chk weight 20 reverse
    }
}
""")
    config, result = translated(keepalived=path)
    (a,) = config.vrrp
    assert (a.priority, a.advert_interval, a.preempt_delay, a.garp_repeat, a.auth_pass) == (100, 1.0, 0.0, 3, None)
    assert a.tracks == ()
    f = str(path)
    assert result.notes == [
        f"{f}:4: timeout 5: not translated: vipd needs a timeout below the interval; "
        "its default applies",
        f"{f}:5: weight 300: not translated: must be -254..254",
        f"{f}:10: priority 0: not translated: must be 1..255 (255 = address owner)",
        f"{f}:11: advert_int 1.5: not translated: VRRPv2 adverts are whole seconds 1..255; vipd's default 1 applies",
        f"{f}:12: preempt_delay 9000: not translated: must be 0..3600 seconds",
        f"{f}:13: garp_master_repeat 500: not translated: vipd's garp_repeat is 0..100",
        f"{f}:14: authentication: not translated: auth_type AH: vipd supports PASS only",
        f"{f}:20: not-an-address: not translated: not an IP address",
        f"{f}:23: chk weight 20 reverse: not translated: vipd has no reversed tracks",
    ]


def test_duplicate_router_ids_and_names_keep_the_first(tmp_path):
    path = write(tmp_path, "".join(
        f"vrrp_instance {name} {{\n interface eth0\n virtual_router_id {vrid}\n"
        f" virtual_ipaddress {{ 198.18.0.{vrid}/24 }}\n}}\n"
        for name, vrid in (("A", 1), ("B", 1), ("A", 2))))
    config, result = translated(keepalived=path)
    assert [(v.name, v.vrid) for v in config.vrrp] == [("A", 1)]
    assert result.notes == [
        f"{path}:6: vrrp_instance B: not translated: virtual_router_id 1 on eth0 is already used by A",
        f"{path}:11: vrrp_instance A: not translated: a second vrrp_instance named A",
    ]


def test_conditional_lines_and_definitions(tmp_path):
    path = write(tmp_path, """\
$VIP=198.18.0.50/24
vrrp_instance A {
    interface eth0
    virtual_router_id 50
    @main priority 150
    @backup priority 100
    virtual_ipaddress {
        $VIP
    }
}
""")
    config, result = translated(keepalived=path)
    assert [str(v) for v in config.vrrp[0].virtual_ips] == ["198.18.0.50/24"]
    assert config.vrrp[0].priority == 100     # vipd's default: the conditional lines are not taken
    assert notes_about(result, ":5: @main priority 150: not translated: conditional configuration")


@pytest.mark.parametrize("text, error", [
    ("vrrp_instance A {\n interface eth0\n", ":1: unbalanced braces: 'vrrp_instance {' is never closed"),
    ("vrrp_instance A {\n}\n}\n", ":3: unbalanced braces: '}' closes nothing"),
    ("{\n", ":1: unbalanced braces: '{' with no keyword before it"),
    ('vrrp_script s {\n script "/bin/check\n}\n', ":2: unterminated \" quote"),
])
def test_unparseable_keepalived_is_one_line_and_exit_2(tmp_path, text, error):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as raised:
        translate(keepalived_path=str(path))
    assert str(raised.value) == f"{path}{error}"
    done = vipd_import("--keepalived", str(path))
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"{path}{error}\n")


def test_include_loop_and_missing_include(tmp_path):
    loop = write(tmp_path, "include keepalived.conf\n")
    with pytest.raises(InputError, match="includes nested more than 8 deep"):
        translate(keepalived_path=str(loop))
    missing = write(tmp_path, "include /nonexistent/keepalived-extra.conf\n"
                              "vrrp_instance A {\n interface eth0\n virtual_router_id 3\n"
                              " virtual_ipaddress { 198.18.0.3 }\n}\n", "main.conf")
    config, result = translated(keepalived=missing)
    assert [v.name for v in config.vrrp] == ["A"]
    assert result.notes == [f"{missing}:1: include /nonexistent/keepalived-extra.conf: not translated: "
                            "/nonexistent/keepalived-extra.conf: cannot read: No such file or directory"]

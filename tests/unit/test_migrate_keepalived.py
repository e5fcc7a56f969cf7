"""`vipd import --keepalived`: realistic keepalived.conf files become [[vrrp]] instances that vipd's
parser accepts; what is not translated is named on stderr with FILE:LINE."""
from __future__ import annotations

import grp
import pwd

import pytest
from migrate_support import INPUTS, notes_about, translated, vipd_import

from vipd.migrate import InputError, translate
from vipd.migrate.keepalived import NO_SCRIPT_SECURITY

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
        f"{INPUTS / 'keepalived.d' / 'scripts.conf'}:7: user keepalived_script: not translated: "
        "vipd runs every script as one user, node.script_user (global_defs script_user)",
    ):
        assert expected in result.notes
    assert all(line.count(":") >= 2 for line in result.notes)
    # The password is in the TOML (it has to be) and never on stderr.
    assert not [line for line in result.notes if "Xk9" in line]


def write(tmp_path, text: str, name: str = "keepalived.conf"):
    path = tmp_path / name
    path.write_text(text)
    return path


def no_script_security(path, line: int = 1) -> str:
    return f"{path}:{line}: enable_script_security: {NO_SCRIPT_SECURITY}"


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
        no_script_security(f),
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
        no_script_security(path),
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
                            "/nonexistent/keepalived-extra.conf: cannot read: No such file or directory",
                            no_script_security(missing)]


SECURED_INSTANCE = """\
vrrp_script chk {
    script /usr/local/bin/check
}
vrrp_instance A {
    interface eth0
    virtual_router_id 4
    virtual_ipaddress { 198.18.0.4/24 }
    track_script { chk }
}
"""


def test_script_user_becomes_node_script_user(tmp_path):
    path = write(tmp_path, "global_defs {\n    router_id edge-a\n    enable_script_security\n"
                           "    script_user nobody\n}\n" + SECURED_INSTANCE)
    config, result = translated(keepalived=path)
    assert (config.node.script_user, config.node.script_security) == ("nobody", True)
    assert config.vrrp[0].tracks[0].user == "nobody"        # every script runs as it
    assert 'script_user = "nobody"  # keepalived.conf:4 script_user nobody' in result.toml
    # enable_script_security is vipd's default: nothing written, nothing to say.
    assert "script_security" not in result.toml
    assert result.notes == []


def test_script_user_with_its_own_primary_group_is_fully_translated(tmp_path):
    path = write(tmp_path, "global_defs {\n    enable_script_security\n    script_user daemon daemon\n}\n"
                 + SECURED_INSTANCE)
    config, result = translated(keepalived=path)
    assert config.node.script_user == "daemon" and result.notes == []


def test_script_user_group_other_than_the_users_own_is_named(tmp_path):
    path = write(tmp_path, "global_defs {\n    enable_script_security\n    script_user nobody daemon\n}\n"
                 + SECURED_INSTANCE)
    config, result = translated(keepalived=path)
    assert config.node.script_user == "nobody"
    primary = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name      # nogroup on Debian
    assert result.notes == [f"{path}:3: script_user nobody daemon: group daemon not translated: vipd runs "
                            f"scripts as nobody with nobody's own groups (primary group {primary})"]


@pytest.mark.parametrize("line, why", [
    ("script_user no-such-user-x", "no user no-such-user-x on this system; create it, then set "
                                   'node.script_user = "no-such-user-x"'),
    ("script_user nobody nogroup extra", "expects `script_user USER [GROUP]`"),
])
def test_unusable_script_user_is_left_out_and_the_output_still_loads(tmp_path, line, why):
    path = write(tmp_path, f"global_defs {{\n    enable_script_security\n    {line}\n}}\n" + SECURED_INSTANCE)
    config, result = translated(keepalived=path)
    assert config.node.script_user is None and "script_user" not in result.toml
    assert result.notes == [f"{path}:3: {line}: not translated: {why}"]


def test_without_enable_script_security_the_note_says_vipd_checks_ownership(tmp_path):
    path = write(tmp_path, "! edge-a\n\nglobal_defs {\n    script_user nobody\n}\n" + SECURED_INSTANCE)
    config, result = translated(keepalived=path)
    # Nothing written: vipd's default (checks on) applies, and the note says so and how to turn it off.
    assert config.node.script_security is True and "script_security" not in result.toml
    assert result.notes == [
        f"{path}:3: enable_script_security: absent: keepalived runs scripts without ownership checks; vipd "
        "checks by default (node.script_security) that scripts and its config file are root's and not "
        "group/other-writable, and refuses unsafe ones (`node.script_security = false` turns the checks off; "
        "not recommended)"]
    # With no global_defs at all, the note names the file's first line.
    bare = write(tmp_path, SECURED_INSTANCE, "bare.conf")
    _, result = translated(keepalived=bare)
    assert result.notes == [no_script_security(bare, 1)]
    done = vipd_import("--keepalived", str(bare))
    assert done.returncode == 0 and done.stderr == no_script_security(bare, 1) + "\n"


@pytest.fixture
def keepalived_script_user(monkeypatch):
    """This host has keepalived's default script user (Debian's package does not create it)."""
    real = pwd.getpwnam
    nobody = real("nobody")

    def getpwnam(name: str):
        if name == "keepalived_script":
            return pwd.struct_passwd(("keepalived_script", *nobody[1:]))
        return real(name)
    monkeypatch.setattr(pwd, "getpwnam", getpwnam)


def test_without_script_user_scripts_keep_running_as_keepalived_script_when_it_exists(tmp_path,
                                                                                      keepalived_script_user):
    path = write(tmp_path, "global_defs {\n    enable_script_security\n}\n" + SECURED_INSTANCE)
    config, result = translated(keepalived=path)
    assert config.node.script_user == "keepalived_script"
    assert config.vrrp[0].tracks[0].user == "keepalived_script"
    assert ('script_user = "keepalived_script"  # keepalived\'s default script user: no script_user, '
            "and keepalived_script exists here") in result.toml
    assert result.notes == []


def test_a_notify_script_alone_also_keeps_keepalived_script(tmp_path, keepalived_script_user):
    path = write(tmp_path, "global_defs {\n    enable_script_security\n}\nvrrp_instance A {\n    interface eth0\n"
                           "    virtual_router_id 4\n    virtual_ipaddress { 198.18.0.4/24 }\n"
                           "    notify_master /usr/local/bin/became-master\n}\n")
    config, _ = translated(keepalived=path)
    assert config.node.script_user == "keepalived_script"


def test_an_explicit_script_user_wins_over_keepalived_script(tmp_path, keepalived_script_user):
    path = write(tmp_path, "global_defs {\n    enable_script_security\n    script_user daemon\n}\n" + SECURED_INSTANCE)
    config, _ = translated(keepalived=path)
    assert config.node.script_user == "daemon"


def test_keepalived_script_is_not_written_without_scripts(tmp_path, keepalived_script_user):
    path = write(tmp_path, "global_defs {\n    enable_script_security\n}\nvrrp_instance A {\n    interface eth0\n"
                           "    virtual_router_id 4\n    virtual_ipaddress { 198.18.0.4/24 }\n}\n")
    config, result = translated(keepalived=path)
    assert config.node.script_user is None and "script_user" not in result.toml


def test_without_script_user_or_keepalived_script_scripts_run_as_root(tmp_path):
    try:
        pwd.getpwnam("keepalived_script")
        pytest.skip("this host has a keepalived_script user")
    except KeyError:
        pass
    path = write(tmp_path, "global_defs {\n    enable_script_security\n}\n" + SECURED_INSTANCE)
    config, result = translated(keepalived=path)
    assert config.node.script_user is None and "script_user" not in result.toml

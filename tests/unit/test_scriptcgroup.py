"""vipd.scriptcgroup's pure part: reading /proc/self/mounts and /proc/self/cgroup, and the choice
between a cgroup per script run and the process-group fallback."""
import pytest

from vipd.scriptcgroup import (
    Containment,
    Host,
    RunCgroup,
    cgroup2_mount,
    choose,
    own_cgroup,
    parse_owner,
    process_start,
)

UNIFIED_MOUNTS = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
"""
HYBRID_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
LEGACY_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
"""


@pytest.mark.parametrize("mounts, point", [
    (UNIFIED_MOUNTS, "/sys/fs/cgroup"),
    (HYBRID_MOUNTS, "/sys/fs/cgroup/unified"),
    (LEGACY_MOUNTS, None),
    ("", None),
    ("none /mnt/my\\040cgroups cgroup2 rw 0 0\n", "/mnt/my cgroups"),     # the kernel escapes a space
])
def test_the_cgroup2_mount_point(mounts, point):
    assert cgroup2_mount(mounts) == point


@pytest.mark.parametrize("text, own", [
    ("0::/system.slice/vipd.service\n", "/system.slice/vipd.service"),
    ("9:name=systemd:/system.slice/vipd.service\n4:memory:/x\n0::/system.slice/vipd.service\n",
     "/system.slice/vipd.service"),
    ("0::/\n", "/"),
    ("4:memory:/process_api/92fb\n1:cpu:/\n", None),        # cgroup v1 only
    ("", None),
])
def test_the_own_cgroup_is_the_v2_line(text, own):
    assert own_cgroup(text) == own


def host(mount="/sys/fs/cgroup", own="/system.slice/vipd.service", writable=True, delegated=True):
    return Host(mount, own, writable, delegated)


def test_a_delegated_writable_cgroup_is_used_and_the_daemon_moves_into_a_leaf():
    choice = choose(host())
    assert choice.containment is Containment.CGROUP
    assert (choice.base, choice.leaf) == ("/sys/fs/cgroup/system.slice/vipd.service", True)


def test_the_root_of_a_tree_is_used_in_place_and_below_the_hybrid_mount():
    choice = choose(host(mount="/sys/fs/cgroup/unified", own="/", delegated=False))
    assert choice.containment is Containment.CGROUP
    assert (choice.base, choice.leaf) == ("/sys/fs/cgroup/unified", False)


@pytest.mark.parametrize("facts, says", [
    (dict(mount=None), "no cgroup2"),
    (dict(own=None), "/proc/self/cgroup"),
    (dict(writable=False), "not writable"),
    (dict(writable=False, own="/"), "not writable"),
    # root can write any cgroup; one systemd did not delegate is still not ours to split up
    (dict(delegated=False), "not delegated"),
])
def test_without_a_cgroup_of_our_own_runs_fall_back_to_their_process_group(facts, says):
    choice = choose(host(**facts))
    assert choice.containment is Containment.PROCESS_GROUP and choice.base is None
    assert says in choice.reason


def test_the_start_time_is_read_after_the_command_name_whatever_it_holds():
    stat = "4242 (a) b) (c) S 1 4242 4242 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 1 0 987654 9 10"
    assert process_start(stat) == 987654
    assert process_start("4242 (short) S 1") is None


@pytest.mark.parametrize("name, owner", [
    ("4242-987654", (4242, 987654)),
    ("4242", None), ("cgroup.procs", None), ("run-1", None), ("42-x", None),
])
def test_an_owner_directory_names_its_daemon(name, owner):
    assert parse_owner(name) == owner


def test_the_wrapper_moves_itself_then_execs_the_script_with_its_arguments_untouched():
    argv = RunCgroup("/cg/run-1", -1, None).command(["/etc/vipd/check.sh", "a b", "$HOME"])
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[3:] == ["vipd-script", "/etc/vipd/check.sh", "a b", "$HOME"]

"""The runtime state file: round trip, atomic replacement, what a damaged file does, the record's rules."""
from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from vipd.runtime_state import (
    RUNTIME_WEIGHT_MAX,
    STATE_FILE,
    Invalid,
    RuntimeState,
    StateFile,
    decode_weight,
)


def sample() -> RuntimeState:
    state = RuntimeState()
    state.set_maintenance(True, "api", ["api", "api6"])
    state.set_drain("api", "198.18.0.21:6443", True)
    state.set_drain("api", "[2001:db8::23]:6443", True)
    state.set_weight("api", "198.18.0.22:6443", 3)
    state.set_weight("web", "198.18.0.31:80", 0)
    return state


def test_round_trip_through_the_file(tmp_path):
    store = StateFile(str(tmp_path / "state"))
    store.save(sample())
    loaded = store.load()
    assert loaded == sample()
    assert loaded.in_maintenance("api") and not loaded.in_maintenance("api6")
    assert loaded.drained("api", "[2001:db8::23]:6443") and not loaded.drained("api", "198.18.0.22:6443")
    assert loaded.weight("api", "198.18.0.22:6443") == 3 and loaded.weight("web", "198.18.0.31:80") == 0
    document = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    assert document["version"] == 1
    assert document["maintenance"] == {"all": False, "owners": ["api"]}


def test_the_directory_is_made_0750_and_the_file_is_not_world_readable(tmp_path):
    directory = tmp_path / "var" / "lib" / "vipd"
    StateFile(str(directory)).save(sample())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert stat.S_IMODE((directory / STATE_FILE).stat().st_mode) & 0o007 == 0
    assert sorted(os.listdir(directory)) == [STATE_FILE]          # no temporary file left


def test_a_missing_file_is_no_overrides_without_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert StateFile(str(tmp_path / "nothing-here")).load() == RuntimeState()
    assert caplog.records == []


def test_a_crash_mid_write_leaves_the_previous_state(tmp_path, caplog):
    """A crash between writing the temporary file and the rename: the partial temporary file is
    never read, and the next save replaces it."""
    store = StateFile(str(tmp_path))
    store.save(sample())
    partial = json.dumps(RuntimeState().to_json())[:17]
    (tmp_path / f".{STATE_FILE}.tmp").write_text(partial)
    with caplog.at_level(logging.WARNING):
        assert store.load() == sample()
    assert caplog.records == []
    changed = sample()
    changed.set_weight("api", "198.18.0.22:6443", None)
    store.save(changed)
    assert store.load() == changed
    assert sorted(os.listdir(tmp_path)) == [STATE_FILE]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    store = StateFile(str(tmp_path))
    store.save(sample())

    def no_space(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        store.save(RuntimeState())
    monkeypatch.undo()
    assert store.load() == sample()
    assert sorted(os.listdir(tmp_path)) == [STATE_FILE]


@pytest.mark.parametrize("content, reason", [
    (b"{\"version\": 1, \"drains\": {\"api\": [\"198.18", "not JSON"),
    (b"\xff\xfe garbage", "not JSON"),
    (b"[]", "not a JSON object"),
    (b"{\"version\": 99}", "version 99 is not 1"),
    (b"{\"version\": 1, \"weights\": {\"api\": {\"198.18.0.21:6443\": 300}}}", "weights:"),
    (b"{\"version\": 1, \"weights\": {\"api\": {\"198.18.0.21:6443\": true}}}", "weights:"),
    (b"{\"version\": 1, \"drains\": {\"api\": \"198.18.0.21:6443\"}}", "drains:"),
    (b"{\"version\": 1, \"maintenance\": {\"all\": \"yes\"}}", "maintenance:"),
])
def test_a_corrupt_file_is_one_warning_and_no_overrides(tmp_path, caplog, content, reason):
    (tmp_path / STATE_FILE).write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert StateFile(str(tmp_path)).load() == RuntimeState()
    [record] = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING and "\n" not in message
    assert reason in message and str(tmp_path / STATE_FILE) in message


def test_an_unreadable_file_is_one_warning(tmp_path, caplog):
    (tmp_path / STATE_FILE).mkdir()                  # reading a directory fails, even as root
    with caplog.at_level(logging.WARNING):
        assert StateFile(str(tmp_path)).load() == RuntimeState()
    [record] = caplog.records
    assert "unreadable" in record.getMessage()


def test_maintenance_of_all_then_one_off_keeps_the_others():
    state = RuntimeState()
    state.set_maintenance(True, None, ["api", "api6"])
    assert state.in_maintenance("api") and state.in_maintenance("added-later")
    state.set_maintenance(False, "api", ["api", "api6"])
    assert not state.in_maintenance("api") and state.in_maintenance("api6")
    assert not state.in_maintenance("added-later")
    state.set_maintenance(False, None, ["api", "api6"])
    assert state == RuntimeState()


def test_clearing_every_override_leaves_an_empty_record():
    state = sample()
    state.set_maintenance(False, "api", ["api"])
    state.set_drain("api", "198.18.0.21:6443", False)
    state.set_drain("api", "[2001:db8::23]:6443", False)
    state.set_weight("api", "198.18.0.22:6443", None)
    state.set_weight("web", "198.18.0.31:80", None)
    assert state == RuntimeState()
    assert state.to_json() == {"version": 1, "maintenance": {"all": False, "owners": []}, "drains": {}, "weights": {}}


def test_prune_drops_what_the_config_no_longer_names():
    state = sample()
    dropped = state.prune(owners=["api6"], frontends={"api": ["198.18.0.21:6443", "198.18.0.22:6443"]})
    assert dropped == [
        "maintenance of 'api': no such VIP owner",
        "drain of api [2001:db8::23]:6443: no such backend",
        "weight of web 198.18.0.31:80: no such frontend",
    ]
    assert state.drains == {"api": {"198.18.0.21:6443"}}
    assert state.weights == {"api": {"198.18.0.22:6443": 3}}
    assert state.maintenance == set()
    assert state.prune(owners=["api6"], frontends={"api": ["198.18.0.21:6443", "198.18.0.22:6443"]}) == []


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("1", 1), ("256", RUNTIME_WEIGHT_MAX), ("reset", None), ("RESET", None),
    ("257", Invalid("weight 257 is out of range 0..256")),
    ("-1", Invalid("weight -1 is out of range 0..256")),
    ("2.5", Invalid("weight must be an integer 0..256 or 'reset', not '2.5'")),
    ("three", Invalid("weight must be an integer 0..256 or 'reset', not 'three'")),
    ("", Invalid("weight must be an integer 0..256 or 'reset', not ''")),
])
def test_decode_weight(text, expected):
    assert decode_weight(text) == expected

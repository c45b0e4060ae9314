"""jsonfile in a directory others can write: planted symlinks, FIFOs and hard links.

Each test plants the trap itself (a symlink or hard link to a file outside the
results directory, a FIFO at the path), runs the sink, and checks with
os.lstat/os.stat and the victim's bytes that nothing outside was read into a
result, written, compressed or chmod'ed, and that the sink said so in one line.
Modes are checked the same way: 0600, or 0640 and the group with `group`.
"""
import grp
import gzip
import json
import logging
import os
import stat
import threading
import time

import pytest

from netprobe.outputs import build_sinks
from netprobe.outputs.jsonfile import _STAMP
from netprobe.results import RESULT, Record

VICTIM_BYTES = b"outside the results directory: must stay exactly as it is\n"


def _records(n):
    return [Record(RESULT, "host", "t", {"seq": i}, 1.8e9 + i) for i in range(n)]


def _run(results, *, records=5, **table):
    table.setdefault("path", str(results / "r.json"))
    (runner,) = build_sinks({"j": {"type": "jsonfile", **table}}, "netprobe.toml")
    runner.start({"config_supplied": {}})
    for r in _records(records):
        runner.submit(r)
    runner.close()
    return runner


@pytest.fixture
def dirs(tmp_path):
    """(results dir, victim file outside it) with the victim 0644 and a fixed mtime."""
    results, outside = tmp_path / "results", tmp_path / "outside"
    results.mkdir()
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(VICTIM_BYTES)
    os.chmod(victim, 0o644)
    os.utime(victim, (1.7e9, 1.7e9))
    return results, victim


def _untouched(victim):
    st = os.stat(victim)
    assert victim.read_bytes() == VICTIM_BYTES
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_mtime == 1.7e9
    assert os.listdir(victim.parent) == ["victim"]


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_files_are_created_owner_only(tmp_path):
    _run(tmp_path, records=5)
    _run(tmp_path, records=5)                      # the first run's file is rotated and gzipped
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 2 and names[1].endswith(".gz")
    for n in names:
        assert _mode(tmp_path / n) == 0o600, n
    with gzip.open(tmp_path / names[1]) as f:
        assert len(f.read().splitlines()) == 6    # header + 5 records


def test_an_older_world_readable_file_is_tightened_when_rotated(tmp_path):
    old = tmp_path / "r.json"
    old.write_text('{"type":"HEADER"}\n')
    os.chmod(old, 0o644)
    _run(tmp_path, gzip=False)
    assert sorted(_mode(tmp_path / n) for n in os.listdir(tmp_path)) == [0o600, 0o600]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's group to one we are not in needs root")
def test_group_setting_gives_0640_and_the_group(tmp_path):
    gid = next(g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getegid())
    _run(tmp_path, group=str(gid))
    _run(tmp_path, group=grp.getgrgid(gid).gr_name)
    names = os.listdir(tmp_path)
    assert len(names) == 2
    for n in names:
        st = os.lstat(tmp_path / n)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, gid), n


def test_unknown_group_is_a_config_error():
    from netprobe.errors import ConfigError
    with pytest.raises(ConfigError, match=r'output.j.group: "no-such-group-xyz" is not a group on this host'):
        build_sinks({"j": {"type": "jsonfile", "path": "/tmp/r.json", "group": "no-such-group-xyz"}}, "n.toml")


def test_symlink_at_the_path_is_refused_and_its_target_untouched(dirs, caplog):
    results, victim = dirs
    caplog.set_level(logging.ERROR, logger="netprobe.outputs")
    os.symlink(victim, results / "r.json")
    runner = _run(results)
    _untouched(victim)
    assert os.path.islink(results / "r.json") and os.listdir(results) == ["r.json"]
    assert runner.failed == 5
    msgs = [r.getMessage() for r in caplog.records]
    assert any("cannot rotate" in m and "a symbolic link is in the way" in m for m in msgs), msgs
    assert all("\n" not in m for m in msgs)


def test_dangling_symlink_at_the_path_creates_nothing_outside(dirs):
    results, victim = dirs
    target = victim.parent / "created-by-netprobe"
    os.symlink(target, results / "r.json")
    runner = _run(results)
    assert not os.path.lexists(target)
    assert runner.failed == 5
    _untouched(victim)


def test_symlink_under_a_rotated_name_is_not_compressed(dirs, caplog):
    """A crash leaves rotated files uncompressed and the next start compresses them: a symlink
    planted under such a name must not bring the victim's bytes into a .gz (or delete anything)."""
    results, victim = dirs
    caplog.set_level(logging.ERROR, logger="netprobe.outputs")
    planted = results / "r.json.20260101T000000Z"
    os.symlink(victim, planted)
    runner = _run(results)
    _untouched(victim)
    assert os.path.islink(planted) and not os.path.exists(str(planted) + ".gz")
    assert runner.failed == 0
    assert any("cannot compress" in r.getMessage() and "symbolic link" in r.getMessage()
               for r in caplog.records)


def test_symlink_planted_as_the_gzip_temporary_is_not_written_through(dirs):
    """The previous run's file is rotated to a name the test can predict (from its mtime):
    the gzip temporary of that name is a symlink to the victim beforehand."""
    results, victim = dirs
    old = results / "r.json"
    old.write_text('{"type":"HEADER"}\n{"seq":1}\n')
    os.utime(old, (1.75e9, 1.75e9))
    stamp = time.strftime(_STAMP, time.gmtime(1.75e9))
    os.symlink(victim, results / f"r.json.{stamp}.gz.tmp")
    _run(results)
    _untouched(victim)
    with gzip.open(results / f"r.json.{stamp}.gz") as f:
        assert f.read() == b'{"type":"HEADER"}\n{"seq":1}\n'
    assert sorted(os.listdir(results)) == ["r.json", f"r.json.{stamp}.gz"]


def test_hard_link_to_an_outside_file_is_not_chmodded_or_appended_to(dirs):
    results, victim = dirs
    os.link(victim, results / "r.json")
    _run(results, gzip=False)
    _untouched(victim)
    assert len(os.listdir(results)) == 2          # the link, moved to a rotated name, and a new file
    assert _mode(results / "r.json") == 0o600 and os.stat(results / "r.json").st_ino != os.stat(victim).st_ino


def test_fifo_at_the_path_never_blocks(dirs, caplog):
    results, victim = dirs
    caplog.set_level(logging.ERROR, logger="netprobe.outputs")
    os.mkfifo(results / "r.json")
    done = threading.Event()
    t = threading.Thread(target=lambda: (_run(results), done.set()), daemon=True)
    t.start()
    assert done.wait(10), "the sink blocked on a FIFO"
    assert stat.S_ISFIFO(os.lstat(results / "r.json").st_mode)
    assert any("a FIFO is in the way" in r.getMessage() for r in caplog.records)
    _untouched(victim)


def test_header_redacts_keys_at_any_depth(tmp_path):
    keys = {n: os.urandom(12).hex() for n in ("serve", "peer", "probe", "api")}
    supplied = {"serve": {"key": keys["serve"], "listen": ["127.0.0.1:7171"]},
                "peer": {"far": {"address": "192.0.2.1", "key": keys["peer"]}},
                "probe": [{"kind": "throughput", "key": keys["probe"], "extra": {"api_key": keys["api"]}}],
                "output": {"x": {"key": ""}}}
    (runner,) = build_sinks({"j": {"type": "jsonfile", "path": str(tmp_path / "r.json")}}, "n.toml")
    runner.start({"config_supplied": supplied, "config_effective": supplied})
    runner.close()
    raw = (tmp_path / "r.json").read_bytes()
    for k in keys.values():
        assert k.encode() not in raw
    header = json.loads(raw)
    for part in ("config_supplied", "config_effective"):
        got = header[part]
        assert got["serve"] == {"key": "<redacted>", "listen": ["127.0.0.1:7171"]}
        assert got["peer"]["far"] == {"address": "192.0.2.1", "key": "<redacted>"}
        assert got["probe"][0]["key"] == got["probe"][0]["extra"]["api_key"] == "<redacted>"
        assert got["output"]["x"]["key"] == ""          # no key set: nothing to hide


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_empty_file_of_another_user_is_replaced_not_appended_to(tmp_path):
    path = tmp_path / "r.json"
    path.write_bytes(b"")
    os.chown(path, 65534, 65534)
    os.chmod(path, 0o666)
    runner = _run(tmp_path)
    st = os.stat(path)
    assert runner.failed == 0 and os.listdir(tmp_path) == ["r.json"]
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600)    # a new file: _own never chowns
    assert len(path.read_bytes().splitlines()) == 6

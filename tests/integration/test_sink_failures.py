"""A sink that cannot write is reported to the other sinks as an ERROR record with the count of
records it lost: a full disk, a read-only file system (root: the test mounts a small tmpfs;
the kernel's ENOSPC and EROFS are the oracle)."""
import json
import subprocess

import pytest

from tests.conftest import root_only
from tests.integration.test_daemon import procs, start, wait_for  # noqa: F401


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "nptest", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def config(path, jsonfile):
    path.write_text(f"""
[daemon]
drops_interval = "1s"

[[probe]]
kind = "host"
name = "h"
interval = "0.2s"
require_clock_sync = false

[output.stdout]
format = "json"

[output.file]
type = "jsonfile"
path = "{jsonfile}"
rotate_size = "1M"
""")
    return path


def errors_of(lines, sink):
    recs = [json.loads(line) for line in lines]
    return [r for r in recs if r["type"] == "ERROR" and r.get("sink") == sink]


@root_only
def test_full_disk_is_an_error_record_with_the_lost_count(tmp_path, tmpfs, procs):  # noqa: F811
    filler = tmpfs / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True, check=False)
    p = start(["run", "-c", str(config(tmp_path / "n.toml", tmpfs / "r.jsonl")), "--duration", "5s"])
    procs.append(p)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    errs = errors_of(out.splitlines(), "file")
    assert errs, err[-2000:]
    assert any("No space left on device" in e["error"] for e in errs), errs
    assert all(e["failed"] > 0 for e in errs)
    assert sum(e["failed"] for e in errs) == errs[-1]["failed_total"]


@root_only
def test_read_only_file_system_is_an_error_record(tmp_path, tmpfs, procs):  # noqa: F811
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    p = start(["run", "-c", str(config(tmp_path / "n.toml", tmpfs / "r.jsonl")), "--duration", "4s"])
    procs.append(p)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    errs = errors_of(out.splitlines(), "file")
    assert errs and any("Read-only file system" in e["error"] for e in errs), (errs, err[-2000:])

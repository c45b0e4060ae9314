"""No key leaves the daemon: every output searched for every configured key.

A distinct random key goes in every place a key can be configured: [serve]
(inline, or in a key_file), a [peer.NAME] table, and probe `key`s. The
throughput probe holds the right key, so sessions are authenticated; the
oneway probe takes the peer table's (wrong) key, so the peer refuses it and
refusals are logged and recorded, the path most likely to quote a key. The
daemon runs for a few seconds on loopback peers (as the default config does)
with stdout, jsonfile and syslog sinks (syslog into a real rsyslogd), and
`check-config` runs on the same file. The oracle is a byte search: every
file written under the test directory (gzip rotations decompressed),
everything rsyslogd received, the daemon's stdout and stderr, check-config's
output, and the command lines and environments of the running workers (which
any local user can read) must hold none of the keys.
"""
import gzip
import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from tests.integration.test_syslog_rsyslogd import rsyslog  # noqa: F401 (a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_S = 5


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path, syslog_sock, with_key_file):
    keys = {place: os.urandom(16).hex() for place in ("serve", "peer", "probe_oneway")}
    port = _free_port()
    inputs = [tmp_path / "netprobe.toml"]
    if with_key_file:
        key_file = tmp_path / "serve.key"
        key_file.write_text(keys["serve"] + "\n")
        key_file.chmod(0o600)
        inputs.append(key_file)
        serve_key = f'key_file = "{key_file}"'
    else:
        serve_key = f'key = "{keys["serve"]}"'
    inputs[0].write_text(f"""
[daemon]
restart_backoff = "200ms"

[serve]
listen = ["127.0.0.1:{port}"]
{serve_key}

[peer.lo]
address = "127.0.0.1:{port}"
key = "{keys['peer']}"

[[probe]]
kind = "throughput"
name = "tp"
peer = "lo"
key = "{keys['serve']}"
rate = "20M"
interval = "1s"
window = "2s"

[[probe]]
kind = "oneway"
name = "ow"
peer = "lo"
interval = "1s"

[[probe]]
kind = "oneway"
name = "ow-own-key"
peer = "127.0.0.1:{port}"
key = "{keys['probe_oneway']}"
interval = "1s"

[output.stdout]
format = "text"

[output.file]
type = "jsonfile"
path = "{tmp_path}/out/results.jsonl"
rotate_size = "4K"
keep = 1000                     # rotated and gzipped, none pruned: every record is searched

[output.alerts]
type = "syslog"
address = "{syslog_sock}"
""")
    (tmp_path / "out").mkdir()
    return keys, inputs


def _worker_exposure(pid):
    """The command lines and environments of a process and its children (readable by others)."""
    out = b""
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                    text=True).stdout.split()]
    for p in pids:
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{p}/{part}", "rb") as f:
                    out += f.read()
            except OSError:
                pass
    return out, len(pids) - 1


@pytest.mark.parametrize("with_key_file", [False, True], ids=["inline-key", "key-file"])
def test_no_key_in_any_output(tmp_path, rsyslog, with_key_file):  # noqa: F811 (the fixture)
    (tmp_path / "run").mkdir()
    keys, inputs = _config(tmp_path / "run", rsyslog.sock, with_key_file)
    cfg = inputs[0]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    daemon = subprocess.Popen([sys.executable, "-m", "netprobe", "run", "-c", str(cfg), "--duration", f"{RUN_S}s"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    try:
        time.sleep(RUN_S / 2)
        exposed, workers = _worker_exposure(daemon.pid)
        out, err = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert workers == 4, "serve and three probes ran"
    check = subprocess.run([sys.executable, "-m", "netprobe", "check-config", "--json", str(cfg)],
                           capture_output=True, cwd=ROOT, timeout=60)
    assert check.returncode == 0, check.stderr
    time.sleep(0.5)                                          # rsyslogd flushes per message

    written = {}
    for dirpath, _, names in os.walk(tmp_path):
        for n in names:
            p = os.path.join(dirpath, n)
            if p in map(str, inputs) or not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            with open(p, "rb") as f:
                data = f.read()
            written[p] = gzip.decompress(data) if p.endswith(".gz") else data
    outputs = {"daemon stdout": out, "daemon stderr": err, "check-config stdout": check.stdout,
               "check-config stderr": check.stderr, "worker cmdline/environ": exposed, **written}

    # the run did what the test relies on: records in every sink, an authenticated session, refusals
    jsonl = written[str(tmp_path / "run" / "out" / "results.jsonl")].decode().splitlines()
    header = json.loads(jsonl[0])
    assert header["type"] == "HEADER"
    assert header["config_supplied"]["peer"]["lo"]["key"] == "<redacted>"
    assert header["config_effective"]["probe"][0]["key"] == "<redacted>"
    records = [json.loads(x) for f, d in written.items() if "results.jsonl" in f for x in d.decode().splitlines()[1:]]
    assert any(r["type"] == "RESULT" and r["probe"] == "throughput" for r in records), out.decode()[-2000:]
    refused = [r for r in records if r["probe"] == "oneway" and "refused" in str(r.get("detail"))]
    assert {r["name"] for r in refused} == {"ow", "ow-own-key"}, out.decode()[-2000:]
    syslog_lines = rsyslog.lines()
    assert any(row["msgid"] == "RESULT" for row in syslog_lines)
    outputs["rsyslogd"] = rsyslog.out.read_bytes()
    assert stat.S_IMODE(os.stat(tmp_path / "run" / "out" / "results.jsonl").st_mode) == 0o600

    for place, key in keys.items():
        for what, data in outputs.items():
            assert key.encode() not in data, f"the {place} key is in {what}"

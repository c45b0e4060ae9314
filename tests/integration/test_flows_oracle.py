"""The flows sampler against ss(8), in a private network namespace (root: `unshare -n`), so the
dump holds only the sockets the test made (tests/reference/flows_oracle.py builds them).

- filters: for ~1,000 sockets (IPv4, IPv6, v4-mapped IPv6; several addresses and ports), the
  kernel bytecode netprobe compiles returns exactly the sockets `ss` returns for the same
  port/prefix expression (ss compiles its own bytecode from the text);
- fields: flows that sent data through random loss and then went idle: RTT, cwnd, total
  retransmits and bytes acked equal ss -tin's, read between two of our dumps.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import root_only

ROOT = Path(__file__).resolve().parents[2]
pytestmark = root_only


def _run(*args):
    for tool in ("unshare", "ss", "ip", "iptables"):
        assert shutil.which(tool), f"{tool} missing: apt-get install util-linux iproute2 iptables"
    p = subprocess.run(["unshare", "-n", sys.executable, "-m", "tests.reference.flows_oracle", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_kernel_filter_returns_what_ss_returns_for_1000_sockets():
    got = _run("filter", "1000")
    assert got["sockets"] == got["dumped"] == 1000 and got["families"] == [2, 10]
    nonempty = 0
    for case in got["cases"]:
        ours = {tuple(x) for x in case["ours"]}
        ss = {tuple(x) for x in case["ss"]}
        assert ours == ss, (case["expr"], sorted(ours ^ ss)[:5])
        nonempty += bool(ours) and len(ours) < 1000
    assert nonempty == len(got["cases"])          # every case selects a real subset: no vacuous agreement


def test_filtered_dump_carries_fewer_bytes():
    got = _run("filter", "200")
    sizes = {json.dumps(c["case"], sort_keys=True): (len(c["ours"]), c["bytes"]) for c in got["cases"]}
    n, b = sizes[json.dumps({"sport": "80,443"}, sort_keys=True)]
    # only matching sockets crossed into user space: n messages of ~410 bytes (<= 480) plus two NLMSG_DONE
    assert 0 < n < 100 and b <= n * 480 + 2 * 20


def test_fields_agree_with_ss_tin():
    got = _run("fields")
    assert len(got["ss"]) == 6
    assert sum(v["total_retrans"] for v in got["ss"].values()) > 0      # the loss made retransmits to compare
    for key, theirs in got["ss"].items():
        before, after = got["before"][key], got["after"][key]
        for name in ("cwnd", "total_retrans", "bytes_acked"):
            lo, hi = sorted((before[name], after[name]))
            assert lo <= theirs[name] <= hi, (key, name, before, theirs, after)
        lo, hi = sorted((before["rtt_us"], after["rtt_us"]))
        assert round(lo / 1000, 3) <= theirs["rtt_ms"] <= round(hi / 1000, 3), (key, before, theirs, after)
        assert before["bytes_acked"] >= 400_000

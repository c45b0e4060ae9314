"""The pcap analyser on the lab captures kept in tests/data and on scripted conversations (no root needed).

Oracles: tshark and tcptrace run here on the same files, and the sender's own
retransmit count (iperf3, tcp_info total_retrans) recorded when each capture
was taken (tests/data/retrans-notes.md, which also explains every class of
difference with tshark and tcptrace).
"""
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.probes.retrans import capture, pcapfile
from tests.integration.test_retrans_pcap import agreement, tcptrace_counts, tshark_flags
from tests.reference import retrans_gen as gen

DATA = Path(__file__).resolve().parents[1] / "data"
# file -> the sender's retransmitted segments in the run that made it
SENDER = {"retrans-b-loss1-reorder2.pcap": 56, "retrans-a-gso-loss1.pcap": 93,
          "retrans-b-ipv6-sll2-loss1.pcap": 18}


def bulk(res):
    return max(res.flows, key=lambda f: f.ab["data_pkts"])


@pytest.fixture(scope="module", autouse=True)
def _tools():
    missing = [t for t in ("tshark", "tcptrace") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: apt-get install -y {' '.join(missing)}", pytrace=False)


@pytest.mark.parametrize("name", sorted(SENDER))
def test_flags_agree_with_tshark(name):
    path = str(DATA / name)
    res = pcapfile.analyse_file(path, keep_frames=True)
    assert res.error is None and res.counters["tcp"] == res.counters["frames"]
    share, diff, n = agreement(res.flags, tshark_flags(path))
    assert n > 10 and share == 1.0, (share, diff)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(st.tuples(st.sampled_from(gen.OPS + ("send",) * 6), st.integers(0, 50)),
                       min_size=5, max_size=80), v6=st.booleans())
def test_scripted_conversations_agree_with_tshark_frame_for_frame(script, v6):
    """Loss, reordering, resends, dup and zero-window ACKs, D-SACK: every Wireshark-compatible
    flag equals tshark's (found this way: tshark 4.0 calls an already-ACKed resend spurious
    before its out-of-order timing test, and flags an ACKed-unseen ACK twice, not on every ACK)."""
    data = gen.ether_pcap(gen.conversation(script, v6=v6))
    with tempfile.NamedTemporaryFile(suffix=".pcap") as fh:
        fh.write(data)
        fh.flush()
        theirs = tshark_flags(fh.name)
    _, diff, _ = agreement(pcapfile.analyse_bytes(data).flags, theirs)
    assert diff == {}, script


def test_reordering_capture():
    path = str(DATA / "retrans-b-loss1-reorder2.pcap")
    f = bulk(pcapfile.analyse_file(path))
    # one retransmission was itself lost on R before the capture point
    assert SENDER["retrans-b-loss1-reorder2.pcap"] - 2 <= f.ab["retrans"] <= SENDER["retrans-b-loss1-reorder2.pcap"]
    assert f.ab["ooo"] >= 30 and f.ab["dsack"] == f.ab["ooo"]        # each overtaken original was D-SACKed
    assert f.ab["ws_retrans"] > f.ab["retrans"] + 25                  # tshark's timing rule: 86
    t = tcptrace_counts(path)[(f.a, f.a_port, f.b, f.b_port)]
    assert t["rexmt"][0] + t["ooo"][0] == f.ab["retrans"] + f.ab["ooo"]


def test_gso_capture_counts_wire_segments():
    path = str(DATA / "retrans-a-gso-loss1.pcap")
    f = bulk(pcapfile.analyse_file(path))
    assert f.ab["retrans_segs"] == SENDER["retrans-a-gso-loss1.pcap"]
    assert f.ab["retrans"] < 10 and f.ab["data_segs"] > 20 * f.ab["data_pkts"]
    assert tcptrace_counts(path)[(f.a, f.a_port, f.b, f.b_port)]["rexmt"][0] == f.ab["retrans"]


def test_gso_capture_of_arriving_data_only_counts_the_same_wire_segments(tmp_path):
    """What capture_direction "in" on the receiver keeps (the sender's data and SYN/FIN/RST,
    not the receiver's SYN with its MSS): segments are counted with the sender's MSS."""
    path = str(DATA / "retrans-a-gso-loss1.pcap")
    f = bulk(pcapfile.analyse_file(path))
    arriving = str(tmp_path / "in.pcap")
    subprocess.run(["tcpdump", "-r", path, "-w", arriving,
                    f"src host {f.a} and ({capture.HAS_DATA} or {capture.SYN_FIN_RST})"],
                   check=True, capture_output=True, timeout=60)
    g = bulk(pcapfile.analyse_file(arriving))
    assert g.ba["pkts"] == 0 and g.ab["data_pkts"] == f.ab["data_pkts"]
    assert g.ab["retrans_segs"] == SENDER["retrans-a-gso-loss1.pcap"]
    assert g.ab["data_segs"] == f.ab["data_segs"]


def test_ipv6_linux_cooked_v2_capture():
    res = pcapfile.analyse_file(str(DATA / "retrans-b-ipv6-sll2-loss1.pcap"))
    assert res.counters["ipv6"] == res.counters["frames"]
    f = bulk(res)
    assert f.a.startswith("2001:2:0:1::")
    assert f.ab["retrans"] == f.ab["lost_retrans"] == SENDER["retrans-b-ipv6-sll2-loss1.pcap"]

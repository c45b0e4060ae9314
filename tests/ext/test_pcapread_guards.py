"""Input-driven arithmetic in netprobe._pcapread: crafted captures that once crashed it.

Oracles: the process's exit status (a signal is a crash, whatever was printed)
and the pure-Python reference analyser (tests/reference/tcpflow.py), frame by frame.
"""
import json
import subprocess
import sys

import pytest

from netprobe.probes.retrans import pcapfile
from tests.reference import retrans_gen as gen
from tests.reference import tcpflow

BITS = pcapfile.flag_bits()
STEP = 0x60000000          # three steps of this wrap the sequence space: e + 2 * STEP is below e
T0 = 1_700_000_000 * 10**9


def capture(ends_and_ids, nbytes=100):
    """A pcap of A's data segments, one per (end, IPv4 ID), 1 us apart, no handshake."""
    return gen.ether_pcap([(T0 + k * 1000, gen.a_packet((end - nbytes) & 0xFFFFFFFF, ipid & 0xFFFF, nbytes))
                           for k, (end, ipid) in enumerate(ends_and_ids)])


def six_segments(e, i):
    """Ends e, e+s, e+2s with IDs i, i+1, i+2; end e with ID i+1; end e with ID i+7; then
    one ending below e: the send-order marks once formed a run of step 0, and the next
    look-up divided by it (SIGFPE)."""
    return [(e, i), (e + STEP, i + 1), (e + 2 * STEP, i + 2), (e, i + 1), (e, i + 7), (e - 1000, i + 8)]


def assert_matches_reference(data):
    got = pcapfile.analyse_bytes(data)
    want, _, _ = tcpflow.analyse(data)
    assert got.error is None
    assert [{n for n, b in BITS.items() if int(f) & b} for f in got.flags] == want


@pytest.mark.parametrize("e, i", [(0x10000000, 300), (0xFFFFFF00, 65534), (50, 0)])
def test_six_segment_capture_gives_a_result_not_a_signal(tmp_path, e, i):
    path = tmp_path / "six.pcap"
    path.write_bytes(capture(six_segments(e, i)))
    p = subprocess.run([sys.executable, "-m", "netprobe", "pcap", str(path), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (p.returncode, p.stderr)
    [result] = [r for r in map(json.loads, p.stdout.splitlines()) if r["type"] == "RESULT"]
    assert result["data_pkts"] == 6, result
    assert_matches_reference(capture(six_segments(e, i)))


@pytest.mark.parametrize("step", [STEP, 0x7FFFFFFF, 0x80000000, 0x80000001, 0xC0000000])
def test_huge_steps_and_repeated_ids_match_the_reference(step):
    """Send-order marks across the whole sequence space: IDs trusted (in order), then ends
    stepping by half the space and more, repeated ends and IDs, and resends below."""
    e, i = 0x7FFFFF00, 1000
    marks = [(e + k * 100, i + k) for k in range(6)]
    for k in range(8):
        marks += [(e + k * step, i + 6 + k), (e + k * step, i + 5 + k), (e + (k - 1) * step - 50, i + 9 + k)]
    assert_matches_reference(capture(marks))

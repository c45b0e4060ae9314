"""max_rate holds on what the peer actually sends, whatever the sessions ask (lab: the peer in B).

The oracle is B's interface counter (veth-b tx_bytes, read every 50 ms
inside B): over any 1 s it may carry at most max_rate + 5 %. The attacker
(a second address in A) runs 16 capacity sessions sending, back to back,
plans whose whole gap sits on the last row (each plan's average rate is
just under max_rate, so each alone passes the plan check), or throughput
sessions that together ask twice max_rate. The legitimate client (A's
first address) keeps probing.
"""
import time

import pytest

from tests.hostile.harness import Peer, finish, tool

pytestmark = pytest.mark.lab

MAX_RATE = 20e6
ATTACKER = "198.18.1.3"
ATTACK_S = 6.0
SETTINGS = {"max_rate": "20M", "max_rate_per_address": "20M", "max_sessions": 40, "max_sessions_per_address": 20,
            "idle_timeout": "30s"}


def peak_rate(samples, span=1.0):
    """The highest bit/s over any `span` s of [t, tx_bytes] samples."""
    best, j = 0.0, 0
    for i, (t0, b0) in enumerate(samples):
        j = max(j, i + 1)
        while j < len(samples) and samples[j][0] - t0 < span:
            j += 1
        if j == len(samples):
            break
        t1, b1 = samples[j]
        best = max(best, (b1 - b0) * 8 / (t1 - t0))
    return best


def test_peak_rate_reads_the_counter():
    samples = [[i * 0.05, i * 125_000] for i in range(41)]          # 20 Mbit/s exactly
    assert peak_rate(samples) == pytest.approx(20e6)
    samples[20][1] += 500_000                                        # 4 Mbit more somewhere
    assert peak_rate(samples) > 23e6


@pytest.fixture
def lab_peer(make_lab, tmp_path):
    lab = make_lab()
    lab.run("a", ["ip", "addr", "add", ATTACKER + "/24", "dev", lab.if_a])
    with Peer(tmp_path, SETTINGS, host=lab.b4, port=7171, allow=("198.18.0.0/15",), ns=lab.ns_b) as peer:
        yield lab, peer


def attack(lab, peer, name, **opts):
    """(peak bit/s B sent over any 1 s, the attack's result, the legitimate client's result)."""
    sampler = tool("sample-tx", ns=lab.ns_b, duration=ATTACK_S + 2, dev=lab.if_b, every=0.05)
    time.sleep(0.5)
    hostile = tool(name, ns=lab.ns_a, duration=ATTACK_S, address=peer.address, source=ATTACKER,
                   key_file=peer.key_file, **opts)
    legit = tool("legit", ns=lab.ns_a, duration=ATTACK_S, every=0.5, address=peer.address, key_file=peer.key_file)
    got, legit_got, samples = finish(hostile), finish(legit), finish(sampler)["samples"]
    assert peer.alive(), peer.log()[-600:]
    return peak_rate(samples), got, legit_got


def test_capacity_plans_with_a_trailing_gap_stay_under_max_rate(lab_peer):
    peak, got, legit = attack(*lab_peer, "capacity-gap", sessions=16, max_rate=MAX_RATE)
    assert got["plans_served"] >= 1, f"no plan was served, so the cap was not tried: {got['ends']}"
    assert peak <= 1.05 * MAX_RATE, \
        f"the peer sent {peak / 1e6:.1f} Mbit/s over 1 s (max_rate {MAX_RATE / 1e6:g}); attack: {got}"
    assert peak >= 0.1 * MAX_RATE, f"the peer sent only {peak / 1e6:.2f} Mbit/s: the attack was not served"


def test_throughput_sessions_asking_twice_the_cap_stay_under_max_rate(lab_peer):
    peak, got, legit = attack(*lab_peer, "throughput-over", sessions=4, rate_down=MAX_RATE / 2)
    assert got["served"] >= 1, f"no session was served, so the cap was not tried: {got['refusals']}"
    assert peak <= 1.05 * MAX_RATE, \
        f"the peer sent {peak / 1e6:.1f} Mbit/s over 1 s (max_rate {MAX_RATE / 1e6:g}); attack: {got}"
    assert peak >= 0.3 * MAX_RATE, f"the peer sent only {peak / 1e6:.2f} Mbit/s: the attack was not served"

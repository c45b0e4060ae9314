"""The capacity probe against a real bottleneck: tbf on R with a one-frame bucket (--burst 1514)
in the netns lab, B (`netprobe serve`) sending to A (the probe).

Oracle: the tbf's configured rate, and the L2 rate a long UDP flow of full-size frames gets
through the same tbf in the same lab just before (iperf3): the flow is the oracle when
the host is busy, because a one-frame bucket releases every packet on a timer, and timer
lateness on a loaded 2-vCPU VM is lost rate (measured here: 85 % of 100 Mbit/s at load 3).
Probe traffic is counted on R's qdisc (tc -s), independently of what the probe reports.
"""
import json
import sys
import time

import pytest

from tests.lab.netlab import rate_bps, require

pytestmark = pytest.mark.lab
ROOT = __file__.rsplit("/tests/", 1)[0]
WIRE, PAYLOAD = 1514, 1472


def serve_in_b(lab):
    lab.popen("b", [sys.executable, "-m", "netprobe", "serve", "--listen", "0.0.0.0:7171", "--allow",
                    "198.18.0.0/15"], cwd=ROOT)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if lab.run("b", ["ss", "-ltnH", "sport = :7171"], check=False).stdout.strip():
            return
        time.sleep(0.1)
    raise AssertionError("netprobe serve did not start in B")


def udp_oracle(lab, rate):
    """L2 bit/s that a 3 s UDP flow of full-size frames, offered at 1.3 x the rate, gets B -> A."""
    require("iperf3")
    srv = lab.popen("a", ["iperf3", "-s", "-1", "-p", "5299"])
    time.sleep(0.3)
    p = lab.run("b", ["iperf3", "-c", lab.a4, "-p", "5299", "-u", "-b", str(int(rate * 1.3)), "-l", str(PAYLOAD),
                      "-t", "3", "-J"], timeout=30)
    srv.wait(10)
    s = json.loads(p.stdout)["end"]["sum"]
    return s["bits_per_second"] * (1 - s["lost_percent"] / 100) * WIRE / PAYLOAD


def probe(lab, *args, timeout=90):
    before = lab.qdisc_stats("ba")["bytes"]
    t0 = time.monotonic()
    p = lab.run("a", [sys.executable, "-m", "netprobe", "probe", "capacity", "--json", "--peer", f"{lab.b4}:7171",
                      *args], cwd=ROOT, timeout=timeout, check=False)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    recs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return recs, took, lab.qdisc_stats("ba")["bytes"] - before


def test_the_byte_budget_holds_on_the_wire_with_the_control_replies(make_lab):
    """Full mode runs until its budget stops it. R's qdisc counts every byte B sent towards A,
    trains and the control connection's replies and ACKs alike: that total stays within
    max_bytes, and the probe's own `bytes` is what R counted."""
    lab = make_lab(offload="off")
    serve_in_b(lab)
    lab.set(rate_ba="23.5mbit", burst_ba=WIRE)
    budget = 1_500_000
    recs, took, wire_bytes = probe(lab, "--mode", "full", "--max-bytes", budget, "--max-time", "20s")
    (res,) = [x for x in recs if x["type"] == "RESULT"]
    print(f"budget {budget} B: {wire_bytes} B through R's qdisc, {res['bytes']} B by the probe's count, {took:.1f} s")
    assert wire_bytes <= budget
    # full mode's plan (1,000 pairs and 100 long trains) needs several times this budget, and a
    # request goes out only when it fits whole: the budget ended the run, up to a request short
    assert took < 15 and wire_bytes >= budget / 2, "the budget did not stop the run: the test did not test it"
    # only the session's set-up before the estimate and its close after it are outside the count
    # (660-700 B in three runs; the count without the control replies missed 3.8-3.9 kB)
    assert res["bytes"] <= wire_bytes <= res["bytes"] + 2_500


@pytest.mark.parametrize("rates", [("23.5mbit", "90mbit")])
def test_one_frame_bucket_quick_mode(make_lab, rates):
    lab = make_lab(offload="off")
    serve_in_b(lab)
    for r in rates:
        lab.set(rate_ba=r, burst_ba=WIRE)
        configured = rate_bps(r)
        oracle = udp_oracle(lab, configured)
        recs, took, wire_bytes = probe(lab)
        res = [x for x in recs if x["type"] == "RESULT"]
        assert len(res) == 1, recs
        res = res[0]
        cap = res["capacity"]
        print(f"{r}: capacity {cap / 1e6:.2f} Mbit/s ({cap / configured - 1:+.1%} of the configured rate, "
              f"{cap / oracle - 1:+.1%} of the UDP flow's {oracle / 1e6:.2f}), {res['confidence']}, "
              f"{res['method']}, {took:.1f} s, {wire_bytes} B on the wire, {res['bytes']} B by its count")
        # within 5 % of the configured rate; when timer lateness makes the tbf itself deliver less
        # (the UDP flow), the lower bound is 5 % under what it delivers
        assert 0.95 * min(oracle, configured) <= cap <= 1.05 * configured, res
        assert res["ci_lo"] <= cap <= res["ci_hi"] and res["adr"] <= cap * 1.05
        assert res["confidence"] in ("high", "medium")
        assert took <= 30 and res["bytes"] <= 10_000_000 and wire_bytes <= 10_000_000   # the default budget
        # R's qdisc saw the probe's bytes, plus the session's set-up and close (0.6-3.0 kB)
        assert res["bytes"] <= wire_bytes <= res["bytes"] + 5_000
        assert res["malformed"] == res["foreign"] == res["user_ts"] == 0


def test_large_token_bucket_is_low_confidence(make_lab):
    # a 60 kB bucket: pairs and short trains pass at veth speed, long trains at the rate
    lab = make_lab(offload="off", rate_ba="50mbit", burst_ba=60_000)
    serve_in_b(lab)
    recs, _, _ = probe(lab, "--train-length", "100")
    res = [x for x in recs if x["type"] == "RESULT"][0]
    print(f"60 kB bucket: {res['capacity'] / 1e6:.0f} Mbit/s, {res['confidence']}: {res['why']}")
    assert res["confidence"] == "low" and "token bucket" in res["why"], res
    assert res["burst_ratio"] < 0.6


def test_cross_traffic_and_a_breach(make_lab):
    lab = make_lab(offload="off", rate_ba="40mbit", burst_ba=WIRE)
    serve_in_b(lab)
    # B's own link at 100 Mbit/s spreads the trains, so that cross traffic, sent by R itself into
    # the bottleneck (R's egress tbf towards A), slips between their packets as on a real path
    lab.run("b", ["tc", "qdisc", "replace", "dev", lab.if_b, "root", "tbf", "rate", "100mbit", "burst", "3028",
                  "limit", "200000"])
    oracle = udp_oracle(lab, 40e6)          # what the one-frame bucket delivers on this host now
    srv = lab.popen("a", ["iperf3", "-s", "-1", "-p", "5298"])
    time.sleep(0.3)
    cross = lab.popen("r", ["iperf3", "-c", lab.a4, "-p", "5298", "-u", "-b", "12M", "-l", "1000", "-t", "40"])
    try:
        time.sleep(1)
        # every 1 s, but <= 1 % average load stretches the period far past the run: one estimate
        recs, _, _ = probe(lab, "--every", "1s", "--min-capacity", "80M", "--breach-after", "1",
                           "--duration", "10s")
    finally:
        cross.terminate()
        srv.terminate()
    res = [x for x in recs if x["type"] == "RESULT"]
    assert len(res) == 1, recs
    res = res[0]
    print(f"with 30 % cross traffic: capacity {res['capacity'] / 1e6:.2f}, ADR {res['adr'] / 1e6:.2f}, "
          f"{res['confidence']}, {res['method']}, {res['duration']:.1f} s, {res.get('why')}; "
          f"UDP flow before {oracle / 1e6:.2f}")
    # within 10 % of the configured rate, or of what the tbf delivered when its timer ran late
    assert 0.90 * min(oracle, 40e6) <= res["capacity"] <= 1.10 * 40e6, res
    assert res["adr"] < 0.95 * res["capacity"], res
    breaches = [x for x in recs if x["type"] == "BREACH"]
    assert len(breaches) == 1 and breaches[0]["metric"] == "capacity", recs


def test_loco_command_online_with_progress_and_offline(make_lab, tmp_path):
    import signal
    lab = make_lab(offload="off", rate_ba="30mbit", burst_ba=WIRE)
    serve_in_b(lab)
    dump = tmp_path / "loco.csv"
    p = lab.popen("a", [sys.executable, "-m", "netprobe.probes.capacity.loco", "-h", lab.b4, "-q", "-w", dump,
                        "-f", "%be%am%AM%bl%bu%lt"], cwd=ROOT)
    time.sleep(3)
    p.send_signal(signal.SIGUSR1)            # `ip netns exec` execs the command: this is loco itself
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    be, am, assessed, bl, bu, lt = out.strip().split(",")
    assert 0.95 * 30 * 0.9 <= float(be) <= 1.05 * 30 and assessed in ("MODE", "NO MODE")
    assert float(bl) <= float(be) <= float(bu) and float(lt) > 0
    progress = [line.split(",") for line in err.splitlines()]
    assert len(progress) == 1 and progress[0][0].endswith("%") and progress[0][1] in ("PRELIM", "P1", "P1_CALC",
                                                                                       "CALC", "END")
    off = lab.run("a", [sys.executable, "-m", "netprobe.probes.capacity.loco", "-r", dump, "-f", "%be%am%AM%bl%bu"],
                  cwd=ROOT)
    # loco's CSV holds each pair's rate and dispersion only (sizes are recovered from the two), no
    # preliminary trains, which the online bin width uses, so -r lands close, not exactly (the
    # exact re-analysis is the `record` file: test_capacity.py)
    off_be = float(off.stdout.split(",")[0])
    print(f"loco online {out.strip()}; offline {off.stdout.strip()}")
    assert abs(off_be - float(be)) <= 0.05 * float(be), (off.stdout, out)

"""`netprobe serve` under hostile clients, in the netns lab: what the peer sent, its RSS, and the
handshake latency of a legitimate client probing meanwhile.

The peer runs in B with max_rate 20 Mbit/s (10 per address); each attack comes from a second address in A
(the tools of tests/hostile/attacks.py) while the legitimate client (A's first address, the
product's connect()) opens a capacity session every 0.25 s. Per attack, on a fresh peer:
the peak and mean bit/s over 1 s on B's interface counter (veth-b tx_bytes), the peer's
peak RSS above its start, and the legitimate client's handshake latency and success.
Root only (network namespaces).
"""
import json
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_RATE = 20e6
PER_ADDRESS = 10e6            # max_rate_per_address: the most one attacker address can draw
ATTACKER = "198.18.1.3"
SETTINGS = {"max_rate": "20M", "max_rate_per_address": "10M", "max_sessions": 16, "max_sessions_per_address": 4,
            "handshake_timeout": "2s", "idle_timeout": "10s"}
# name -> (tool, its options)
ATTACKS = {
    "none": (None, {}),
    "handshake flood (1000 half-open + 200/s)": ("flood", {"half_open": 1000, "rate": 200, "authed": 12}),
    # sized to the attacker address's own cap, so its plans and sessions are admitted and what the
    # peer sends is held by the rate limit, not refused at the door (a plan's largest train counts
    # whole against the cap: at the full cap a one-train plan is refused)
    "16 capacity sessions, trailing gap": ("capacity-gap", {"sessions": 16, "max_rate": PER_ADDRESS / 2}),
    "4 throughput sessions at half the address cap": ("throughput-over", {"sessions": 4, "rate_down": PER_ADDRESS / 2}),
    "4 oneway close bombs": ("bomb", {"sessions": 4}),
}


def _watch_rss(peer, stop, out):
    while not stop.wait(0.1):
        try:
            out.append(peer.rss_kb())
        except (OSError, KeyError):
            return


def one(lab, tmp, name, duration):
    from tests.hostile.harness import Peer, finish, tool
    from tests.hostile.test_rate_cap import peak_rate
    tool_name, opts = ATTACKS[name]
    with Peer(tmp, SETTINGS, host=lab.b4, port=7171, allow=("198.18.0.0/15",), ns=lab.ns_b) as peer:
        start_kb = peer.rss_kb()
        rss, stop = [start_kb], threading.Event()
        watch = threading.Thread(target=_watch_rss, args=(peer, stop, rss), daemon=True)
        watch.start()
        sampler = tool("sample-tx", ns=lab.ns_b, duration=duration + 1, dev=lab.if_b, every=0.05)
        hostile = tool(tool_name, ns=lab.ns_a, duration=duration, address=peer.address, source=ATTACKER,
                       key_file=peer.key_file, **opts) if tool_name else None
        legit = tool("legit", ns=lab.ns_a, duration=duration, delay=min(1.0, duration / 4), every=0.25,
                     address=peer.address, key_file=peer.key_file)
        got = finish(legit)
        attack = finish(hostile) if hostile else {}
        samples = finish(sampler)["samples"]
        stop.set()
        watch.join()
        alive = peer.alive()
    span = samples[-1][0] - samples[0][0]
    hs = sorted(p["handshake_s"] for p in got["probes"] if p["ok"])
    return {"attack": name, "max_rate": MAX_RATE, "max_rate_per_address": PER_ADDRESS, "peak_bps": peak_rate(samples),
            "mean_bps": (samples[-1][1] - samples[0][1]) * 8 / span if span > 0 else 0.0,
            "rss_start_kb": start_kb, "rss_peak_kb": max(rss), "peer_alive": alive,
            "legit_ok": got["ok"], "legit_probes": len(got["probes"]),
            "handshake_median_s": statistics.median(hs) if hs else None,
            "handshake_p95_s": hs[int(0.95 * (len(hs) - 1))] if hs else None,
            "legit_errors": got["errors"], "attack_result": attack}


def run(quick=False):
    sys.path.insert(0, str(ROOT))
    from tests.lab import netlab
    if os.geteuid() != 0:
        return [{"error": "needs root (network namespaces)"}]
    duration = 4.0 if quick else 10.0
    rows = []
    lab = netlab.Lab()
    try:
        lab.up()
        lab.run("a", ["ip", "addr", "add", ATTACKER + "/24", "dev", lab.if_a])
        for name in ATTACKS:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    rows.append(one(lab, tmp, name, duration))
                except AssertionError as exc:           # the peer did not start, or a tool failed
                    rows.append({"attack": name, "note": str(exc)[:300]})
    finally:
        lab.down()
    return rows


def table(rows):
    if rows and "error" in rows[0]:
        return rows[0]["error"]

    def ms(v):
        return f"{'-':>8}" if v is None else f"{v * 1e3:8.1f}"
    out = [f"{'attack (peer max_rate 20 Mbit/s)':42} {'peak Mb/s':>9} {'mean Mb/s':>9} {'RSS MB':>7} "
           f"{'+RSS MB':>7} {'legit ok':>9} {'hs p50 ms':>9} {'hs p95 ms':>9}"]
    for r in rows:
        if "note" in r:
            out.append(f"{r['attack']:42} {r['note']}")
            continue
        out.append(f"{r['attack']:42} {r['peak_bps'] / 1e6:9.1f} {r['mean_bps'] / 1e6:9.1f} "
                   f"{r['rss_peak_kb'] / 1024:7.0f} {(r['rss_peak_kb'] - r['rss_start_kb']) / 1024:7.0f} "
                   f"{r['legit_ok']:>4}/{r['legit_probes']:<4} {ms(r['handshake_median_s']):>9} "
                   f"{ms(r['handshake_p95_s']):>9}" + ("" if r["peer_alive"] else "  (peer died)"))
    out.append("peak/mean: B's interface counter over 1 s; RSS: the serve process, peak during the attack; "
               "legit: capacity sessions that completed (handshake, setup, a train that arrived)")
    return "\n".join(out)


if __name__ == "__main__":
    rows = run(quick="--quick" in sys.argv)
    print(json.dumps(rows, indent=1) if "--json" in sys.argv else table(rows))

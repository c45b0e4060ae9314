"""A packet-level model of a path for the capacity analysis tests: trains (led by primers) and
Poisson cross traffic share one FIFO link of capacity C bit/s, optionally behind a token bucket
(bursts pass at line rate) or a receiver that timestamps in interrupt batches.

Produces receiver rows and plan rows in the layouts netprobe._train and analysis.measure use.
"""
import numpy as np

LINE = 10e9                  # the sender's own link: packets reach the bottleneck this fast


def plan_rows(spec, primers=1, max_size=1472, spacing_ns=20_000_000, send_bps=LINE):
    """spec: [(phase, measured packets, size)] -> plan rows (train, phase, count, size, primers,
    primer_size, tx_ns, tx_end_ns), trains spacing_ns apart, handed over at send_bps."""
    rows = []
    for i, (phase, n, size) in enumerate(spec):
        t = 1_000_000_000 + i * spacing_ns
        took = int((primers * max_size + n * size) * 8e9 / send_bps)
        rows.append([i + 1, phase, n + primers, size, primers, max_size, t, t + took])
    return np.asarray(rows, dtype=np.int64)


def simulate(plan, capacity, *, overhead=14, ip_udp=28, cross_bps=0.0, cross_size=1500, bucket=0,
             timer_late_ns=0, coalesce_ns=0, access_bps=LINE, jitter_ns=500, seed=1):
    """Receiver rows (train, index, count, size, rx_ns, flags) for `plan` over the modelled path.

    access_bps: the link before the bottleneck (trains reach it spread at this rate, so cross
    traffic can slip between their packets); jitter_ns: receiver timestamp noise (normal sd);
    timer_late_ns: a packet that waits for tokens leaves this late (the shaper's timer fires
    late, and a bucket of one frame cannot bank the time: tbf --burst 1514 on a busy host)."""
    rng = np.random.default_rng(seed)
    arrivals = []          # (time ns, wire bytes, train, index, count, size, flags)
    for tid, _, count, size, primers, psize, tx, _ in plan.tolist():
        t = float(tx)
        for k in range(count):
            s = psize if k < primers else size
            wire = s + ip_udp + overhead
            t += wire * 8e9 / access_bps
            arrivals.append((t, wire, tid, k, count, s, 1 if k < primers else 0))
    end = max(a[0] for a in arrivals) + 1e8
    if cross_bps:
        rate = cross_bps / (cross_size * 8) / 1e9          # packets per ns
        n = rng.poisson(rate * end)
        for t in np.sort(rng.uniform(0, end, n)):
            arrivals.append((float(t), cross_size, -1, 0, 0, 0, 0))
    arrivals.sort(key=lambda a: a[0])
    free_at = 0.0
    tokens, last = float(bucket), 0.0
    rows = []
    for t, wire, tid, k, count, s, flags in arrivals:
        start = max(t, free_at)
        if bucket:
            tokens = min(bucket, tokens + (start - last) * capacity / 8e9)
            last = start
            if tokens >= wire:                  # the bucket pays: the packet leaves at line rate
                tokens -= wire
                done = start + wire * 8e9 / LINE
            else:                                # wait for the tokens it lacks
                wait = (wire - tokens) * 8e9 / capacity + timer_late_ns
                tokens = 0.0
                last = start + wait
                done = start + wait
        else:
            done = start + wire * 8e9 / capacity
        free_at = done
        if tid < 0:
            continue
        rx = int(done + rng.normal(0, jitter_ns)) if jitter_ns else int(done)
        if coalesce_ns:
            rx = int(np.ceil(done / coalesce_ns) * coalesce_ns) + len(rows) % 3   # batch, then ns apart
        rows.append([tid, k, count, s, rx, flags])
    return np.asarray(rows, dtype=np.int64)

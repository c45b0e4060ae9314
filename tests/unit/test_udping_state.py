"""udping_server's bounded state against simple references written from the rules: the seen
window (a set and "older than the window is stale"), the LRU of sessions (a list), the allow
list (ipaddress), the statsd series cap (sums over the sessions), and reverse DNS off the
receive path (a slow resolver, a clock)."""
import ipaddress
import json
import socket
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.probes.oneway import udping as u

W = u.SEEN_WINDOW


class RefSession:
    """The rules, one packet at a time: a sequence number more than the window below the
    highest seen so far is stale; one seen before is a duplicate; anything else counts."""

    def __init__(self):
        self.seen, self.top, self.stale, self.dups, self.lat = set(), -1, 0, 0, []

    def add(self, seq, lat):
        if seq <= self.top - W:
            self.stale += 1
        elif seq in self.seen:
            self.dups += 1
        else:
            self.seen.add(seq)
            self.lat.append(lat)
            self.top = max(self.top, seq)


# a walk of sequence numbers: small steps both ways, repeats, and jumps around the window's edge
STEP = st.one_of(st.integers(-3, 5), st.sampled_from([0, 0, 1]),
                 st.integers(W - 3, W + 3), st.integers(-W - 3, -W + 3), st.integers(-2 * W, 3 * W))


@st.composite
def walks(draw):
    seq = draw(st.integers(0, 2**32 - 1))
    out = []
    for step in draw(st.lists(STEP, min_size=1, max_size=300)):
        seq = min(max(seq + step, 0), 2**32 - 1)
        out.append(seq)
    cuts = sorted(set(draw(st.lists(st.integers(1, len(out)), max_size=8))))
    return out, cuts


def seq_rows(seqs, lat_ns):
    """v1 rows of one session: these sequence numbers with these latencies."""
    return np.array([[1, 2, 20 << 16, 0, 0, q, 10**18, 10**18 + d] for q, d in zip(seqs, lat_ns, strict=True)],
                    dtype=np.int64).reshape(-1, 8)


@settings(max_examples=300, deadline=None)
@given(walks())
def test_seen_window_counts_as_the_set_reference(walk):
    seqs, cuts = walk
    lat_ns = [(i % 7) * 1_000_000 + 250_000 for i in range(len(seqs))]
    ss, ref = u.Sessions(keepalive=10), RefSession()
    for a, b in zip([0, *cuts], [*cuts, len(seqs)], strict=True):
        ss.add_rows(seq_rows(seqs[a:b], lat_ns[a:b]), now=1.0)
    for q, x in zip(seqs, lat_ns, strict=True):
        ref.add(q, x / 1e6)
    (s,) = ss.by_key.values()
    assert (s.count, s.dups, s.stale) == (len(ref.seen), ref.dups, ref.stale)
    assert (s.min_seq, s.max_seq) == (min(ref.seen), max(ref.seen))
    assert s.sum == pytest.approx(sum(ref.lat)) and s.max == max(ref.lat)
    assert s.bits.bit_length() <= W                       # the window, never more


def test_seen_window_memory_does_not_grow_with_the_session():
    ss = u.Sessions(keepalive=10)
    rows = seq_rows([0] * 4096, [10**6] * 4096)
    for start in range(0, 200_000, 4096):
        rows[:, 5] = np.arange(start, start + 4096)
        ss.add_rows(rows, now=1.0)
    (s,) = ss.by_key.values()
    assert s.count == 49 * 4096 and s.bits == (1 << W) - 1 and s.dups == s.stale == 0


def rows_of(keys, seq=0):
    """One v1 row per key (ip, port, guid_hi, guid_lo), in that arrival order."""
    return np.array([[ip, port, hi, lo, 1_700_000_000, seq, 10**18, 10**18 + 10**6] for ip, port, hi, lo in keys],
                    dtype=np.int64)


KEY = st.tuples(st.integers(1, 6), st.integers(1024, 1026), st.just(20 << 16), st.integers(0, 1))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), st.lists(st.lists(KEY, min_size=1, max_size=12), min_size=1, max_size=12))
def test_lru_cap_ends_the_least_recently_used_as_a_list_reference(cap, batches):
    ss = u.Sessions(keepalive=10, cap=cap)
    lru, ended, packets = [], [], {}
    for n, batch in enumerate(batches):
        got = ss.add_rows(rows_of(batch, seq=n), now=float(n))
        for k in batch:                                   # the reference, packet by packet
            if k in lru:
                lru.remove(k)
            elif len(lru) == cap:
                ended.append(lru.pop(0))
                del packets[ended[-1]]                    # a key seen again later is a new session
            lru.append(k)
            packets[k] = packets.get(k, set()) | {n}
        assert [(s.ip, s.port, s.hi, s.lo) for s in got] == ended[len(ended) - len(got):]
        assert list(ss.by_key) == lru and len(ss.by_key) <= cap
    assert ss.evicted == len(ended)
    for s in ss.sweep(now=1e9, everything=True):          # the survivors counted every batch they were in
        assert s.count == len(packets[(s.ip, s.port, s.hi, s.lo)])


def test_sweep_takes_idle_sessions_from_the_old_end_only():
    ss = u.Sessions(keepalive=1)
    ss.add_rows(rows_of([(1, 1024, 20 << 16, 0), (2, 1024, 20 << 16, 0)]), now=0.0)
    ss.add_rows(rows_of([(1, 1024, 20 << 16, 0)], seq=1), now=5.0)      # 1 is used again: now the newest
    assert [s.ip for s in ss.sweep(now=5.5)] == [2]
    assert [s.ip for s in ss.sweep(now=6.5)] == [1] and not ss.by_key and not ss.latest


def test_a_flood_of_new_sessions_keeps_the_table_at_its_cap():
    ss = u.Sessions(keepalive=60, cap=1000)
    legit = (0x7F000001, 41000, 20 << 16, 7)
    ended = 0
    for n in range(50):                                   # 50 batches of 400 new sources and the client
        keys = [(0x0A000000 + n * 400 + i, 5000, 20 << 16, i) for i in range(400)] + [legit]
        ended += len(ss.add_rows(rows_of(keys, seq=n), now=float(n)))
        assert len(ss.by_key) == min(1000, 401 * (n + 1) - n) and len(ss.latest) <= 1000
    assert ended == ss.evicted == 50 * 400 + 1 - 1000
    (s,) = [s for s in ss.sweep(now=99, everything=True) if s.port == 41000]
    assert (s.count, s.target()) == (50, 50)                # the client's session was never the oldest


ROW = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 65535), st.integers(1, 20).map(lambda n: n << 16),
                st.integers(-2**63, 2**63 - 1), st.integers(-2**63, 2**63 - 1), st.integers(0, 2**32 - 1),
                st.integers(0, (2**33 - 1) * 10**9), st.integers(0, 2**63 - 1))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.lists(st.lists(ROW, max_size=20), max_size=6))
def test_any_rows_give_bounded_state_and_well_formed_output(cap, batches):
    """Rows as the receiver may hand them over (any address, port, GUID, start, sequence number
    and times within its checks): no exception, the cap holds, every line is UDPing's JSON."""
    ss, series = u.Sessions(keepalive=1, cap=cap), u.SeriesCap(cap=3)
    done = []
    for n, batch in enumerate(batches):
        done += ss.add_rows(np.array(batch, dtype=np.int64).reshape(-1, 8), now=float(n))
        assert len(ss.by_key) <= cap and len(ss.latest) <= cap
    done += ss.sweep(now=1e9, everything=True)
    assert sum(s.count + s.dups + s.stale for s in done) == sum(len(b) for b in batches)
    for s in done:
        assert 1 <= s.count <= s.target()
        line = json.loads(u.json_line(s, u.literal_name(s.ip), "rx", 7000))
        assert all(isinstance(v, str) for v in line.values()) and line["guid"] == s.guid
    rows, agg = u.bounded_statsd(done, u.literal_name, series, now=0.0)
    assert sum(s.count for _, s in rows) == sum(a[1] for a in agg) == sum(s.count for s in done)
    assert len(series.used) <= 3


NET = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32))


@settings(max_examples=200, deadline=None)
@given(st.lists(NET, min_size=1, max_size=6), st.lists(st.integers(0, 2**32 - 1), max_size=50))
def test_allow_list_matches_ipaddress(nets, ips):
    text = ",".join(f"{ipaddress.IPv4Address(a)}/{n}" for a, n in nets)
    prefixes = [ipaddress.IPv4Network(p, strict=False) for p in text.split(",")]
    probe = ips + [int(p.network_address) for p in prefixes] + [int(p.broadcast_address) for p in prefixes]
    probe += [max(0, x - 1) for x in probe] + [min(2**32 - 1, x + 1) for x in probe]
    got = u.allowed(np.array(probe, dtype=np.int64), u.parse_allow(text))
    assert got.tolist() == [any(ipaddress.IPv4Address(x) in p for p in prefixes) for x in probe]


@pytest.mark.parametrize("argv,msg", [
    (["--allow", "10.0.0.0/33"], "Invalid allow prefix: '10.0.0.0/33'\n"),
    (["--allow", "2001:db8::/32"], "Invalid allow prefix: '2001:db8::/32'\n"),
    (["--allow"], "option '--allow' requires an argument\n"),
    (["--max-sessions", "0"], f"Max sessions is out of range 1-{u.LIMIT_MAX}\n"),
    (["--max-series=x"], f"Max series is out of range 1-{u.LIMIT_MAX}\n"),
    (["--no-dns=1"], "option '--no-dns' doesn't allow an argument\n"),
    (["--resolve"], "unrecognized option '--resolve'\n"),
])
def test_long_option_errors(argv, msg):
    with pytest.raises(u.UsageExit) as e:
        u.server_options(["-l", "h", "-p", "7000", "-k", "1", *argv])
    getopts_own = msg.startswith(("option", "unrecognized"))      # getopt_long's messages come without usage
    assert str(e.value) == (msg if getopts_own else u.SERVER_USAGE + msg)


def test_long_options_and_their_defaults():
    base = ["-l", "h", "-p", "7000", "-k", "1"]
    o = u.server_options(base)
    assert (o["max_sessions"], o["max_series"], o["allow"], o["no_dns"]) == (u.MAX_SESSIONS, u.MAX_SERIES, None,
                                                                           False)
    o = u.server_options([*base, "--max-sessions=10", "--max-series", "5", "--no-dns",
                          "--allow", "10.1.0.0/16,10.0.0.0/8"])
    assert (o["max_sessions"], o["max_series"], o["no_dns"]) == (10, 5, True)
    assert [x.tolist() for x in o["allow"]] == [[0x0A000000], [0x0AFFFFFF]]   # merged


def sweep_of(n_hosts, ports):
    ss = u.Sessions(keepalive=1)
    keys = [(0x0A000001 + h, 2000 + p, 20 << 16, 1) for h in range(n_hosts) for p in range(ports)]
    ss.add_rows(rows_of(keys), now=0.0)
    return ss.sweep(now=5.0)


def test_series_cap_sums_the_rest_into_overflow_rows():
    done = sweep_of(4, 5)                                 # 20 sessions of 4 hosts: 24 series wanted
    series = u.SeriesCap(cap=10)
    rows, agg = u.bounded_statsd(done, u.literal_name, series, now=0.0)
    own = [(h, s) for h, s in rows if h != u.OVERFLOW]
    assert len(own) == 10 and len(series.used) == 10 and series.overflow == 10
    (over,) = [s for h, s in rows if h == u.OVERFLOW]
    assert (over.count, over.target(), over.port) == (10, 10, u.OVERFLOW)
    assert sum(s.count for _, s in rows) == sum(s.count for s in done) == 20      # nothing lost, nothing twice
    assert agg == [(u.OVERFLOW, 20, 20, pytest.approx(20.0), pytest.approx(20.0), 1.0)]   # no room for hosts
    text = u.statsd_lines(over, u.OVERFLOW, "rx", 7000)
    assert text.splitlines()[0] == "_overflow._overflow.rx.7000.count:10|c"
    rows2, _ = u.bounded_statsd(done, u.literal_name, series, now=10.0)         # the same ones keep their series
    assert [(h, s.port) for h, s in rows2 if h != u.OVERFLOW] == [(h, s.port) for h, s in own]


def test_series_unused_for_the_idle_time_give_their_place():
    series = u.SeriesCap(cap=2, idle=100)
    assert series.admit("a", 0) and series.admit("b", 50) and not series.admit("c", 99)
    assert series.admit("a", 99)                          # known: always
    assert series.admit("c", 151) and list(series.used) == ["a", "c"]    # b (idle 101 s) gave its place


def test_statsd_datagrams_hold_whole_lines_within_the_size():
    rx, tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    text = "".join(f"host{i}.rx.7000.count:{i}|c\n" for i in range(500))
    u._send(tx, rx.getsockname(), text)
    got = []
    while sum(len(g) for g in got) < len(text):
        got.append(rx.recv(65536).decode())
    assert all(len(g) <= u.STATSD_DATAGRAM and g.endswith("\n") for g in got) and "".join(got) == text
    rx.close()
    tx.close()


def test_reverse_dns_never_blocks_and_its_queue_and_cache_are_bounded():
    gate = threading.Event()

    def stuck(ip):                                        # a resolver that hangs until released
        gate.wait(10)
        return f"host{ip}"

    names = u.PeerNames(resolve=stuck, rate=1000, cache=8, queue_len=16)
    try:
        t0 = time.monotonic()
        for ip in range(1, 101):
            names.want(ip)
            assert names(ip) == u.literal_name(ip)        # not known yet: the literal, at once
        assert time.monotonic() - t0 < 0.5
        assert names.dropped == 84                        # 16 wait (one of them perhaps in the worker's hands)
        gate.set()
        deadline = time.monotonic() + 5
        while names.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not names.pending and len(names.cache) == 8
        kept = list(names.cache)
        assert all(names(ip) == f"host{ip}" for ip in kept)
        assert names(1) == u.literal_name(1)              # resolved, then dropped from the cache
    finally:
        names.close()


def test_reverse_dns_is_rate_limited():
    calls = []
    names = u.PeerNames(resolve=lambda ip: calls.append(time.monotonic()) or "h", rate=20, queue_len=64)
    try:
        t0 = time.monotonic()
        for ip in range(100):
            names.want(ip)
        time.sleep(1.0)
        elapsed = time.monotonic() - t0
        n = len(calls)
    finally:
        names.close()
    assert 10 <= n <= 2 + 20 * elapsed                    # working, and never faster than 20 a second
    assert min(b - a for a, b in zip(calls, calls[1:], strict=False)) >= 0.045


def not_ipv4(text):
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return True
    return False


@given(st.text(max_size=40).filter(not_ipv4))                # (an address would be looked up)
def test_names_carry_nothing_that_could_break_a_statsd_line(text):
    name = u.name_of(text)
    assert len(name) == len(text) and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)
    assert name == text.replace(".", "_") or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in text)


def test_without_dns_peers_are_named_by_address():
    names = u.PeerNames(resolve=None)
    names.want(0x7F000001)
    assert names(0x7F000001) == "127_0_0_1" and names.thread is None

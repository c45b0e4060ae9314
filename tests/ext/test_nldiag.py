"""netprobe._nldiag: the inet_diag parser on byte vectors (against the pure-Python reference in
tests/reference/netlink.py) and live dumps of loopback sockets (against getsockopt TCP_INFO and
the reference dump)."""
import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.errors import load_extension
from tests.integration.test_retrans_live import socket_inodes
from tests.reference import netlink as ref

nl = load_extension("_nldiag")
pacer = load_extension("_pacer")


def records(n):
    return np.zeros(n, dtype=nl.RECORD_DTYPE)


def test_record_layout_keeps_kernel_names_and_offsets():
    dt = nl.RECORD_DTYPE
    assert dt.itemsize == nl.RECORD_SIZE and nl.TCP_INFO_SIZE == 280
    base = dt.fields["tcpi_state"][1]
    for name, _, off in ref.TCPI:                       # offsets of struct tcp_info (uapi), not ours
        assert dt.fields[name][1] - base == off, name
    for name in ("idiag_cookie", "idiag_sport", "idiag_dport", "idiag_src", "idiag_dst", "idiag_inode",
                 "ca_name", "bbr_bw", "skmem_drops"):
        assert name in dt.names


sock_st = st.fixed_dictionaries({
    "family": st.sampled_from([socket.AF_INET, socket.AF_INET6]),
    "state": st.integers(0, 12), "sport": st.integers(0, 65535), "dport": st.integers(0, 65535),
    "src": st.binary(min_size=16, max_size=16), "dst": st.binary(min_size=16, max_size=16),
    "cookie": st.integers(0, 2**64 - 1), "inode": st.integers(0, 2**32 - 1), "uid": st.integers(0, 2**32 - 1),
    "info": st.one_of(st.none(), st.builds(lambda rtt, cwnd, acked, ret: ref.tcp_info_bytes(
        tcpi_rtt=rtt, tcpi_snd_cwnd=cwnd, tcpi_bytes_acked=acked, tcpi_total_retrans=ret),
        st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)),
        st.binary(min_size=0, max_size=300)),
    "cong": st.one_of(st.none(), st.sampled_from(["cubic", "bbr", "reno", "a" * 20])),
    "bbr": st.one_of(st.none(), st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
                                          st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))),
    "skmem": st.one_of(st.none(), st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=12)),
})


def _check_same(rec, want):
    assert rec["idiag_family"] == want["family"] and rec["idiag_state"] == want["state"]
    assert (rec["idiag_sport"], rec["idiag_dport"]) == (want["sport"], want["dport"])
    assert bytes(rec["idiag_src"]) == want["src"] and bytes(rec["idiag_dst"]) == want["dst"]
    assert rec["idiag_cookie"] == want["cookie"] and rec["idiag_inode"] == want["inode"]
    assert rec["info_len"] == want["info_len"]
    for name, _, _ in ref.TCPI:
        assert rec[name] == want.get(name, 0), name
    assert bytes(rec["ca_name"]).decode() == want.get("cong", "")
    bbr = want.get("bbr")
    assert bool(rec["has_bbr"]) == (bbr is not None)
    if bbr:
        assert (rec["bbr_bw"], rec["bbr_min_rtt"], rec["bbr_pacing_gain"], rec["bbr_cwnd_gain"]) == bbr
    skmem = want.get("skmem")
    assert bool(rec["has_skmem"]) == (skmem is not None)
    if skmem is not None:
        assert tuple(rec[f"skmem_{k}"] for k in ref.SKMEM) == skmem


@settings(max_examples=150, deadline=None)
@given(st.lists(sock_st, max_size=8), st.integers(1, 2**32 - 1))
def test_parse_matches_reference_decoder(socks, seq):
    buf = b"".join(ref.encode_sock(s, seq) for s in socks) + ref.encode_done(seq)
    want, wc, wdone = ref.decode(buf, seq)
    out = records(16)
    got = nl.parse(buf, out, seq=seq, t_ns=123)
    assert got.done and wdone
    assert got.sockets == len(want) == len(socks)
    for k in wc:
        assert getattr(got, k) == wc[k], k
    for rec, w in zip(out[:got.sockets], want, strict=True):
        assert rec["t_ns"] == 123
        _check_same(rec, w)


def test_addresses_ports_and_cookie_decode():
    s = {"family": socket.AF_INET, "sport": 443, "dport": 51000, "cookie": 0x1122334455667788,
         "src": socket.inet_aton("192.0.2.1") + bytes(12), "dst": socket.inet_aton("198.51.100.7") + bytes(12),
         "inode": 7, "info": ref.tcp_info_bytes(tcpi_rtt=1500)}
    out = records(2)
    got = nl.parse(ref.encode_sock(s) + ref.encode_done(), out)
    r = out[0]
    assert got.sockets == 1 and r["idiag_sport"] == 443 and r["idiag_dport"] == 51000
    assert socket.inet_ntoa(bytes(r["idiag_src"])[:4]) == "192.0.2.1"
    assert socket.inet_ntoa(bytes(r["idiag_dst"])[:4]) == "198.51.100.7"
    assert r["idiag_cookie"] == 0x1122334455667788 and r["tcpi_rtt"] == 1500 and r["info_len"] == 280


def test_overflow_error_foreign_and_short_info_are_counted():
    socks = [{"family": socket.AF_INET6, "sport": i, "dport": 1, "cookie": i, "src": bytes(16), "dst": bytes(16),
              "info": ref.tcp_info_bytes(tcpi_rtt=i)[:100]} for i in range(5)]
    buf = b"".join(ref.encode_sock(s, 9) for s in socks)
    out = records(3)
    got = nl.parse(buf + ref.encode_sock(socks[0], 8) + ref.encode_done(9), out, seq=9)
    assert (got.sockets, got.overflow, got.foreign, got.done) == (3, 2, 1, True)
    assert out[2]["info_len"] == 100 and out[2]["tcpi_rtt"] == 2
    assert out[0]["tcpi_min_rtt"] == 0                # past the kernel's length: zero, not garbage
    got = nl.parse(ref.encode_error(4, errno.EINVAL), records(1), seq=4)
    assert got.done and got.error == errno.EINVAL
    got = nl.parse(ref.encode_done(4, -errno.EINTR), records(1), seq=4)
    assert got.done and got.error == errno.EINTR


def test_bad_lengths_are_counted_not_raised():
    good = ref.encode_sock({"family": 2, "sport": 1, "dport": 2, "cookie": 3, "src": bytes(16),
                            "dst": bytes(16), "info": ref.tcp_info_bytes()})
    bad_len = struct.pack("=I", 8) + good[4:]                         # nlmsg_len below the header
    too_long = struct.pack("=I", len(good) + 100) + good[4:]          # runs past the datagram
    short_body = ref.nlmsg(ref.SOCK_DIAG_BY_FAMILY, bytes(40), 1)     # inet_diag_msg cut short
    bad_attr = bytearray(good)
    struct.pack_into("=H", bad_attr, 16 + 72, 2)                      # rta_len < 4
    for buf, field in ((bad_len, "malformed"), (too_long, "malformed"), (short_body, "malformed"),
                       (bytes(bad_attr), "malformed"), (good[:10], "truncated")):
        got = nl.parse(buf, records(4))
        assert getattr(got, field) == 1 and got.sockets == 0, (field, got)
    got = nl.parse(bytes(bad_attr) + good + ref.encode_done(), records(4))
    assert (got.sockets, got.malformed, got.done) == (1, 1, True)  # the next message still parses


def test_records_argument_is_checked():
    with pytest.raises(TypeError):
        nl.parse(b"", np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError):
        nl.parse(b"", records(4)[::2])
    with pytest.raises(ValueError):
        nl.InetDiagDumper(bytecode=b"\0" * 6)
    with pytest.raises(ValueError):
        nl.InetDiagDumper(families=(socket.AF_UNIX,))


@settings(max_examples=30, deadline=None)
@given(raw=st.binary(min_size=0, max_size=6 * 448), names=st.lists(st.sampled_from(
    [n for n, (dt, _) in nl.RECORD_DTYPE.fields.items() if dt.kind in "ui" and dt.itemsize in (1, 2, 4, 8)
     and (dt.kind == "u" or dt.itemsize == 8)]), min_size=1, max_size=30))
def test_gather_reads_what_numpy_reads(raw, names):
    recs = np.frombuffer(raw[:len(raw) // nl.RECORD_DTYPE.itemsize * nl.RECORD_DTYPE.itemsize],
                         dtype=nl.RECORD_DTYPE)
    f = nl.RECORD_DTYPE.fields
    got = nl.gather(recs, [f[n][1] for n in names], [f[n][0].itemsize for n in names])
    assert got.shape == (len(recs), len(names)) and got.dtype == np.int64
    for j, n in enumerate(names):
        np.testing.assert_array_equal(got[:, j], recs[n].astype(np.int64), n)   # u64 wraps, as numpy's cast


def test_gather_arguments_are_checked():
    with pytest.raises(TypeError):
        nl.gather(np.zeros(4, dtype=np.int64), [0], [8])
    for offsets, sizes in (([0], [3]), ([0, 8], [8]), ([nl.RECORD_DTYPE.itemsize - 4], [8]), ([-1], [1])):
        with pytest.raises(ValueError):
            nl.gather(records(2), offsets, sizes)


# -- live dumps -------------------------------------------------------------------------------------

@pytest.fixture
def loopback_pairs():
    """3 IPv4 and 3 IPv6 connected pairs on loopback, some data sent on each."""
    socks, listeners = [], []
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        lst = socket.create_server((host, 0), family=fam)
        listeners.append(lst)
        for i in range(3):
            c = socket.create_connection(lst.getsockname()[:2])
            a, _ = lst.accept()
            c.sendall(b"x" * (1000 * (i + 1)))
            got = 0
            while got < 1000 * (i + 1):
                got += len(a.recv(65536))
            socks += [c, a]
    yield socks
    for s in socks + listeners:
        s.close()


def _ours(ports, ext=None, families=(socket.AF_INET, socket.AF_INET6)):
    d = nl.InetDiagDumper(families, ext=nl.EXT_INFO if ext is None else ext)
    out = records(4096)
    got = d.dump(out)
    assert got.overflow == 0 and got.malformed == 0
    recs = out[:got.sockets]
    return {(int(r["idiag_sport"]), int(r["idiag_dport"])): r for r in recs
            if r["idiag_sport"] in ports or r["idiag_dport"] in ports}, got


def test_live_dump_sees_both_families_with_tcp_info(loopback_pairs):
    conns = loopback_pairs
    ports = {s.getsockname()[1] for s in conns}
    seen, got = _ours(ports, nl.EXT_INFO | nl.EXT_CONG | nl.EXT_BBR | nl.EXT_SKMEM)
    assert len(seen) == 12 and got.recvs >= 2
    cookies = {int(r["idiag_cookie"]) for r in seen.values()}
    assert len(cookies) == 12 and 0 not in cookies
    for s in conns:
        key = (s.getsockname()[1], s.getpeername()[1])
        r = seen[key]
        assert r["idiag_family"] == s.family and r["idiag_state"] == 1 and r["info_len"] >= 232
        ti = pacer.tcp_info(s.fileno())                           # getsockopt(TCP_INFO): another path
        for name in ("tcpi_bytes_acked", "tcpi_bytes_received", "tcpi_snd_mss", "tcpi_segs_out", "tcpi_options"):
            assert r[name] == ti[name], name
        want_cc = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0")[0]
        assert bytes(r["ca_name"]) == want_cc
        assert bool(r["has_bbr"]) == (want_cc == b"bbr")
        assert r["has_skmem"] and r["skmem_sndbuf"] == s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        addr = socket.inet_pton(s.family, s.getsockname()[0])
        assert bytes(r["idiag_src"])[:len(addr)] == addr


def test_live_dump_agrees_with_plain_python_dump(loopback_pairs):
    ports = {s.getsockname()[1] for s in loopback_pairs}
    ours, _ = _ours(ports)
    theirs = {(s["sport"], s["dport"]): s for s in ref.dump() if s["sport"] in ports or s["dport"] in ports}
    assert set(ours) == set(theirs)
    for key, r in ours.items():
        assert r["idiag_cookie"] == theirs[key]["cookie"] and r["idiag_inode"] == theirs[key]["inode"]
        assert r["tcpi_bytes_acked"] == theirs[key]["tcpi_bytes_acked"]


def test_one_walk_for_both_families_gives_what_one_request_per_family_gives(loopback_pairs):
    """TCPDIAG_GETSOCK (one hash-table walk) against SOCK_DIAG_BY_FAMILY per family."""
    ports = {s.getsockname()[1] for s in loopback_pairs}
    single = nl.InetDiagDumper(ext=nl.EXT_INFO | nl.EXT_CONG)
    per_family = nl.InetDiagDumper(ext=nl.EXT_INFO | nl.EXT_CONG, single_walk=False)
    assert single.single_walk and not per_family.single_walk
    got = []
    for d in (single, per_family):
        out = records(4096)
        g = d.dump(out)
        assert g.foreign == g.malformed == 0
        got.append({(int(r["idiag_sport"]), int(r["idiag_dport"])): r for r in out[:g.sockets]
                    if r["idiag_sport"] in ports or r["idiag_dport"] in ports})
    assert set(got[0]) == set(got[1]) and len(got[0]) == 12
    for key, r in got[0].items():
        for name in ("idiag_family", "idiag_cookie", "idiag_inode", "idiag_src", "idiag_dst", "ca_name",
                     "tcpi_bytes_acked", "tcpi_bytes_received", "tcpi_segs_out"):
            assert np.array_equal(r[name], got[1][key][name]), name


def test_family_and_state_selection(loopback_pairs):
    ports = {s.getsockname()[1] for s in loopback_pairs}
    v6, _ = _ours(ports, families=(socket.AF_INET6,))
    assert len(v6) == 6 and all(r["idiag_family"] == socket.AF_INET6 for r in v6.values())
    d = nl.InetDiagDumper(states=1 << nl.TCP_STATES["listen"])
    out = records(4096)
    got = d.dump(out)
    servers = {s.getsockname()[1] for s in loopback_pairs[1::2]}          # accepted ends: the listeners' ports
    ours = [r for r in out[:got.sockets] if r["idiag_sport"] in servers]
    assert len(ours) == 2 and all(r["idiag_dport"] == 0 for r in ours)     # the two listeners, no connections
    assert all(r["idiag_state"] == 10 for r in out[:got.sockets])


def test_overflow_when_records_are_too_few(loopback_pairs):
    d = nl.InetDiagDumper()
    got = d.dump(records(2))
    assert got.sockets == 2 and got.overflow >= 10
    got = d.dump(records(0))
    assert got.sockets == 0 and got.overflow >= 12


def test_kernel_rejects_bad_bytecode_with_an_oserror_carrying_the_counts():
    d = nl.InetDiagDumper(bytecode=struct.pack("=BBH", 200, 4, 8))      # unknown op code
    with pytest.raises(OSError) as exc:
        d.dump(records(8))
    assert exc.value.errno == errno.EINVAL and d.errors == 1
    assert "Invalid argument" in str(exc.value) and nl.strerror_text(exc.value.errno) == "Invalid argument"
    assert isinstance(exc.value.result, nl.DumpResult) and exc.value.result.sockets == 0


# -- replies not from the kernel ----------------------------------------------------------------------

FORGED = {"family": socket.AF_INET, "sport": 1, "dport": 7, "cookie": 0xF0F0, "inode": 4242,
          "src": socket.inet_aton("127.0.0.9") + bytes(12), "dst": socket.inet_aton("127.0.0.9") + bytes(12),
          "info": ref.tcp_info_bytes(tcpi_rtt=1)}


def _forgery(seq):
    """A datagram the kernel would send: one socket record and NLMSG_DONE (it would end the dump)."""
    return ref.encode_sock(FORGED, seq) + ref.encode_done(seq)


def _diag_port_ids(pid):
    """Netlink port ids of pid's NETLINK_SOCK_DIAG sockets (/proc/net/netlink, matched by inode)."""
    inodes = socket_inodes(pid)
    with open("/proc/net/netlink") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return [int(r[2]) for r in rows if r[1] == "4" and int(r[9]) in inodes]


def _ss_keys(ports):
    """(sport, dport, inode) of every established TCP socket ss(8) lists on `ports`."""
    out = subprocess.run(["ss", "-tnHe", "state", "established"], capture_output=True, text=True,
                         check=True).stdout
    keys = set()
    for line in out.splitlines():
        cols = line.split()
        sport, dport = int(cols[2].rsplit(":", 1)[1]), int(cols[3].rsplit(":", 1)[1])
        inode = next(int(c[4:]) for c in cols if c.startswith("ino:"))
        if sport in ports or dport in ports:
            keys.add((sport, dport, inode))
    return keys


def _our_keys(out, got, ports):
    return {(int(r["idiag_sport"]), int(r["idiag_dport"]), int(r["idiag_inode"])) for r in out[:got.sockets]
            if r["idiag_sport"] in ports or r["idiag_dport"] in ports}


FORGER = """
import socket, sys, time
port, seconds, data = int(sys.argv[1]), float(sys.argv[2]), bytes.fromhex(sys.argv[3])
sent = refused = 0
with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4) as s:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            s.sendto(data, (port, 0))
            sent += 1
        except ConnectionRefusedError:
            refused += 1
print(sent, refused)
"""


def test_forged_reply_during_a_dump_is_refused_by_the_kernel(loopback_pairs):
    """Another process sends a forged inet_diag reply (record + NLMSG_DONE) to the dumper's port id
    while it dumps: the socket is connected to the kernel, so the kernel refuses every one
    (ECONNREFUSED at the forger), and the dumps list exactly the sockets ss(8) lists."""
    ports = {s.getsockname()[1] for s in loopback_pairs}
    d = nl.InetDiagDumper(ext=nl.EXT_INFO)
    out = records(4096)
    d.dump(out)                                           # opens the socket
    (port_id,) = _diag_port_ids(os.getpid())
    forger = subprocess.Popen([sys.executable, "-c", FORGER, str(port_id), "1.0", _forgery(2).hex()],
                              stdout=subprocess.PIPE, text=True)   # seq 2: the next dump's request
    dumps = 0
    try:
        while forger.poll() is None and dumps < 10_000:
            got = d.dump(out)
            dumps += 1
            assert got.spoofed == 0, got
            assert not any(out[:got.sockets]["idiag_inode"] == FORGED["inode"])
    finally:
        sent, refused = map(int, forger.communicate(timeout=30)[0].split())
    print(f"{dumps} dumps; forger: {sent} accepted, {refused} refused")
    assert dumps >= 1 and sent == 0 and refused > 0
    got = d.dump(out)
    assert _our_keys(out, got, ports) == _ss_keys(ports) and len(_ss_keys(ports)) == 12
    assert d.spoofed == 0


DUMPER = """
import json
import numpy as np
from netprobe.errors import load_extension
nl = load_extension("_nldiag")
d = nl.InetDiagDumper(ext=nl.EXT_INFO)
out = np.zeros(4096, dtype=nl.RECORD_DTYPE)
got = d.dump(out)
recs = out[:got.sockets]
counts = {k: getattr(got, k) for k in nl.COUNTERS}
print(json.dumps({"got": counts, "total": d.spoofed, "keys": [[int(r["idiag_sport"]), int(r["idiag_dport"]),
                  int(r["idiag_inode"])] for r in recs]}))
"""


def test_forged_replies_queued_before_connect_are_ignored_and_counted(loopback_pairs):
    """The one way a forged datagram reaches the socket: sent after bind() and before connect().
    strace holds the dumper's connect() for 2 s; another process sends three forged replies to its
    port id meanwhile (the kernel accepts them: not connected yet). The dump must skip all three
    (sender nl_pid != 0) and count them, and list exactly what ss(8) lists."""
    if shutil.which("strace") is None:
        pytest.fail("strace is missing (make test-deps installs it)")
    ports = {s.getsockname()[1] for s in loopback_pairs}
    child = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=connect",
                              "-e", "inject=connect:delay_enter=2000000",
                              sys.executable, "-c", DUMPER], stdout=subprocess.PIPE, text=True)
    try:
        port_id, deadline = None, time.monotonic() + 30
        while port_id is None and time.monotonic() < deadline:
            for task in _children(child.pid):
                ids = _diag_port_ids(task)
                if ids:
                    port_id = ids[0]
            time.sleep(0.005)
        assert port_id is not None, "the dumper's netlink socket never appeared"
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, ref.NETLINK_SOCK_DIAG) as forger:
            for _ in range(3):
                forger.sendto(_forgery(1), (port_id, 0))     # seq 1: the dump's first request
        result = json.loads(child.communicate(timeout=60)[0])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    got = result["got"]
    assert got["spoofed"] == 3 and result["total"] == 3, got
    keys = {tuple(k) for k in result["keys"]}
    assert all(k[2] != FORGED["inode"] for k in keys)
    assert {k for k in keys if k[0] in ports or k[1] in ports} == _ss_keys(ports)


def _children(pid):
    """pid and every descendant (strace runs the dumper as its child)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out

"""Flow tracker (sans-IO): turns successive inet_diag dumps into per-flow sample series.

A flow is one socket, keyed by its socket cookie and 5-tuple (family, local
address and port, remote address and port): a cookie seen again with another
tuple is a new flow. Each dump is matched against the previous one with
numpy: when the kernel lists the same sockets in the same order (a quiet
host) by one array comparison, otherwise by sorted cookies and searchsorted.
Unchanged sockets cost no per-socket Python work: 20,000 of them take
~10 ms a dump.

Rules:
- a sample is stored only when one of SAMPLE_FIELDS (besides t_ns) changed
  since the flow's last stored sample (m-lab tcp-info's rule); otherwise it
  counts as deduplicated;
- at most `max_flows` flows keep samples; sockets beyond that are tracked
  (counted as filtered) but store nothing;
- a flow ends when a dump no longer contains it ("closed"); a flow whose
  values have not changed for `idle_timeout` is written ("idle") and
  continues as a new segment; a flow that reaches `max_samples` is written
  ("max_samples") and continues likewise, and when all flows together hold
  more than `max_total_samples` the biggest are written ("memory") until
  they hold 90 % of it: memory is bounded by max_flows and that budget
  (~200 bytes a sample), whatever the traffic;
- flows present in the first dump started before us: `partial`;
- a flow's congestion control name is the one it last ran under (iperf3,
  for one, sets TCP_CONGESTION only after connect());
- `snapshot()` returns every open flow (shutdown, SIGUSR1) without ending it;
- with the kernel's destroy messages (`hold` > 0, destroy.py), a flow is written with its final
  tcp_info: one gone from the dump waits up to `hold` seconds for its socket's message (the
  kernel sends it when it frees the socket, a moment after unhashing it, or when the program
  that held a closed socket lets it go), and is written from its last dump if none comes (its
  cookie is then kept, at most KEEP_REPORTED of them, so a later message is dropped and counted
  as destroy_late, not written twice); a socket no dump saw (one shorter than the dump
  interval) becomes a flow of that one sample.
update() returns the flows that ended and the per-dump deltas the interval
aggregates need (Delta).
"""
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from netprobe.errors import load_extension

_nl = load_extension("_nldiag")

SAMPLE_FIELDS = (
    "t_ns", "tcpi_rtt", "tcpi_rttvar", "tcpi_min_rtt", "tcpi_snd_cwnd", "tcpi_snd_mss", "tcpi_pacing_rate",
    "tcpi_max_pacing_rate", "tcpi_total_retrans", "tcpi_bytes_acked", "tcpi_bytes_received",
    "tcpi_bytes_retrans", "tcpi_options", "tcpi_delivered", "tcpi_delivered_ce", "tcpi_rcv_ooopack",
    "tcpi_dsack_dups", "tcpi_segs_out", "tcpi_segs_in", "tcpi_ca_state",
    "bbr_bw", "bbr_min_rtt",          # BBR's model (0 when the socket does not run bbr)
)
COL = {name: i for i, name in enumerate(SAMPLE_FIELDS)}
NCOLS = len(SAMPLE_FIELDS)
KEEP_REPORTED = 65536      # cookies of flows written without their destroy message, kept to drop a late one


_SPECS = {}


def columns(records):
    """(samples, keys, cookies) of a dump, read in one pass over the records (netprobe._nldiag.gather):
    SAMPLE_FIELDS as an (n, NCOLS) int64 matrix (u64 ~0, 'unlimited', reads -1); each socket's
    5-tuple as 5 uint64, inet_diag_msg's bytes 16-55 raw (family, ports, addresses; state, timer
    and retrans masked out); its cookie as uint64."""
    spec = _SPECS.get(records.dtype)
    if spec is None:
        f = records.dtype.fields
        fam = f["idiag_family"][1]
        assert f["idiag_sport"][1] == fam + 4 and f["idiag_dst"][1] + 16 == fam + 40
        offsets = [f[name][1] for name in SAMPLE_FIELDS] + [fam + 8 * w for w in range(5)] + [f["idiag_cookie"][1]]
        sizes = [f[name][0].itemsize for name in SAMPLE_FIELDS] + [8] * 6
        spec = _SPECS[records.dtype] = (np.array(offsets), np.array(sizes))
    m = _nl.gather(records, *spec)
    keys = m[:, NCOLS:NCOLS + 5].view(np.uint64)
    keys[:, 0] &= np.uint64(0xFFFFFFFF000000FF)          # little-endian: keep family and the ports
    return m[:, :NCOLS], keys, m[:, NCOLS + 5].view(np.uint64)


class Flow:
    """One tracked socket's stored samples (rows of NCOLS int64, as bytes to stay compact)."""

    __slots__ = ("cookie", "family", "src", "sport", "dst", "dport", "ca_name", "first_ns", "last_ns",
                 "start_wall", "rows", "deduped", "partial", "segment")

    def __init__(self, rec, t_ns, wall, partial, segment=0):
        self.cookie = int(rec["idiag_cookie"])
        self.family = int(rec["idiag_family"])
        self.src = bytes(rec["idiag_src"])
        self.sport = int(rec["idiag_sport"])
        self.dst = bytes(rec["idiag_dst"])
        self.dport = int(rec["idiag_dport"])
        self.ca_name = bytes(rec["ca_name"]).decode("ascii", "replace")
        self.first_ns = self.last_ns = t_ns
        self.start_wall = wall
        self.rows = []
        self.deduped = 0
        self.partial = partial
        self.segment = segment

    def successor(self, t_ns, wall):
        """An empty continuation (next segment) of this flow, from t_ns on."""
        nxt = object.__new__(Flow)
        for name in Flow.__slots__:
            setattr(nxt, name, getattr(self, name))
        nxt.first_ns = nxt.last_ns = t_ns
        nxt.start_wall = wall
        nxt.rows = []
        nxt.deduped = 0
        nxt.partial = True
        nxt.segment = self.segment + 1
        return nxt

    def samples(self):
        """Stored samples as an (n, NCOLS) int64 matrix."""
        return np.frombuffer(b"".join(self.rows), dtype=np.int64).reshape(-1, NCOLS)


@dataclass
class Ended:
    """A flow written out: why, and the wall-clock end time."""
    flow: Flow
    reason: str          # closed | idle | max_samples | memory | open (at shutdown or SIGUSR1)
    end_wall: float
    end_ns: int


@dataclass
class Delta:
    """What one dump adds to the interval aggregates: one entry per socket in this dump."""
    index: np.ndarray        # row of each socket in the dump's records
    rtt_us: np.ndarray       # tcpi_rtt now
    d_retrans: np.ndarray    # tcpi_total_retrans since the previous dump (0 for a new socket)
    d_segs_out: np.ndarray
    d_ooo: np.ndarray        # tcpi_rcv_ooopack since the previous dump
    d_segs_in: np.ndarray
    new: np.ndarray          # True for a socket this dump is the first to show


class Tracker:
    """Matches dumps to flows; see the module docstring.

    State, one row per socket of the last dump, sorted by cookie: cookies,
    tuples, last (its latest sample), and the per-flow counters as arrays
    (deduped, changed_ns, nrows), so that unchanged sockets cost no Python
    work; flows (numpy object array) holds the Flow, or None when filtered.
    """

    def __init__(self, max_flows=10_000, min_samples=0, max_samples=10_000, idle_timeout=0.0,
                 max_total_samples=1_000_000, hold=0.0):
        if max_flows < 0 or min_samples < 0 or max_samples < 2 or idle_timeout < 0 or max_total_samples < 1 \
                or hold < 0:
            raise ValueError("max_flows, min_samples >= 0, max_samples >= 2, idle_timeout >= 0, "
                             "max_total_samples >= 1, hold >= 0")
        self.hold_ns = round(hold * 1e9)
        self.gone = {}                 # cookie -> (flow, last dump sample, deduped, last seen, gone since)
        self.reported = OrderedDict()  # cookies written without their destroy message (bounded)
        self.max_total_samples = max_total_samples
        self.total_samples = 0
        self.max_flows = max_flows
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.idle_ns = round(idle_timeout * 1e9)
        self.cookies = np.empty(0, dtype=np.uint64)      # in the order of the last dump
        self.keys = np.empty((0, 5), dtype=np.uint64)
        self.last = np.empty((0, NCOLS), dtype=np.int64)
        self.ca = np.empty((0, 2), dtype=np.uint64)         # congestion control names, as 16 raw bytes
        self.deduped = np.empty(0, dtype=np.int64)
        self.changed_ns = np.empty(0, dtype=np.int64)
        self.nrows = np.empty(0, dtype=np.int64)
        self.flows = np.empty(0, dtype=object)
        self.has_flow = np.empty(0, dtype=bool)          # flows[i] is not None (comparing objects is slow)
        self.stored = 0                                  # flows keeping samples (Flow objects)
        self.dumps = 0
        self.t_ns = 0                                    # time of the last dump
        self.counts = dict.fromkeys(("new", "closed", "filtered", "dropped_short", "duplicates", "retuple",
                                     "destroyed", "destroy_late", "destroy_missed"), 0)

    def __len__(self):
        return len(self.flows)

    def update(self, records, t_ns, wall=None, destroyed=None):
        """Feed one dump (the filled part of a record array) taken at t_ns, and the destroy messages
        read since the last one (records, each with the t_ns it was read at); returns (ended, Delta)."""
        wall = time.time() if wall is None else wall
        first = self.dumps == 0
        self.dumps += 1
        smat, keys, cookies = columns(records)
        ca = np.array(records["ca_name"]).view(np.uint64).reshape(-1, 2)     # compared fast as integers
        n_old = len(self.cookies)
        if len(cookies) == n_old and np.array_equal(cookies, self.cookies):
            fast = True
            index = np.arange(n_old)                 # the same sockets in the same order (a quiet host)
            matched = np.ones(n_old, bool)
            old_of = index
        else:
            fast = False
            _, firsts = np.unique(cookies, return_index=True)
            index = np.sort(firsts)                  # dump order; a socket listed twice counts once
            self.counts["duplicates"] += len(cookies) - len(index)
            cookies, keys, smat, ca = cookies[index], keys[index], smat[index], ca[index]
            order = np.argsort(self.cookies)
            sorted_old = self.cookies[order]
            pos = np.minimum(np.searchsorted(sorted_old, cookies), max(n_old - 1, 0))
            matched = (sorted_old[pos] == cookies) if n_old else np.zeros(len(cookies), bool)
            old_of = order[pos] if n_old else pos
        n = len(cookies)
        if not (fast and np.array_equal(keys, self.keys)):     # one comparison on a quiet host
            same = (keys[matched] == self.keys[old_of[matched]]).all(axis=1)
            if not same.all():                       # cookie reused with another 5-tuple: a new flow
                self.counts["retuple"] += int((~same).sum())
                matched[np.flatnonzero(matched)[~same]] = False
        ended = []
        # the same sockets in the same order (a quiet host): whole-array operations, no gathers
        same = fast and bool(matched.all())
        if same:
            flows, has_flow, prev, prev_ca = self.flows, self.has_flow, self.last, self.ca
            changed = (smat[:, 1:] != prev[:, 1:]).any(axis=1)
            deduped = self.deduped + ~changed
            changed_ns = np.where(changed, t_ns, self.changed_ns)
            nrows = self.nrows + (changed & has_flow)                      # filtered sockets store nothing
        else:
            m_rows = np.flatnonzero(matched)
            old = old_of[m_rows]
            kept_old = np.zeros(n_old, bool)
            kept_old[old] = True
            for i in np.flatnonzero(~kept_old):      # gone from the dump: closed (or re-tupled)
                flow = self.flows[i]
                if flow is None:
                    if self.hold_ns:                 # filtered (max_flows): its destroy message is not a new flow
                        self._reported(int(self.cookies[i]))
                else:
                    self.stored -= 1
                    self.counts["closed"] += 1
                    if self.hold_ns:                 # its destroy message gives the final sample
                        self.gone[flow.cookie] = (flow, self.last[i], int(self.deduped[i]), self.t_ns, t_ns)
                    else:
                        self._finish(ended, flow, "closed", wall, self.t_ns, self.deduped[i])
            # carry the matched sockets over
            flows, has_flow = np.empty(n, dtype=object), np.zeros(n, bool)
            flows[m_rows], has_flow[m_rows] = self.flows[old], self.has_flow[old]
            prev, prev_ca = np.zeros_like(smat), np.zeros_like(ca)
            prev[m_rows], prev_ca[m_rows] = self.last[old], self.ca[old]
            changed = (smat[:, 1:] != prev[:, 1:]).any(axis=1) & matched
            deduped, nrows = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
            changed_ns = np.full(n, t_ns, dtype=np.int64)
            deduped[m_rows] = self.deduped[old] + ~changed[m_rows]
            changed_ns[m_rows] = np.where(changed[m_rows], t_ns, self.changed_ns[old])
            nrows[m_rows] = self.nrows[old] + (changed & has_flow)[m_rows]
        # a changed sample is stored
        for r in np.flatnonzero(changed & has_flow):
            flows[r].rows.append(smat[r].tobytes())
        new_ca = (ca[:, 0] != prev_ca[:, 0]) | (ca[:, 1] != prev_ca[:, 1])
        for r in np.flatnonzero(new_ca & matched & has_flow):
            flows[r].ca_name = records["ca_name"][index[r]].decode("ascii", "replace")
        full = has_flow & (nrows >= self.max_samples)
        idle = has_flow & ~changed & matched & (nrows > 0) & (t_ns - changed_ns >= self.idle_ns) \
            if self.idle_ns else np.zeros(n, bool)
        for r in np.flatnonzero(full | idle):
            flow = flows[r]
            self._finish(ended, flow, "max_samples" if full[r] else "idle", wall, t_ns, deduped[r])
            flows[r] = flow.successor(t_ns, wall)
            deduped[r] = nrows[r] = 0
            changed_ns[r] = t_ns
        for r in np.flatnonzero(~matched):           # new sockets
            self.counts["new"] += 1
            if self.max_flows and self.stored >= self.max_flows:
                self.counts["filtered"] += 1
                continue
            flow = Flow(records[index[r]], t_ns, wall, partial=first)
            flow.rows.append(smat[r].tobytes())
            flows[r] = flow
            has_flow[r] = True
            nrows[r] = 1
            self.stored += 1
        self.total_samples = int(nrows.sum())
        if self.total_samples > self.max_total_samples:       # the budget: write the biggest flows first
            for r in np.argsort(-nrows, kind="stable"):
                if self.total_samples <= 0.9 * self.max_total_samples:
                    break
                flow = flows[r]
                self._finish(ended, flow, "memory", wall, t_ns, deduped[r])
                self.total_samples -= int(nrows[r])
                flows[r] = flow.successor(t_ns, wall)
                deduped[r] = nrows[r] = 0
                changed_ns[r] = t_ns

        if destroyed is not None and len(destroyed):
            self._destroyed(ended, destroyed, t_ns, wall, first, set(cookies.tolist()))
        if self.gone:
            self.expire(ended, t_ns, wall)

        delta = Delta(index=index, rtt_us=smat[:, COL["tcpi_rtt"]], new=~matched,
                      **{k: np.where(matched, smat[:, COL[c]] - prev[:, COL[c]], 0)
                         for k, c in (("d_retrans", "tcpi_total_retrans"), ("d_segs_out", "tcpi_segs_out"),
                                      ("d_ooo", "tcpi_rcv_ooopack"), ("d_segs_in", "tcpi_segs_in"))})
        self.cookies, self.keys, self.last, self.flows, self.ca = cookies, keys, smat, flows, ca
        self.has_flow = has_flow
        self.deduped, self.changed_ns, self.nrows, self.t_ns = deduped, changed_ns, nrows, t_ns
        return ended, delta

    def _destroyed(self, ended, destroyed, t_ns, wall, first, listed):
        """The final samples of destroyed sockets: a held flow ends with it, a socket no dump saw
        is a flow of one sample, a flow already written is not written again."""
        smat, _, cookies = columns(destroyed)
        for r, cookie in enumerate(cookies.tolist()):
            rec_ns = int(smat[r, 0])
            end_wall = wall - (t_ns - rec_ns) / 1e9
            held = self.gone.pop(cookie, None)
            if held is not None:
                flow, last, deduped, _, _ = held
                if (smat[r, 1:] != last[1:]).any():
                    flow.rows.append(smat[r].tobytes())
                else:
                    deduped += 1
                self.counts["destroyed"] += 1
                self._finish(ended, flow, "closed", end_wall, rec_ns, deduped)
            elif cookie in self.reported or cookie in listed:
                self.counts["destroy_late"] += 1         # written already (or listed: not ours to end)
            else:
                self.counts["new"] += 1
                self.counts["destroyed"] += 1
                if self.max_flows and self.stored >= self.max_flows:
                    self.counts["filtered"] += 1
                    continue
                flow = Flow(destroyed[r], rec_ns, end_wall, partial=first)
                flow.rows.append(smat[r].tobytes())
                self._finish(ended, flow, "closed", end_wall, rec_ns, 0)

    def final(self, destroyed, t_ns, wall=None):
        """At the end: the destroy messages read since the last dump, then every flow still held
        written from its last dump; returns the ended flows."""
        wall = time.time() if wall is None else wall
        ended = []
        if len(destroyed):
            closed = np.flatnonzero(self.has_flow & np.isin(self.cookies, destroyed["idiag_cookie"]))
            for i in closed:                # listed by the last dump, closed since
                flow = self.flows[i]
                self.gone[flow.cookie] = (flow, self.last[i], int(self.deduped[i]), self.t_ns, t_ns)
                self.flows[i], self.has_flow[i] = None, False
                self.stored -= 1
                self.counts["closed"] += 1
            self._destroyed(ended, destroyed, t_ns, wall, self.dumps == 0, set())
        self.expire(ended, t_ns, wall, everything=True)
        return ended

    def expire(self, ended, t_ns, wall, everything=False):
        """Write the held flows whose destroy message has not come within `hold` (all of them at
        the end) from their last dump, and remember their cookies."""
        for cookie, (flow, _, deduped, seen_ns, since) in list(self.gone.items()):
            if everything or t_ns - since >= self.hold_ns:
                del self.gone[cookie]
                self.counts["destroy_missed"] += 1
                self._finish(ended, flow, "closed", wall, seen_ns, deduped)
                self._reported(cookie)

    def _reported(self, cookie):
        self.reported[cookie] = None
        if len(self.reported) > KEEP_REPORTED:
            self.reported.popitem(last=False)

    def _finish(self, ended, flow, reason, wall, last_ns, deduped):
        """Write `flow` out (unless it has fewer than min_samples) as last seen at last_ns."""
        flow.last_ns = int(last_ns)
        flow.deduped = int(deduped)
        if len(flow.rows) < max(self.min_samples, 1):
            self.counts["dropped_short"] += 1
            return
        ended.append(Ended(flow, reason, wall, int(last_ns)))

    def snapshot(self, wall=None):
        """Every open flow with samples, as Ended(reason="open"); tracking goes on unchanged."""
        wall = time.time() if wall is None else wall
        out = []
        for i in np.flatnonzero(self.has_flow & (self.nrows >= max(self.min_samples, 1))):
            flow = self.flows[i]
            flow.last_ns = int(self.t_ns)
            flow.deduped = int(self.deduped[i])
            out.append(Ended(flow, "open", wall, int(self.t_ns)))
        return out

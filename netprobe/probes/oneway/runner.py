"""The oneway probe's client: sends probes from every source port to a peer's
receiver and turns the peer's per-interval records into RESULT lines and
verdicts (loss, delay p99, path_blackhole per port).

Each interval: the sender runs in chunks of <= 100 ms (GIL released); at the
interval's end it sends the control records, tells the peer to close the
interval after `grace`, and keeps its own per-port sent counts, which are
the authoritative "expected" of the loss accounting (analysis.py). A lost
control connection is a BREACH metric=connection; we reconnect with backoff.
"""
import ipaddress
import logging
import math
import os
import queue
import secrets
import socket
import threading
import time

import numpy as np

from netprobe.errors import ConfigError, PeerError, ProbeError, load_extension
from netprobe.peer.client import PeerLink, connect, renew_at
from netprobe.peer.protocol import clean_text, session_key
from netprobe.probes.base import ProbeRunner, next_deadline
from netprobe.probes.oneway import analysis, pathwatch
from netprobe.probes.oneway.config import ports_for_ecmp
from netprobe.probes.oneway.protocol import MAX_LINE, clock_state
from netprobe.results import percent, seconds
from netprobe.stats.buckets import hist_field, parse_bounds

log = logging.getLogger("netprobe.probes.oneway")

CHUNK = 0.1                    # s: the sender returns to Python this often
LATE_SAMPLES = 200_000         # send-time errors kept per interval (memory bound)
RESULT_WAIT = 2.0              # s beyond grace to wait at stop for the last interval's records
SNDBUF = 1 << 20
PEER_COUNTERS = ("late_closed", "malformed", "unauthenticated", "unknown_session", "overrun", "trace")
U63 = 1 << 63
PORT_INTS = ("received", "dup", "reordered", "stale", "n", "n_tx")
PORT_SEQS = ("base", "max_seq", "ctl_count", "ctl_next", "piggy_count", "next_base")


class Session:
    """One session with the peer: the control connection, the source-port sockets, the sender."""

    def __init__(self, cfg, udpio, shared=False):
        self.cfg = cfg
        self.shared = shared             # one of several peers' sessions: source ports may be the same
        self.sid = secrets.token_hex(8)
        self.peer_totals = {}
        key = cfg.key.encode()
        fields = {"session": self.sid, "grace_ns": round(cfg.grace * 1e9), "udp_port": cfg.dst_port}
        ports = cfg.source_ports()
        nports = len(ports) if ports else ports_for_ecmp(cfg.ecmp_width)
        fields["nports"] = nports
        udp_key = b""
        if key:
            udp_key = session_key(key, self.sid)
        elif cfg.auth:
            udp_key = os.urandom(32)
            fields["udp_key"] = udp_key.hex()
        self.ctl = connect(cfg.peer, "oneway", key=key, timeout=cfg.connect_timeout, line_max=MAX_LINE, **fields)
        self.renew_at = renew_at(self.ctl, time.monotonic())
        self.socks = []
        try:
            first = self.ctl.recv(cfg.connect_timeout)
            udp_port = first.get("udp_port")
            if isinstance(udp_port, bool) or not isinstance(udp_port, int) or not 1 <= udp_port <= 65535:
                raise PeerError(f"peer {cfg.peer}: no valid UDP port (1-65535) in its answer")
            want = "shared" if key else "session" if cfg.auth else "none"
            if first.get("auth") != want:        # e.g. our key, but the peer has none: every probe would be refused
                raise PeerError(f"peer {cfg.peer} authenticates probes by {clean(first.get('auth'))} key, this "
                                f"probe by {want!r}: configure the same shared key on both ends")
            self.peer_clock = valid_clock(first.get("clock"))
            self.ctl.sock.setblocking(False)
            dst = (self.ctl.sock.getpeername()[0], udp_port)
            self.dst, self.watch = dst, None
            raw = self.raw = None
            if cfg.next_hops:
                raw = self.raw = self._open_raw(ports, nports, dst)
                self.port_numbers = raw["sports"]
            else:
                self.port_numbers = self._open_ports(ports, nports, dst)
            tx_stamp = cfg.tx_timestamps and first.get("tx_follow_up") is True
            if cfg.tx_timestamps and not tx_stamp:
                log.info("%s: peer %s takes no TX follow-ups; delays are from user-space send times",
                         cfg.name, cfg.peer)
            clock = clock_state()
            self.sender = udpio.UdpProbeSender(
                None if raw else [s.fileno() for s in self.socks], int(self.sid, 16), time.time_ns(),
                round(cfg.gap * 1e9), min_len=cfg.min_len, max_len=cfg.max_len, poisson=cfg.schedule == "poisson",
                spin_ns=round(cfg.spin * 1e9), key=udp_key, clock_err_us=_err_us(clock),
                unsync=not clock["synced"], raw=raw, tx_stamp=tx_stamp)
        except BaseException:
            self.close()
            raise

    def _open_ports(self, ports, nports, dst):
        family = self.ctl.family
        local = self.cfg.local or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        numbers = []
        for i in range(nports):
            s = socket.socket(family, socket.SOCK_DGRAM)
            self.socks.append(s)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
                if self.cfg.trace or self.shared:    # the trace socket, or another peer's session, binds
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((local, ports[i] if ports else 0))
                s.connect(dst)
            except OSError as exc:
                what = f"source port {ports[i]}" if ports else "a source port"
                raise ProbeError(f"cannot send from {what} on {local}: {exc.strerror}") from None
            numbers.append(s.getsockname()[1])
        return numbers

    def _open_raw(self, ports, nports, dst):
        """Next-hop-MAC mode: one AF_PACKET socket on `interface`; frames carry our own
        Ethernet/IP/UDP headers, so no kernel route, ARP or source-port binding is involved."""
        cfg = self.cfg
        family = self.ctl.family
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)    # protocol 0: send only, receive nothing
        except PermissionError:
            raise ProbeError("next_hops (raw Ethernet frames) need CAP_NET_RAW: run as root or grant it") from None
        self.socks.append(s)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            s.bind((cfg.interface, 0))
            with open(f"/sys/class/net/{cfg.interface}/address") as fh:
                src_mac = bytes.fromhex(fh.read().strip().replace(":", ""))
        except OSError as exc:
            raise ProbeError(f"interface {cfg.interface}: {exc.strerror or exc}") from None
        if cfg.local:
            src = cfg.local
        else:                     # the address the kernel would send from towards the peer
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect(dst)
                src = probe.getsockname()[0]
        if not ports:             # "auto": consecutive ports from a random base in the ephemeral range
            base = 32768 + secrets.randbelow(61000 - 32768 - nports)
            ports = list(range(base, base + nports))
        macs = [bytes.fromhex(m.replace(":", "")) for m in cfg.next_hops]
        return {"fd": s.fileno(), "src_mac": src_mac, "macs": macs, "pin": cfg.next_hop_spread == "port",
                "src_ip": ipaddress.ip_address(src).packed, "dst_ip": ipaddress.ip_address(dst[0]).packed,
                "sports": ports, "dport": dst[1]}

    def close(self):
        for s in self.socks:
            s.close()
        self.socks = []
        if self.ctl is not None:
            self.ctl.close()


def clean(value):
    return repr(clean_text(value, 40)) if isinstance(value, str) else clean_text(value, 40)


def valid_clock(clock):
    """The peer's clock state with its fields range-checked: synced (bool), maxerror_us (0..2^32 or None)."""
    if not isinstance(clock, dict):
        return {}
    err = clock.get("maxerror_us")
    ok = isinstance(err, int) and not isinstance(err, bool) and 0 <= err < 1 << 32
    return {"synced": clock.get("synced") is True, "maxerror_us": err if ok else None}


def valid_record(rec, nports):
    """A peer's interval record with every field present and range-checked; ValueError naming
    the first bad one."""
    def whole(v, lo, hi, what):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < hi:
            raise ValueError(f"{what} missing or out of range")
        return v

    def histogram(hist):
        if not isinstance(hist, list) or len(hist) > 1 << 16 or not all(
                isinstance(b, list) and len(b) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                            and 0 <= x < U63 for x in b) for b in hist):
            raise ValueError("histogram missing or out of range")
    if not isinstance(rec, dict) or not isinstance(rec.get("ports"), list) or len(rec["ports"]) != nports:
        raise ValueError(f"not an interval record of {nports} ports")
    whole(rec.get("interval"), 0, 1 << 32, "interval")
    histogram(rec.get("hist"))
    for i, p in enumerate(rec["ports"]):
        if not isinstance(p, dict) or p.get("port") != i or isinstance(p.get("port"), bool):
            raise ValueError(f"port record {i} missing or out of order")
        for k in PORT_INTS:
            whole(p.get(k), 0, U63, k)
        for k in PORT_SEQS:
            whole(p.get(k), -1, U63, k)
        for k in ("min", "max"):
            whole(p.get(k), -U63, U63, k)
        for k in ("sum", "sumsq"):
            v = p.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1e300:
                raise ValueError(f"{k} missing or out of range")
        histogram(p.get("hist"))
    return rec


def _err_us(clock):
    err = clock.get("maxerror_us")
    return min(int(err), 0xFFFFFFFF) if isinstance(err, int) and err >= 0 else 0xFFFFFFFF


class Roller:
    """One session's sending between interval ends: the send-time errors of the interval, and at
    its end the control records, the interval's counts to the reading thread (`rolled`) and the
    close to the peer."""

    def __init__(self, sess, cfg, late, rolled):
        self.sess, self.cfg, self.late, self.rolled = sess, cfg, late, rolled
        self.parts, self.nlate = [], 0      # send-time errors of this interval (at most LATE_SAMPLES)
        self.errors_before = 0
        self.next_roll = time.monotonic() + cfg.interval

    def send(self, duration_ns):
        got = self.sess.sender.run(duration_ns, self.late)
        if got.late and self.nlate < LATE_SAMPLES:
            self.parts.append(self.late[:min(got.late, LATE_SAMPLES - self.nlate)].copy())
            self.nlate += len(self.parts[-1])

    def roll(self, stopping):
        """End the interval (the last one, with bye, when `stopping`); returns why the control
        connection failed, or None."""
        sender = self.sess.sender
        iid = sender.interval
        clock = clock_state()
        counts = sender.end_interval(self.cfg.control_copies)
        lat = np.concatenate(self.parts) if self.parts else np.empty(0, dtype=np.int64)
        self.parts, self.nlate = [], 0
        self.rolled.put((iid, counts, {"late": lat, "send_errors": sender.send_errors - self.errors_before,
                                       "missed": sender.missed}, clock))
        self.errors_before = sender.send_errors
        sender.set_clock(_err_us(clock), not clock["synced"])
        try:
            self.sess.ctl.send({"close": iid, **({"bye": True} if stopping else {})})
        except OSError as exc:
            return f"control connection failed: {exc.strerror or exc}"
        self.next_roll = next_deadline(self.next_roll, self.cfg.interval, time.monotonic())
        return None


class Runner(ProbeRunner):
    """Probes from every source port; RESULT per interval; BREACH/CLEAR per SLA and per port."""

    kind = "oneway"

    def __init__(self, cfg, emit, late=None):
        super().__init__(cfg, emit)
        self.udpio = load_extension("_udpio")
        self.late = np.empty(LATE_SAMPLES, dtype=np.int64) if late is None else late
        self.fleet = None
        if cfg.peers:
            from netprobe.probes.oneway.peers import Peers
            self.fleet = Peers(self)

    def update(self, cfg):
        """A changed peers list, taken while running (ConfigError: it needs a new worker)."""
        if self.fleet is None:
            raise ConfigError("a single-peer probe takes no update (a new worker does)")
        self.fleet.update(cfg)

    def run(self, stop):
        if self.fleet is not None:
            self.fleet.run(stop)
            return
        link = PeerLink(self, lambda: Session(self.cfg, self.udpio))
        while not stop.is_set():
            sess = link.open(stop)
            if sess is None:
                link.wait(stop)
                continue
            log.info("%s: session %s with %s, %d source ports", self.cfg.name, sess.sid, self.cfg.peer,
                     len(sess.port_numbers))
            try:
                reason = self._session(sess, stop)
            finally:
                sess.close()
            if reason:
                link.lost(reason)

    def _session(self, sess, stop):
        """Run one session until `stop`, until the control connection fails (returns why), or
        until it is due for renewal before the peer's max_session_length (ends it like a stop).

        The sender runs on its own thread (its chunks release the GIL), so the
        Python work here (reading and judging results) does not delay probes."""
        rolled = queue.SimpleQueue()     # (interval id, per-port sent counts, send stats, sender clock)
        failed = []
        sender_stop = threading.Event()
        t = threading.Thread(target=self._send_loop, args=(sess, sender_stop, rolled, failed), daemon=True)
        t.start()
        self.watch(sess)
        sent_by_interval = {}
        try:
            while not stop.is_set() and t.is_alive():
                self._take(rolled, sent_by_interval)
                self._read_results(sess, sent_by_interval, judge=True)
                if sess.ctl.closed:
                    return sess.ctl.error
                if sess.renew_at is not None and time.monotonic() >= sess.renew_at:
                    log.info("%s: renewing session %s before the peer's max_session_length", self.cfg.name,
                             sess.sid)
                    break
                stop.wait(0.02)
        finally:
            sender_stop.set()
            t.join()
            if sess.watch:
                sess.watch.stop()
        if failed:
            return failed[0]
        self._take(rolled, sent_by_interval)
        self._drain(sess, sent_by_interval)
        return None

    def watch(self, sess):
        """With trace: start tracing the session's ports (raw mode: port i through next hop i mod N,
        from the frames' source address)."""
        if self.cfg.trace:
            local, via = self.cfg.local or None, None
            if sess.raw:
                macs = sess.raw["macs"]
                local = str(ipaddress.ip_address(sess.raw["src_ip"]))
                via = {p: macs[i % len(macs)] for i, p in enumerate(sess.port_numbers)}
            sess.watch = pathwatch.PathWatch(self.cfg, *sess.dst, sess.port_numbers, 1.0 / self.cfg.gap,
                                             local, via).start()

    @staticmethod
    def _take(rolled, sent_by_interval):
        while True:
            try:
                iid, *rest = rolled.get_nowait()
            except queue.Empty:
                return
            sent_by_interval[iid] = rest

    def _send_loop(self, sess, stop, rolled, failed):
        """The sender thread: chunks of probes, and each interval's end (Roller.roll)."""
        r = Roller(sess, self.cfg, self.late, rolled)
        while True:
            stopping = stop.is_set()
            now = time.monotonic()
            if not stopping and now < r.next_roll:
                r.send(max(1, round(min(CHUNK, r.next_roll - now) * 1e9)))
                continue
            why = r.roll(stopping)
            if why:
                failed.append(why)
                return
            if stopping:
                return

    def _drain(self, sess, sent_by_interval):
        """At stop: wait for the records of every interval still open at the peer."""
        end = time.monotonic() + self.cfg.grace + RESULT_WAIT
        while sent_by_interval and time.monotonic() < end and not sess.ctl.closed:
            time.sleep(0.02)
            self._read_results(sess, sent_by_interval, judge=False)

    def _read_results(self, sess, sent_by_interval, judge):
        for msg in sess.ctl.poll():
            results = msg.get("results")
            if not isinstance(results, list):
                continue
            peer_clock = valid_clock(msg.get("clock"))
            totals = msg.get("counters") if isinstance(msg.get("counters"), dict) else {}
            # the peer's counters are totals since the session began: report what is new since its last message
            counters = {k: v - sess.peer_totals.get(k, 0) for k, v in totals.items()
                        if k in PEER_COUNTERS and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < U63}
            sess.peer_totals.update({k: totals[k] for k in counters})
            for n, rec in enumerate(results):
                if n:
                    counters = {}                 # several intervals in one message: the news goes to the first
                try:
                    iid = valid_record(rec, len(sess.port_numbers))["interval"]
                    counts, stats, clock = sent_by_interval.pop(iid)
                    summary = analysis.summarize(rec, counts)
                except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
                    log.warning("%s: unusable interval record from the peer: %s", self.cfg.name, exc)
                    continue
                # the final record of a stop is reported, not judged (a partial interval)
                self._report(sess, summary, rec["ports"], stats, clock, peer_clock, counters, judge)

    def _report(self, sess, s, raw_ports, stats, clock, peer_clock, counters, judge):
        cfg = self.cfg
        synced = bool(clock.get("synced")) and bool(peer_clock.get("synced"))
        errs = [c.get("maxerror_us") for c in (clock, peer_clock)]
        bound = sum(errs) / 1e6 if all(isinstance(e, int) for e in errs) else None
        lat = stats["late"]
        fields = {"peer": cfg.peer, "interval_id": s["interval"], "ports": len(s["ports"]),
                  "sent": s["expected"], "received": s["received"], "lost": s["lost"],
                  "loss": None if s["loss_pct"] is None else percent(s["loss_pct"]),
                  "dup": s["dup"], "reordered": s["reordered"]}
        for k in ("delay_p50", "delay_p99", "delay_mean", "delay_min", "delay_max"):
            fields[k] = None if s[k] is None else seconds(s[k] / 1e9)
        fields["delay_samples"] = s["delay_n"]
        if cfg.delay_buckets:
            bounds = parse_bounds(cfg.delay_buckets)
            le = analysis.counts_le(s["hist"], analysis.SESSION_SUB_BITS, [b * 1e9 for b in bounds])
            fields["delay_hist"] = hist_field(bounds, le, s["delay_n"], s["delay_sum"] / 1e9)
        fields["delay_from_kernel_tx"] = s["delay_n_tx"]     # the rest: user-space send times
        fields["clock_synced"] = synced
        fields["delay_bound"] = None if bound is None else seconds(bound)
        for name, c in (("clock_error", clock), ("peer_clock_error", peer_clock)):
            err = c.get("maxerror_us")
            fields[name] = seconds(err / 1e6) if isinstance(err, int) else None
        if s["worst"] is not None and s["worst"].lost:
            fields["worst_port"] = sess.port_numbers[s["worst"].port]
            fields["worst_port_loss"] = percent(s["worst"].loss_pct)
        fields["late_arrivals"] = counters.get("late_closed", 0)     # after their interval had closed
        fields["malformed"] = counters.get("malformed", 0)
        fields["unauthenticated"] = counters.get("unauthenticated", 0)
        fields["unknown_session"] = counters.get("unknown_session", 0)
        fields["receiver_overrun"] = counters.get("overrun", 0)   # probes of intervals the peer had no room for
        fields["send_errors"] = stats["send_errors"]
        if len(lat):
            p50, p99 = np.percentile(lat, [50, 99])
            fields["send_late_p50"] = seconds(p50 / 1e9)
            fields["send_late_p99"] = seconds(p99 / 1e9)
        named = pathwatch.report(self, sess.watch, sess.port_numbers, s, raw_ports, judge) if sess.watch else {}
        fields.update(named.get("result", {}))
        if sess.watch:
            fields["trace_at_peer"] = counters.get("trace", 0)    # trace datagrams the peer took (not malformed)
        self.result(fields)
        if cfg.per_port:
            for p, rec in zip(s["ports"], raw_ports, strict=True):
                d = analysis.port_delay(rec) or {}
                self.result({"peer": cfg.peer, "interval_id": s["interval"], "port": sess.port_numbers[p.port],
                             "sent": p.expected, "received": p.received, "lost": p.lost,
                             "loss": percent(p.loss_pct), "dup": p.dup, "reordered": p.reordered,
                             **{f"delay_{k}": seconds(d[k] / 1e9) for k in ("mean", "p99", "max") if k in d}})
        if not judge:
            return
        names = dict(enumerate(sess.port_numbers))
        for v in analysis.verdicts(s, max_loss_pct=cfg.max_loss_pct, max_delay_p99=cfg.max_delay_p99,
                                   blackhole_pct=cfg.blackhole_pct, port_names=names):
            unit = percent if v.unit == "%" else seconds
            extra = {**v.extra, **named.get(v.metric, {})}
            if v.metric == "delay_p99":
                extra["clock_synced"] = synced
            self.judge(v.key, v.bad, metric=v.metric, value=unit(v.value), op=v.op,
                       threshold=unit(v.threshold), window=seconds(cfg.interval), peer=cfg.peer, **extra)



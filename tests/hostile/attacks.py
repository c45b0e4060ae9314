"""Load generators of the hostile tests, each a subprocess bounded in time and count.

  python -m tests.hostile.attacks TOOL --duration S [options]; prints one JSON line (its result).

  legit           the legitimate client: every --every s, a capacity session through the product's
                  connect(): handshake, setup, one 4-packet train that must arrive
  flood           --half-open N connections that never say hello (reopened when the peer drops
                  them), --rate R unauthenticated hellos a second, --authed M signed sessions held
  capacity-gap    --sessions N capacity sessions sending, back to back, plans whose whole gap is on
                  the last row and whose average rate is just under --max-rate
  throughput-over --sessions N throughput sessions, each asking --rate-down of the peer
  bomb            --sessions N oneway close bombs (5,000 ports, then close 1,023), again and again
  sample-tx       --dev's tx_bytes every --every s (run inside the peer's namespace)

Its own namespace's addresses only: the tests start it on loopback or in a lab namespace.
"""
import argparse
import json
import secrets
import select
import selectors
import socket
import statistics
import threading
import time
from collections import Counter

from tests.hostile import wire

MAX_CONNECTS = 200_000        # over a whole flood, whatever its duration
REOPEN_RATE = 500             # half-open connections reopened a second, once the first N are open
TRAIN_MAX = 1000              # packets per train row (the sender's limit is 1024)


def address(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def read_key(path):
    with open(path, "rb") as fh:
        return fh.read().strip()


def short(error):
    return str(error)[:160]


# -- the legitimate client ---------------------------------------------------------------------

def legit_probe(addr, key):
    """One capacity session; {"ok", "handshake_s", "received", "error"}."""
    t0 = time.monotonic()
    try:
        sess = wire.legit_connect(addr, "capacity", key, timeout=5.0)
    except Exception as exc:          # the outcome is the datum: any failure counts as one
        return {"ok": False, "handshake_s": time.monotonic() - t0, "received": 0, "error": short(exc)}
    handshake = time.monotonic() - t0
    udp = socket.socket(sess.sock.family, socket.SOCK_DGRAM)
    try:
        udp.bind((sess.sock.getsockname()[0], 0))
        udp.settimeout(1.0)
        setup = wire.capacity_setup(sess, udp.getsockname()[1], secrets.randbits(32))
        if not wire.accepted(setup):
            raise RuntimeError(f"setup refused: {wire.why(setup)}")
        wire.capacity_plan(sess, [[1, 4, 100, 0, 0, 0]])
        reply = sess.reader.json(5.0)
        if not isinstance(reply, dict) or "sent" not in reply:
            raise RuntimeError(f"plan refused: {wire.why(reply)}")
        got = 0
        try:
            while got < 4:
                udp.recv(2048)
                got += 1
        except TimeoutError:
            pass
        if not got:
            raise RuntimeError("the train never arrived")
        return {"ok": True, "handshake_s": handshake, "received": got, "error": ""}
    except Exception as exc:
        return {"ok": False, "handshake_s": handshake, "received": 0, "error": short(exc)}
    finally:
        udp.close()
        sess.close()


def legit(args):
    key = read_key(args.key_file)
    end = time.monotonic() + args.duration
    probes = []
    time.sleep(args.delay)
    while time.monotonic() < end and len(probes) < args.count:
        t = time.monotonic()
        probes.append({"t": round(t - end + args.duration, 3), **legit_probe(args.address, key)})
        time.sleep(max(0.0, args.every - (time.monotonic() - t)))
    hs = [p["handshake_s"] for p in probes if p["ok"]]
    return {"probes": probes, "ok": sum(p["ok"] for p in probes),
            "handshake_median_s": statistics.median(hs) if hs else None,
            "handshake_max_s": max(hs) if hs else None,
            "errors": dict(Counter(p["error"] for p in probes if not p["ok"]))}


# -- handshake flood ---------------------------------------------------------------------------

def _half_open(args, end, stats):
    """Hold up to N connections that never send a byte; reopen those the peer closes, at most
    REOPEN_RATE a second."""
    sel = selectors.DefaultSelector()
    live = 0
    fam = socket.AF_INET6 if ":" in args.address[0] else socket.AF_INET
    t0 = time.monotonic()
    while time.monotonic() < end:
        budget = args.half_open + REOPEN_RATE * (time.monotonic() - t0)
        while live < args.half_open and stats["connects"] < min(budget, MAX_CONNECTS):
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setblocking(False)
            s.bind((args.source, 0))
            s.connect_ex(args.address)
            sel.register(s, selectors.EVENT_READ)
            live += 1
            stats["connects"] += 1
        stats["half_open_peak"] = max(stats["half_open_peak"], live)
        for k, _ in sel.select(0.05):
            try:
                data = k.fileobj.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(k.fileobj)
                k.fileobj.close()
                live -= 1
                stats["dropped_by_peer"] += 1
    for k in list(sel.get_map().values()):
        k.fileobj.close()


def _unauth_once(args, stats, lock, slots):
    try:
        with wire.Session(args.address, args.source, timeout=2.0) as s:
            reply = s.hello("capacity", auth="0" * 64, timeout=2.0)      # hex, but not the proof
        with lock:
            stats["unauth_refused"] += wire.is_refusal(reply)
    except (OSError, ValueError):
        with lock:
            stats["unauth_failed"] += 1
    finally:
        slots.release()


def _unauth(args, end, stats, lock):
    """Wrong-key hellos at --rate a second, each on its own thread so a slow peer cannot slow the
    pace; at most 800 pending (beyond that an attempt is skipped and counted)."""
    slots = threading.BoundedSemaphore(800)
    gap, nxt = 1.0 / args.rate, time.monotonic()
    while time.monotonic() < end:
        if slots.acquire(blocking=False):
            stats["unauth_sent"] += 1
            threading.Thread(target=_unauth_once, args=(args, stats, lock, slots), daemon=True).start()
        else:
            stats["unauth_skipped"] += 1
        nxt += gap
        time.sleep(max(0.0, nxt - time.monotonic()))


def flood(args):
    end = time.monotonic() + args.duration
    stats = Counter(connects=0, half_open_peak=0, dropped_by_peer=0, unauth_sent=0, unauth_skipped=0,
                    unauth_refused=0, unauth_failed=0)
    lock = threading.Lock()
    workers = [threading.Thread(target=_half_open, args=(args, end, stats), daemon=True)]
    if args.rate:
        workers.append(threading.Thread(target=_unauth, args=(args, end, stats, lock), daemon=True))
    for t in workers:
        t.start()
    held, refused = [], Counter()
    if args.authed:
        key = read_key(args.key_file)
        time.sleep(min(1.0, args.duration / 4))        # the flood is on when these ask
        for _ in range(args.authed):
            try:
                s, reply = wire.open_session(args.address, "capacity", key, args.source, timeout=3.0)
            except (OSError, ValueError) as exc:
                refused[short(exc)] += 1
                continue
            if wire.accepted(reply):
                held.append(s)
            else:
                refused[wire.why(reply)] += 1
                s.close()
    for t in workers:
        t.join(args.duration + 10)
    for s in held:
        s.close()
    return {**stats, "unauth_rate": stats["unauth_sent"] / args.duration, "authed_ok": len(held),
            "authed_refused": dict(refused)}


# -- rate cap ----------------------------------------------------------------------------------

def gap_plan(max_size, max_rate):
    """Rows whose bytes over their span (the last row's 1 s gap + 1 ms) are 95 % of max_rate."""
    nbytes = 0.95 * max_rate / 8 * 1.001
    size = max_size
    packets = max(2, int(nbytes // size))
    rows, train = [], 1
    while packets > 0:
        n = min(TRAIN_MAX, packets if packets >= 2 else 2)
        rows.append([train, n, size, 0, 0, 0])
        packets -= n
        train += 1
    rows[-1][5] = 1_000_000_000
    return rows


def _capacity_gap_once(args, key, end, stats, lock):
    """One session sending plans back to back until the end; returns why it ended."""
    try:
        sess, reply = wire.open_session(args.address, "capacity", key, args.source, timeout=5.0)
    except (OSError, ValueError) as exc:
        return short(exc)
    fam = socket.AF_INET6 if ":" in args.address[0] else socket.AF_INET
    with sess, socket.socket(fam, socket.SOCK_DGRAM) as udp:   # never read: the peer's work is the point
        try:
            if not wire.accepted(reply):
                return wire.why(reply)
            udp.bind((sess.sock.getsockname()[0], 0))
            setup = wire.capacity_setup(sess, udp.getsockname()[1], secrets.randbits(32))
            if not wire.accepted(setup):
                return wire.why(setup)
            rows = gap_plan(setup["max_size"], args.max_rate)
            while time.monotonic() < end:
                wire.capacity_plan(sess, rows)
                got = sess.reader.json(max(0.1, end - time.monotonic() + 3))
                if not (isinstance(got, dict) and "sent" in got):
                    return wire.why(got)
                with lock:
                    stats["plans_served"] += 1
                    stats["bytes_reported"] += sum(r[3] for r in got["sent"])
            return "the attack's time was up"
        except (OSError, ValueError) as exc:
            return short(exc)


def _capacity_gap_session(args, key, end, stats, lock):
    while time.monotonic() < end:
        ended = _capacity_gap_once(args, key, end, stats, lock)
        with lock:
            stats["ends"][ended] += 1
        time.sleep(0.2)


def in_threads(args, target, stats):
    """target(args, key, end, stats, lock) on --sessions threads until --duration; the stats."""
    key = read_key(args.key_file)
    end = time.monotonic() + args.duration
    lock = threading.Lock()
    threads = [threading.Thread(target=target, args=(args, key, end, stats, lock), daemon=True)
               for _ in range(args.sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.duration + 15)
    return {k: dict(v) if isinstance(v, Counter) else v for k, v in stats.items()}


def capacity_gap(args):
    return in_threads(args, _capacity_gap_session, {"plans_served": 0, "bytes_reported": 0, "ends": Counter()})


def _throughput_session(args, key, end, stats, lock):
    sid = secrets.token_hex(8)
    up = down = None
    try:
        up, reply = wire.open_session(args.address, "throughput", key, args.source, timeout=5.0,
                                      **wire.throughput_up_fields(sid, args.rate_down))
        if not wire.accepted(reply):
            raise ValueError(f"up leg refused: {wire.why(reply)}")
        down, reply = wire.open_session(args.address, "throughput", key, args.source, timeout=5.0,
                                        **wire.throughput_down_fields(sid, reply))
        if not wire.accepted(reply):
            raise ValueError(f"down leg refused: {wire.why(reply)}")
        with lock:
            stats["served"] += 1
        socks = [up.sock, down.sock]
        while time.monotonic() < end and socks:
            for s in select.select(socks, [], [], 0.2)[0]:
                data = s.recv(1 << 16)
                if not data:
                    socks.remove(s)
                elif s is down.sock:
                    with lock:
                        stats["bytes_received"] += len(data)
    except (OSError, ValueError) as exc:
        with lock:
            stats["refusals"][short(exc)] += 1
    finally:
        for s in (up, down):
            if s:
                s.close()


def throughput_over(args):
    return in_threads(args, _throughput_session, {"served": 0, "bytes_received": 0, "refusals": Counter()})


# -- memory ------------------------------------------------------------------------------------

def bomb_session(addr, key, source, timeout=10.0):
    """A oneway session with 5,000 ports, read up to its first line: (Session, None), or (None, why
    it was not opened: the refusal, or the error)."""
    try:
        s, reply = wire.open_session(addr, "oneway", key, source, timeout=timeout,
                                     **wire.oneway_fields(secrets.token_hex(8), 5000))
    except OSError as exc:
        return None, f"connect failed: {exc}"
    if not wire.accepted(reply):
        s.close()
        return None, reply
    try:
        s.reader.json(timeout)                # the UDP port
    except OSError as exc:
        s.close()
        return None, f"no first line: {exc}"
    return s, None


def detonate(sess, timeout=20.0):
    """Ask a bomb session to close 1,024 intervals at once: (the lines the peer sent after it,
    whether it closed within `timeout`, seconds). Closes the session."""
    t0 = time.monotonic()
    with sess:
        try:
            wire.send(sess.sock, {"close": 1023})
        except OSError as exc:
            return [f"failed: {exc}"], True, 0.0
        lines, closed = sess.reader.rest(timeout)
        return lines, closed, time.monotonic() - t0


def _bombs(args, key, end, stats, lock):
    while time.monotonic() < end:
        sess, why = bomb_session(args.address, key, args.source)
        if sess is None:
            ended = f"not opened: {wire.why(why)}"
            time.sleep(0.2)
        else:
            lines, closed, _ = detonate(sess, max(0.5, end - time.monotonic()))
            ended = wire.why(lines[-1]) if lines and closed else "still open" if not closed else "closed silently"
        with lock:
            stats["ends"][ended] += 1


def bomb(args):
    return in_threads(args, _bombs, {"ends": Counter()})


def sample_tx(args):
    path = f"/sys/class/net/{args.dev}/statistics/tx_bytes"
    out, t0 = [], time.monotonic()
    while time.monotonic() - t0 < args.duration:
        with open(path) as fh:
            out.append([round(time.monotonic() - t0, 4), int(fh.read())])
        time.sleep(args.every)
    return {"samples": out}


TOOLS = {"legit": legit, "flood": flood, "capacity-gap": capacity_gap, "throughput-over": throughput_over,
         "bomb": bomb, "sample-tx": sample_tx}


def main():
    ap = argparse.ArgumentParser(prog="python -m tests.hostile.attacks")
    ap.add_argument("tool", choices=sorted(TOOLS))
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--address", type=address)
    ap.add_argument("--source")
    ap.add_argument("--key-file")
    ap.add_argument("--every", type=float, default=0.25)
    ap.add_argument("--count", type=int, default=10**6)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--half-open", type=int, default=0)
    ap.add_argument("--rate", type=int, default=0)
    ap.add_argument("--authed", type=int, default=0)
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--max-rate", type=float, default=0)
    ap.add_argument("--rate-down", type=float, default=0)
    ap.add_argument("--dev")
    args = ap.parse_args()
    if not 0 < args.duration <= 120:
        ap.error("--duration must be 0 to 120 s")
    print(json.dumps(TOOLS[args.tool](args)), flush=True)


if __name__ == "__main__":
    main()

"""Peer side of the capacity probe, run inside `netprobe serve`: it sends the trains.

After the serve handshake ({"kind": "capacity"}; allow-list and key are
checked by serve.py) the client sends one JSON line per message:

  {"udp_port": P, "token": T}       setup: trains go to the client's own
                                     address (the TCP peer), port P, with
                                     session token T. Reply {"ok": true,
                                     "max_size": the path MTU - IP - UDP}.
  {"plan": [[train, count, size, primers, primer_size, gap_ns], ...]}
                                     send these trains (netprobe._train
                                     TrainSender). Reply {"sent": [[t_start_ns,
                                     t_end_ns, packets, bytes], ...],
                                     "error": errno or 0}.

A malformed or out-of-bounds message gets {"error": "..."} and is counted
(server.state["capacity"]["malformed"]); after MAX_BAD of them the session
is closed. Trains only ever go to the address the control connection came
from, so a peer cannot be used to flood a third party.
"""
import json
import logging
import socket

import numpy as np

from netprobe import serve
from netprobe.errors import load_extension

log = logging.getLogger("netprobe.serve.capacity")

LINE_MAX = 1 << 20            # bytes per control line
MAX_TRAINS = 4096             # per plan message
MAX_PLAN_BYTES = 32 << 20     # bytes one plan may ask us to send
MAX_BAD = 8
IP_MTU = 14                   # <linux/in.h>
IPV6_MTU = 24


class BadMessage(ValueError):
    """A control message that is not valid; the text goes back to the client."""


def _counters(server):
    return server.state.setdefault("capacity", {"malformed": 0, "sessions": 0, "trains": 0, "bytes": 0})


def parse_setup(msg):
    """(port, token) of a setup message, or BadMessage."""
    if not isinstance(msg, dict):
        raise BadMessage("setup must be a JSON object")
    port, token = msg.get("udp_port"), msg.get("token")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadMessage("udp_port must be 1-65535")
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token <= 0xffffffff:
        raise BadMessage("token must be a 32-bit unsigned integer")
    return port, token


def parse_plan(msg, max_size, max_rate):
    """A plan message as an int64 array (rows: train, count, size, primers, primer_size, gap_ns),
    or BadMessage."""
    train = load_extension("_train")
    if not isinstance(msg, dict) or not isinstance(msg.get("plan"), list):
        raise BadMessage('expected {"plan": [[train, count, size, primers, primer_size, gap_ns], ...]}')
    rows = msg["plan"]
    if not 1 <= len(rows) <= MAX_TRAINS:
        raise BadMessage(f"a plan holds 1 to {MAX_TRAINS} trains")
    for r in rows:
        if not isinstance(r, list) or len(r) != train.PLAN_NCOLS or \
                not all(isinstance(v, int) and not isinstance(v, bool) for v in r):
            raise BadMessage(f"each train is a list of {train.PLAN_NCOLS} integers")
    try:
        plan = np.asarray(rows, dtype=np.int64)
    except OverflowError:
        raise BadMessage("a plan value is out of range") from None
    ids, count, size, primers, primer, gap = plan.T
    if np.any(ids < 0) or np.any(ids > 0xffffffff):
        raise BadMessage("train ids are 32-bit unsigned")
    if np.any(count < 2) or np.any(count > train.MAX_TRAIN):
        raise BadMessage(f"count must be 2 to {train.MAX_TRAIN}")
    if np.any(size < train.HEADER_LEN) or np.any(size > max_size):
        raise BadMessage(f"size must be {train.HEADER_LEN} to {max_size} bytes (this path's largest)")
    if np.any(primers < 0) or np.any(primers > count - 2):
        raise BadMessage("primers must be 0 to count - 2")
    if np.any((primers > 0) & ((primer < train.HEADER_LEN) | (primer > max_size))):
        raise BadMessage(f"primer_size must be {train.HEADER_LEN} to {max_size} bytes")
    if np.any(gap < 0) or np.any(gap > 10**9):
        raise BadMessage("gap_ns must be 0 to 1 s")
    nbytes = int(np.sum((count - primers) * size + primers * primer))
    if nbytes > MAX_PLAN_BYTES:
        raise BadMessage(f"a plan may send at most {MAX_PLAN_BYTES} bytes")
    span_ns = int(gap.sum()) + 1_000_000          # a plan takes a millisecond at least
    if nbytes * 8e9 > max_rate * span_ns:
        raise BadMessage(f"the plan's average rate exceeds this peer's max_rate ({max_rate / 1e6:g} Mbit/s)")
    return np.ascontiguousarray(plan)


def path_max_size(udp):
    """Largest UDP payload to the connected client without fragmentation (route MTU - headers)."""
    if udp.family == socket.AF_INET6:
        mtu = udp.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
        return mtu - 48
    return udp.getsockopt(socket.IPPROTO_IP, IP_MTU) - 28


def _read_line(reader):
    line = reader.readline(LINE_MAX + 1)
    if not line:
        return None
    if len(line) > LINE_MAX or not line.endswith(b"\n"):
        raise BadMessage("control line too long")
    return json.loads(line)


def respond(sock, hello, server):
    counters = _counters(server)
    serve.reply_ok(sock)
    sock.settimeout(30.0)                 # an idle client is dropped
    reader = sock.makefile("rb")
    client = sock.getpeername()[0]
    udp = sender = None
    bad = 0
    counters["sessions"] += 1
    train = load_extension("_train")
    try:
        while not server.stop.is_set():
            try:
                msg = _read_line(reader)
                if msg is None:
                    return
                if udp is None:
                    port, token = parse_setup(msg)
                    udp = socket.socket(sock.family, socket.SOCK_DGRAM)
                    udp.connect((client, port))
                    sender = train.TrainSender(udp.fileno(), token)
                    max_size = min(path_max_size(udp), train.MAX_SIZE)
                    serve.send_json(sock, {"ok": True, "max_size": max_size})
                    continue
                plan = parse_plan(msg, max_size, server.max_rate)
            except (BadMessage, ValueError, UnicodeDecodeError) as exc:
                counters["malformed"] += 1
                bad += 1
                serve.send_json(sock, {"error": str(exc)})
                if bad >= MAX_BAD:
                    log.info("capacity session from %s: %d bad messages, closed", client, bad)
                    return
                continue
            sent = np.zeros((len(plan), train.SENT_NCOLS), dtype=np.int64)
            try:
                got, error = sender.send(plan, sent), 0
            except OSError as exc:               # a send failed; what went is exc.result
                got, error = exc.result, exc.errno
            counters["trains"] += got.trains
            counters["bytes"] += got.bytes
            serve.send_json(sock, {"sent": sent[:got.trains].tolist(), "error": error})
    except TimeoutError:
        log.debug("capacity session from %s: idle, closed", client)
    finally:
        reader.close()
        if udp is not None:
            udp.close()


serve.RESPONDERS["capacity"] = respond

"""Each TCP socket's final state as the kernel destroys it (the sock_diag destroy groups).

A NETLINK_SOCK_DIAG socket that joins SKNLGRP_INET_TCP_DESTROY and SKNLGRP_INET6_TCP_DESTROY
receives, for every TCP socket of this network namespace that the kernel frees, one
SOCK_DIAG_BY_FAMILY message: its inet_diag_msg and its tcp_info (INET_DIAG_INFO) as they were at
the end (sequence number 0, no congestion control name). They are read with the dumps' own parser
(netprobe._nldiag.parse), so each one becomes a RECORD_DTYPE record whose t_ns is when it was read.
The kernel does not filter them: `match` (filters.Matcher, the probe's own filter) keeps those
the probe's dumps would have listed.

Joining needs CAP_NET_ADMIN; without it `reason` says why and the probe works from its dumps alone.
Memory is bounded twice: the kernel queues at most `rcvbuf` bytes for us (a message beyond it is
lost, and the socket's own drop counter in /proc/net/netlink says how many: `lost`), and a drain
keeps at most `capacity` records until the probe takes them (matching ones beyond: `dropped`).
One drain reads at most 4 x capacity messages, so a flood of closing sockets cannot hold the loop.
"""
import errno
import os
import socket
import time

import numpy as np

from netprobe.errors import load_extension

NETLINK_SOCK_DIAG = 4
SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY = 1, 3          # linux/sock_diag.h
GROUPS = {socket.AF_INET: SKNLGRP_INET_TCP_DESTROY, socket.AF_INET6: SKNLGRP_INET6_TCP_DESTROY}
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, SO_RCVBUFFORCE = 270, 1, 33     # not in the socket module
MSG_MAX = 4096                     # one message: nlmsghdr, inet_diag_msg, protocol and tcp_info (~350 bytes)
COUNTS = ("received", "matched", "dropped", "lost", "malformed", "spoofed")


def netlink_drops(inode, path="/proc/net/netlink"):
    """The Drops column of the netlink socket with this inode (messages the kernel could not queue), or None."""
    try:
        with open(path) as f:
            for line in f.read().splitlines()[1:]:
                cols = line.split()
                if len(cols) >= 10 and int(cols[9]) == inode:
                    return int(cols[8])
    except (OSError, ValueError):
        pass
    return None


class Listener:
    """Destroyed sockets of the given families that pass `match` (records -> bool array).

    open() joins the groups (False, with `reason`, when the kernel refuses); fileno() for select();
    drain() reads what the kernel queued and returns how many records are held; take() returns
    them (a copy, in arrival order) and empties the buffer. counts: received (messages read),
    matched (kept), dropped (matched beyond capacity), lost (the kernel's drops: receive buffer
    full), malformed (not a socket record), spoofed (not sent by the kernel)."""

    def __init__(self, families, match, capacity=8192, rcvbuf=4 << 20):
        self.nl = load_extension("_nldiag")
        self.groups = sorted({GROUPS[f] for f in families})
        self.match = match
        self.rcvbuf = rcvbuf
        self.records = np.zeros(capacity, dtype=self.nl.RECORD_DTYPE)
        self.scratch = np.zeros(1, dtype=self.nl.RECORD_DTYPE)
        self.held = 0                  # records[:held] matched, not yet taken
        self.unfiltered = 0            # records[held:unfiltered] parsed, not yet matched
        self.counts = dict.fromkeys(COUNTS, 0)
        self.sock = None
        self.reason = None
        self._buf = bytearray(MSG_MAX)
        self._inode = None
        self._drops0 = 0

    def open(self):
        """Join the destroy groups; False (and `reason`, one line) if the kernel refuses."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                 NETLINK_SOCK_DIAG)
        except OSError as exc:
            self.reason = f"no NETLINK_SOCK_DIAG socket: {exc.strerror or exc}"
            return False
        try:
            sock.bind((0, 0))
            sock.connect((0, 0))            # unicast from any other socket is refused; multicast still comes
            for g in self.groups:
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g)
        except OSError as exc:
            sock.close()
            why = "needs CAP_NET_ADMIN" if exc.errno == errno.EPERM else exc.strerror or str(exc)
            self.reason = f"cannot join the sock_diag destroy groups: {why}"
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)    # capped at rmem_max
        self.sock = sock
        self._inode = os.fstat(sock.fileno()).st_ino
        self._drops0 = netlink_drops(self._inode) or 0
        return True

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _filter(self):
        """Keep the matching records of records[held:unfiltered], packed after the held ones."""
        new = self.records[self.held:self.unfiltered]
        keep = np.flatnonzero(self.match(new))
        self.records[self.held:self.held + len(keep)] = new[keep]
        self.held += len(keep)
        self.counts["matched"] += len(keep)
        self.unfiltered = self.held

    def drain(self):
        """Read every queued message (at most 4 x capacity); returns the number of records held."""
        if self.sock is None:
            return self.held
        cap = len(self.records)
        c = self.counts
        buf, view = self._buf, memoryview(self._buf)
        for _ in range(4 * cap):
            try:
                n, (pid, _) = self.sock.recvfrom_into(buf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                drops = netlink_drops(self._inode)          # the queue overran: the kernel counted them
                if drops is not None:
                    c["lost"] = drops - self._drops0
                continue
            if pid != 0:
                c["spoofed"] += 1
                continue
            c["received"] += 1
            t_ns = time.monotonic_ns()
            if self.unfiltered == cap:
                self._filter()
            full = self.unfiltered == cap
            out = self.scratch if full else self.records[self.unfiltered:]
            got = self.nl.parse(view[:n], out, 0, t_ns)
            if got.sockets != 1:
                c["malformed"] += 1
            elif full:
                c["dropped"] += int(self.match(out).sum())
            else:
                self.unfiltered += 1
        self._filter()
        return self.held

    def take(self):
        """The records held (a copy), and the buffer emptied."""
        self.drain()
        out = self.records[:self.held].copy()
        self.held = self.unfiltered = 0
        return out

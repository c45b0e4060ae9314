"""systemd's sd_notify protocol: datagrams to $NOTIFY_SOCKET (path or @abstract)."""
import os
import socket


class Notifier:
    def __init__(self, address=None):
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock = None
        if self.address:
            # non-blocking: a receiver that stops reading must not stall the supervisor's loop
            # (a full queue once hung the daemon in sendto); such a datagram is dropped
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)

    def watchdog_interval(self):
        """Half of $WATCHDOG_USEC in seconds when the watchdog is for us, else None."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2e6
        except ValueError:
            return None

    def notify(self, *lines):
        if self._sock is None:
            return
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            self._sock.sendto("\n".join(lines).encode(), addr)
        except OSError:
            pass   # systemd gone, not reading, or the socket not ours: nothing useful to do

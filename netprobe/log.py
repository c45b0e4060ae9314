"""Diagnostic logging (not results): stderr, or syslog when detached."""
import logging
import logging.handlers
import os
import sys


def setup(level="info", *, detached=False):
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if detached and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log", facility="daemon")
        handler.setFormatter(logging.Formatter("netprobe[%(process)d]: %(levelname)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("netprobe: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    os.environ["NETPROBE_LOG_LEVEL"] = level


class OnceFilter:
    """Remembers messages already logged, so a repeating error is logged once."""

    def __init__(self, limit=10000):
        self.seen = set()
        self.limit = limit

    def first(self, key):
        if key in self.seen:
            return False
        if len(self.seen) < self.limit:
            self.seen.add(key)
        return True

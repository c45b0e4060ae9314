"""Reference token bucket with exact rational arithmetic (fractions.Fraction).

Written from the definition, not from bucket.pxd: tokens are bytes, the rate
is bit/s, time is seconds as a Fraction of nanoseconds. Same observable
behaviour as netprobe._pacer.TokenBucket: starts full, refill ignores time
going backwards, take() may take less than asked, wait_ns() rounds up.
"""
import math
from fractions import Fraction


class ReferenceBucket:
    def __init__(self, rate_bps, depth_bytes, now_ns):
        self.rate_Bps = Fraction(rate_bps, 8)          # bytes per second
        self.depth = Fraction(depth_bytes)
        self.tokens = Fraction(depth_bytes)
        self.last_ns = now_ns

    def refill(self, now_ns):
        if now_ns > self.last_ns:
            earned = self.rate_Bps * Fraction(now_ns - self.last_ns, 10**9)
            self.tokens = min(self.depth, self.tokens + earned)
            self.last_ns = now_ns

    def try_take(self, n, now_ns):
        self.refill(now_ns)
        if 0 <= n <= self.tokens:
            self.tokens -= n
            return True
        return False

    def available(self, now_ns):
        self.refill(now_ns)
        return math.floor(self.tokens)

    def take(self, n, now_ns):
        self.refill(now_ns)
        taken = max(0, min(n, math.floor(self.tokens)))
        self.tokens -= taken
        return taken

    def wait_ns(self, n, now_ns):
        """ns from now_ns until n bytes are there (-1 if n exceeds the depth)."""
        if n > self.depth:
            return -1
        if n <= self.tokens:
            return 0
        ready_ns = self.last_ns + math.ceil((n - self.tokens) / self.rate_Bps * 10**9)
        return max(0, ready_ns - now_ns)

# netprobe._pacer: the constant-rate TCP sender and its drain, which write
# TCP_INFO sample rows, and the token bucket test hook.
#
# TcpPacedSender sends on the periodic timer (timerfd.pxd) through a token
# bucket (bucket.pxd); TcpDrain (pacer/drain.pyx) reads in a poll() loop. Both
# work on a TCP socket the caller owns, with the GIL released; Python sees one
# call per chunk (<= ~100 ms): it passes a preallocated int64 sample buffer and
# gets a result back.

from cpython.exc cimport PyErr_SetFromErrno
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc

from bucket cimport (bucket_t, bucket_init, bucket_refill, bucket_available,
                     bucket_take, bucket_try, bucket_wait_ns, BUCKET_MAX_DEPTH,
                     BUCKET_MAX_RATE, BUCKET_NBIT_PER_BYTE)
from linux cimport (errno, EINTR, EAGAIN, strerror, raise_errno, loop_end, mono_ns, send, recv,
                    setsockopt, pollfd, poll_in, poll_ns, MSG_DONTWAIT, MSG_NOSIGNAL, SOL_SOCKET,
                    SO_MAX_PACING_RATE, IPPROTO_TCP, TCP_NOTSENT_LOWAT, TCP_QUICKACK)
from prng cimport np_prng_fill
from tcpinfo cimport (tcp_info as tcp_info_t, tcp_info_read, tcp_info_fill_row, sampler_t, sample_if_due,
                     SAMPLE_NCOLS)
from timerfd cimport (periodic_t, periodic_open, periodic_close, periodic_arm, periodic_due,
                      periodic_wait, periodic_raise)


MAX_DURATION_NS = 86_400 * 10**9    # one run() call at most: a day (no int64 overflow)


cdef int _check_time(int64_t now_ns) except -1:
    """bucket.pxd's times are in [0, 2**62): differences and sums of two stay inside int64."""
    if not 0 <= now_ns < (<int64_t>1) << 62:
        raise ValueError(f"time must be 0 <= now_ns < 2**62 (got {now_ns})")
    return 0


cdef class TokenBucket:
    """Test hook over bucket.pxd: a token bucket driven by explicit `now_ns`.

    rate in bit/s, depth in bytes; starts full. take() refills first, then
    takes what it can (possibly less than asked); try_take() all or nothing.
    Its exact state: rate_bps, last_ns (the latest refill time) and
    credit_nbit (available credit in nanobits, 1 byte = 8e9).
    """
    cdef bucket_t b

    def __cinit__(self, *args, **kwargs):
        bucket_init(&self.b, 1, 1, 0)       # valid even if __init__ never runs: rate 0 would divide by 0

    def __init__(self, int64_t rate_bps, int64_t depth_bytes, int64_t now_ns):
        _check_time(now_ns)
        if bucket_init(&self.b, rate_bps, depth_bytes, now_ns) != 0:
            raise ValueError(
                f"token bucket needs 1 <= rate <= {BUCKET_MAX_RATE} bit/s and "
                f"1 <= depth <= {BUCKET_MAX_DEPTH} bytes (got {rate_bps}, {depth_bytes})")

    @property
    def rate_bps(self):
        return self.b.rate_bps

    def refill(self, int64_t now_ns):
        _check_time(now_ns)
        bucket_refill(&self.b, now_ns)

    @property
    def last_ns(self):
        return self.b.last_ns

    def take(self, int64_t n, int64_t now_ns):
        """Refill to `now_ns`, then take up to `n` bytes; returns bytes taken."""
        _check_time(now_ns)
        bucket_refill(&self.b, now_ns)
        return bucket_take(&self.b, n)

    def try_take(self, int64_t n, int64_t now_ns):
        """Refill to `now_ns`, then take exactly `n` bytes (True) or nothing (False)."""
        _check_time(now_ns)
        bucket_refill(&self.b, now_ns)
        return bucket_try(&self.b, n)

    def available(self, int64_t now_ns):
        """Refill to `now_ns`; whole bytes available."""
        _check_time(now_ns)
        bucket_refill(&self.b, now_ns)
        return bucket_available(&self.b)

    @property
    def credit_nbit(self):
        return self.b.credit

    def wait_ns(self, int64_t n, int64_t now_ns):
        """ns from `now_ns` until `n` bytes are available (-1: more than the depth)."""
        _check_time(now_ns)
        return bucket_wait_ns(&self.b, n, now_ns)


SAMPLE_COLUMNS = (
    "t_ns", "epoch", "app_bytes", "bytes_acked", "bytes_received", "delivery_rate",
    "rtt_us", "rttvar_us", "min_rtt_us", "snd_cwnd", "total_retrans", "bytes_retrans",
    "dsack_dups", "busy_time_us", "rwnd_limited_us", "sndbuf_limited_us", "pacing_rate",
    "snd_mss",
)
NCOLS = SAMPLE_NCOLS
assert len(SAMPLE_COLUMNS) == SAMPLE_NCOLS

TCP_MAX_RATE = 10**12                 # bit/s: keeps the auto depth far inside the bucket's bounds
DEPTH_AUTO_NS = 5_000_000             # auto depth: 5 ms of rate, so any 100 ms window is <= 105 %
LOWAT_AUTO_NS = 2_500_000             # auto TCP_NOTSENT_LOWAT: 2.5 ms of rate unsent, at most
WRITE_MIN, WRITE_MAX = 16 * 1024, 4 * 1024 * 1024


def _bit_rate(rate_bps):
    """A rate argument (int, or a float that is rounded) as int bit/s in range."""
    if isinstance(rate_bps, bool) or not isinstance(rate_bps, (int, float)):
        raise TypeError(f"rate must be a number of bit/s (got {rate_bps!r})")
    rate = round(rate_bps)
    if not 1 <= rate <= TCP_MAX_RATE:
        raise ValueError(f"rate must be 1 to {TCP_MAX_RATE} bit/s (got {rate_bps})")
    return rate


def _bytes_in(rate_bps, ns):
    """Bytes that `rate_bps` carries in `ns`, rounded up (Python ints: no overflow, floor division)."""
    return -(-rate_bps * ns // 8_000_000_000)


cdef int _check_tcp(int fd) except -1:
    cdef tcp_info_t ti
    cdef int err = tcp_info_read(fd, &ti)
    if err != 0:
        raise OSError(err, f"fd {fd} is not a TCP socket: {strerror(err).decode()}")
    return 0


cdef int _sampler_init(sampler_t *s, int64_t[:, ::1] samples, int64_t duration_ns, int64_t sample_every_ns,
                       int64_t epoch) except -1:
    """Check a run() call's arguments; point s at its rows (the caller sets s.next_ns)."""
    if samples.shape[1] != SAMPLE_NCOLS:
        raise ValueError(f"samples must have {SAMPLE_NCOLS} columns (got {samples.shape[1]})")
    if not (0 < duration_ns <= MAX_DURATION_NS and 0 < sample_every_ns <= MAX_DURATION_NS):
        raise ValueError(f"duration and sample interval must be 1 ns to 1 day (got {duration_ns}, {sample_every_ns})")
    s.rows, s.cap, s.n, s.every_ns, s.epoch = &samples[0, 0], samples.shape[0], 0, sample_every_ns, epoch
    return 0


def tcp_info(int fd):
    """Every struct tcp_info field of socket `fd` as {kernel name: value}; OSError on failure."""
    cdef tcp_info_t ti
    cdef int err = tcp_info_read(fd, &ti)
    if err != 0:
        raise OSError(err, strerror(err).decode())
    return ti


def tcp_info_row(int fd, int64_t t_ns, int64_t epoch, int64_t app_bytes):
    """One sample row of socket `fd` (a list in SAMPLE_COLUMNS order); OSError on failure."""
    cdef int64_t row[SAMPLE_NCOLS]
    cdef int err = tcp_info_fill_row(fd, row, t_ns, epoch, app_bytes)
    if err != 0:
        raise OSError(err, strerror(err).decode())
    return [row[i] for i in range(SAMPLE_NCOLS)]


cdef class SendRun:
    """One TcpPacedSender.run() call (read-only): rows written, ticks, timer_overruns (slots with
    no wake-up of their own), late_ticks (wake-ups more than a tick late), eagain (ticks that
    found the socket buffer full), bytes_sent (this call), app_bytes (since construction),
    elapsed_ns, interrupted (a signal ended the call)."""
    cdef readonly Py_ssize_t rows
    cdef readonly int64_t ticks, timer_overruns, late_ticks, eagain, bytes_sent, app_bytes, elapsed_ns
    cdef readonly bint interrupted

    def __repr__(self):
        return (f"SendRun(rows={self.rows}, ticks={self.ticks}, timer_overruns={self.timer_overruns}, "
                f"late_ticks={self.late_ticks}, eagain={self.eagain}, bytes_sent={self.bytes_sent}, "
                f"app_bytes={self.app_bytes}, elapsed_ns={self.elapsed_ns}, interrupted={self.interrupted})")


cdef class TcpPacedSender:
    """Constant-rate writer on a connected TCP socket (the caller owns the socket).

    A CLOCK_MONOTONIC timerfd ticks every tick_ns; each tick refills a token
    bucket (bucket.pxd) and send()s what it allows, MSG_DONTWAIT, from one
    preallocated buffer of incompressible non-zero bytes, in writes of up to
    write_size. Only what send() accepted is taken from the bucket. So over
    any window W the bytes handed to the kernel are at most rate*W + depth,
    whatever happened before: a receiver that stopped reading (EAGAIN) or a
    sender that was descheduled (timer overruns) earns at most `depth` of
    credit, never catch-up.

    The bucket bounds what the kernel is given; TCP_NOTSENT_LOWAT bounds
    what it may hold unsent, which it would release at line rate once a
    stalled path or receiver opens again. So on the wire too, any window W
    carries at most rate*W + depth + notsent_lowat (+ one skb).

    Defaults (0 = auto): write_size = rate * tick rounded up to 16 KiB..4 MiB;
    depth = rate * 5 ms, at least one tick of rate and one write;
    notsent_lowat = rate * 2.5 ms, at least one write (-1: leave the
    socket's setting). pacing=True also caps the socket with
    SO_MAX_PACING_RATE at 105 % of the rate (without sch_fq, TCP's internal pacing
    applies it).

    run() may be called repeatedly (each call <= ~100 ms so the caller sees
    its stop flag); the timer schedule, the bucket and the sample schedule
    carry over between calls. Totals since construction are attributes;
    run() returns the counts of its own call.
    """
    cdef int fd
    cdef periodic_t timer
    cdef char *buf
    cdef int64_t buf_size
    cdef bucket_t b
    cdef bint auto_depth, auto_write, auto_lowat, running
    cdef int64_t next_sample_ns
    cdef readonly int64_t rate_bps, depth_bytes, tick_ns, write_size, notsent_lowat
    cdef readonly bint pacing
    cdef readonly int64_t ticks, timer_overruns, late_ticks, eagain, bytes_sent
    cdef readonly int error

    def __cinit__(self, *args, **kwargs):
        self.timer.fd = -1
        self.buf = NULL

    def __init__(self, int fd, rate_bps, int64_t depth_bytes=0, int64_t tick_ns=1_000_000,
                 int64_t write_size=0, int64_t notsent_lowat=0, bint pacing=False):
        if not 10_000 <= tick_ns <= 1_000_000_000:
            raise ValueError(f"tick must be 10 us to 1 s in ns (got {tick_ns})")
        if not 0 <= depth_bytes <= BUCKET_MAX_DEPTH:
            raise ValueError(f"depth must be 0 (auto) to {BUCKET_MAX_DEPTH} bytes (got {depth_bytes})")
        if not 0 <= write_size <= WRITE_MAX:
            raise ValueError(f"write size must be 0 (auto) to {WRITE_MAX} bytes (got {write_size})")
        if not -1 <= notsent_lowat <= 1 << 30:
            raise ValueError(f"notsent_lowat must be -1 (leave), 0 (auto) or up to 1 GiB (got {notsent_lowat})")
        _check_tcp(fd)
        self.fd = fd
        self.tick_ns = tick_ns
        self.auto_depth = depth_bytes == 0
        self.auto_write = write_size == 0
        self.depth_bytes = depth_bytes
        self.write_size = write_size
        self.auto_lowat = notsent_lowat == 0
        self.notsent_lowat = notsent_lowat
        self.pacing = pacing
        if periodic_open(&self.timer, tick_ns) != 0:
            PyErr_SetFromErrno(OSError)
        self._configure(_bit_rate(rate_bps))

    def __dealloc__(self):
        periodic_close(&self.timer)
        free(self.buf)

    def close(self):
        """Release the timer (not the socket, which the caller owns)."""
        if self.running:
            raise RuntimeError("close() while run() is running")
        periodic_close(&self.timer)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    cdef _configure(self, int64_t rate):
        """Apply `rate`: auto sizes, buffer, socket options; the bucket keeps its level (clamped)."""
        cdef uint64_t pace
        cdef int lowat
        cdef int64_t write = self.write_size, depth = self.depth_bytes, unsent = self.notsent_lowat
        if self.auto_write:
            write = min(max(_bytes_in(rate, self.tick_ns), WRITE_MIN), WRITE_MAX)
        if self.auto_depth:
            depth = max(_bytes_in(rate, DEPTH_AUTO_NS), _bytes_in(rate, self.tick_ns), write)
            if depth > BUCKET_MAX_DEPTH:
                raise ValueError(f"{rate} bit/s with a {self.tick_ns} ns tick needs a bucket over "
                                 f"{BUCKET_MAX_DEPTH} bytes: use a shorter tick")
        if self.auto_lowat:
            unsent = min(max(_bytes_in(rate, LOWAT_AUTO_NS), write), 1 << 30)
        if write > self.buf_size:
            self._alloc(write)
        if unsent > 0:
            lowat = <int>unsent
            if setsockopt(self.fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat)) != 0:
                PyErr_SetFromErrno(OSError)
        if self.pacing:
            # 5 % headroom: capped at exactly the rate, the kernel could never make up for a
            # late tick, and the flow would fall short; our bucket still bounds every window
            pace = rate // 8 + rate // 160
            if setsockopt(self.fd, SOL_SOCKET, SO_MAX_PACING_RATE, &pace, sizeof(pace)) != 0:
                PyErr_SetFromErrno(OSError)
        if self.timer.first_ns != 0:
            bucket_refill(&self.b, mono_ns())          # credit earned so far at the old rate
            self.b.rate_bps = rate
            self.b.cap = depth * BUCKET_NBIT_PER_BYTE
            if self.b.credit > self.b.cap:
                self.b.credit = self.b.cap
        self.rate_bps = rate
        self.write_size = write
        self.depth_bytes = depth
        self.notsent_lowat = unsent

    cdef _alloc(self, int64_t size):
        """(Re)allocate the send buffer: PRNG bytes, zeros replaced, so nothing compresses it away."""
        cdef char *buf = <char *>malloc(size)
        cdef uint64_t seed = 0x6e657470726f6265ULL
        cdef int64_t i
        if buf == NULL:
            raise MemoryError()
        np_prng_fill(<uint8_t *>buf, size, &seed)
        for i in range(size):
            if buf[i] == 0:
                buf[i] = <char>0xa5
        free(self.buf)
        self.buf = buf
        self.buf_size = size

    def set_rate(self, rate_bps):
        """Change the rate (bit/s) between run() calls; the bucket keeps its level, clamped to the new depth."""
        if self.running:
            raise RuntimeError("set_rate() while run() is running")
        self._configure(_bit_rate(rate_bps))

    def run(self, int64_t[:, ::1] samples not None, int64_t duration_ns, int64_t sample_every_ns,
            int64_t epoch):
        """Pace for `duration_ns` (ends at the first tick at or after it), GIL released.

        A TCP_INFO row (t_ns, epoch, app_bytes = bytes sent so far, tcp_info
        fields) goes to samples[rows] each time the sample schedule comes
        due: at the first call, then every sample_every_ns on that grid
        (slots that pass during a stall are skipped, not bunched). A row due
        while `samples` is full stays due and is written first in the next
        call. A signal ends the call early (its Python handler runs first).

        Returns this call's SendRun. A failed send (EPIPE, ECONNRESET, ...)
        or TCP_INFO read raises OSError carrying the SendRun so far as
        .result; the error is sticky (.error): every later run raises it.
        """
        cdef sampler_t smp
        cdef int64_t t_start, now, end, due, tick = self.tick_ns
        cdef int64_t avail, n, total = self.bytes_sent
        cdef int64_t ticks = 0, overruns = 0, late = 0, eagain = 0, sent = 0
        cdef uint64_t count = 0
        cdef ssize_t r
        cdef int err = 0, terr = 0, write = <int>self.write_size
        cdef int fd = self.fd
        cdef char *buf = self.buf
        cdef SendRun res = SendRun.__new__(SendRun)
        _sampler_init(&smp, samples, duration_ns, sample_every_ns, epoch)
        if self.timer.fd < 0:
            raise ValueError("TcpPacedSender is closed")
        if self.running:
            raise RuntimeError("run() is already running")
        res.app_bytes = total
        if self.error != 0:
            raise_errno(self.error, "send", res)
        t_start = mono_ns()
        if self.timer.first_ns == 0:
            err = periodic_arm(&self.timer, t_start + tick)
            if err != 0:
                raise_errno(err, "timerfd", res)
            if bucket_init(&self.b, self.rate_bps, self.depth_bytes, t_start) != 0:
                raise ValueError(f"no token bucket of {self.rate_bps} bit/s, {self.depth_bytes} bytes")
            bucket_take(&self.b, self.depth_bytes)      # start empty: no initial burst
            self.next_sample_ns = t_start
        smp.next_ns = self.next_sample_ns
        end = t_start + duration_ns
        now = t_start
        self.running = True
        try:
            with nogil:
                while self.error == 0:
                    err = sample_if_due(&smp, fd, &now, total)
                    if err != 0:
                        break
                    if now >= end:
                        break
                    due = periodic_due(&self.timer, self.timer.expirations + 1)   # the oldest slot served
                    terr = periodic_wait(&self.timer, &count)
                    if terr != 0:
                        break
                    now = mono_ns()
                    ticks += 1
                    overruns += <int64_t>count - 1
                    if now - due > tick:
                        late += 1
                    bucket_refill(&self.b, now)
                    avail = bucket_available(&self.b)
                    while avail > 0:
                        n = write if avail > write else avail
                        r = send(fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL)
                        if r < 0:
                            if errno == EINTR:
                                continue
                            if errno == EAGAIN:                      # == EWOULDBLOCK on Linux
                                eagain += 1
                            else:
                                err = errno
                            break
                        bucket_take(&self.b, r)
                        total += r
                        sent += r
                        avail -= r
                        if r < n:                           # socket buffer full: wait for the next tick
                            break
                    if err != 0:
                        break
                now = mono_ns()
        finally:
            self.running = False
            self.next_sample_ns = smp.next_ns
            self.ticks += ticks
            self.timer_overruns += overruns
            self.late_ticks += late
            self.eagain += eagain
            self.bytes_sent = total
            if err != 0:
                self.error = err
        res.rows, res.ticks, res.timer_overruns, res.late_ticks = smp.n, ticks, overruns, late
        res.eagain, res.bytes_sent, res.app_bytes = eagain, sent, total
        res.elapsed_ns, res.interrupted = now - t_start, terr == EINTR
        if err != 0:
            raise_errno(err, "send", res)
        periodic_raise(terr, res)
        return res


include "pacer/drain.pyx"

# Receive lanes of UdpProbeReceiver: one socket of a SO_REUSEPORT group each, drained by
# its own thread with the GIL released. A classic BPF program on the group sends every
# datagram to socket (port index % lanes), the port index being the 16 bits at OFF_PORT of
# the UDP payload, so one port's state is only ever touched by one lane; what a lane counts
# beyond its ports (datagrams, malformed, per-session totals, the session histogram) is its
# own and merged when read. Lanes run only inside run(); everything else (sessions added,
# intervals closed) happens between run() calls, so nothing is shared while they run.

from libc.stdint cimport uint32_t

from linux cimport close, loop_end, read

from packet cimport sock_filter, sock_fprog

cdef extern from "<linux/filter.h>" nogil:
    enum:
        BPF_LD
        BPF_H
        BPF_ABS
        BPF_ALU
        BPF_MOD
        BPF_K
        BPF_RET
        BPF_A

cdef extern from "<sys/socket.h>" nogil:
    enum:
        SO_ATTACH_REUSEPORT_CBPF

cdef extern from "<sys/eventfd.h>" nogil:
    enum:
        EFD_CLOEXEC
        EFD_NONBLOCK
    int eventfd(unsigned int initval, int flags)

cdef extern from "<unistd.h>" nogil:
    ssize_t write(int fd, const void *buf, size_t count)

cdef extern from "<time.h>" nogil:
    enum:
        CLOCK_THREAD_CPUTIME_ID

cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    enum:
        SIG_SETMASK
    int sigfillset(sigset_t *s)

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t *t, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t t, void **ret)
    int pthread_sigmask(int how, const sigset_t *s, sigset_t *old)

cdef enum:
    MAX_LANES = 64
    CTRL_LEN = 64           # ancillary data per datagram (the RX timestamp)


ctypedef struct rx_counts_t:     # one lane's datagram counters (merged when read)
    int64_t datagrams, malformed, unauthenticated, unknown_session, truncated, no_kernel_ts
    int64_t trace                # path-trace datagrams (TRACE_MAGIC): neither data nor malformed
    int64_t misrouted            # a port index another lane owns (the steering program failed)
    int64_t cpu_ns               # this lane's thread CPU time in run()
    int64_t by[WIRE_TAG_UNEXPECTED + 1]   # malformed by pull_probe_hdr/pull_tag_check result

ctypedef struct lane_t:
    int fd
    int index
    uint8_t *bufs                # BATCH x bufsize
    mmsghdr *msgs
    iovec *iov
    char *ctrl                   # BATCH x CTRL_LEN
    rx_counts_t c

ctypedef struct lane_run_t:      # one lane thread's arguments
    rx_t *rx
    lane_t *lane
    int64_t end
    int stop_fd
    int err
    pthread_t tid


cdef void counts_add(rx_counts_t *into, const rx_counts_t *c) noexcept:
    cdef int i
    into.datagrams += c.datagrams
    into.malformed += c.malformed
    into.unauthenticated += c.unauthenticated
    into.unknown_session += c.unknown_session
    into.truncated += c.truncated
    into.no_kernel_ts += c.no_kernel_ts
    into.trace += c.trace
    into.misrouted += c.misrouted
    into.cpu_ns += c.cpu_ns
    for i in range(WIRE_TAG_UNEXPECTED + 1):
        into.by[i] += c.by[i]


cdef int lane_init(lane_t *ln, int index, int fd, int bufsize) noexcept:
    """Buffers of one lane; -1 when out of memory (lane_free then frees what was taken)."""
    cdef int i
    memset(ln, 0, sizeof(lane_t))
    ln.fd = fd
    ln.index = index
    ln.bufs = <uint8_t *>malloc(<size_t>BATCH * bufsize)
    ln.msgs = <mmsghdr *>calloc(BATCH, sizeof(mmsghdr))
    ln.iov = <iovec *>calloc(BATCH, sizeof(iovec))
    ln.ctrl = <char *>malloc(<size_t>BATCH * CTRL_LEN)
    if ln.bufs == NULL or ln.msgs == NULL or ln.iov == NULL or ln.ctrl == NULL:
        return -1
    for i in range(BATCH):
        ln.iov[i].iov_base = ln.bufs + <size_t>i * bufsize
        ln.iov[i].iov_len = bufsize
        ln.msgs[i].msg_hdr.msg_iov = &ln.iov[i]
        ln.msgs[i].msg_hdr.msg_iovlen = 1
    return 0


cdef void lane_free(lane_t *ln) noexcept:
    free(ln.bufs)
    free(ln.msgs)
    free(ln.iov)
    free(ln.ctrl)


cdef inline int steer_lane(const uint8_t *p, size_t n, int nlanes) noexcept nogil:
    """The lane the steering program picks for a datagram: its port index modulo the lanes;
    lane 0 for one too short to hold the field (the program's load fails and it returns 0)."""
    if n < OFF_PORT + 2:
        return 0
    return load_be16(p + OFF_PORT) % nlanes


cdef int steer_by_port(int fd, int nlanes) except -1:
    """Attach the steering program to the SO_REUSEPORT group of `fd` (the group's sockets
    in the order they were bound are lanes 0, 1, ...)."""
    cdef sock_filter prog[3]
    cdef sock_fprog fp
    prog[0].code, prog[0].jt, prog[0].jf, prog[0].k = BPF_LD | BPF_H | BPF_ABS, 0, 0, OFF_PORT
    prog[1].code, prog[1].jt, prog[1].jf, prog[1].k = BPF_ALU | BPF_MOD | BPF_K, 0, 0, <uint32_t>nlanes
    prog[2].code, prog[2].jt, prog[2].jf, prog[2].k = BPF_RET | BPF_A, 0, 0, 0
    fp.len = 3
    fp.filter = prog
    if setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &fp, sizeof(fp)) != 0:
        PyErr_SetFromErrno(OSError)
    return 0


cdef void lane_drain(lane_run_t *a) noexcept nogil:
    """Receive on one lane's socket until a.end (monotonic ns), a signal (a.err = EINTR) or
    a write to a.stop_fd: poll, then recvmmsg batches until the socket is empty."""
    cdef lane_t *ln = a.lane
    cdef pollfd pfd[2]
    cdef int r, i
    cdef int64_t now, rx, cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID)
    pfd[0].fd = ln.fd
    pfd[0].events = POLLIN
    pfd[1].fd = a.stop_fd
    pfd[1].events = POLLIN
    while True:
        now = mono_ns()
        if now >= a.end:
            break
        pfd[0].revents = 0
        pfd[1].revents = 0
        r = poll(pfd, 2 if a.stop_fd >= 0 else 1, <int>((a.end - now + 999_999) // 1_000_000))
        if r < 0 and errno == EINTR:
            a.err = EINTR
            break
        if r <= 0:
            continue
        if pfd[1].revents:
            break
        while True:
            for i in range(BATCH):
                ln.msgs[i].msg_hdr.msg_control = ln.ctrl + <size_t>i * CTRL_LEN
                ln.msgs[i].msg_hdr.msg_controllen = CTRL_LEN
                ln.msgs[i].msg_hdr.msg_flags = 0
            r = recvmmsg(ln.fd, ln.msgs, BATCH, MSG_DONTWAIT, NULL)
            if r <= 0:
                break
            for i in range(r):
                rx = sw_stamp_ns(&ln.msgs[i].msg_hdr)
                if rx < 0:
                    ln.c.no_kernel_ts += 1
                    rx = clock_ns(CLOCK_REALTIME)
                if ln.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                    ln.c.datagrams += 1
                    ln.c.truncated += 1
                    ln.c.malformed += 1
                    continue
                rx_process(a.rx, ln, <const uint8_t *>ln.iov[i].iov_base, ln.msgs[i].msg_len, rx)
            if r < BATCH:
                break
    ln.c.cpu_ns += clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0


cdef void *lane_thread(void *arg) noexcept nogil:
    lane_drain(<lane_run_t *>arg)
    return NULL


cdef int run_lanes(lane_run_t *runs, int nlanes) noexcept nogil:
    """Lanes 1.. on threads of their own (every signal blocked there, so a signal reaches the
    caller), lane 0 on the caller's; when lane 0 stops early, stop_fd stops the others.
    Returns lane 0's err, or the pthread_create error (lanes started are still joined)."""
    cdef sigset_t all_signals, old
    cdef int k, started = 1, err = 0
    cdef uint64_t one = 1
    sigfillset(&all_signals)
    pthread_sigmask(SIG_SETMASK, &all_signals, &old)
    for k in range(1, nlanes):
        err = pthread_create(&runs[k].tid, NULL, lane_thread, &runs[k])
        if err != 0:
            break
        started += 1
    pthread_sigmask(SIG_SETMASK, &old, NULL)
    if err == 0:
        lane_drain(&runs[0])
        err = runs[0].err
    if started > 1 and (err != 0 or mono_ns() < runs[0].end):
        write(runs[0].stop_fd, &one, sizeof(one))
    for k in range(1, started):
        pthread_join(runs[k].tid, NULL)
    if started > 1:
        read(runs[0].stop_fd, &one, sizeof(one))     # non-blocking: clears a stop, if written
    return err

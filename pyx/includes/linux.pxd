# Linux C declarations shared by the extensions, plus header-only helpers.
#
# Declared here (not cimported from Cython's posix.*) so that every extension
# sees one consistent set of names; the C types are the system headers' own.

from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport int64_t, uint64_t

cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EINTR
        EAGAIN
        EWOULDBLOCK

cdef extern from "<string.h>" nogil:
    char *strerror(int errnum)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    ctypedef int clockid_t

    struct timespec:
        time_t tv_sec
        long tv_nsec

    struct itimerspec:
        timespec it_interval
        timespec it_value

    enum:
        CLOCK_REALTIME
        CLOCK_MONOTONIC
        CLOCK_MONOTONIC_RAW
        CLOCK_BOOTTIME

    int clock_gettime(clockid_t clk, timespec *tp)

cdef extern from "<sys/prctl.h>" nogil:
    enum:
        PR_SET_TIMERSLACK
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    int close(int fd)

cdef extern from "<sys/timerfd.h>" nogil:
    enum:
        TFD_CLOEXEC
        TFD_NONBLOCK
        TFD_TIMER_ABSTIME

    int timerfd_create(clockid_t clockid, int flags)
    int timerfd_settime(int fd, int flags, const itimerspec *new_value,
                        itimerspec *old_value)
    int timerfd_gettime(int fd, itimerspec *curr_value)


cdef inline int raise_errno(int err, str what, object result) except -1:
    """The loops' one error convention, applied at the Python boundary: OSError(err) naming
    `what`, carrying the call's partial result (counts up to the failure) as .result."""
    exc = OSError(err, f"{what}: {strerror(err).decode()}")
    exc.result = result
    raise exc


cdef inline int loop_end(int err, bint interrupted, str what, object result) except -1:
    """How a loop's call ends: raise_errno for a failure, else run the Python handler of a signal
    that interrupted it (which may raise); 0 otherwise."""
    if err != 0:
        raise_errno(err, what, result)
    if interrupted:
        PyErr_CheckSignals()
    return 0


cdef inline int64_t timespec_to_ns(const timespec *ts) noexcept nogil:
    """Nanoseconds in a timespec."""
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline void ns_to_timespec(int64_t ns, timespec *ts) noexcept nogil:
    """Fill a timespec from non-negative nanoseconds."""
    ts.tv_sec = <time_t>(ns // 1000000000)
    ts.tv_nsec = <long>(ns % 1000000000)


cdef inline int64_t clock_ns(clockid_t clk) noexcept nogil:
    """Current time of `clk` in nanoseconds (-1 if the clock is unavailable)."""
    cdef timespec ts
    if clock_gettime(clk, &ts) != 0:
        return -1
    return timespec_to_ns(&ts)


cdef inline int64_t mono_ns() noexcept nogil:
    """CLOCK_MONOTONIC in nanoseconds: the one clock the hot loops read."""
    return clock_ns(CLOCK_MONOTONIC)


# Sockets: the TCP paced sender and drain (pacer.pyx) and TCP_INFO (tcpinfo.pxd).

cdef extern from "<time.h>" nogil:
    enum:
        TIMER_ABSTIME

    int clock_nanosleep(int clk, int flags, const timespec *request, timespec *remain)

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t

    enum:
        SOL_SOCKET
        SO_MAX_PACING_RATE
        SO_TYPE
        SO_RCVBUF
        SO_SNDBUF
        SO_RCVBUFFORCE
        SO_SNDBUFFORCE
        SO_TIMESTAMPING
        SCM_TIMESTAMPING
        SOCK_DGRAM
        MSG_ERRQUEUE
        MSG_DONTWAIT
        MSG_NOSIGNAL
        MSG_TRUNC
        MSG_CTRUNC

    ssize_t send(int sockfd, const void *buf, size_t len, int flags)
    ssize_t recv(int sockfd, void *buf, size_t len, int flags)
    int getsockopt(int sockfd, int level, int optname, void *optval, socklen_t *optlen)
    int setsockopt(int sockfd, int level, int optname, const void *optval, socklen_t optlen)

    # Batched datagram I/O with ancillary data (udpio.pyx, train.pyx): kernel RX timestamps.
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len

    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type

    cmsghdr *CMSG_FIRSTHDR(msghdr *msgh)
    cmsghdr *CMSG_NXTHDR(msghdr *msgh, cmsghdr *cmsg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)
    size_t CMSG_SPACE(size_t length)

    ssize_t recvmsg(int sockfd, msghdr *msg, int flags)
    int sendmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags)
    int recvmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags, timespec *timeout)

# Kernel software timestamps (udpio.pyx, train.pyx). TX: from the driver, read
# from the socket's error queue with the packet they belong to. RX: taken as
# the packet enters the stack, read with the packet.
cdef extern from "<linux/net_tstamp.h>" nogil:
    enum:
        SOF_TIMESTAMPING_TX_SOFTWARE
        SOF_TIMESTAMPING_RX_SOFTWARE
        SOF_TIMESTAMPING_SOFTWARE

# RX stamps are asked for with SO_TIMESTAMPING, not SO_TIMESTAMPNS. The kernel
# turns RX stamping on for the whole host only when the first socket asks, and
# from a deferred work item: a packet that arrives before that work has run is
# not stamped. Under SO_TIMESTAMPNS recvmsg then stamps it with the time of
# the read, indistinguishable from a real arrival time (a CI run saw a train's
# first two packets stamped after the two trains sent later); under
# SO_TIMESTAMPING it comes with no stamp, so the caller sees that and counts it.
cdef inline int rx_stamps_on(int fd) noexcept nogil:
    """Ask for kernel RX software stamps on fd; 0, or -1 with errno."""
    cdef int flags = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
    return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof(flags))


cdef inline int64_t sw_stamp_ns(msghdr *mh) noexcept nogil:
    """The kernel software stamp (CLOCK_REALTIME ns) in a message's SCM_TIMESTAMPING control
    data: its RX time, or for one read from the error queue its TX time; -1 if none."""
    cdef cmsghdr *c = CMSG_FIRSTHDR(mh)
    cdef timespec *ts
    while c != NULL:
        if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPING:
            ts = <timespec *>CMSG_DATA(c)              # [0] software, [2] hardware
            if ts[0].tv_sec or ts[0].tv_nsec:
                return timespec_to_ns(ts)
        c = CMSG_NXTHDR(mh, c)
    return -1

cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP

cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_INFO
        TCP_NOTSENT_LOWAT
        TCP_QUICKACK

cdef extern from "<poll.h>" nogil:
    ctypedef unsigned long nfds_t

    struct pollfd:
        int fd
        short events
        short revents

    enum:
        POLLIN

    int poll(pollfd *fds, nfds_t nfds, int timeout)


cdef inline pollfd poll_in(int fd) noexcept nogil:
    """A pollfd that waits for `fd` to be readable."""
    cdef pollfd p
    p.fd = fd
    p.events = POLLIN
    p.revents = 0
    return p


cdef inline int poll_ns(pollfd *fds, nfds_t n, int64_t wait_ns, int *err, int *intr) noexcept nogil:
    """poll() for up to wait_ns (> 0), rounded up to whole ms: > 0 ready, 0 timed out, or -1
    to end the caller's loop: a signal arrived (*intr = EINTR) or poll failed (*err = errno)."""
    cdef int r = poll(fds, n, <int>((wait_ns + 999_999) // 1_000_000))
    if r < 0:
        if errno == EINTR:
            intr[0] = EINTR
        else:
            err[0] = errno
    return r

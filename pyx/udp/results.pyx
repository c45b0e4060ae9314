# What one run() call of the oneway sender and receiver returns: read-only fields, no
# errors inside (a call's bad arguments raise before it starts; a signal ends it early
# and, when its Python handler raises, that exception leaves run()).

cdef class SendResult:
    """One UdpProbeSender.run() call: probes the kernel took, refused (send_errors), skipped
    after a stall (missed), send-time errors written to late_out (late), its length."""
    cdef readonly int64_t sent, send_errors, missed, late, elapsed_ns
    cdef readonly bint interrupted

    @staticmethod
    cdef SendResult make(int64_t sent, int64_t send_errors, int64_t missed, int64_t late, int64_t elapsed_ns,
                         bint interrupted):
        cdef SendResult r = SendResult.__new__(SendResult)
        r.sent, r.send_errors, r.missed, r.late = sent, send_errors, missed, late
        r.elapsed_ns, r.interrupted = elapsed_ns, interrupted
        return r

    def __repr__(self):
        return (f"SendResult(sent={self.sent}, send_errors={self.send_errors}, missed={self.missed}, "
                f"late={self.late}, elapsed_ns={self.elapsed_ns}, interrupted={self.interrupted})")


cdef class RecvResult:
    """One UdpProbeReceiver.run() call: datagrams read (each counted once in the receiver's
    counters) and its length."""
    cdef readonly int64_t datagrams, elapsed_ns
    cdef readonly bint interrupted

    @staticmethod
    cdef RecvResult make(int64_t datagrams, int64_t elapsed_ns, bint interrupted):
        cdef RecvResult r = RecvResult.__new__(RecvResult)
        r.datagrams, r.elapsed_ns, r.interrupted = datagrams, elapsed_ns, interrupted
        return r

    def __repr__(self):
        return f"RecvResult(datagrams={self.datagrams}, elapsed_ns={self.elapsed_ns}, interrupted={self.interrupted})"

# struct tcp_info with the kernel's field names and layout (Linux 6.18 uapi,
# spelled out in tcp_info.h with its offsets asserted), and the helper that
# turns one TCP_INFO reading into a throughput sample row, on a sample schedule.
#
# Debian 12's <linux/tcp.h> (6.1) stops at tcpi_snd_wnd, while 6.18 returns
# 280 bytes. The kernel only ever appends fields and copies min(its length,
# ours), so an older kernel leaves the tail zero and a newer one is cut at our
# end; nothing moves.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

from linux cimport errno, getsockopt, mono_ns, socklen_t, IPPROTO_TCP, TCP_INFO

cdef extern from "tcp_info.h":
    # Bit-fields are declared as whole uint8_t here: Cython only reads them by
    # name, and the C compiler does the masking.
    ctypedef struct tcp_info "struct netprobe_tcp_info":
        uint8_t tcpi_state
        uint8_t tcpi_ca_state
        uint8_t tcpi_retransmits
        uint8_t tcpi_probes
        uint8_t tcpi_backoff
        uint8_t tcpi_options
        uint8_t tcpi_snd_wscale
        uint8_t tcpi_rcv_wscale
        uint8_t tcpi_delivery_rate_app_limited
        uint8_t tcpi_fastopen_client_fail
        uint32_t tcpi_rto
        uint32_t tcpi_ato
        uint32_t tcpi_snd_mss
        uint32_t tcpi_rcv_mss
        uint32_t tcpi_unacked
        uint32_t tcpi_sacked
        uint32_t tcpi_lost
        uint32_t tcpi_retrans
        uint32_t tcpi_fackets
        uint32_t tcpi_last_data_sent
        uint32_t tcpi_last_ack_sent
        uint32_t tcpi_last_data_recv
        uint32_t tcpi_last_ack_recv
        uint32_t tcpi_pmtu
        uint32_t tcpi_rcv_ssthresh
        uint32_t tcpi_rtt
        uint32_t tcpi_rttvar
        uint32_t tcpi_snd_ssthresh
        uint32_t tcpi_snd_cwnd
        uint32_t tcpi_advmss
        uint32_t tcpi_reordering
        uint32_t tcpi_rcv_rtt
        uint32_t tcpi_rcv_space
        uint32_t tcpi_total_retrans
        uint64_t tcpi_pacing_rate
        uint64_t tcpi_max_pacing_rate
        uint64_t tcpi_bytes_acked
        uint64_t tcpi_bytes_received
        uint32_t tcpi_segs_out
        uint32_t tcpi_segs_in
        uint32_t tcpi_notsent_bytes
        uint32_t tcpi_min_rtt
        uint32_t tcpi_data_segs_in
        uint32_t tcpi_data_segs_out
        uint64_t tcpi_delivery_rate
        uint64_t tcpi_busy_time
        uint64_t tcpi_rwnd_limited
        uint64_t tcpi_sndbuf_limited
        uint32_t tcpi_delivered
        uint32_t tcpi_delivered_ce
        uint64_t tcpi_bytes_sent
        uint64_t tcpi_bytes_retrans
        uint32_t tcpi_dsack_dups
        uint32_t tcpi_reord_seen
        uint32_t tcpi_rcv_ooopack
        uint32_t tcpi_snd_wnd
        uint32_t tcpi_rcv_wnd
        uint32_t tcpi_rehash
        uint16_t tcpi_total_rto
        uint16_t tcpi_total_rto_recoveries
        uint32_t tcpi_total_rto_time
        uint32_t tcpi_received_ce
        uint32_t tcpi_delivered_e1_bytes
        uint32_t tcpi_delivered_e0_bytes
        uint32_t tcpi_delivered_ce_bytes
        uint32_t tcpi_received_e1_bytes
        uint32_t tcpi_received_e0_bytes
        uint32_t tcpi_received_ce_bytes
        uint16_t tcpi_accecn_fail_mode
        uint16_t tcpi_accecn_opt_seen


# Sample row layout: netprobe/probes/throughput/samples.py SAMPLE_COLUMNS,
# which pacer.pyx exports as SAMPLE_COLUMNS (a test checks they agree).
cdef enum:
    SAMPLE_NCOLS = 18


cdef inline int tcp_info_read(int fd, tcp_info *ti) noexcept nogil:
    """Read TCP_INFO of socket `fd` into *ti; 0, or errno.

    Zeroed first, so fields the running kernel does not have read as 0.
    """
    cdef socklen_t n = sizeof(tcp_info)
    memset(ti, 0, sizeof(tcp_info))
    if getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &n) != 0:
        return errno
    return 0


cdef inline int64_t tcpi_u64(uint64_t v) noexcept nogil:
    """A kernel u64 as int64; ~0 ("unlimited", as tcpi_pacing_rate says it) and
    anything else above INT64_MAX become -1."""
    if v > <uint64_t>0x7fffffffffffffff:
        return -1
    return <int64_t>v


cdef inline int tcp_info_fill_row(int fd, int64_t *row, int64_t t_ns, int64_t epoch,
                                  int64_t app_bytes) noexcept nogil:
    """Read TCP_INFO of `fd` into row[0:SAMPLE_NCOLS] in SAMPLE_COLUMNS order.

    Returns 0, or errno with the row left untouched.
    """
    cdef tcp_info ti
    cdef int err = tcp_info_read(fd, &ti)
    if err != 0:
        return err
    row[0] = t_ns
    row[1] = epoch
    row[2] = app_bytes
    row[3] = tcpi_u64(ti.tcpi_bytes_acked)
    row[4] = tcpi_u64(ti.tcpi_bytes_received)
    row[5] = tcpi_u64(ti.tcpi_delivery_rate)
    row[6] = ti.tcpi_rtt
    row[7] = ti.tcpi_rttvar
    row[8] = ti.tcpi_min_rtt
    row[9] = ti.tcpi_snd_cwnd
    row[10] = ti.tcpi_total_retrans
    row[11] = tcpi_u64(ti.tcpi_bytes_retrans)
    row[12] = ti.tcpi_dsack_dups
    row[13] = tcpi_u64(ti.tcpi_busy_time)
    row[14] = tcpi_u64(ti.tcpi_rwnd_limited)
    row[15] = tcpi_u64(ti.tcpi_sndbuf_limited)
    row[16] = tcpi_u64(ti.tcpi_pacing_rate)
    row[17] = ti.tcpi_snd_mss
    return 0


ctypedef struct sampler_t:
    # the sample rows of one run() call (TcpPacedSender, TcpDrain): a row comes due every
    # every_ns on the grid of next_ns; slots that pass during a stall are skipped, not bunched
    int64_t *rows                # the caller's buffer of cap rows of SAMPLE_NCOLS
    Py_ssize_t cap
    Py_ssize_t n                 # rows written
    int64_t next_ns              # monotonic ns the next row is due
    int64_t every_ns
    int64_t epoch


cdef inline int64_t sample_next_due(int64_t due, int64_t every, int64_t now) noexcept nogil:
    """The first slot of the grid due + k*every (k >= 1) after `now`: late rows skip, never bunch."""
    due += every
    if due <= now:
        due += ((now - due) // every + 1) * every
    return due


cdef inline int sample_if_due(sampler_t *s, int fd, int64_t *now, int64_t app_bytes) noexcept nogil:
    """If a row is due at *now and there is room: read the clock again into *now, write the
    row (TCP_INFO of `fd` at that time) and move the schedule on. 0, or errno (no row)."""
    cdef int err
    if now[0] < s.next_ns or s.n >= s.cap:
        return 0
    now[0] = mono_ns()
    err = tcp_info_fill_row(fd, s.rows + s.n * SAMPLE_NCOLS, now[0], s.epoch, app_bytes)
    if err == 0:
        s.n += 1
        s.next_ns = sample_next_due(s.next_ns, s.every_ns, now[0])
    return err

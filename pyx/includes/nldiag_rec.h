/* netprobe._nldiag's record: one socket of an inet_diag dump, and the table of its fields
   (name, numpy format, offset) from which RECORD_DTYPE is built. */
#ifndef NETPROBE_NLDIAG_REC_H
#define NETPROBE_NLDIAG_REC_H
#include "tcp_info.h"
#include <stddef.h>
#include <stdint.h>
/* One socket of a dump. Kernel names; ports in host order, addresses in
   network order (IPv4 in the first 4 bytes), cookie = cookie[0] | cookie[1] << 32. */
struct nldiag_rec {
    int64_t  t_ns;                /* CLOCK_MONOTONIC after the recv() that returned it */
    uint64_t idiag_cookie;
    uint8_t  idiag_family;
    uint8_t  idiag_state;
    uint8_t  idiag_timer;
    uint8_t  idiag_retrans;
    uint16_t idiag_sport;
    uint16_t idiag_dport;
    uint8_t  idiag_src[16];
    uint8_t  idiag_dst[16];
    uint32_t idiag_if;
    uint32_t idiag_expires;
    uint32_t idiag_rqueue;
    uint32_t idiag_wqueue;
    uint32_t idiag_uid;
    uint32_t idiag_inode;
    uint16_t info_len;            /* bytes of tcp_info the kernel sent (0: none); fields past it read 0 */
    uint8_t  has_bbr;
    uint8_t  has_skmem;
    char     ca_name[16];         /* INET_DIAG_CONG, NUL-padded */
    uint64_t bbr_bw;              /* bytes/s: bbr_bw_hi << 32 | bbr_bw_lo */
    uint32_t bbr_min_rtt;
    uint32_t bbr_pacing_gain;
    uint32_t bbr_cwnd_gain;
    uint32_t skmem_rmem_alloc;    /* INET_DIAG_SKMEMINFO, SK_MEMINFO_* order */
    uint32_t skmem_rcvbuf;
    uint32_t skmem_wmem_alloc;
    uint32_t skmem_sndbuf;
    uint32_t skmem_fwd_alloc;
    uint32_t skmem_wmem_queued;
    uint32_t skmem_optmem;
    uint32_t skmem_backlog;
    uint32_t skmem_drops;
    uint32_t pad0;
    struct netprobe_tcp_info tcpi;
};
_Static_assert(offsetof(struct nldiag_rec, tcpi) % 8 == 0, "tcp_info not 8-aligned");
_Static_assert(offsetof(struct nldiag_rec, skmem_drops) == offsetof(struct nldiag_rec, skmem_rmem_alloc) + 32,
               "skmem_* must be 9 consecutive u32 (parse_attrs fills them as an array)");
typedef struct { const char *name; const char *fmt; size_t offset; } nldiag_field;
#define NLF(f, fmt) {#f, fmt, offsetof(struct nldiag_rec, f)}
#define NLT(f, fmt) {#f, fmt, offsetof(struct nldiag_rec, tcpi) + offsetof(struct netprobe_tcp_info, f)}
static const nldiag_field nldiag_fields[] = {
    NLF(t_ns, "<i8"), NLF(idiag_cookie, "<u8"),
    NLF(idiag_family, "u1"), NLF(idiag_state, "u1"), NLF(idiag_timer, "u1"), NLF(idiag_retrans, "u1"),
    NLF(idiag_sport, "<u2"), NLF(idiag_dport, "<u2"), NLF(idiag_src, "V16"), NLF(idiag_dst, "V16"),
    NLF(idiag_if, "<u4"), NLF(idiag_expires, "<u4"), NLF(idiag_rqueue, "<u4"), NLF(idiag_wqueue, "<u4"),
    NLF(idiag_uid, "<u4"), NLF(idiag_inode, "<u4"), NLF(info_len, "<u2"), NLF(has_bbr, "u1"),
    NLF(has_skmem, "u1"), NLF(ca_name, "S16"), NLF(bbr_bw, "<u8"), NLF(bbr_min_rtt, "<u4"),
    NLF(bbr_pacing_gain, "<u4"), NLF(bbr_cwnd_gain, "<u4"),
    NLF(skmem_rmem_alloc, "<u4"), NLF(skmem_rcvbuf, "<u4"), NLF(skmem_wmem_alloc, "<u4"),
    NLF(skmem_sndbuf, "<u4"), NLF(skmem_fwd_alloc, "<u4"), NLF(skmem_wmem_queued, "<u4"),
    NLF(skmem_optmem, "<u4"), NLF(skmem_backlog, "<u4"), NLF(skmem_drops, "<u4"),
    NLT(tcpi_state, "u1"), NLT(tcpi_ca_state, "u1"), NLT(tcpi_retransmits, "u1"), NLT(tcpi_probes, "u1"),
    NLT(tcpi_backoff, "u1"), NLT(tcpi_options, "u1"),
    NLT(tcpi_rto, "<u4"), NLT(tcpi_ato, "<u4"), NLT(tcpi_snd_mss, "<u4"), NLT(tcpi_rcv_mss, "<u4"),
    NLT(tcpi_unacked, "<u4"), NLT(tcpi_sacked, "<u4"), NLT(tcpi_lost, "<u4"), NLT(tcpi_retrans, "<u4"),
    NLT(tcpi_fackets, "<u4"), NLT(tcpi_last_data_sent, "<u4"), NLT(tcpi_last_ack_sent, "<u4"),
    NLT(tcpi_last_data_recv, "<u4"), NLT(tcpi_last_ack_recv, "<u4"), NLT(tcpi_pmtu, "<u4"),
    NLT(tcpi_rcv_ssthresh, "<u4"), NLT(tcpi_rtt, "<u4"), NLT(tcpi_rttvar, "<u4"),
    NLT(tcpi_snd_ssthresh, "<u4"), NLT(tcpi_snd_cwnd, "<u4"), NLT(tcpi_advmss, "<u4"),
    NLT(tcpi_reordering, "<u4"), NLT(tcpi_rcv_rtt, "<u4"), NLT(tcpi_rcv_space, "<u4"),
    NLT(tcpi_total_retrans, "<u4"), NLT(tcpi_pacing_rate, "<u8"), NLT(tcpi_max_pacing_rate, "<u8"),
    NLT(tcpi_bytes_acked, "<u8"), NLT(tcpi_bytes_received, "<u8"), NLT(tcpi_segs_out, "<u4"),
    NLT(tcpi_segs_in, "<u4"), NLT(tcpi_notsent_bytes, "<u4"), NLT(tcpi_min_rtt, "<u4"),
    NLT(tcpi_data_segs_in, "<u4"), NLT(tcpi_data_segs_out, "<u4"), NLT(tcpi_delivery_rate, "<u8"),
    NLT(tcpi_busy_time, "<u8"), NLT(tcpi_rwnd_limited, "<u8"), NLT(tcpi_sndbuf_limited, "<u8"),
    NLT(tcpi_delivered, "<u4"), NLT(tcpi_delivered_ce, "<u4"), NLT(tcpi_bytes_sent, "<u8"),
    NLT(tcpi_bytes_retrans, "<u8"), NLT(tcpi_dsack_dups, "<u4"), NLT(tcpi_reord_seen, "<u4"),
    NLT(tcpi_rcv_ooopack, "<u4"), NLT(tcpi_snd_wnd, "<u4"), NLT(tcpi_rcv_wnd, "<u4"),
    NLT(tcpi_rehash, "<u4"), NLT(tcpi_total_rto, "<u2"), NLT(tcpi_total_rto_recoveries, "<u2"),
    NLT(tcpi_total_rto_time, "<u4"), NLT(tcpi_received_ce, "<u4"),
};
#define NLDIAG_NFIELDS (sizeof(nldiag_fields) / sizeof(nldiag_fields[0]))
#endif

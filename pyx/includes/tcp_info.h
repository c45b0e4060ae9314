/* struct tcp_info with the kernel's field names and layout (Linux 6.18 uapi <linux/tcp.h>).
   Spelled out rather than taken from <linux/tcp.h>: Debian 12's header (6.1) stops at
   tcpi_snd_wnd. The asserts pin the offsets, so a typo cannot shift a field. */
#ifndef NETPROBE_TCP_INFO_H
#define NETPROBE_TCP_INFO_H
#include <stddef.h>
#include <stdint.h>
struct netprobe_tcp_info {
    uint8_t  tcpi_state;
    uint8_t  tcpi_ca_state;
    uint8_t  tcpi_retransmits;
    uint8_t  tcpi_probes;
    uint8_t  tcpi_backoff;
    uint8_t  tcpi_options;
    uint8_t  tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4;
    uint8_t  tcpi_delivery_rate_app_limited : 1, tcpi_fastopen_client_fail : 2;

    uint32_t tcpi_rto;
    uint32_t tcpi_ato;
    uint32_t tcpi_snd_mss;
    uint32_t tcpi_rcv_mss;

    uint32_t tcpi_unacked;
    uint32_t tcpi_sacked;
    uint32_t tcpi_lost;
    uint32_t tcpi_retrans;
    uint32_t tcpi_fackets;

    uint32_t tcpi_last_data_sent;
    uint32_t tcpi_last_ack_sent;
    uint32_t tcpi_last_data_recv;
    uint32_t tcpi_last_ack_recv;

    uint32_t tcpi_pmtu;
    uint32_t tcpi_rcv_ssthresh;
    uint32_t tcpi_rtt;
    uint32_t tcpi_rttvar;
    uint32_t tcpi_snd_ssthresh;
    uint32_t tcpi_snd_cwnd;
    uint32_t tcpi_advmss;
    uint32_t tcpi_reordering;

    uint32_t tcpi_rcv_rtt;
    uint32_t tcpi_rcv_space;

    uint32_t tcpi_total_retrans;

    uint64_t tcpi_pacing_rate;
    uint64_t tcpi_max_pacing_rate;
    uint64_t tcpi_bytes_acked;
    uint64_t tcpi_bytes_received;
    uint32_t tcpi_segs_out;
    uint32_t tcpi_segs_in;

    uint32_t tcpi_notsent_bytes;
    uint32_t tcpi_min_rtt;
    uint32_t tcpi_data_segs_in;
    uint32_t tcpi_data_segs_out;

    uint64_t tcpi_delivery_rate;

    uint64_t tcpi_busy_time;
    uint64_t tcpi_rwnd_limited;
    uint64_t tcpi_sndbuf_limited;

    uint32_t tcpi_delivered;
    uint32_t tcpi_delivered_ce;

    uint64_t tcpi_bytes_sent;
    uint64_t tcpi_bytes_retrans;
    uint32_t tcpi_dsack_dups;
    uint32_t tcpi_reord_seen;

    uint32_t tcpi_rcv_ooopack;

    uint32_t tcpi_snd_wnd;
    uint32_t tcpi_rcv_wnd;

    uint32_t tcpi_rehash;

    uint16_t tcpi_total_rto;
    uint16_t tcpi_total_rto_recoveries;
    uint32_t tcpi_total_rto_time;

    uint32_t tcpi_received_ce;
    uint32_t tcpi_delivered_e1_bytes;
    uint32_t tcpi_delivered_e0_bytes;
    uint32_t tcpi_delivered_ce_bytes;
    uint32_t tcpi_received_e1_bytes;
    uint32_t tcpi_received_e0_bytes;
    uint32_t tcpi_received_ce_bytes;
    uint16_t tcpi_accecn_fail_mode;
    uint16_t tcpi_accecn_opt_seen;
};
#define NETPROBE_TCPI_AT(f, off) _Static_assert(offsetof(struct netprobe_tcp_info, f) == (off), #f " moved")
NETPROBE_TCPI_AT(tcpi_rto, 8);
NETPROBE_TCPI_AT(tcpi_snd_mss, 16);
NETPROBE_TCPI_AT(tcpi_last_data_sent, 44);
NETPROBE_TCPI_AT(tcpi_rtt, 68);
NETPROBE_TCPI_AT(tcpi_snd_cwnd, 80);
NETPROBE_TCPI_AT(tcpi_total_retrans, 100);
NETPROBE_TCPI_AT(tcpi_pacing_rate, 104);
NETPROBE_TCPI_AT(tcpi_bytes_acked, 120);
NETPROBE_TCPI_AT(tcpi_bytes_received, 128);
NETPROBE_TCPI_AT(tcpi_min_rtt, 148);
NETPROBE_TCPI_AT(tcpi_delivery_rate, 160);
NETPROBE_TCPI_AT(tcpi_busy_time, 168);
NETPROBE_TCPI_AT(tcpi_sndbuf_limited, 184);
NETPROBE_TCPI_AT(tcpi_delivered, 192);
NETPROBE_TCPI_AT(tcpi_bytes_sent, 200);
NETPROBE_TCPI_AT(tcpi_bytes_retrans, 208);
NETPROBE_TCPI_AT(tcpi_dsack_dups, 216);
NETPROBE_TCPI_AT(tcpi_snd_wnd, 228);
NETPROBE_TCPI_AT(tcpi_rcv_wnd, 232);
NETPROBE_TCPI_AT(tcpi_total_rto, 240);
NETPROBE_TCPI_AT(tcpi_total_rto_time, 244);
NETPROBE_TCPI_AT(tcpi_received_ce, 248);
NETPROBE_TCPI_AT(tcpi_received_ce_bytes, 272);
NETPROBE_TCPI_AT(tcpi_accecn_opt_seen, 278);
_Static_assert(sizeof(struct netprobe_tcp_info) == 280, "struct tcp_info is not 280 bytes");
#endif

/* Netlink sock_diag (inet_diag) layouts with the kernel's names, from the uapi headers
   <linux/sock_diag.h> and <linux/inet_diag.h>, spelled out; sizes asserted. */
#ifndef NETPROBE_INET_DIAG_H
#define NETPROBE_INET_DIAG_H
#include <stddef.h>
#include <stdint.h>
#include <linux/netlink.h>
#ifndef NETLINK_SOCK_DIAG
#define NETLINK_SOCK_DIAG 4
#endif
/* <linux/sock_diag.h>, <linux/inet_diag.h> (uapi), spelled out */
#define NETPROBE_SOCK_DIAG_BY_FAMILY 20
#define NETPROBE_TCPDIAG_GETSOCK 18      /* the pre-sock_diag request: one walk, both families */
struct netprobe_inet_diag_sockid {
    uint16_t idiag_sport;      /* __be16 */
    uint16_t idiag_dport;      /* __be16 */
    uint32_t idiag_src[4];     /* __be32 */
    uint32_t idiag_dst[4];
    uint32_t idiag_if;
    uint32_t idiag_cookie[2];
};
struct netprobe_inet_diag_req_v2 {
    uint8_t  sdiag_family;
    uint8_t  sdiag_protocol;
    uint8_t  idiag_ext;
    uint8_t  pad;
    uint32_t idiag_states;
    struct netprobe_inet_diag_sockid id;
};
struct netprobe_inet_diag_msg {
    uint8_t  idiag_family;
    uint8_t  idiag_state;
    uint8_t  idiag_timer;
    uint8_t  idiag_retrans;
    struct netprobe_inet_diag_sockid id;
    uint32_t idiag_expires;
    uint32_t idiag_rqueue;
    uint32_t idiag_wqueue;
    uint32_t idiag_uid;
    uint32_t idiag_inode;
};
struct netprobe_tcp_bbr_info {
    uint32_t bbr_bw_lo;
    uint32_t bbr_bw_hi;
    uint32_t bbr_min_rtt;
    uint32_t bbr_pacing_gain;
    uint32_t bbr_cwnd_gain;
};
_Static_assert(sizeof(struct nlmsghdr) == 16, "nlmsghdr");
_Static_assert(sizeof(struct netprobe_inet_diag_sockid) == 48, "inet_diag_sockid");
_Static_assert(sizeof(struct netprobe_inet_diag_req_v2) == 56, "inet_diag_req_v2");
_Static_assert(sizeof(struct netprobe_inet_diag_msg) == 72, "inet_diag_msg");
_Static_assert(sizeof(struct netprobe_tcp_bbr_info) == 20, "tcp_bbr_info");
#endif

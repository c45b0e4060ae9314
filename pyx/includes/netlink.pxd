# Netlink sock_diag (inet_diag) declarations with the kernel's names, from the
# uapi headers <linux/netlink.h>, <linux/sock_diag.h>, <linux/inet_diag.h>.
#
# The message layouts are spelled out in inet_diag.h (sizes asserted at compile
# time), not taken from the system headers. The parser copies a struct out of
# a byte buffer only after checking its length; the load_host helpers read one
# field (host byte order, any alignment: netlink is host-endian).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    enum:
        AF_INET
        AF_INET6
        AF_NETLINK
        SOCK_DGRAM
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_RCVBUF
        SO_RCVTIMEO
        MSG_TRUNC
    int socket(int domain, int type, int protocol)
    int bind(int sockfd, const sockaddr *addr, unsigned int addrlen)
    int connect(int sockfd, const sockaddr *addr, unsigned int addrlen)

cdef extern from "<sys/time.h>" nogil:
    struct timeval:
        long tv_sec
        long tv_usec

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t ntohs(uint16_t v)

cdef extern from "inet_diag.h":
    enum:
        NETLINK_SOCK_DIAG
        SOCK_DIAG_BY_FAMILY "NETPROBE_SOCK_DIAG_BY_FAMILY"
        TCPDIAG_GETSOCK "NETPROBE_TCPDIAG_GETSOCK"
        NLM_F_REQUEST
        NLM_F_DUMP
        NLM_F_DUMP_INTR
        NLMSG_NOOP
        NLMSG_ERROR
        NLMSG_DONE
        NLMSG_OVERRUN

    struct sockaddr_nl:
        sa_family_t nl_family
        unsigned short nl_pad
        uint32_t nl_pid
        uint32_t nl_groups

    struct nlmsghdr:
        uint32_t nlmsg_len
        uint16_t nlmsg_type
        uint16_t nlmsg_flags
        uint32_t nlmsg_seq
        uint32_t nlmsg_pid

    ctypedef struct inet_diag_sockid "struct netprobe_inet_diag_sockid":
        uint16_t idiag_sport
        uint16_t idiag_dport
        uint32_t idiag_src[4]
        uint32_t idiag_dst[4]
        uint32_t idiag_if
        uint32_t idiag_cookie[2]

    ctypedef struct inet_diag_req_v2 "struct netprobe_inet_diag_req_v2":
        uint8_t sdiag_family
        uint8_t sdiag_protocol
        uint8_t idiag_ext
        uint8_t pad
        uint32_t idiag_states
        inet_diag_sockid id

    ctypedef struct inet_diag_msg "struct netprobe_inet_diag_msg":
        uint8_t idiag_family
        uint8_t idiag_state
        uint8_t idiag_timer
        uint8_t idiag_retrans
        inet_diag_sockid id
        uint32_t idiag_expires
        uint32_t idiag_rqueue
        uint32_t idiag_wqueue
        uint32_t idiag_uid
        uint32_t idiag_inode

    ctypedef struct tcp_bbr_info "struct netprobe_tcp_bbr_info":
        uint32_t bbr_bw_lo
        uint32_t bbr_bw_hi
        uint32_t bbr_min_rtt
        uint32_t bbr_pacing_gain
        uint32_t bbr_cwnd_gain


# enum { INET_DIAG_NONE, INET_DIAG_MEMINFO, INET_DIAG_INFO, INET_DIAG_VEGASINFO,
#        INET_DIAG_CONG, ..., INET_DIAG_SKMEMINFO = 7, ..., INET_DIAG_BBRINFO = 16 }
cdef enum:
    INET_DIAG_REQ_BYTECODE = 1
    INET_DIAG_MEMINFO = 1
    INET_DIAG_INFO = 2
    INET_DIAG_VEGASINFO = 3
    INET_DIAG_CONG = 4
    INET_DIAG_SKMEMINFO = 7
    INET_DIAG_BBRINFO = 16
    SK_MEMINFO_VARS = 9          # rmem_alloc rcvbuf wmem_alloc sndbuf fwd_alloc wmem_queued optmem backlog drops
    NLMSG_HDRLEN = 16
    NLA_HDRLEN = 4               # struct rtattr / nlattr: u16 len, u16 type
    INET_DIAG_MSG_LEN = 72
    INET_DIAG_REQ_V2_LEN = 56


cdef inline uint64_t nl_align(uint64_t n) noexcept nogil:
    """NLMSG_ALIGN / RTA_ALIGN: round up to 4. 64-bit, so a u32 length near 2**32 cannot wrap
    to 0 (the parsers step by it: a step of 0 would never end)."""
    return (n + 3) & ~(<uint64_t>3)


cdef inline uint16_t load_host16(const uint8_t *p) noexcept nogil:
    """Host-order u16 at p (any alignment); the caller has checked 2 bytes remain."""
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef inline uint32_t load_host32(const uint8_t *p) noexcept nogil:
    """Host-order u32 at p (any alignment); the caller has checked 4 bytes remain."""
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


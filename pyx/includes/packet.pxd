# AF_PACKET receive ring (TPACKET_V3) declarations with the kernel's names,
# from <linux/if_packet.h>, <linux/filter.h>, <linux/if_ether.h> and
# <sys/mman.h>; only the fields pcapread.pyx reads.

from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef extern from "<sys/socket.h>" nogil:
    enum:
        AF_PACKET
        SOCK_DGRAM
        SOCK_CLOEXEC
        SOL_SOCKET
        SOL_PACKET
        SO_ATTACH_FILTER
    struct sockaddr:
        unsigned short sa_family
    int socket(int domain, int type, int protocol)
    int bind(int sockfd, const sockaddr *addr, unsigned int addrlen)
    int setsockopt(int sockfd, int level, int optname, const void *optval, unsigned int optlen)
    int getsockopt(int sockfd, int level, int optname, void *optval, unsigned int *optlen)

cdef extern from "<sys/mman.h>" nogil:
    enum:
        PROT_READ
        PROT_WRITE
        MAP_SHARED
    void *MAP_FAILED
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t htons(uint16_t v)

cdef extern from "<linux/if_ether.h>" nogil:
    enum:
        ETH_P_ALL

cdef extern from "<linux/filter.h>" nogil:
    struct sock_filter:
        uint16_t code
        uint8_t jt
        uint8_t jf
        uint32_t k
    struct sock_fprog:
        unsigned short len
        sock_filter *filter

cdef extern from "<linux/if_packet.h>" nogil:
    enum:
        PACKET_VERSION
        PACKET_RX_RING
        PACKET_STATISTICS
        PACKET_IGNORE_OUTGOING
        TPACKET_V3
        TP_STATUS_KERNEL
        TP_STATUS_USER
        PACKET_OUTGOING
    struct sockaddr_ll:
        unsigned short sll_family
        unsigned short sll_protocol
        int sll_ifindex
        unsigned char sll_pkttype
    struct tpacket_req3:
        unsigned int tp_block_size
        unsigned int tp_block_nr
        unsigned int tp_frame_size
        unsigned int tp_frame_nr
        unsigned int tp_retire_blk_tov
        unsigned int tp_sizeof_priv
        unsigned int tp_feature_req_word
    struct tpacket_stats_v3:
        unsigned int tp_packets
        unsigned int tp_drops
        unsigned int tp_freeze_q_cnt
    struct tpacket_hdr_v1:
        uint32_t block_status
        uint32_t num_pkts
        uint32_t offset_to_first_pkt
    union tpacket_bd_header_u:
        tpacket_hdr_v1 bh1
    struct tpacket_block_desc:
        tpacket_bd_header_u hdr
    struct tpacket3_hdr:
        uint32_t tp_next_offset
        uint32_t tp_sec
        uint32_t tp_nsec
        uint32_t tp_snaplen
        uint32_t tp_len
        uint16_t tp_mac
    size_t TPACKET_ALIGN(size_t x)

cdef extern from "packet_ring.h" nogil:
    uint32_t np_block_status(uint32_t *s)
    void np_block_release(uint32_t *s)

/* The TPACKET_V3 block status word is shared with the kernel: read it before the
   block's contents (acquire), hand the block back after reading them (release). */
#ifndef NETPROBE_PACKET_RING_H
#define NETPROBE_PACKET_RING_H

#include <linux/if_packet.h>

static inline unsigned int np_block_status(volatile unsigned int *s) {
    return __atomic_load_n(s, __ATOMIC_ACQUIRE);
}

static inline void np_block_release(volatile unsigned int *s) {
    __atomic_store_n(s, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
}

#endif

# netprobe._pcapread: pcap/pcapng reader and TCP retransmission analyser.
#
# One C loop reads capture records (pcap in both byte orders with us or ns
# timestamps, pcapng with per-interface link types and resolutions), decodes
# the link layer (Ethernet with VLAN/QinQ tags, Linux SLL and SLL2, raw IP,
# BSD loopback), IPv4/IPv6 (with extension headers) and TCP, keeps a TCP flow
# table in C memory, and classifies every segment. No Python object is made
# per packet: each frame's flags and flow go to Python-owned preallocated
# arrays, counters stay in C structs until the caller asks for them.
#
# Two classifications are kept side by side per frame:
# - Wireshark's tcp.analysis.* (packet-tcp.c tcp_analyze_sequence_number,
#   rule for rule) so results can be checked frame by frame against tshark;
# - netprobe's own verdict, which fixes the mistakes listed in
#   tests/data/retrans-notes.md: a segment whose bytes were captured before is a
#   retransmission whatever its timing (Wireshark calls SACK-driven resends
#   "out-of-order" when they come soon after the highest segment); a segment
#   that fills a sequence hole (its original was lost before the capture
#   point) is out-of-order only if it comes within the reorder window of the
#   hole's opening, otherwise a retransmission of a segment lost upstream;
#   the send order told by IPv4 IDs or TSvals, when there, decides before
#   either rule (classify in pcap/tcpseq.pyx).
# Receivers' D-SACK blocks (RFC 2883) count spurious retransmissions.
#
# Bad input never raises per packet: short or inconsistent headers are
# counted (truncated, malformed) and skipped; a record that runs past the end
# of the data or has an impossible length ends the run with an error string
# and everything before it analysed (a partial result).
#
# One mechanism per file, under pyx/pcap/: state.pxi (flag bits, counters and the
# C structs), readers.pyx (pcap, pcapng), decode.pyx (link layer, IP, TCP),
# flowtable.pyx, seqmarks.pyx (holes and send-order marks), tcpseq.pyx
# (Wireshark's rules and our verdict), analyser.pyx (TcpAnalyser), ring.pyx
# (the TPACKET_V3 live capture ring).

from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove, memset
from cpython.exc cimport PyErr_SetFromErrno

from linux cimport close, poll, pollfd, POLLIN
from packet cimport (AF_PACKET, SOCK_DGRAM, SOCK_CLOEXEC, SOL_SOCKET, SOL_PACKET, SO_ATTACH_FILTER, sockaddr,
                     socket, bind, setsockopt, getsockopt, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED, mmap,
                     munmap, htons, ETH_P_ALL, sock_filter, sock_fprog, PACKET_VERSION, PACKET_RX_RING,
                     PACKET_STATISTICS, PACKET_IGNORE_OUTGOING, TPACKET_V3, TP_STATUS_USER, PACKET_OUTGOING,
                     sockaddr_ll, tpacket_req3, tpacket_stats_v3, tpacket_block_desc, tpacket3_hdr, TPACKET_ALIGN,
                     np_block_status, np_block_release)

from byteorder cimport load_be16, load_be32, load_be64, load_le32
from pcap cimport *

include "pcap/state.pxi"
include "pcap/readers.pyx"
include "pcap/decode.pyx"
include "pcap/flowtable.pyx"
include "pcap/seqmarks.pyx"
include "pcap/tcpseq.pyx"
include "pcap/analyser.pyx"
include "pcap/ring.pyx"

# netprobe._nldiag, included by pyx/nldiag.pyx: the fixed-layout record of one
# socket (nldiag_rec.h) as a numpy dtype, and gather(), which reads chosen fields of
# many records at once.

cdef extern from "nldiag_rec.h":
    ctypedef struct rec_t "struct nldiag_rec":
        int64_t t_ns
        uint64_t idiag_cookie
        uint8_t idiag_family
        uint8_t idiag_state
        uint8_t idiag_timer
        uint8_t idiag_retrans
        uint16_t idiag_sport
        uint16_t idiag_dport
        uint8_t idiag_src[16]
        uint8_t idiag_dst[16]
        uint32_t idiag_if
        uint32_t idiag_expires
        uint32_t idiag_rqueue
        uint32_t idiag_wqueue
        uint32_t idiag_uid
        uint32_t idiag_inode
        uint16_t info_len
        uint8_t has_bbr
        uint8_t has_skmem
        char ca_name[16]
        uint64_t bbr_bw
        uint32_t bbr_min_rtt
        uint32_t bbr_pacing_gain
        uint32_t bbr_cwnd_gain
        uint32_t skmem_rmem_alloc
        tcp_info tcpi

    ctypedef struct nldiag_field:
        const char *name
        const char *fmt
        size_t offset
    const nldiag_field nldiag_fields[]
    size_t NLDIAG_NFIELDS


def _record_dtype():
    names, formats, offsets = [], [], []
    for i in range(NLDIAG_NFIELDS):
        names.append(nldiag_fields[i].name.decode())
        formats.append(nldiag_fields[i].fmt.decode())
        offsets.append(nldiag_fields[i].offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": sizeof(rec_t)})


RECORD_DTYPE = _record_dtype()
RECORD_SIZE = sizeof(rec_t)
TCP_INFO_SIZE = sizeof(tcp_info)


cdef unsigned char[::1] _records_bytes(records) except *:
    if not isinstance(records, np.ndarray) or records.dtype != RECORD_DTYPE or records.ndim != 1:
        raise TypeError("records must be a 1-d numpy array of netprobe._nldiag.RECORD_DTYPE")
    if not records.flags.c_contiguous or not records.flags.writeable:
        raise ValueError("records must be C-contiguous and writeable")
    if records.shape[0] == 0:
        return np.empty(1, dtype=np.uint8)
    return records.view(np.uint8)


def gather(records, offsets, sizes):
    """Values at byte offsets[j] (sizes[j] = 1, 2, 4 or 8 bytes, native unsigned; 8 bytes are
    taken as int64, so a u64 ~0 'unlimited' reads -1) of each record of a RECORD_DTYPE array, as
    an (n, k) int64 matrix in column order (whole-column operations stay contiguous): one pass
    over the records, where numpy copies one strided field at a time."""
    if not isinstance(records, np.ndarray) or records.dtype != RECORD_DTYPE or records.ndim != 1:
        raise TypeError("records must be a 1-d numpy array of netprobe._nldiag.RECORD_DTYPE")
    if not records.flags.c_contiguous:
        raise ValueError("records must be C-contiguous")
    offs = np.ascontiguousarray(offsets, dtype=np.intp)
    szs = np.ascontiguousarray(sizes, dtype=np.uint8)
    cdef Py_ssize_t n = records.shape[0], k = offs.shape[0], i, j
    cdef Py_ssize_t stride = RECORD_DTYPE.itemsize
    cdef const Py_ssize_t[::1] o = offs
    cdef const uint8_t[::1] sz = szs
    if offs.ndim != 1 or szs.ndim != 1 or szs.shape[0] != k:
        raise ValueError("offsets and sizes: one size per offset")
    for j in range(k):
        if sz[j] not in (1, 2, 4, 8) or o[j] < 0 or o[j] + sz[j] > stride:
            raise ValueError(f"field {j}: offset {o[j]}, size {sz[j]}: sizes are 1/2/4/8 bytes inside a record")
    out = np.empty((n, k), dtype=np.int64, order="F")
    if n == 0 or k == 0:
        return out
    cdef const unsigned char[::1] raw = records.view(np.uint8)
    cdef int64_t[::1, :] m = out
    cdef const unsigned char *p
    cdef uint64_t v8
    cdef uint32_t v4
    cdef uint16_t v2
    with nogil:
        for i in range(n):
            p = &raw[0] + i * stride
            for j in range(k):
                if sz[j] == 8:
                    memcpy(&v8, p + o[j], 8)
                    m[i, j] = <int64_t>v8
                elif sz[j] == 4:
                    memcpy(&v4, p + o[j], 4)
                    m[i, j] = v4
                elif sz[j] == 2:
                    memcpy(&v2, p + o[j], 2)
                    m[i, j] = v2
                else:
                    m[i, j] = p[o[j]]
    return out

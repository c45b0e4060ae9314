# The v2 codec's Python face (test hooks and tools): datagrams built and decoded with
# wire.pxd, the tag function compared with hmac/hashlib by the tests.

DECODE_ERRORS = {1: "short", 2: "magic", 3: "version", 4: "flags", 5: "length", 6: "reserved",
                 7: "tag missing", 8: "tag does not verify", 9: "tag present but no key"}


cdef int set_key(np_hmac_t *m, key) except -1:
    cdef const uint8_t[:] k = key
    if len(key) == 0:
        return 0
    np_hmac_init(m, &k[0], len(key))
    return 1


def hmac_sha256(key, data):
    """Test hook: the tag function of the wire codec (compare with hmac/hashlib)."""
    cdef np_hmac_t m
    cdef uint8_t out[32]
    cdef const uint8_t[:] d = data
    cdef const uint8_t[:] k = key
    np_hmac_init(&m, &k[0] if len(key) else NULL, len(key))
    np_hmac(&m, &d[0] if d.shape[0] else NULL, d.shape[0], out)
    return bytes(out[:32])


def sha256(data):
    """Test hook: plain SHA-256 of the codec."""
    cdef np_sha256_t s
    cdef uint8_t out[32]
    cdef const uint8_t[:] d = data
    np_sha256_init(&s)
    np_sha256_update(&s, &d[0] if d.shape[0] else NULL, d.shape[0])
    np_sha256_final(&s, out)
    return bytes(out[:32])


def sha256_use_cpu(bint on):
    """Test hook: SHA-256 blocks with the CPU's SHA extensions (on, the default where the
    CPU has them) or the portable code; returns whether the extensions are now used."""
    return bool(np_sha256_set_shani(on))


def push_header(*, int flags, int port, uint64_t session, uint64_t start_ns, uint64_t seq, uint64_t send_ns,
                uint32_t interval, uint32_t clock_err_us, uint32_t index, uint32_t count, int32_t tx_follow_up=0,
                int length=0, payload=b"", key=b""):
    """One datagram as bytes: header, `payload` (padded with zeros to `length`), tag if `key`.

    length 0: header + payload (+ tag). FLAG_AUTH is set when a key is given;
    tx_follow_up is written only with F_TXTIME in flags.
    """
    cdef probe_hdr h
    cdef np_hmac_t m
    cdef bint keyed = len(key) > 0
    cdef int need = WIRE_HDR_LEN + len(payload) + (WIRE_TAG_LEN if keyed else 0)
    if length == 0:
        length = need
    if not need <= length <= WIRE_MAX_LEN:
        raise ValueError(f"length must be {need} to {WIRE_MAX_LEN} bytes (got {length})")
    if not 0 <= port <= 0xffff or not 0 <= flags <= 0xff:
        raise ValueError("port must fit 16 bits and flags 8 bits")
    buf = bytearray(length)
    buf[WIRE_HDR_LEN:WIRE_HDR_LEN + len(payload)] = payload
    cdef uint8_t[:] b = buf
    h.flags = flags | (FLAG_AUTH if keyed else 0)
    h.port, h.session, h.start_ns, h.seq, h.send_ns = port, session, start_ns, seq, send_ns
    h.interval, h.clock_err_us, h.length, h.index, h.count = interval, clock_err_us, length, index, count
    h.tx_follow_up = tx_follow_up
    push_probe_hdr(&b[0], &h)
    if keyed:
        set_key(&m, key)
        push_tag(&b[0], length, &m)
    return bytes(buf)


def pull_header(data, key=b""):
    """Decode one datagram -> dict of header fields; DecodeError(offset) if it is not a valid
    v2 probe (or, with `key`, not authenticated by it). Consumes nothing on error."""
    cdef probe_hdr h
    cdef np_hmac_t m
    cdef size_t off = 0, n = len(data)
    cdef const uint8_t[:] d = data
    cdef const uint8_t *p = datagram(d, DECODE_ERRORS)
    cdef int r = pull_probe_hdr(p, n, &h, &off)
    if r == WIRE_OK:
        r = pull_tag_check(p, n, &h, &m if set_key(&m, key) else NULL, &off)
    decoded(r, off, DECODE_ERRORS)
    return {"flags": h.flags, "port": h.port, "session": h.session, "start_ns": h.start_ns, "seq": h.seq,
            "send_ns": h.send_ns, "interval": h.interval, "clock_err_us": h.clock_err_us, "length": h.length,
            "index": h.index, "count": h.count, "tx_follow_up": h.tx_follow_up}

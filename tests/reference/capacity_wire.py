"""Reference codec of the capacity probe's train packet header, written from the format table in
pyx/train/packet.pyx with struct, not from its C code: the oracle for tests/ext/test_train.py."""
import struct

HEADER = struct.Struct("!4sBBHIIHH")      # magic, version, flags, count, token, train, index, size
MAGIC = b"NPTR"
MAX_TRAIN = 1024


def pack(flags, count, token, train, index, size):
    return HEADER.pack(MAGIC, 1, flags, count, token, train, index, size)


def parse(packet):
    """(flags, count, token, train, index, size), or a short reason string if the packet is bad."""
    if len(packet) < HEADER.size:
        return "short"
    magic, version, flags, count, token, train, index, size = HEADER.unpack_from(packet)
    if magic != MAGIC:
        return "magic"
    if version != 1:
        return "version"
    if not 2 <= count <= MAX_TRAIN:
        return "count"
    if index >= count:
        return "index"
    if size != len(packet):
        return "size"
    return flags, count, token, train, index, size

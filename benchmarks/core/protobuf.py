"""The protobuf wire format and TensorFlow's masked CRC32C, read without TensorFlow.

TFRecord files (CosmoFlow) and TensorFlow checkpoints (BERT's LevelDB index of
``BundleEntryProto``) share both: varints and protobuf fields, and checksums masked the same
way. One decoder serves both readers, so a fix to one reaches the other.

Malformed input is a ``ValueError``; ``where`` (when given) says which part of the file it was
in, for readers whose errors would otherwise not locate it.
"""

from __future__ import annotations

from collections.abc import Iterator

import crc32c

#: Wire types of the protobuf encoding.
VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's and LevelDB's masked CRC32C: rotate right by 15 bits, add a constant."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _in(where: str) -> str:
    return f" in {where}" if where else ""


def read_varint(buf: memoryview, pos: int, where: str = "") -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError(f"varint runs past the end of the message{_in(where)}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError(f"varint longer than 10 bytes{_in(where)}")


def encode_varint(value: int) -> bytes:
    """``value`` (not negative) as a varint."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def fields(buf: memoryview, where: str = "") -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field of a message: ints for varint and fixed
    fields, memoryview slices of ``buf`` for length-delimited ones (nothing is copied)."""
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos, where)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos, where)
        elif wire_type == FIXED64:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire_type == FIXED32:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        elif wire_type == LEN:
            length, pos = read_varint(buf, pos, where)
            value = buf[pos:pos + length]
            if len(value) != length:
                raise ValueError(f"length-delimited field {number} runs past the end of the "
                                 f"message{_in(where)}")
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire_type}{_in(where)}")
        if pos > len(buf):
            raise ValueError(f"field {number} runs past the end of the message{_in(where)}")
        yield number, wire_type, value

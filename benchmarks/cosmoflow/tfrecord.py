"""TFRecord files of ``tf.train.Example`` protos, read and written without TensorFlow.

A TFRecord file (optionally one gzip stream as a whole) is a sequence of records::

    uint64 length (little-endian) | uint32 masked CRC32C of the 8 length bytes
    bytes  data[length]           | uint32 masked CRC32C of the data

Both checksums are verified; a mismatch or a truncated record is an ``InputError`` naming the
file and the record. ``tf.train.Example`` is decoded with the small protobuf wire-format reader
of ``benchmarks/core/protobuf.py`` (shared with BERT's checkpoint reader), applied to exactly
the messages involved (Example -> Features -> map<string, Feature> -> BytesList / FloatList /
Int64List); the writer emits the same encoding TensorFlow does (packed floats and int64s).

Gzip streams are inflated with ISA-L (the ``isal`` package) where it is installed: 2-2.5x
zlib's speed on CosmoFlow's 16 MiB records (``bench/hdf5_loaders.py``), the same bytes out;
the standard ``zlib`` otherwise.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from benchmarks.core.errors import InputError
from benchmarks.core.protobuf import LEN, encode_varint, fields, masked_crc32c, read_varint

try:
    from isal import isal_zlib as inflater
except ImportError:  # no ISA-L wheel for this platform
    inflater = zlib

GZIP_MAGIC = b"\x1f\x8b"
GZIP_WBITS = 16 + zlib.MAX_WBITS
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")

Feature = list[memoryview] | np.ndarray
"""A decoded feature: the values of a bytes_list, or a float32 / int64 array."""


def read_file_bytes(path: Path) -> bytes:
    """The raw record stream of ``path``, gunzipped when the file starts with the gzip magic."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read TFRecord file ({err.strerror})") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gunzip(raw)
        except (inflater.error, zlib.error, ValueError) as err:
            raise InputError(f"{path}: corrupt gzip stream ({err})") from None
    return raw


def gunzip(data: bytes) -> bytes:
    """Inflate one or more concatenated gzip members (one, as TensorFlow writes them, is
    returned without a further copy)."""
    members = []
    while data:
        stream = inflater.decompressobj(GZIP_WBITS)
        members.append(stream.decompress(data))
        if not stream.eof:
            raise ValueError("truncated gzip stream")
        data = stream.unused_data
    return members[0] if len(members) == 1 else b"".join(members)


def iter_records(path: Path) -> Iterator[memoryview]:
    """Each record's payload in ``path``, with both CRCs checked."""
    stream = memoryview(read_file_bytes(path))
    offset = 0
    index = 0
    while offset < len(stream):
        header_end = offset + _LENGTH.size + _CRC.size
        if header_end > len(stream):
            raise InputError(f"{path}: record {index} truncated in its header")
        length_bytes = stream[offset:offset + _LENGTH.size]
        (length,) = _LENGTH.unpack(length_bytes)
        (length_crc,) = _CRC.unpack(stream[offset + _LENGTH.size:header_end])
        if masked_crc32c(length_bytes) != length_crc:
            raise InputError(f"{path}: record {index} has a bad length CRC")
        data_end = header_end + length
        if data_end + _CRC.size > len(stream):
            raise InputError(f"{path}: record {index} truncated ({length} data bytes expected)")
        data = stream[header_end:data_end]
        (data_crc,) = _CRC.unpack(stream[data_end:data_end + _CRC.size])
        if masked_crc32c(data) != data_crc:
            raise InputError(f"{path}: record {index} has a bad data CRC")
        yield data
        offset = data_end + _CRC.size
        index += 1


def write_records(path: Path, records: Iterable[bytes | memoryview], compress: bool = True,
                  compresslevel: int = 6) -> None:
    """Write ``records`` with TFRecord framing, as one gzip stream when ``compress``.

    Framing and payloads are streamed to the file (through the compressor), so a 16 MiB
    record is never joined into a second copy.
    """
    gzip_stream = zlib.compressobj(compresslevel, zlib.DEFLATED, GZIP_WBITS)
    with path.open("wb") as handle:
        for record in records:
            data = memoryview(record).cast("B")
            length = _LENGTH.pack(len(data))
            for chunk in (length, _CRC.pack(masked_crc32c(length)), data,
                          _CRC.pack(masked_crc32c(data))):
                handle.write(gzip_stream.compress(chunk) if compress else chunk)
        if compress:
            handle.write(gzip_stream.flush())


def _decode_feature(buf: memoryview) -> Feature:
    for kind, _, payload in fields(buf):
        values = list(fields(payload)) if isinstance(payload, memoryview) else []
        if kind == 1:  # BytesList: repeated bytes, kept as zero-copy views of the record
            return [v for _, _, v in values]
        if kind == 2:  # FloatList: packed (LEN) or one fixed32 per value
            parts = [np.frombuffer(v, dtype="<f4") if wire == LEN
                     else np.array([v], dtype="<u4").view("<f4") for _, wire, v in values]
            return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        if kind == 3:  # Int64List: packed varints (LEN) or one varint per value
            ints: list[int] = []
            for _, wire, v in values:
                if wire == LEN:
                    pos = 0
                    while pos < len(v):
                        item, pos = read_varint(v, pos)
                        ints.append(item)
                else:
                    ints.append(v)
            return np.array(ints, dtype=np.uint64).astype(np.int64)
    return []


def parse_example(record: bytes | memoryview) -> dict[str, Feature]:
    """Decode a serialized ``tf.train.Example`` into {feature name: value}.

    A bytes_list becomes a list of ``memoryview`` slices of ``record`` (large payloads are not
    copied), a float_list a float32 array, an int64_list an int64 array. Malformed input is a
    ``ValueError``.
    """
    features: dict[str, Feature] = {}
    try:
        for number, _, features_msg in fields(memoryview(record)):
            if number != 1 or not isinstance(features_msg, memoryview):
                continue
            for entry_number, _, entry in fields(features_msg):
                if entry_number != 1 or not isinstance(entry, memoryview):
                    continue
                key, value = "", memoryview(b"")
                for part, _, payload in fields(entry):
                    if part == 1 and isinstance(payload, memoryview):
                        key = bytes(payload).decode()
                    elif part == 2 and isinstance(payload, memoryview):
                        value = payload
                features[key] = _decode_feature(value)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"not a tf.train.Example: {err}") from None
    return features


def _len_field(number: int, parts: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """A length-delimited field around ``parts``, kept as a list so payloads are not copied."""
    length = sum(len(memoryview(part).cast("B")) for part in parts)
    return [encode_varint(number << 3 | LEN) + encode_varint(length), *parts]


def encode_example(features: Mapping[str, bytes | memoryview | np.ndarray]) -> bytes:
    """Serialize a ``tf.train.Example``: bytes (or a memoryview) become a bytes_list, float
    arrays a float_list, integer arrays an int64_list. Large payloads are copied once."""
    entries: list[bytes | memoryview] = []
    for key, value in features.items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            feature = _len_field(1, _len_field(1, [value]))
        elif np.issubdtype(np.asarray(value).dtype, np.floating):
            packed = np.asarray(value, dtype="<f4").ravel().tobytes()
            feature = _len_field(2, _len_field(1, [packed]))
        else:
            ints = np.asarray(value, dtype=np.int64).ravel()
            packed = b"".join(encode_varint(int(v) & 0xFFFFFFFFFFFFFFFF) for v in ints)
            feature = _len_field(3, _len_field(1, [packed]))
        entries += _len_field(1, _len_field(1, [key.encode()]) + _len_field(2, feature))
    return b"".join(_len_field(1, entries))

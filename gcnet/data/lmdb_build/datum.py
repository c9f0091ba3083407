"""Caffe Datum codec and LMDB reading (tests, figures, predict, BN statistics)."""
import itertools
from typing import List, Optional, Tuple

import numpy as np


def _varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_datum(data: np.ndarray, label: int) -> bytes:
    """Serialized caffe.proto Datum (channels, height, width, data, label), byte-identical to caffe_pb2's
    SerializeToString (fields in number order, `encoded` left at its default)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    c, h, w = data.shape
    raw = data.tobytes()
    return (b"\x08" + _varint(c) + b"\x10" + _varint(h) + b"\x18" + _varint(w)
            + b"\x22" + _varint(len(raw)) + raw + b"\x28" + _varint(int(label)))


def decode_datum(buf: bytes) -> Tuple[np.ndarray, int]:
    """Datum bytes -> (uint8 array (C,H,W), label).  Handles the fields encode_datum writes."""
    pos, vals, data = 0, {}, b""

    def rd():
        nonlocal pos
        shift = v = 0
        while True:
            b = buf[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v
    while pos < len(buf):
        key = rd()
        field, wt = key >> 3, key & 7
        if wt == 0:
            vals[field] = rd()
        elif wt == 2:
            n = rd()
            if field == 4:
                data = buf[pos:pos + n]
            pos += n
        elif wt == 5:
            pos += 4
        elif wt == 1:
            pos += 8
        else:
            raise ValueError("bad Datum wire type %d" % wt)
    c, h, w = vals.get(1, 0), vals.get(2, 0), vals.get(3, 0)
    label = vals.get(5, 0)
    if label >= 1 << 63:
        label -= 1 << 64
    return np.frombuffer(data, dtype=np.uint8).reshape(c, h, w), int(label)


def read_lmdb(path: str, limit: Optional[int] = None) -> List[Tuple[str, np.ndarray, int]]:
    """(key, array, label) of an LMDB in key order, all or the first `limit` (tests, figures, predict, BN stats)."""
    import lmdb
    env = lmdb.open(path, readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as txn:
            return [(k.decode(), *decode_datum(v)) for k, v in itertools.islice(txn.cursor(), limit)]
    finally:
        env.close()


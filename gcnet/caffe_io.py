"""Caffe's files without a net: the Datum codec of the LMDBs, reading an LMDB, reading a .caffemodel's blobs."""
import itertools
import os
from typing import Dict, List, Optional, Tuple

import numpy as np


class WeightsError(Exception):
    """A .caffemodel cannot be read (missing, not a NetParameter)."""


# ----------------------------------------------------------------------------------------------- Datum
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
    """(key, array, label) of an LMDB in key order (Caffe's Data layer order), all or the first `limit`."""
    import lmdb
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as txn:
            return [(k.decode(), *decode_datum(v)) for k, v in itertools.islice(txn.cursor(), limit)]
    finally:
        env.close()


# ----------------------------------------------------------------------------------------------- .caffemodel
def load_net_param(path: str):
    """The caffe_pb2.NetParameter of a .caffemodel; WeightsError naming the file when it cannot be read."""
    from caffe.proto import caffe_pb2
    net = caffe_pb2.NetParameter()
    try:
        with open(str(path), "rb") as f:
            net.ParseFromString(f.read())
    except OSError as e:
        raise WeightsError("cannot read %s: %s" % (path, e))
    except Exception as e:  # protobuf DecodeError
        raise WeightsError("%s is not a Caffe .caffemodel: %s" % (path, e))
    return net


def save_net_param(net, path: str) -> None:
    """Write a NetParameter atomically."""
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(net.SerializeToString())
    os.replace(tmp, str(path))


def blob_array(b) -> np.ndarray:
    """A BlobProto as a float32 array of its shape (legacy 4-D num/channels/height/width too)."""
    if len(b.shape.dim):
        shape = tuple(int(d) for d in b.shape.dim)
    else:
        shape = tuple(int(d) for d in (b.num, b.channels, b.height, b.width))
    data = b.data if len(b.data) else b.double_data
    return np.asarray(data, dtype=np.float32).reshape(shape)


def read_caffemodel(path: str) -> Dict[str, List[np.ndarray]]:
    """{layer name: [blob arrays]} of a .caffemodel (layers without blobs omitted); no net is built."""
    net = load_net_param(path)
    return {layer.name: [blob_array(b) for b in layer.blobs]
            for layer in list(net.layer) + list(net.layers) if len(layer.blobs)}

"""Caffe's files without a net: the Datum codec of the LMDBs, reading an LMDB, reading a .caffemodel's blobs and
checking that they fit a net (check_weights_fit)."""
import itertools
from typing import Dict, List, Optional, Tuple

import numpy as np


class WeightsError(Exception):
    """A .caffemodel cannot be read (missing, not a NetParameter) or does not fit the net it is loaded into."""


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
    """The caffe_pb2.NetParameter of a .caffemodel; WeightsError naming the file when it cannot be read or holds
    no layer with weights (an empty or truncated file parses as an empty message)."""
    from caffe.proto import caffe_pb2
    net = caffe_pb2.NetParameter()
    try:
        with open(str(path), "rb") as f:
            net.ParseFromString(f.read())
    except OSError as e:
        raise WeightsError("cannot read %s: %s" % (path, e.strerror or e))
    except Exception as e:  # protobuf DecodeError
        raise WeightsError("%s is damaged or not a Caffe .caffemodel (%s)" % (path, e))
    if not any(len(layer.blobs) for layer in list(net.layer) + list(net.layers)):
        raise WeightsError("%s is damaged or not a Caffe .caffemodel (no layer with weights)" % path)
    return net


def save_net_param(net, path: str) -> None:
    """Write a NetParameter atomically (nothing left behind when the write fails)."""
    from gcnet.util import write_bytes
    write_bytes(path, net.SerializeToString())


def blob_array(b) -> np.ndarray:
    """A BlobProto as a float32 array of its shape (legacy 4-D num/channels/height/width too)."""
    if len(b.shape.dim):
        shape = tuple(int(d) for d in b.shape.dim)
    else:
        shape = tuple(int(d) for d in (b.num, b.channels, b.height, b.width))
    data = b.data if len(b.data) else b.double_data
    return np.asarray(data, dtype=np.float32).reshape(shape)


def blob_shape(b) -> Tuple[int, ...]:
    """Shape of a BlobProto as Caffe reads it: `shape`, or the legacy num/channels/height/width when one of those
    is set (Blob::ShapeEquals)."""
    if any(b.HasField(f) for f in ("num", "channels", "height", "width")):
        return tuple(int(d) for d in (b.num, b.channels, b.height, b.width))
    return tuple(int(d) for d in b.shape.dim)


def _legacy_equal(net_shape, b) -> bool:
    """Caffe's Blob::ShapeEquals of a net blob and a BlobProto."""
    got = blob_shape(b)
    if any(b.HasField(f) for f in ("num", "channels", "height", "width")):
        return len(net_shape) <= 4 and (1,) * (4 - len(net_shape)) + tuple(net_shape) == got
    return tuple(net_shape) == got


def check_weights_fit(weights: str, net_params: Dict[str, List[Tuple[int, ...]]],
                      shared: Dict[str, List[object]], net_name: str = "", net_file: str = "the net"):
    """The NetParameter of the .caffemodel `weights` when it fits a net, else WeightsError naming the file and the
    first layer that does not fit.  The check Caffe does not make (its CopyTrainedLayersFrom silently keeps the
    initial values of a layer the file lacks, and aborts the process on a wrong shape):
      * the file's net name, when it has one, is `net_name` (the weights of `cnn` and of `gcnet_s0r0` fit each
        other's layers, or most of them);
      * every learnable layer of the net (`net_params`: {layer: [blob shapes]} in net order, e.g. from pycaffe's
        net.params) is in the file with as many blobs, of the same shapes and sizes; a layer absent from the file
        is accepted only when each of its blobs is shared with a layer the file has (`shared`: {layer: [a key per
        blob]}, equal keys = one blob: its data address in pycaffe, or its ParamSpec name), as the en2r_* layers
        share en2_*'s.
    Layers of the file that the net lacks are ignored, as Caffe does (a deploy net may drop training-only ones)."""
    wnet = load_net_param(weights)
    what = "weights %s do not fit %s" % (weights, net_file)
    if wnet.name and net_name and wnet.name != net_name:
        raise WeightsError("%s: they are the weights of net '%s', not of '%s'" % (what, wnet.name, net_name))
    layers = {layer.name: layer for layer in list(wnet.layers) + list(wnet.layer)}
    provided = set()
    for name, shapes in net_params.items():
        src = layers.get(name)
        if src is None:
            continue
        if len(src.blobs) != len(shapes):
            raise WeightsError("%s: layer %s has %d blobs in the file, %d in the net"
                               % (what, name, len(src.blobs), len(shapes)))
        for j, (shape, b) in enumerate(zip(shapes, src.blobs)):
            n = len(b.double_data) or len(b.data)
            if not _legacy_equal(shape, b) or n != int(np.prod(shape, dtype=np.int64)):
                raise WeightsError("%s: layer %s blob %d is %s with %d values in the file, %s in the net"
                                   % (what, name, j, "x".join(map(str, blob_shape(b))) or "()", n,
                                      "x".join(map(str, shape))))
        provided.update(k for k in shared.get(name, []) if k is not None)
    for name, shapes in net_params.items():
        keys = list(shared.get(name, [])) + [None] * len(shapes)
        if name not in layers and not all(keys[j] is not None and keys[j] in provided for j in range(len(shapes))):
            raise WeightsError("%s: layer %s has no weights in the file (Caffe would keep its initial values)"
                               % (what, name))
    return wnet


def prototxt_net_name(prototxt: str) -> str:
    """The net's `name` in a .prototxt (the top-level field before the first layer), '' when none."""
    import re
    with open(str(prototxt)) as f:
        head = f.read().split("{", 1)[0]
    m = re.search(r'^\s*name\s*:\s*"([^"]*)"', head, re.M)
    return m.group(1) if m else ""


def read_caffemodel(path: str) -> Dict[str, List[np.ndarray]]:
    """{layer name: [blob arrays]} of a .caffemodel (layers without blobs omitted); no net is built."""
    net = load_net_param(path)
    return {layer.name: [blob_array(b) for b in layer.blobs]
            for layer in list(net.layer) + list(net.layers) if len(layer.blobs)}

"""A Caffe deploy net with its trained weights as an ONNX model (tools/export_onnx.py), built from the prototxt
(caffe_pb2) and the .caffemodel's blobs (gcnet.caffe_io.read_caffemodel) with onnx's graph builder: no Caffe net
is constructed, so the conversion runs wherever pycaffe's protobuf module imports.

Every layer is mapped exactly or refused (UnmappableLayer, exit 2, naming the layer) by gcnet/onnx_layers.py; the
mapping of each type, and how Caffe's MAX-pooling mask becomes ONNX MaxPool indices, is in docs/choices.md
("Trained models outside Caffe").  The comparison with Caffe (export_onnx.py --check) is gcnet/onnx_check.py.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from gcnet.onnx_layers import MAPPERS, UnmappableLayer, _Graph, _phase_included, _unmappable
from gcnet.util import UsageError

OPSET = 17                    # ScatterElements(reduction="add") needs >= 16; onnxruntime 1.20 runs up to 21
PRODUCER = "gcnet export_onnx"
TOLERANCE = 1e-4              # issue 24: probabilities and generated references agree within 1e-4 absolute
# blobs exported as graph outputs where the net has them although later layers consume them (Caffe's net
# outputs, the unconsumed tops, are always exported): the generator's reference X_r hat
EXTRA_OUTPUTS = ("gen_r",)
META_PREFIX = "gcnet."        # metadata_props keys: gcnet.class_names, gcnet.transform, ...


class ExportError(UsageError):
    """The model folder or its files cannot be exported (missing files, no onnx package)."""


def net_to_onnx(net, weights: Dict[str, List[np.ndarray]], outputs: Optional[Sequence[str]] = None,
                metadata: Optional[Dict[str, str]] = None):
    """onnx.ModelProto of a deploy NetParameter (caffe_pb2) with `weights` ({layer: [blobs]}, read_caffemodel).
    Graph inputs: the Input layers' tops with a symbolic batch axis "N".  Graph outputs: `outputs` if given (blob
    names; a MAX-pooling mask is output as Caffe's in-plane index, float as Caffe's), else Caffe's net outputs (the
    tops no layer consumes) and the EXTRA_OUTPUTS the net has.  UnmappableLayer names the first layer it cannot map."""
    import onnx
    from onnx import helper
    if len(net.input):
        raise UnmappableLayer("net %s declares its inputs with the legacy `input:` fields; an Input layer is "
                              "expected" % net.name)
    g = _Graph(weights)
    for layer in net.layer:
        if not _phase_included(layer):
            continue
        fn = MAPPERS.get(layer.type)
        if fn is None:
            _unmappable(layer, "the layer type has no ONNX mapping (mapped: %s)" % ", ".join(sorted(MAPPERS)))
        fn(g, layer)
    if len(net.layers):
        raise UnmappableLayer("net %s uses the V1 `layers` field; upgrade it with Caffe's upgrade_net_proto_text"
                              % net.name)
    if outputs is None:
        outputs = [b for b in g.order if b not in g.consumed and b not in [i.name for i in g.inputs]]
        outputs += [b for b in EXTRA_OUTPUTS if b in g.cur and b not in outputs]
    outs = []
    for b in outputs:
        if b not in g.cur:
            raise UnmappableLayer("net %s has no blob %r to output" % (net.name, b))
        t = g.cur[b]
        if t in g.mask_plane:         # Caffe's mask: in-plane index as float
            P = g.const("output_" + b, "plane", np.array(g.mask_plane[t], np.int64))
            g.nodes.append(helper.make_node("Mod", [t, P], [b + ":int"], name="output_%s/Mod" % b))
            g.nodes.append(helper.make_node("Cast", [b + ":int"], [b], name="output_%s/Cast" % b, to=1))
        else:
            g.nodes.append(helper.make_node("Identity", [t], [b], name="output_%s" % b))
        outs.append(helper.make_tensor_value_info(b, 1, ["N"] + list(g.shape[t])))
    graph = helper.make_graph(g.nodes, net.name or "caffe_net", g.inputs, outs, initializer=g.inits)
    model = helper.make_model(graph, producer_name=PRODUCER, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8                                   # onnxruntime 1.20 reads IR <= 10; 8 is opset 17's
    for k, v in (metadata or {}).items():
        e = model.metadata_props.add()
        e.key, e.value = META_PREFIX + k, v
    onnx.checker.check_model(model, full_check=True)
    return model


def read_prototxt(path):
    """caffe_pb2.NetParameter of a prototxt; UsageError naming the file when it cannot be parsed."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    net = caffe_pb2.NetParameter()
    try:
        text_format.Merge(Path(path).read_text(), net)
    except (OSError, text_format.ParseError) as e:
        raise ExportError("cannot read %s: %s" % (path, e))
    return net


def onnx_metadata(model) -> Dict[str, str]:
    """The gcnet.* metadata_props of an ONNX model, without the prefix."""
    return {e.key[len(META_PREFIX):]: e.value for e in model.metadata_props if e.key.startswith(META_PREFIX)}


# ----------------------------------------------------------------------------------------------- model folders
def variant_files(model_dir, out=None) -> List[Tuple[str, Path, Path]]:
    """[(variant, prototxt, .onnx)] of a model folder: deploy -> `out` (default <folder>/model.onnx) and, where
    the folder has deploy_ref.prototxt, deploy_ref -> the same name with `_ref` (model_ref.onnx)."""
    from gcnet.inference import VARIANTS, onnx_variant_path
    d = Path(model_dir)
    base = Path(out) if out else onnx_variant_path(d)
    return [(v, d / proto, onnx_variant_path(base, v)) for v, (proto, _) in VARIANTS.items()
            if v == "deploy" or (d / proto).exists()]


def export_model(model_dir, out=None) -> Tuple[List[dict], List[str]]:
    """Write the ONNX model of each deploy variant of a trained folder (final.caffemodel's weights; class names,
    transform and meta.json in the gcnet.* metadata).  -> ([{variant, prototxt, onnx, inputs, outputs, bytes}],
    notes).  ExportError / UnmappableLayer (exit 2) name what is missing or cannot be mapped."""
    from gcnet.caffe_io import WeightsError, read_caffemodel
    from gcnet.inference import DEFAULT_CROP, ModelError, check_recorded_weights, read_meta, read_transform
    from gcnet.layout import DEPLOY, DEPLOY_REF, FINAL, META
    from gcnet.util import sha256_file
    d = Path(model_dir)
    if not d.is_dir():
        raise ExportError("model folder %s does not exist" % d)
    missing = [n for n in (DEPLOY, FINAL, META) if not (d / n).exists()]
    if missing:
        raise ExportError("model folder %s is incomplete: missing %s" % (d, ", ".join(missing)))
    try:
        import onnx  # noqa: F401
        from caffe.proto import caffe_pb2  # noqa: F401
    except ImportError as e:
        raise ExportError("%s cannot be imported (%s): the export reads the prototxt and weights with onnx and "
                          "pycaffe's caffe_pb2; run `source tools/env.sh` first" % (e.name or "a module", e))
    try:
        meta = read_meta(d)
        check_recorded_weights(d, meta, d / FINAL)      # the net meta.json names, the weights' recorded sha256
        weights = read_caffemodel(str(d / FINAL))
    except (ModelError, WeightsError) as e:
        raise ExportError(str(e))
    scale, crop, mean = read_transform(d)
    common = {"class_names": json.dumps(list(meta.get("class_names") or [])),
              "transform": json.dumps({"scale": scale, "crop": crop or DEFAULT_CROP, "mean": mean}),
              "meta": json.dumps(meta, sort_keys=True), "weights_sha256": sha256_file(d / FINAL),
              "opset": str(OPSET)}
    done, notes = [], []
    for variant, proto, path in variant_files(d, out):
        net = read_prototxt(proto)
        model = net_to_onnx(net, weights, metadata=dict(common, variant=variant, prototxt=proto.name,
                                                         prototxt_sha256=sha256_file(proto)))
        data = model.SerializeToString()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as e:
            raise ExportError("cannot write %s: %s" % (path, e.strerror or e))
        done.append({"variant": variant, "prototxt": str(proto), "onnx": str(path), "bytes": len(data),
                     "inputs": [i.name for i in model.graph.input], "outputs": [o.name for o in model.graph.output]})
    if not (d / DEPLOY_REF).exists() and "gen_r" in done[0]["outputs"]:
        notes.append("%s has no %s (folders trained before it was written): the variant with the person's "
                     "reference is not exported; rerun the same tools/run_folds.sh command (its finished stages "
                     "are skipped) to write it" % (d, DEPLOY_REF))
    return done, notes

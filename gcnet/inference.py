"""Inference with a trained model folder (deploy.prototxt + final.caffemodel + meta.json), in Caffe or, from the
exported model.onnx (tools/export_onnx.py), in onnxruntime without Caffe.

The one implementation of the test-time preprocessing (Caffe's TEST-phase DataTransformer: centre crop, mean,
scale, read from the model's train_val.prototxt) and of the batched deploy-net forward, shared by the runner's test
stage, the figures and tools/predict.py.  Importing this module imports neither caffe nor onnxruntime.
"""
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from gcnet.layout import DEPLOY, DEPLOY_REF, FINAL, META, ONNX, ONNX_REF, REPO, TRAIN_VAL, ResultsLayout, fold_of

DEFAULT_SCALE = 0.00390625       # transform_param.scale of the Data layers (docs/ARCHITECTURE.md, LMDB format)
DEFAULT_CROP = 64
REFERENCE_INPUT = "xr"           # the deploy input of a net that is given the person's reference face (deploy_ref,
                                 # cnn_pair; gcnet/nets.py)


class ModelError(Exception):
    """A model folder cannot be loaded (missing deploy/weights/meta, pycaffe not importable)."""


def import_caffe():
    """pycaffe with the project's Python layers importable; ModelError with a clear message when it is not."""
    pl = str(REPO / "python_layers")
    if pl not in sys.path:
        sys.path.insert(0, pl)
    try:
        import caffe
    except ImportError as e:
        raise ModelError("pycaffe cannot be imported (%s); run `source tools/env.sh` first "
                         "(tools/setup.sh builds Caffe and writes it)" % e)
    return caffe


def read_transform(model_dir):
    """(scale, crop_size, mean) of the Data layers' transform_param in the model's train_val.prototxt (what training
    and the runner's test stage saw); defaults when there is no train_val.prototxt."""
    scale, crop, mean = DEFAULT_SCALE, DEFAULT_CROP, 0.0
    p = Path(model_dir) / TRAIN_VAL
    if p.exists():
        m = re.search(r"transform_param\s*\{([^}]*)\}", p.read_text())
        if m:
            s = re.search(r"\bscale\s*:\s*([-+0-9.eE]+)", m.group(1))
            c = re.search(r"\bcrop_size\s*:\s*(\d+)", m.group(1))
            mv = re.search(r"\bmean_value\s*:\s*([-+0-9.eE]+)", m.group(1))
            scale = float(s.group(1)) if s else 1.0
            crop = int(c.group(1)) if c else 0
            mean = float(mv.group(1)) if mv else 0.0
    return scale, crop, mean


def crop_scale(a, crop=DEFAULT_CROP, scale=DEFAULT_SCALE, mean=0.0, dtype=np.float32) -> np.ndarray:
    """(N, C, S, S) uint8 -> (N, C, crop, crop) `dtype`: Caffe's TEST-phase DataTransformer (centre crop at offset
    (S - crop) // 2, minus the mean value, times scale)."""
    a = np.asarray(a)
    s_h, s_w = a.shape[2], a.shape[3]
    crop = crop or s_h
    if s_h < crop or s_w < crop:
        raise ValueError("aligned faces are %dx%d, smaller than the %d crop" % (s_h, s_w, crop))
    oh, ow = (s_h - crop) // 2, (s_w - crop) // 2
    x = a[:, :, oh:oh + crop, ow:ow + crop].astype(dtype)
    if mean:
        x = x - dtype(mean)
    return x * dtype(scale)


def preprocess(aligned, scale=DEFAULT_SCALE, crop=DEFAULT_CROP, mean=0.0):
    """Aligned faces (S, S) / (N, S, S) / (N, C, S, S) uint8 (channel 0 = X) -> (N, 1, crop, crop) float32 net
    input (crop_scale of channel 0)."""
    a = np.asarray(aligned)
    if a.ndim == 2:
        a = a[None]
    if a.ndim == 3:
        a = a[:, None]
    return crop_scale(a[:, :1], crop, scale, mean)


def check_recorded_weights(model_dir, meta: dict, weights) -> None:
    """ModelError when the folder's meta.json names another model than its deploy.prototxt, or records the sha256
    of its final.caffemodel (gcnet.experiment.stages) and `weights` is that file with other contents (replaced or
    damaged after the run)."""
    from gcnet.caffe_io import prototxt_net_name
    d = Path(model_dir)
    name = prototxt_net_name(d / DEPLOY)
    if meta.get("model") and name and meta["model"] != name:
        raise ModelError("%s says the folder holds model %s, but %s is the net %s" % (d / META, meta["model"],
                                                                                     d / DEPLOY, name))
    want = meta.get("weights_sha256")
    if want and Path(weights).resolve() == (d / FINAL).resolve():
        from gcnet.util import sha256_file
        if sha256_file(weights) != want:
            raise ModelError("%s is not the file %s records (sha256 differs): it was replaced or damaged after the "
                             "run; rerun the run to redo it" % (weights, d / META))


def batch_stats_net_text(deploy_path) -> str:
    """The deploy net with every BatchNorm layer normalising with the statistics of its batch
    (use_global_stats false) and accumulating them as a plain sum (moving_average_fraction 1): the net of the
    BatchNorm re-estimation (gcnet.bnstats) and of the batch-statistics scores of the diagnostics."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    net = caffe_pb2.NetParameter()
    text_format.Merge(Path(deploy_path).read_text(), net)
    for layer in net.layer:
        if layer.type == "BatchNorm":
            layer.batch_norm_param.use_global_stats = False
            layer.batch_norm_param.moving_average_fraction = 1.0
    return text_format.MessageToString(net)


def load_net(prototxt, weights, phase: str = "TEST", net_file=None):
    """caffe.Net of `prototxt` with the .caffemodel `weights`, checked before Caffe reads them: a damaged file or
    weights of another net (a layer missing, another shape, another net's name) are a ModelError naming the
    weights file and the first layer that does not fit (gcnet.caffe_io.check_weights_fit), never a silently
    half-initialised net nor a Caffe abort.  The one way this project loads trained weights into a net (test stage,
    BatchNorm re-estimation, figures, predict, gradient norms; an exporter should use it too).  `net_file`: the
    prototxt named in messages (when `prototxt` is a temporary variant of it)."""
    from gcnet.caffe_io import WeightsError, check_weights_fit, prototxt_net_name
    caffe = import_caffe()
    try:
        net = caffe.Net(str(prototxt), getattr(caffe, phase))       # (no weights yet: Caffe reads them last)
        params = net.params
        check_weights_fit(weights, {k: [tuple(b.data.shape) for b in v] for k, v in params.items()},
                          {k: [b.data.__array_interface__["data"][0] for b in v] for k, v in params.items()},
                          prototxt_net_name(prototxt), str(net_file or prototxt))
    except WeightsError as e:
        raise ModelError(str(e))
    net.copy_from(str(weights))
    return net


class MissingVariant(ModelError):
    """The model has no file for the requested variant (deploy_ref.prototxt / model_ref.onnx)."""


class FaceModel:
    """What every backend shares: class names and the TEST-phase transform of a trained model, and forward() on
    aligned faces (and, for a net with the input `xr`, aligned references).  Subclasses: DeployModel (Caffe),
    OnnxModel (onnxruntime); they implement run() on preprocessed inputs and has()."""
    backend = ""
    inputs = ("x",)
    dir = None

    def _set_classes(self, names, n: int) -> None:
        names = list(names or [])
        self.class_names = names if len(names) == n else names + ["class %d" % i for i in range(len(names), n)]

    @property
    def needs_reference(self) -> bool:
        """The net takes the person's reference face X_r as a second input (deploy_ref, cnn_pair: Fig. 2b)."""
        return REFERENCE_INPUT in self.inputs

    def has(self, blob) -> bool:
        raise NotImplementedError

    def run(self, feeds, blobs):
        """{input: (N, 1, crop, crop) float32} -> {blob: array (N, ...)} for the requested blobs."""
        raise NotImplementedError

    def forward(self, aligned, blobs=("prob",), batch=64, reference=None, preprocessed=False):
        """Run the net on aligned 66x66 faces; {blob: array (N, ...)} for the requested blobs the net has.  A net
        with a reference input takes `reference` (aligned like `aligned`: one for all faces or one per face, uint8
        or a float mean of frames), else channel 1 of `aligned` (pairs [X, X_r]).  `preprocessed`: `aligned` is
        already net input (N, 1, crop, crop) float, e.g. a generated reference."""
        x = np.asarray(aligned, np.float32) if preprocessed else preprocess(aligned, self.scale, self.crop, self.mean)
        feeds = {self.input: x}
        n = len(x)
        if self.needs_reference:
            if reference is None:
                a = np.asarray(aligned)
                if a.ndim != 4 or a.shape[1] < 2:
                    raise ModelError("%s compares the face with the person's reference face: give one"
                                     % (self.dir or "the model"))
                reference = a[:, 1:2]
            r = preprocess(reference, self.scale, self.crop, self.mean)
            if len(r) == 1 and n > 1:
                r = np.repeat(r, n, axis=0)
            if len(r) != n:
                raise ModelError("%d faces but %d reference faces" % (n, len(r)))
            feeds[REFERENCE_INPUT] = r
        blobs = [b for b in blobs if self.has(b)]
        out = {b: [] for b in blobs}
        for i in range(0, n, batch):
            res = self.run({k: v[i:i + batch] for k, v in feeds.items()}, blobs)
            for b in blobs:
                out[b].append(res[b])
        return {b: (np.concatenate(v) if v else np.zeros((0,))) for b, v in out.items()}

    def predict(self, aligned, reference=None):
        prob = self.forward(aligned, ("prob",), reference=reference)["prob"]
        return prob.reshape(len(prob), -1)


class DeployModel(FaceModel):
    """A trained model folder (deploy.prototxt + final.caffemodel + meta.json) loaded for inference in Caffe.
    `deploy` names another net of the folder (DEPLOY_REF: the person's reference as input).  `batch_stats` True
    normalises every batch with its own BatchNorm statistics (see batch_stats_net_text)."""
    backend = "caffe"

    def __init__(self, model_dir, weights=None, gpu=None, batch_stats=False, deploy=DEPLOY):
        self.dir = Path(model_dir)
        if not self.dir.is_dir():
            raise ModelError("model folder %s does not exist" % self.dir)
        self.deploy = self.dir / deploy
        self.weights = Path(weights) if weights else self.dir / FINAL
        if deploy != DEPLOY and not self.deploy.exists():
            raise MissingVariant("model folder %s has no %s" % (self.dir, deploy))
        missing = [str(p.name) for p in (self.deploy, self.weights, self.dir / META) if not p.exists()]
        if missing:
            folds = sorted(p for p in self.dir.iterdir() if fold_of(p.name) is not None and (p / FINAL).exists())
            hint = ("; it holds trained folds: pass one of %s" % ", ".join(str(f) for f in folds[:3])
                    if folds else "; is the model trained? (expected %s)"
                    % ResultsLayout("results", "<dataset>").model_dir("<model>", 0).with_name("fold_K"))
            raise ModelError("model folder %s is incomplete: missing %s%s" % (self.dir, ", ".join(missing), hint))
        self.meta = read_meta(self.dir)
        self.scale, self.crop, self.mean = read_transform(self.dir)
        self.crop = self.crop or DEFAULT_CROP
        caffe = import_caffe()
        check_recorded_weights(self.dir, self.meta, self.weights)
        if gpu is None:
            caffe.set_mode_cpu()
        else:
            caffe.set_mode_gpu()
            caffe.set_device(gpu)
        if batch_stats:
            import tempfile
            with tempfile.NamedTemporaryFile("w", suffix=".prototxt", prefix="batch_stats_", delete=False) as f:
                f.write(batch_stats_net_text(self.deploy))
            try:
                self.net = load_net(f.name, self.weights, net_file=self.deploy)
            finally:
                os.unlink(f.name)
        else:
            self.net = load_net(self.deploy, self.weights)
        self.inputs = tuple(self.net.inputs)
        self.input = "x" if "x" in self.net.blobs else self.net.inputs[0]
        self._set_classes(self.meta.get("class_names"),
                          self.net.blobs["prob"].data.shape[1] if "prob" in self.net.blobs else 0)

    def has(self, blob):
        return blob in self.net.blobs

    def batchnorm_layers(self):
        """Names of the net's BatchNorm layers."""
        return [name for name in self.net.params if self.net.layer_dict[name].type == "BatchNorm"]

    def set_batchnorm_stats(self, stats) -> None:
        """Replace the BatchNorm statistics ({layer: [mean, var, factor]}, gcnet.bnstats.estimate_stats)."""
        for name, values in stats.items():
            for blob, v in zip(self.net.params[name], values):
                blob.data[...] = v

    def run(self, feeds, blobs):
        changed = [k for k, v in feeds.items() if self.net.blobs[k].data.shape != v.shape]
        for k in changed:
            self.net.blobs[k].reshape(*feeds[k].shape)
        if changed:
            self.net.reshape()
        for k, v in feeds.items():
            self.net.blobs[k].data[...] = v
        self.net.forward()
        return {b: self.net.blobs[b].data.copy() for b in blobs}


class OnnxModel(FaceModel):
    """A model exported by tools/export_onnx.py (model.onnx / model_ref.onnx), run by onnxruntime without Caffe.
    Class names and the transform come from the file's gcnet.* metadata, so the .onnx file alone suffices.
    `threads`: onnxruntime's intra-op threads (None: its default, one per core)."""
    backend = "onnx"

    def __init__(self, path, threads=None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError("%s does not exist" % self.path)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ModelError("onnxruntime cannot be imported (%s); run `source tools/env.sh` first" % e)
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        try:
            self.sess = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as e:      # onnxruntime's InvalidGraph / Fail / InvalidProtobuf
            raise ModelError("onnxruntime cannot load %s: %s" % (self.path, str(e).splitlines()[0]))
        meta = self.sess.get_modelmeta().custom_metadata_map
        try:
            t = json.loads(meta["gcnet.transform"])
            self.scale, self.crop, self.mean = float(t["scale"]), int(t["crop"]), float(t["mean"])
            names = json.loads(meta["gcnet.class_names"])
            self.meta = json.loads(meta.get("gcnet.meta", "{}"))
        except (KeyError, ValueError, TypeError) as e:
            raise ModelError("%s has no gcnet metadata (%s): export it with tools/export_onnx.py" % (self.path, e))
        self.inputs = tuple(i.name for i in self.sess.get_inputs())
        self.input = "x" if "x" in self.inputs else self.inputs[0]
        self.outputs = [o.name for o in self.sess.get_outputs()]
        prob = [o for o in self.sess.get_outputs() if o.name == "prob"]
        self._set_classes(names, int(prob[0].shape[1]) if prob else 0)

    def has(self, blob):
        return blob in self.outputs

    def run(self, feeds, blobs):
        return dict(zip(blobs, self.sess.run(list(blobs), feeds)))


BACKENDS = ("caffe", "onnx")
VARIANTS = {"deploy": (DEPLOY, ONNX), "deploy_ref": (DEPLOY_REF, ONNX_REF)}


def caffe_importable() -> bool:
    try:
        import_caffe()
    except ModelError:
        return False
    return True


def onnx_variant_path(path, variant: str = "deploy") -> Path:
    """The .onnx file of a variant: in a model folder model.onnx / model_ref.onnx; beside a file X.onnx, X_ref.onnx
    for deploy_ref."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return p if variant == "deploy" else p.with_name(p.stem + "_ref" + p.suffix)
    return p / VARIANTS[variant][1]


def open_model(path, backend=None, variant: str = "deploy", threads=None) -> FaceModel:
    """The model of a trained folder (or of an exported .onnx file) in `backend` ("caffe", "onnx"; None: Caffe
    where pycaffe imports, else onnxruntime on the folder's model.onnx).  `variant` "deploy_ref" is the net with
    the person's reference as input (MissingVariant when the folder has none)."""
    p = Path(path)
    if variant not in VARIANTS:
        raise ValueError("variant must be one of %s" % ", ".join(VARIANTS))
    is_file = p.suffix.lower() == ".onnx"
    if backend is None:
        backend = "onnx" if is_file or not caffe_importable() else "caffe"
    if backend not in BACKENDS:
        raise ModelError("backend must be one of %s, not %r" % (", ".join(BACKENDS), backend))
    if backend == "caffe":
        if is_file:
            raise ModelError("%s is an ONNX file: the caffe backend needs the model folder" % p)
        return DeployModel(p, deploy=VARIANTS[variant][0])
    f = onnx_variant_path(p, variant)
    if not f.exists():
        if variant != "deploy" and (is_file or p.is_dir()):
            raise MissingVariant("%s does not exist" % f)
        why = "" if caffe_importable() else " (and pycaffe cannot be imported here)"
        raise ModelError("%s does not exist%s: export it with tools/export_onnx.py --model %s where Caffe runs"
                         % (f, why, p))
    return OnnxModel(f, threads=threads)


def read_meta(model_dir) -> dict:
    """meta.json of a model folder; ModelError naming it when it is not JSON."""
    p = Path(model_dir) / META
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise ModelError("cannot read %s: %s" % (p, e))


_MODEL_CACHE = {}


def load_model(model_dir):
    """DeployModel of a folder, cached while its weights are unchanged."""
    d = Path(model_dir).resolve()
    w = d / FINAL
    key = (str(d), os.path.getmtime(str(w)) if w.exists() else None)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = DeployModel(d)
    return _MODEL_CACHE[key]


def predict_arrays(model_dir, aligned66_batch):
    """Class probabilities (N, n_classes) of aligned 66x66 uint8 faces ((N, 66, 66) or (N, C, 66, 66), channel 0
    = the expression image X) with the model of ``model_dir``: the exact preprocessing of the test stage."""
    return load_model(model_dir).predict(aligned66_batch)

"""tools/export_onnx.py --check: the exported ONNX models against Caffe on the same inputs (random images and the
first images of the fold's test LMDB), output by output, with the max-pooling argmax positions compared too.

Near ties: Caffe and onnxruntime sum convolutions in different orders (differences ~1e-6), so where two values of a
pooling window are that close the two may pick different argmax positions; a decoder then unpools a value at
another position and its output (and a GCNet's probabilities, through X_r hat) differs by far more than 1e-4 on
that image (and the pooling layers after that decoder may then differ too: a cascade).  Such images are counted and
reported apart; the check fails when any output differs by more than TOLERANCE on an image whose argmaxes all
agree, or when an argmax differs, with no earlier difference to explain it, where the two values are not a near tie
(gap > TOLERANCE in Caffe's pooling input: a mapping error, not rounding).  docs/choices.md, "Trained models
outside Caffe".
"""
from pathlib import Path
from typing import List

import numpy as np

from gcnet.onnx_export import TOLERANCE, net_to_onnx, read_prototxt


def check_inputs(model_dir, inputs: List[str], n_random: int, n_lmdb: int, seed: int, crop: int, scale: float,
                 mean: float):
    """({input: (N, 1, crop, crop) float32}, description, notes): n_random uniform [0, 1) images, then the
    first n_lmdb samples of the fold's test LMDB (x = channel X, xr = channel X_r, the true reference)."""
    from gcnet.caffe_io import read_lmdb
    from gcnet.inference import REFERENCE_INPUT, crop_scale
    from gcnet.layout import ResultsLayout, fold_of
    rng = np.random.default_rng(seed)
    feeds = {k: [rng.random((n_random, 1, crop, crop), dtype=np.float32)] for k in inputs}
    d = Path(model_dir).resolve()
    k = fold_of(d.name)
    notes, n_db = [], 0
    # <out>/<dataset>/<model>/fold_K -> <out>/<dataset>/lmdb/fold_K/test
    lmdb = ResultsLayout(d.parents[2], d.parents[1].name).lmdb(k, "test") if k is not None and len(d.parents) > 2 \
        else None
    channel = {"x": 0, REFERENCE_INPUT: 1}       # the Datum [X, X_r]: X_r is the true reference
    if n_lmdb and lmdb is not None and lmdb.is_dir() and set(inputs) <= set(channel):
        items = read_lmdb(str(lmdb), limit=n_lmdb)
        pairs = np.stack([a for _, a, _ in items])
        n_db = len(items)
        for name in inputs:
            feeds[name].append(crop_scale(pairs[:, channel[name]:channel[name] + 1], crop, scale, mean))
    elif n_lmdb and not set(inputs) <= set(channel):
        notes.append("inputs %s are not the LMDB's X and X_r: random inputs only" % ", ".join(inputs))
    elif n_lmdb:
        notes.append("no test LMDB at %s: random inputs only" % (lmdb or "<results>/<dataset>/lmdb/fold_K/test"))
    desc = "%d random + %d test-LMDB images" % (n_random, n_db)
    return {k: np.concatenate(v) for k, v in feeds.items()}, desc, notes


def _mask_influence(net_param):
    """{pooling layer name: the pooling layers whose argmax choice (mask) reaches its input through an unpooling}:
    a different argmax there changes this layer's input by more than rounding (a cascade, not a near tie)."""
    infl, out = {}, {}
    for layer in net_param.layer:
        src = set().union(*[infl.get(b, set()) for b in layer.bottom]) if len(layer.bottom) else set()
        if layer.type == "Pooling" and len(layer.top) > 1:
            out[layer.name] = src
            infl[layer.top[0]], infl[layer.top[1]] = src, src | {layer.name}
        else:
            for t in layer.top:
                infl[t] = src
    return out


def _mask_flips(net_param, caffe_blobs, onnx_masks, n):
    """Max-pooling argmax positions where onnxruntime differs from Caffe, in net order.  -> (images with a flip,
    positions, all positions, largest gap): the gap is Caffe's value at its argmax minus its value at
    onnxruntime's, in Caffe's pooling input, over the flips that no earlier flip of the same image explains."""
    flipped = {}                                   # pooling layer -> (n,) bool
    influence = _mask_influence(net_param)
    positions, total, max_gap = 0, 0, 0.0
    for layer in net_param.layer:
        if layer.name not in influence:
            continue
        mc = caffe_blobs[layer.top[1]].astype(np.int64)
        mo = onnx_masks[layer.top[1]].astype(np.int64)
        diff = mc != mo
        total += mc.size
        flipped[layer.name] = diff.reshape(n, -1).any(1)
        positions += int(diff.sum())
        cascade = np.zeros(n, bool)
        for up in influence[layer.name]:
            cascade |= flipped[up]
        own = diff & ~cascade[:, None, None, None]
        if own.any():
            x = caffe_blobs[layer.bottom[0]]
            planes = x.reshape(mc.shape[0] * mc.shape[1], -1)
            own = own.reshape(len(planes), -1)
            rows = np.nonzero(own)[0]
            gap = planes[rows, mc.reshape(len(planes), -1)[own]] - planes[rows, mo.reshape(len(planes), -1)[own]]
            max_gap = max(max_gap, float(np.max(np.abs(gap))))
    any_flip = np.zeros(n, bool)
    for f in flipped.values():
        any_flip |= f
    return any_flip, positions, total, max_gap


def compare(model_dir, prototxt: str, onnx_path, feeds, threads: int = 1) -> dict:
    """Caffe (the folder's `prototxt` with final.caffemodel) and onnxruntime (`onnx_path`) on the same inputs
    ({input: (N, 1, crop, crop) float32}).  -> {"outputs": {blob: (N,) largest |difference| per input}, "flipped":
    (N,) bool (an argmax differs), "positions", "of", "max_gap" (see _mask_flips), "labels_agree" (N,) bool}."""
    import onnxruntime as ort
    from gcnet.caffe_io import read_caffemodel
    from gcnet.inference import DeployModel, OnnxModel
    from gcnet.layout import FINAL
    onnx_model = OnnxModel(onnx_path, threads=threads)
    caffe_model = DeployModel(model_dir, deploy=prototxt)
    n = len(next(iter(feeds.values())))
    outputs = list(onnx_model.outputs)
    got = onnx_model.run(feeds, outputs)
    net = read_prototxt(Path(model_dir) / prototxt)
    masks = [l.top[1] for l in net.layer if l.type == "Pooling" and len(l.top) > 1]
    pool_in = [l.bottom[0] for l in net.layer if l.type == "Pooling" and len(l.top) > 1]
    ref = caffe_model.run(feeds, outputs + masks + pool_in)
    res = {"outputs": {b: np.abs(got[b].astype(np.float64) - ref[b]).reshape(n, -1).max(1) for b in outputs},
           "flipped": np.zeros(n, bool), "positions": 0, "of": 0, "max_gap": 0.0}
    if masks:
        # the pooling masks from a second, in-memory export of the same net with the masks as outputs
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = threads
        model = net_to_onnx(net, read_caffemodel(str(Path(model_dir) / FINAL)), outputs=masks)
        diag = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        got_masks = dict(zip(masks, diag.run(masks, feeds)))
        res["flipped"], res["positions"], res["of"], res["max_gap"] = _mask_flips(net, ref, got_masks, n)
    if "prob" in outputs:
        res["labels_agree"] = got["prob"].reshape(n, -1).argmax(1) == ref["prob"].reshape(n, -1).argmax(1)
    return res


def check_export(model_dir, exported: List[dict], n_random: int = 8, n_lmdb: int = 32, seed: int = 0,
                 threads: int = 1) -> List[dict]:
    """Caffe vs onnxruntime for each exported variant (export_model's records).  -> one report per variant:
    {variant, onnx, inputs (description), notes, n, outputs: {blob: {worst, worst_agreeing, beyond}}, flips:
    {images, positions, of, max_gap}, labels_agree, ok}."""
    from gcnet.inference import OnnxModel
    reports = []
    for e in exported:
        m = OnnxModel(e["onnx"], threads=threads)
        feeds, desc, notes = check_inputs(model_dir, list(m.inputs), n_random, n_lmdb, seed, m.crop, m.scale, m.mean)
        c = compare(model_dir, Path(e["prototxt"]).name, e["onnx"], feeds, threads)
        flipped, n = c["flipped"], len(c["flipped"])
        rep = {"variant": e["variant"], "onnx": e["onnx"], "inputs": desc, "notes": notes, "n": n, "outputs": {},
               "flips": {"images": int(flipped.sum()), "positions": c["positions"], "of": c["of"],
                         "max_gap": c["max_gap"]}}
        ok = c["max_gap"] <= TOLERANCE
        for b, d in c["outputs"].items():
            agree = d[~flipped]
            rep["outputs"][b] = {"worst": float(d.max()), "worst_agreeing": float(agree.max()) if agree.size else 0.0,
                                 "beyond": int(np.sum(d > TOLERANCE))}
            ok = ok and rep["outputs"][b]["worst_agreeing"] <= TOLERANCE
        if "labels_agree" in c:
            rep["labels_agree"] = int(c["labels_agree"].sum())
        rep["ok"] = bool(ok)
        reports.append(rep)
    return reports

"""Per-group gradient norms of a training net (tools/grad_norms.py): which part of the objective dominates the
global norm that Caffe's clip_gradients acts on (docs/choices.md)."""
from collections import OrderedDict
from pathlib import Path

import numpy as np

# (group, test on the layer name); the first match wins; order = print order
GROUPS = [("de1r output Scale", lambda n: n == "de1r_scale1"), ("de2r output Scale", lambda n: n == "de2r_scale1"),
          ("de2i output Scale", lambda n: n == "de2i_scale1"),
          ("En_1", lambda n: n.startswith("en1_")), ("De_1r", lambda n: n.startswith("de1r_")),
          ("En_2", lambda n: n.startswith("en2")), ("De_2r", lambda n: n.startswith("de2r_")),
          ("De_2i", lambda n: n.startswith("de2i_")), ("classifier", lambda n: True)]


def group_of(layer: str) -> str:
    return next(g for g, test in GROUPS if test(layer))


def gradient_norms(model_dir, weights="init.caffemodel", batches: int = 4) -> dict:
    """{"groups": {group: norm}, "total": norm, "losses": {name: value}}, each the mean over `batches` TRAIN-phase
    forward/backward passes of model_dir/train_val.prototxt with model_dir/weights (no update is made).  Shared
    parameters (En_2 on X and on the generated reference) are counted once."""
    from gcnet.inference import import_caffe, load_net
    caffe = import_caffe()
    d = Path(model_dir)
    w = Path(weights) if Path(weights).is_absolute() else d / weights
    for p in (d / "train_val.prototxt", w):
        if not p.exists():
            raise OSError("%s does not exist" % p)
    caffe.set_mode_cpu()
    net = load_net(d / "train_val.prototxt", w, "TRAIN")
    sums = OrderedDict((g, 0.0) for g, _ in GROUPS)
    totals, losses = [], OrderedDict()
    for _ in range(batches):
        net.clear_param_diffs()
        out = net.forward()
        net.backward()
        seen, sq = set(), OrderedDict((g, 0.0) for g, _ in GROUPS)
        for name, blobs in net.params.items():
            if net.layer_dict[name].type == "BatchNorm":
                continue
            for b in blobs:
                key = b.diff.__array_interface__["data"][0]
                if key in seen:
                    continue
                seen.add(key)
                sq[group_of(name)] += float(np.sum(b.diff.astype(np.float64) ** 2))
        for g in sq:
            sums[g] += np.sqrt(sq[g]) / batches
        totals.append(np.sqrt(sum(sq.values())))
        for k, v in out.items():
            if k.startswith("loss"):
                losses[k] = losses.get(k, 0.0) + float(np.asarray(v).reshape(-1)[0]) / batches
    return {"groups": OrderedDict((g, v) for g, v in sums.items() if v > 0), "total": float(np.mean(totals)),
            "losses": losses}

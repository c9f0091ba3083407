"""Initial weights of the expression models from the pretrained nets (paper section 4.1), by net surgery in pycaffe.

The rules are each model's `sources` in config.MODELS:
    GCNets   En_1 en1_*, De_1r de1r_* <- generator (the per-fold first step; encdec without it)
             En_2 en2_*, en2r_* (shared) <- cnn_id en2_*
    R1       De_2r de2r_*, De_2i de2i_* <- encdec de1r_* (renamed)
    cnn      en2_* <- cnn_id en2_*;   cnn_pair   en2_*, en2r_* <- cnn_id en2_*
    generator (stage)  en1_*, de1r_* <- encdec
Other layers (fc1, fc2) keep their filler's random values, drawn from Caffe's generator seeded with `seed` (default:
the solver's random_seed), so the same inputs give the same init.caffemodel; BatchNorm statistics are zeroed unless
bn_stats="copy" (docs/choices.md).  A missing source layer or a shape mismatch is a SurgeryError naming the layer.
CLI (the experiment's surgery stage, in a subprocess so that a Caffe CHECK failure cannot kill the runner):
    python -m gcnet.surgery MODEL TRAIN_VAL.prototxt OUT.caffemodel --encdec E.caffemodel --cnn-id C.caffemodel
        [--generator G.caffemodel] [--report surgery.json] [--bn-stats zero|copy] [--seed N]
"""
import argparse
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

from gcnet.caffe_io import WeightsError, read_caffemodel
from gcnet.config import MODELS, PRETRAIN_MODELS, STAGE_MODELS, SolverOptions
from gcnet.util import write_json

__all__ = ["SurgeryError", "rules_for", "plan", "init_weights", "main"]


# the nets whose weights a surgery copies (a --<net> option each)
SOURCE_NETS = PRETRAIN_MODELS + STAGE_MODELS


class SurgeryError(Exception):
    pass


def rules_for(model: str, generator: bool = False) -> List[Tuple[str, str, str]]:
    """[(target layer prefix, source net, source layer prefix)] of `model` (config.MODELS[model].sources); the first
    matching rule applies.  `generator`: the per-fold generator stage (the paper's first step) was given; without it
    a rule from the stage takes the stage's own source (En_1/De_1r from encdec)."""
    if model not in MODELS or not MODELS[model].sources:
        known = [m for m, f in MODELS.items() if f.sources]
        raise SurgeryError("no surgery rules for model %r (models: %s)" % (model, ", ".join(known)))
    rules = []
    for target, net, prefix in MODELS[model].sources:
        if net in MODELS and MODELS[net].kind == "stage" and not generator:
            # the stage's layer `prefix...` came from (net2, prefix2...): take it from there
            net, prefix = next(((n2, p2) for t2, n2, p2 in MODELS[net].sources if t2 == prefix), (net, prefix))
        rules.append((target, net, prefix))
    return rules


def _read_source(path: str) -> Dict[str, List[np.ndarray]]:
    try:
        return read_caffemodel(path)
    except WeightsError as e:
        raise SurgeryError(str(e))


def plan(model: str, target_shapes: Dict[str, List[Tuple[int, ...]]],
         sources: Dict[str, Dict[str, List[np.ndarray]]]) -> dict:
    """Decide what each target layer (with params) gets.  Pure function (no caffe): used by init_weights and tests.

    Returns {"copied": [{layer, from_net, from_layer, shapes}], "random": [{layer, shapes}],
    "unused_source_layers": {net: [layers]}}; raises SurgeryError on a missing source layer or a shape mismatch."""
    rules = rules_for(model, generator="generator" in sources)
    copied, random_init, errors = [], [], []
    used = {net: set() for net in sources}
    for layer, shapes in target_shapes.items():
        rule = next((r for r in rules if layer.startswith(r[0])), None)
        if rule is None:
            random_init.append({"layer": layer, "shapes": [list(s) for s in shapes]})
            continue
        prefix, src_net, src_prefix = rule
        src_layer = src_prefix + layer[len(prefix):]
        if src_net not in sources:
            errors.append("layer %s: needs %s from the %s net, which was not given" % (layer, src_layer, src_net))
            continue
        blobs = sources[src_net].get(src_layer)
        if blobs is None:
            errors.append("layer %s: source layer %s not found in the pretrained %s net" % (layer, src_layer, src_net))
            continue
        src_shapes = [tuple(b.shape) for b in blobs]
        if [tuple(s) for s in shapes] != src_shapes:
            errors.append("layer %s: shape mismatch with %s/%s: target %s, pretrained %s"
                          % (layer, src_net, src_layer, [tuple(s) for s in shapes], src_shapes))
            continue
        used[src_net].add(src_layer)
        copied.append({"layer": layer, "from_net": src_net, "from_layer": src_layer,
                       "shapes": [list(s) for s in shapes]})
    if errors:
        raise SurgeryError("net surgery for %s failed: %s" % (model, "; ".join(errors)))
    unused = {net: sorted(set(layers) - used[net]) for net, layers in sources.items()}
    return {"copied": copied, "random": random_init, "unused_source_layers": unused}


def _fmt_shapes(shapes) -> str:
    return " ".join("x".join(str(d) for d in s) for s in shapes)


def init_weights(model: str, train_val: str, out_path: str, weights: Dict[str, Optional[str]],
                 report_path: Optional[str] = None, log=print, bn_stats: str = "zero",
                 seed: int = SolverOptions.random_seed) -> dict:
    """Build `model`'s train_val net (TRAIN phase) in pycaffe, copy the pretrained layers into it from `weights`
    ({net of SOURCE_NETS: its .caffemodel}), save it as `out_path` (all layers, the uncopied ones with their filler's
    random values) and return the report.  `bn_stats` "zero" zeroes every BatchNorm layer's running statistics,
    "copy" keeps the pretrained ones."""
    if bn_stats not in ("zero", "copy"):
        raise SurgeryError("bn_stats must be zero or copy, not %r" % bn_stats)
    unknown = sorted(set(weights) - set(SOURCE_NETS))
    if unknown:
        raise SurgeryError("no pretrained net %s (nets: %s)" % (", ".join(unknown), ", ".join(SOURCE_NETS)))
    sources = {net: _read_source(weights[net]) for net in SOURCE_NETS if weights.get(net)}
    import caffe
    caffe.set_mode_cpu()
    caffe.set_random_seed(seed)             # the fillers of the layers that are not copied
    net = caffe.Net(train_val, caffe.TRAIN)
    target_shapes = {name: [tuple(b.data.shape) for b in blobs] for name, blobs in net.params.items()}
    report = plan(model, target_shapes, sources)
    for c in report["copied"]:
        for dst, src in zip(net.params[c["layer"]], sources[c["from_net"]][c["from_layer"]]):
            dst.data[...] = src
        log("  copied  %-16s <- %s/%-14s %s" % (c["layer"], c["from_net"], c["from_layer"], _fmt_shapes(c["shapes"])))
    zeroed = [name for name in net.params if net.layer_dict[name].type == "BatchNorm"] if bn_stats == "zero" else []
    for name in zeroed:
        for blob in net.params[name]:
            blob.data[...] = 0
    if zeroed:
        log("  zeroed BatchNorm statistics of %d layers" % len(zeroed))
    report["bn_stats"] = bn_stats
    report["seed"] = seed
    report["bn_zeroed"] = zeroed
    for r in report["random"]:
        log("  random  %-16s (filler)                  %s" % (r["layer"], _fmt_shapes(r["shapes"])))
    for src_net, layers in report["unused_source_layers"].items():
        if layers:
            log("  not used from %s: %s" % (src_net, ", ".join(layers)))
    tmp = out_path + ".tmp"
    net.save(tmp)
    os.replace(tmp, out_path)
    report.update({"model": model, "train_val": os.path.abspath(train_val), "out": os.path.abspath(out_path),
                   "sources": {net: weights.get(net) and os.path.abspath(weights[net]) for net in SOURCE_NETS}})
    if report_path:
        write_json(report_path, report)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gcnet.surgery", description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("train_val")
    ap.add_argument("out")
    for net in SOURCE_NETS:                  # --encdec, --cnn-id, --generator
        ap.add_argument("--" + net.replace("_", "-"), dest=net, metavar="CAFFEMODEL",
                        help="weights of %s (a %s net)" % (net, MODELS[net].kind))
    ap.add_argument("--report")
    ap.add_argument("--bn-stats", choices=("zero", "copy"), default="zero")
    ap.add_argument("--seed", type=int, default=SolverOptions.random_seed,
                    help="seed of the random fillers (default: the solver's random_seed, %(default)s)")
    a = ap.parse_args(argv)
    try:
        rep = init_weights(a.model, a.train_val, a.out, {net: getattr(a, net) for net in SOURCE_NETS}, a.report,
                           bn_stats=a.bn_stats, seed=a.seed)
    except SurgeryError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    print("surgery: %d layers copied, %d random -> %s" % (len(rep["copied"]), len(rep["random"]), a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

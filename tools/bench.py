#!/usr/bin/env python
"""Forward/backward time per iteration of the train_val nets with `caffe time` (the figures of BENCHMARKS.md).
Run through tools/bench.sh, which sources tools/env.sh first.

    tools/bench.sh [--batch 64] [--iterations 10] [--models cnn,gcnet_s1r1] [--gpu ID]
                   [--builds PREFIX[,PREFIX...]] [--layers DIR[,DIR...]] [--repeats R] [--profile]

The nets are generated from gcnet/nets.py with the given batch and read a random LMDB of 2x66x66 Datums (the format
of the real pipeline), written to a temporary folder.  Each `caffe time` run gives Caffe's own average over
--iterations forward-backward passes; --repeats R runs it R times, interleaved (repeat, then model, then build), and
the table gives the MEDIAN of the R averages, so builds are compared under the same load.

--builds    installed Caffe builds to compare (folders caffe-cpu-<key> of the cache, default $CAFFE_ROOT, the one
            of tools/env.sh); each run gets that build's caffe, libcaffe and pycaffe.  With two or more builds each
            line gives the ratio of its median to the first build's (same model).
--layers    the python_layers/ folder each build runs (one per build, same order; default: this tree's for all),
            e.g. a `git worktree` of an older commit's python_layers, to compare Python layer versions as well.
--profile   per layer type, the share of the forward-backward time (Caffe's per-layer timings: Convolution,
            Deconvolution, Pooling, ReLU, BatchNorm, Scale, Python, and the rest), and the GFLOP/s of the whole
            iteration (multiply-adds of Convolution, Deconvolution and InnerProduct, forward and backward, x2)
            beside the sgemm rate of the same BLAS measured in the same run (a 1024x1024x1024 InnerProduct forward
            under `caffe time`, once per repeat with the first build; median); then each Python layer's median
            forward / backward ms.
Threads: whatever OPENBLAS_NUM_THREADS says (printed in the header).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from _repo import REPO

TYPES = ["Convolution", "Deconvolution", "Pooling", "ReLU", "BatchNorm", "Scale", "Python"]
ALL = "encdec,cnn_id,cnn,gcnet_s0r0,gcnet_s1r0,gcnet_s0r1,gcnet_s1r1"
SGEMM_N = 1024
LAYERS = os.path.join(REPO, "python_layers")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="tools/bench.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--models", default=ALL)
    ap.add_argument("--gpu", default="")
    ap.add_argument("--builds", default=os.environ.get("CAFFE_ROOT", ""),
                    help="comma list of installed Caffe prefixes (default $CAFFE_ROOT)")
    ap.add_argument("--layers", default="", help="comma list of python_layers folders, one per build")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args(argv)
    if a.batch < 1 or a.iterations < 1 or a.repeats < 1:
        ap.error("--batch, --iterations and --repeats must be >= 1")
    a.builds = [b for b in a.builds.split(",") if b]
    if not a.builds:
        ap.error("no Caffe build: run tools/setup.sh and source tools/env.sh, or pass --builds")
    for b in a.builds:
        if not os.path.isfile(os.path.join(b, "bin", "caffe")):
            ap.error("no bin/caffe under build %s" % b)
    a.layers = [d for d in a.layers.split(",") if d] or [LAYERS] * len(a.builds)
    if len(a.layers) != len(a.builds):
        ap.error("--layers needs one folder per build (%d), got %d" % (len(a.builds), len(a.layers)))
    for d in a.layers:
        if not os.path.isfile(os.path.join(d, "gcnet_layers.py")):
            ap.error("no gcnet_layers.py in --layers folder %s" % d)
    a.models = [m for m in a.models.split(",") if m]
    return a


def build_env(prefix, layers=None):
    """The environment of tools/env.sh with its Caffe build (CAFFE_ROOT) replaced by `prefix` (and this tree's
    python_layers/ by `layers`, when given)."""
    env = dict(os.environ)
    if layers:      # in place of this tree's folder (tools/env.sh), else first on the path
        path, layers = env.get("PYTHONPATH", ""), os.path.abspath(layers)
        env["PYTHONPATH"] = path.replace(LAYERS, layers) if LAYERS in path else layers + os.pathsep + path
    cur = os.environ.get("CAFFE_ROOT", "")
    for k in ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH"):
        v = env.get(k, "")
        if cur and cur in v:
            v = v.replace(cur, prefix)
        elif k == "PATH":
            v = os.path.join(prefix, "bin") + os.pathsep + v
        elif k == "LD_LIBRARY_PATH":
            v = os.path.join(prefix, "lib") + (os.pathsep + v if v else "")
        env[k] = v
    env["CAFFE_ROOT"] = prefix
    env["GLOG_minloglevel"] = "0"
    env["GLOG_logtostderr"] = "1"
    return env


def write_lmdb(path, n):
    import lmdb
    from caffe.proto import caffe_pb2
    os.makedirs(path)
    rng = np.random.RandomState(0)
    for sub in ("train", "test", "pretrain"):
        env = lmdb.open(os.path.join(path, sub), map_size=1 << 30)
        with env.begin(write=True) as txn:
            for i in range(n):
                d = caffe_pb2.Datum(channels=2, height=66, width=66, label=i % 7,
                                    data=rng.randint(0, 256, (2, 66, 66), dtype=np.uint8).tobytes())
                txn.put(b"%08d" % i, d.SerializeToString())
        env.close()


_NUM = r"([0-9.eE+-]+)"


def parse_time_log(text):
    """Caffe `caffe time` log (GLOG level 0) -> averages (ms), per-layer forward/backward ms and top shapes."""
    out = {"layers": {}, "shapes": {}}
    for key, pat in (("fb", "Average Forward-Backward"), ("f", "Average Forward pass"),
                     ("b", "Average Backward pass")):
        m = re.search(pat + r": " + _NUM + " ms", text)
        out[key] = float(m.group(1)) if m else None
    for m in re.finditer(r"\]\s+(\S+)\s+(forward|backward): " + _NUM + " ms", text):
        out["layers"].setdefault(m.group(1), {})[m.group(2)] = float(m.group(3))
    # "Setting up <layer>" ... "Top shape: 64 32 60 60 (7372800)" lines, one per top in order
    current, k = None, 0
    for line in text.splitlines():
        m = re.search(r"Setting up (\S+)", line)
        if m:
            current, k = m.group(1), 0
            continue
        m = re.search(r"Top shape: ([0-9 ]+) \(", line)
        if m and current is not None:
            out["shapes"][(current, k)] = tuple(int(v) for v in m.group(1).split())
            k += 1
    return out


def net_flops(prototxt, shapes):
    """Forward and backward FLOPs (2 per multiply-add) of the Convolution, Deconvolution and InnerProduct layers
    of a TRAIN net, with top shapes from its `caffe time` log.  Backward: the weight gradient always, the data
    gradient only where the bottom needs one (produced, directly or not, by a layer with weights)."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    net = caffe_pb2.NetParameter()
    with open(prototxt) as f:
        text_format.Merge(f.read(), net)
    blob_shape, needs_grad = {}, {}
    fwd = bwd = 0.0
    for layer in net.layer:
        if any(r.phase == caffe_pb2.TEST for r in layer.include):
            continue
        tops = [shapes.get((layer.name, k)) for k in range(len(layer.top))]
        bshape = [blob_shape.get(b) for b in layer.bottom]
        grad_in = any(needs_grad.get(b, False) for b in layer.bottom)
        macs = 0
        if layer.type == "Convolution" and tops[0]:
            p = layer.convolution_param
            kh = p.kernel_h or p.kernel_size[0]
            kw = p.kernel_w or (p.kernel_size[-1] if p.kernel_size else kh)
            macs = np.prod(tops[0]) * (bshape[0][1] // max(1, p.group)) * kh * kw
        elif layer.type == "Deconvolution" and tops[0]:
            p = layer.convolution_param
            kh = p.kernel_h or p.kernel_size[0]
            kw = p.kernel_w or (p.kernel_size[-1] if p.kernel_size else kh)
            macs = np.prod(bshape[0]) * (tops[0][1] // max(1, p.group)) * kh * kw
        elif layer.type == "InnerProduct" and tops[0]:
            axis = layer.inner_product_param.axis
            macs = np.prod(bshape[0][:axis]) * np.prod(bshape[0][axis:]) * layer.inner_product_param.num_output
        if macs:
            fwd += 2.0 * macs
            bwd += 2.0 * macs * (2 if grad_in else 1)
        has_weights = layer.type in ("Convolution", "Deconvolution", "InnerProduct", "Scale")
        for k, t in enumerate(layer.top):
            if tops[k] is not None:
                blob_shape[t] = tops[k]
            needs_grad[t] = needs_grad.get(t, False) or grad_in or has_weights
    return fwd, bwd


def layer_types(prototxt):
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    net = caffe_pb2.NetParameter()
    with open(prototxt) as f:
        text_format.Merge(f.read(), net)
    return {l.name: l.type for l in net.layer}


def caffe_time(model_path, iterations, env, gpu, log_path):
    cmd = ["caffe", "time", "-model", model_path, "-iterations", str(iterations)]
    if gpu:
        cmd += ["-gpu", gpu]
    with open(log_path, "w") as f:
        r = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    text = open(log_path).read()
    if r.returncode != 0:
        sys.stderr.write("\n".join(text.splitlines()[-5:]) + "\n")
        raise SystemExit("bench: caffe time failed for %s (log %s)" % (model_path, log_path))
    return parse_time_log(text)


def sgemm_net(path):
    with open(path, "w") as f:
        f.write('name: "sgemm"\nlayer { name: "a" type: "Input" top: "a" input_param { shape { dim: %d dim: %d } } }\n'
                'layer { name: "ip" type: "InnerProduct" bottom: "a" top: "c" inner_product_param { '
                'num_output: %d bias_term: false weight_filler { type: "gaussian" std: 0.01 } } }\n'
                % (SGEMM_N, SGEMM_N, SGEMM_N))


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def main(argv=None):
    a = parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="gcnet-bench-")
    write_lmdb(os.path.join(tmp, "lmdb"), 2 * a.batch)
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_prototxt.py"), "--out", os.path.join(tmp, "nets"),
                    "--models", ",".join(a.models), "--batch", str(a.batch), "--data-root",
                    os.path.join(tmp, "lmdb")], check=True, stdout=subprocess.DEVNULL)
    envs = [build_env(b, d) for b, d in zip(a.builds, a.layers)]
    names = [os.path.basename(b.rstrip("/")) + ("" if os.path.abspath(d) == LAYERS else "+" + os.path.basename(
        os.path.dirname(os.path.abspath(d)))) for b, d in zip(a.builds, a.layers)]
    print("caffe time, batch %d, %d iterations x %d repeats (median), OPENBLAS_NUM_THREADS=%s, builds: %s"
          % (a.batch, a.iterations, a.repeats, os.environ.get("OPENBLAS_NUM_THREADS", "default"), ", ".join(names)))
    sgemm_path = os.path.join(tmp, "sgemm.prototxt")
    sgemm_net(sgemm_path)
    runs = {}           # (model, build index) -> list of parsed logs
    sgemm = []
    for rep in range(a.repeats):
        if a.profile:
            r = caffe_time(sgemm_path, 5, envs[0], a.gpu, os.path.join(tmp, "sgemm.log"))
            sgemm.append(2.0 * SGEMM_N ** 3 / (r["f"] * 1e-3) / 1e9)
        for m in a.models:
            for i, env in enumerate(envs):
                log = os.path.join(tmp, "%s.%d.%d.log" % (m, i, rep))
                runs.setdefault((m, i), []).append(
                    caffe_time(os.path.join(tmp, "nets", m, "train_val.prototxt"), a.iterations, env, a.gpu, log))
    multi = len(envs) > 1
    print("%-12s %-34s %12s %12s %12s%s" % ("model", "build", "fwd+bwd ms", "forward ms", "backward ms",
                                            "  ratio" if multi else ""))
    for m in a.models:
        base = med([r["fb"] for r in runs[(m, 0)]])
        for i in range(len(envs)):
            rs = runs[(m, i)]
            fb = med([r["fb"] for r in rs])
            print("%-12s %-34s %12.1f %12.1f %12.1f%s" % (
                m, names[i], fb, med([r["f"] for r in rs]), med([r["b"] for r in rs]),
                "  %.3f" % (fb / base) if multi else ""))
    if not a.profile:
        return 0
    print("\nsgemm %dx%dx%d (InnerProduct forward, first build): %.1f GFLOP/s (median of %d)"
          % (SGEMM_N, SGEMM_N, SGEMM_N, med(sgemm), len(sgemm)))
    short = {"Convolution": "Conv", "Deconvolution": "Deconv", "Pooling": "Pool", "BatchNorm": "BNorm"}
    print("share of the forward-backward time, % (Caffe's per-layer timings; other = remaining layers + overhead)")
    print("%-12s %-34s %8s %8s  %s" % ("model", "build", "GFLOP", "GFLOP/s",
                                        "  ".join("%6s" % short.get(t, t) for t in TYPES) + "   other"))
    for m in a.models:
        proto = os.path.join(tmp, "nets", m, "train_val.prototxt")
        types = layer_types(proto)
        for i in range(len(envs)):
            rs = runs[(m, i)]
            fwd, bwd = net_flops(proto, rs[0]["shapes"])
            fb = med([r["fb"] for r in rs])
            shares = []
            for t in TYPES:
                per_run = [sum(v.get("forward", 0) + v.get("backward", 0) for n, v in r["layers"].items()
                               if types.get(n) == t) for r in rs]
                shares.append(100.0 * med(per_run) / fb)
            other = 100.0 - sum(shares)
            print("%-12s %-34s %8.1f %8.1f  %s  %5.1f   (GFLOP: %.1f fwd + %.1f bwd; sgemm share %.2f)" % (
                m, names[i], (fwd + bwd) / 1e9, (fwd + bwd) / 1e9 / (fb * 1e-3),
                "  ".join("%6.1f" % s for s in shares), other, fwd / 1e9, bwd / 1e9,
                (fwd + bwd) / 1e9 / (fb * 1e-3) / med(sgemm)))
    print_python_layers(a.models, names, runs, tmp)
    return 0


def print_python_layers(models, names, runs, tmp):
    """--profile: each Python layer's median forward / backward ms (they are one type in the share table)."""
    for m in models:
        types = layer_types(os.path.join(tmp, "nets", m, "train_val.prototxt"))
        layers = [n for n, t in types.items() if t == "Python"]
        if not layers:
            continue
        print("\nPython layers of %s, ms forward / backward (median):" % m)
        for i, name in enumerate(names):
            rs = runs[(m, i)]
            cells = ["%s %.2f / %.2f" % (n, med([r["layers"].get(n, {}).get("forward") for r in rs]),
                                         med([r["layers"].get(n, {}).get("backward") for r in rs])) for n in layers]
            print("  %-34s %s" % (name, ", ".join(cells)))


if __name__ == "__main__":
    sys.exit(main())

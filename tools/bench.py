#!/usr/bin/env python
"""Forward/backward time per iteration of the train_val nets with `caffe time` (the figures of BENCHMARKS.md).
Run through tools/bench.sh, which sources tools/env.sh first.

    tools/bench.sh [--batch 64] [--iterations 10] [--models cnn,gcnet_s1r1] [--gpu ID]
                   [--builds PREFIX[,PREFIX...]] [--layers DIR[,DIR...]] [--fused-unpool on|off[,...]]
                   [--repeats R] [--profile]
                   [--concurrent K] [--json PATH]
                   [--vs-pytorch [--torch-python PYTHON]] [--jobs-vs-threads]

The nets are generated from gcnet/nets.py with the given batch and read a random LMDB of 2x66x66 Datums (the format
of the real pipeline), written to a temporary folder.  Each `caffe time` run gives Caffe's own average over
--iterations forward-backward passes; --repeats R runs it R times, interleaved (repeat, then model, then build), and
the table gives the MEDIAN of the R averages, so builds are compared under the same load.

--builds    installed Caffe builds to compare (folders caffe-cpu-<key> of the cache, default $CAFFE_ROOT, the one
            of tools/env.sh); each run gets that build's caffe, libcaffe and pycaffe.  With two or more builds each
            line gives the ratio of its median to the first build's (same model).
--layers    the python_layers/ folder each build runs (one per build, same order; default: this tree's for all),
            e.g. a `git worktree` of an older commit's python_layers, to compare Python layer versions as well.
--fused-unpool  on or off per build (same order): the nets with each decoder's 5x5 unpooling inside its
            Deconvolution (UnpoolDeconvolution, patch 0012) or as the MaxUnpool Python layer + Deconvolution
            (make_prototxt --no-fused-unpool); default: on for a build that has the layer (and no --gpu), else off.
--profile   per layer type, the share of the forward-backward time (Caffe's per-layer timings: Convolution,
            Deconvolution, UnpoolDeconvolution, Pooling, ReLU, BatchNorm, Scale, Python, and the rest), and the
            GFLOP/s of the whole iteration (multiply-adds of the (Unpool)Deconvolution, Convolution and InnerProduct
            layers, forward and backward, x2) beside the sgemm rate of the same BLAS measured in the same run (a
            1024x1024x1024 InnerProduct forward under `caffe time`, once per repeat with the first build; median);
            then each Python and UnpoolDeconvolution layer's median forward / backward ms, and the decoders' 5x5
            blocks (unpool1 + deconv1, fused or not) in ms.
--concurrent K  runs K copies of each `caffe time` at once (on one GPU with --gpu: trainings sharing it, as
            run_folds.sh --jobs K does); a model's figure is then the mean over the K copies of Caffe's average.
--json      also writes the medians as JSON: {"batch", "iterations", "repeats", "concurrent", "gpu", "builds",
            "models": {model: {build: {"fb", "f", "b"} (ms)}}}.
--vs-pytorch  also times the PyTorch eager twin of each net (gcnet/torch_twin.py: the same graph, shapes and
            losses), interleaved with the Caffe runs (repeat, then model, then the builds and the twin), and prints
            per build Caffe / PyTorch (ratio of the medians) and both GFLOP/s as a fraction of the sgemm rate
            measured in the same run.  The twin runs in --torch-python (default: this Python), which needs
            `pip install -r requirements-bench.txt`; it gets the same thread count as Caffe.
--jobs-vs-threads  instead: per model, Caffe's forward-backward time with 2 BLAS threads in one process, and
            with 1 thread in each of 2 processes started together (the main job's --jobs 2 --threads 1),
            interleaved over --repeats (first build); prints the iterations per second of each way (2 jobs: both
            added) and 2 jobs / 1 job (above 1: two single-thread jobs side by side do more work).
Threads: whatever OPENBLAS_NUM_THREADS says (printed in the header; the twin gets the same number, or all cores
when it is unset, like OpenBLAS).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from _repo import REPO

from gcnet import config as C  # noqa: E402  (after the path)

TYPES = ["Convolution", "Deconvolution", "UnpoolDeconvolution", "Pooling", "ReLU", "BatchNorm", "Scale", "Python"]
ALL = ",".join(C.ALL_MODELS)      # every net: pretraining, the generator stage, the expression models
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
    ap.add_argument("--fused-unpool", default="", help="comma list of on/off, one per build (default: on where the "
                    "build has UnpoolDeconvolution)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--concurrent", type=int, default=1, help="copies of each caffe time run at once")
    ap.add_argument("--json", help="write the medians to this JSON file")
    ap.add_argument("--vs-pytorch", action="store_true", help="also time the PyTorch eager twin (interleaved)")
    ap.add_argument("--torch-python", default=sys.executable, help="Python with torch for --vs-pytorch")
    ap.add_argument("--jobs-vs-threads", action="store_true", help="2 threads in 1 job vs 1 thread in 2 jobs")
    a = ap.parse_args(argv)
    if a.batch < 1 or a.iterations < 1 or a.repeats < 1 or a.concurrent < 1:
        ap.error("--batch, --iterations, --repeats and --concurrent must be >= 1")
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
    fused = [v for v in a.fused_unpool.split(",") if v]
    if fused and (len(fused) != len(a.builds) or set(fused) - {"on", "off"}):
        ap.error("--fused-unpool needs on or off for each of the %d build(s), got %r" % (len(a.builds), a.fused_unpool))
    a.fused_unpool = [v == "on" for v in fused] if fused else [has_fused_unpool(b) and not a.gpu for b in a.builds]
    a.models = [m for m in a.models.split(",") if m]
    if a.vs_pytorch:
        if a.gpu:
            ap.error("--vs-pytorch compares CPU runs; leave out --gpu")
        r = subprocess.run([a.torch_python, "-c", "import torch"], capture_output=True)
        if r.returncode != 0:
            ap.error("--vs-pytorch needs torch in %s: pip install -r requirements-bench.txt, or pass --torch-python"
                     % a.torch_python)
    return a


def has_fused_unpool(prefix):
    """Whether an installed Caffe build has the UnpoolDeconvolution layer (patch 0012)."""
    return os.path.isfile(os.path.join(prefix, "include", "caffe", "layers", "unpool_deconv_layer.hpp"))


def nets_dir(tmp, fused):
    """Where main() writes the nets, with or without the fused unpooling."""
    return os.path.join(tmp, "nets" if fused else "nets-unfused")


def net_path(tmp, model, fused):
    return os.path.join(nets_dir(tmp, fused), model, "train_val.prototxt")


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
        elif layer.type in ("Deconvolution", "UnpoolDeconvolution") and tops[0]:
            p = layer.convolution_param
            kh = p.kernel_h or p.kernel_size[0]
            kw = p.kernel_w or (p.kernel_size[-1] if p.kernel_size else kh)
            x = list(bshape[0])
            if layer.type == "UnpoolDeconvolution":     # the products run on the unpooled (out_h, out_w) input
                x[2:] = [layer.unpool_param.out_h, layer.unpool_param.out_w]
            macs = np.prod(x) * (tops[0][1] // max(1, p.group)) * kh * kw
        elif layer.type == "InnerProduct" and tops[0]:
            axis = layer.inner_product_param.axis
            macs = np.prod(bshape[0][:axis]) * np.prod(bshape[0][axis:]) * layer.inner_product_param.num_output
        if macs:
            fwd += 2.0 * macs
            bwd += 2.0 * macs * (2 if grad_in else 1)
        has_weights = layer.type in ("Convolution", "Deconvolution", "UnpoolDeconvolution", "InnerProduct", "Scale")
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


def caffe_time(model_path, iterations, env, gpu, log_path, concurrent=1):
    """Caffe's averages of `caffe time` (with `concurrent` copies at once: the mean over the copies)."""
    cmd = ["caffe", "time", "-model", model_path, "-iterations", str(iterations)]
    if gpu:
        cmd += ["-gpu", gpu]
    logs = [log_path] if concurrent == 1 else ["%s.%d" % (log_path, i) for i in range(concurrent)]
    files = [open(p, "w") for p in logs]
    try:
        procs = [subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT) for f in files]
        codes = [p.wait() for p in procs]
    finally:
        for f in files:
            f.close()
    parsed = []
    for p, rc in zip(logs, codes):
        text = open(p).read()
        if rc != 0:
            sys.stderr.write("\n".join(text.splitlines()[-5:]) + "\n")
            raise SystemExit("bench: caffe time failed for %s (log %s)" % (model_path, p))
        parsed.append(parse_time_log(text))
    if concurrent == 1:
        return parsed[0]
    out = dict(parsed[0])
    for key in ("fb", "f", "b"):
        vals = [r[key] for r in parsed if r[key] is not None]
        out[key] = sum(vals) / len(vals) if vals else None
    return out


def caffe_time_together(model_path, iterations, envs, log_paths):
    """`caffe time` in len(envs) processes started together -> their parsed logs."""
    procs = []
    for env, log in zip(envs, log_paths):
        f = open(log, "w")
        procs.append((subprocess.Popen(["caffe", "time", "-model", model_path, "-iterations", str(iterations)],
                                       env=env, stdout=f, stderr=subprocess.STDOUT), f, log))
    out = []
    for p, f, log in procs:
        rc = p.wait()
        f.close()
        text = open(log).read()
        if rc != 0:
            sys.stderr.write("\n".join(text.splitlines()[-5:]) + "\n")
            raise SystemExit("bench: caffe time failed for %s (log %s)" % (model_path, log))
        out.append(parse_time_log(text))
    return out


def jobs_vs_threads(a, env, tmp):
    """--jobs-vs-threads: per model, iterations/s of 1 job x 2 threads and of 2 jobs x 1 thread side by side."""
    two = dict(env, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    one = dict(env, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    res = {}
    for rep in range(a.repeats):
        for m in a.models:
            path = net_path(tmp, m, a.fused_unpool[0])
            (t2,) = caffe_time_together(path, a.iterations, [two], [os.path.join(tmp, "%s.t2.%d.log" % (m, rep))])
            pair = caffe_time_together(path, a.iterations, [one, one],
                                       [os.path.join(tmp, "%s.p%d.%d.log" % (m, k, rep)) for k in (0, 1)])
            res.setdefault(m, []).append((t2["fb"], [r["fb"] for r in pair]))
    print("%-12s %14s %14s %14s %8s" % ("model", "1 job x 2 thr", "2 jobs x 1 thr", "(ms each)", "ratio"))
    for m in a.models:
        one_job = med([1000.0 / t for t, _ in res[m]])
        two_jobs = med([sum(1000.0 / t for t in p) for _, p in res[m]])
        each = med([t for _, p in res[m] for t in p])
        print("%-12s %11.2f it/s %11.2f it/s %11.1f ms %8.3f   (2 threads: %.1f ms/it)" % (
            m, one_job, two_jobs, each, two_jobs / one_job, med([t for t, _ in res[m]])))
    return 0


def twin_threads():
    """The twin's thread count: OPENBLAS_NUM_THREADS as Caffe gets it, else all cores (OpenBLAS's default)."""
    v = os.environ.get("OPENBLAS_NUM_THREADS", "")
    return int(v) if v.isdigit() and int(v) > 0 else (os.cpu_count() or 1)


def write_twin(prototxt, path):
    """The layer list of the PyTorch twin of a train_val prototxt (gcnet.torch_twin.describe), as JSON."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    from gcnet import torch_twin
    net = caffe_pb2.NetParameter()
    with open(prototxt) as f:
        text_format.Merge(f.read(), net)
    with open(path, "w") as f:
        json.dump(torch_twin.describe(net), f)


def time_twin(python, net_json, iterations, log_path):
    """gcnet.torch_twin in its own process -> {"forward_ms", "backward_ms", "fb_ms"}."""
    t = str(twin_threads())
    env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, PYTHONPATH=REPO)
    cmd = [python, "-m", "gcnet.torch_twin", net_json, "--iterations", str(iterations), "--threads", t]
    with open(log_path, "w") as f:
        r = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=f, text=True)
    if r.returncode != 0:
        sys.stderr.write(open(log_path).read()[-2000:])
        raise SystemExit("bench: the PyTorch twin failed for %s (log %s)" % (net_json, log_path))
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {"fb": out["fb_ms"], "f": out["forward_ms"], "b": out["backward_ms"]}


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
    for fused in sorted(set(a.fused_unpool)):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_prototxt.py"), "--out",
                        nets_dir(tmp, fused),
                        "--models", ",".join(a.models), "--batch", str(a.batch), "--data-root",
                        os.path.join(tmp, "lmdb"), "--fused-unpool" if fused else "--no-fused-unpool"],
                       check=True, stdout=subprocess.DEVNULL)
    envs = [build_env(b, d) for b, d in zip(a.builds, a.layers)]
    if a.jobs_vs_threads:
        print("caffe time, batch %d, %d iterations x %d repeats (median), build %s"
              % (a.batch, a.iterations, a.repeats, a.builds[0]))
        return jobs_vs_threads(a, envs[0], tmp)
    names = [os.path.basename(b.rstrip("/")) + ("" if os.path.abspath(d) == LAYERS else "+" + os.path.basename(
        os.path.dirname(os.path.abspath(d)))) for b, d in zip(a.builds, a.layers)]
    if len(set(a.fused_unpool)) > 1:
        names = [n + (" fused" if f else " unfused") for n, f in zip(names, a.fused_unpool)]
    print("caffe time, batch %d, %d iterations x %d repeats (median)%s, OPENBLAS_NUM_THREADS=%s, builds: %s"
          % (a.batch, a.iterations, a.repeats, ", %d copies at once" % a.concurrent if a.concurrent > 1 else "",
             os.environ.get("OPENBLAS_NUM_THREADS", "default"), ", ".join(names)))
    sgemm_path = os.path.join(tmp, "sgemm.prototxt")
    sgemm_net(sgemm_path)
    runs = {}           # (model, build index) -> list of parsed logs
    twin = {}           # model -> list of twin timings (--vs-pytorch)
    sgemm = []
    if a.vs_pytorch:
        for m in a.models:
            write_twin(net_path(tmp, m, a.fused_unpool[0]), os.path.join(tmp, m + ".twin.json"))
        print("PyTorch twin: %s, %d threads" % (a.torch_python, twin_threads()))
    for rep in range(a.repeats):
        if a.profile or a.vs_pytorch:
            r = caffe_time(sgemm_path, 5, envs[0], a.gpu, os.path.join(tmp, "sgemm.log"))
            sgemm.append(2.0 * SGEMM_N ** 3 / (r["f"] * 1e-3) / 1e9)
        for m in a.models:
            for i, env in enumerate(envs):
                log = os.path.join(tmp, "%s.%d.%d.log" % (m, i, rep))
                runs.setdefault((m, i), []).append(
                    caffe_time(net_path(tmp, m, a.fused_unpool[i]), a.iterations, env, a.gpu, log,
                               a.concurrent))
            if a.vs_pytorch:
                twin.setdefault(m, []).append(time_twin(a.torch_python, os.path.join(tmp, m + ".twin.json"),
                                                        a.iterations, os.path.join(tmp, "%s.twin.%d.log" % (m, rep))))
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
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"batch": a.batch, "iterations": a.iterations, "repeats": a.repeats, "concurrent": a.concurrent,
                       "gpu": a.gpu or None, "builds": names,
                       "models": {m: {names[i]: {k: med([r[k] for r in runs[(m, i)]]) for k in ("fb", "f", "b")}
                                      for i in range(len(envs))} for m in a.models}}, f, indent=1)
    if a.vs_pytorch:
        print_vs_pytorch(a.models, names, runs, twin, sgemm, tmp, a.fused_unpool)
    if not a.profile:
        return 0
    print("\nsgemm %dx%dx%d (InnerProduct forward, first build): %.1f GFLOP/s (median of %d)"
          % (SGEMM_N, SGEMM_N, SGEMM_N, med(sgemm), len(sgemm)))
    short = {"Convolution": "Conv", "Deconvolution": "Deconv", "UnpoolDeconvolution": "UnpDec", "Pooling": "Pool",
             "BatchNorm": "BNorm"}
    print("share of the forward-backward time, % (Caffe's per-layer timings; other = remaining layers + overhead)")
    print("%-12s %-34s %8s %8s  %s" % ("model", "build", "GFLOP", "GFLOP/s",
                                        "  ".join("%6s" % short.get(t, t) for t in TYPES) + "   other"))
    for m in a.models:
        for i in range(len(envs)):
            proto = net_path(tmp, m, a.fused_unpool[i])
            types = layer_types(proto)
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
    print_python_layers(a.models, names, runs, tmp, a.fused_unpool)
    return 0


def print_vs_pytorch(models, names, runs, twin, sgemm, tmp, fused):
    """--vs-pytorch: per model and build, Caffe / PyTorch eager (medians of the same interleaved run) and the
    GFLOP/s of each as a fraction of the sgemm rate."""
    rate = med(sgemm)
    print("\nvs PyTorch eager (same graph; sgemm %dx%dx%d %.1f GFLOP/s, median of %d)"
          % (SGEMM_N, SGEMM_N, SGEMM_N, rate, len(sgemm)))
    print("%-12s %-34s %10s %10s %8s %8s %10s %10s" % ("model", "build", "caffe ms", "torch ms", "ratio", "GFLOP",
                                                        "caffe %sg", "torch %sg"))
    for m in models:
        tf = med([t["fb"] for t in twin[m]])
        for i in range(len(names)):
            rs = runs[(m, i)]
            fwd, bwd = net_flops(net_path(tmp, m, fused[i]), rs[0]["shapes"])
            gflop = (fwd + bwd) / 1e9
            fb = med([r["fb"] for r in rs])
            print("%-12s %-34s %10.1f %10.1f %8.3f %8.1f %9.0f%% %9.0f%%" % (
                m, names[i], fb, tf, fb / tf, gflop, 100 * gflop / (fb * 1e-3) / rate,
                100 * gflop / (tf * 1e-3) / rate))


def print_python_layers(models, names, runs, tmp, fused):
    """--profile: each Python (and UnpoolDeconvolution) layer's median forward / backward ms (they are one type in
    the share table), and the decoders' 5x5 blocks: the unpool1 + deconv1 layers, or the fused deconv1 layers."""
    for m in models:
        types = [layer_types(net_path(tmp, m, f)) for f in fused]
        if not any(t in ("Python", "UnpoolDeconvolution") for ty in types for t in ty.values()):
            continue
        print("\nPython and UnpoolDeconvolution layers of %s, ms forward / backward (median):" % m)
        for i, name in enumerate(names):
            rs = runs[(m, i)]
            layers = [n for n, t in types[i].items() if t in ("Python", "UnpoolDeconvolution")]
            cells = ["%s %.2f / %.2f" % (n, med([r["layers"].get(n, {}).get("forward") for r in rs]),
                                         med([r["layers"].get(n, {}).get("backward") for r in rs])) for n in layers]
            print("  %-34s %s" % (name, ", ".join(cells)))
        print("decoders' 5x5 blocks of %s (the *_unpool1 + *_deconv1 layers), ms forward + backward (median):" % m)
        for i, name in enumerate(names):
            rs = runs[(m, i)]
            blocks = [n for n in types[i] if n.endswith("_unpool1") or n.endswith("_deconv1")]
            ms = med([sum(r["layers"].get(n, {}).get(k, 0) for n in blocks for k in ("forward", "backward"))
                      for r in rs])
            print("  %-34s %.1f ms (%s)" % (name, ms, "fused" if fused[i] else "unfused"))


if __name__ == "__main__":
    sys.exit(main())

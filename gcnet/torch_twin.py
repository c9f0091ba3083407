"""PyTorch eager twin of a Caffe train_val net: the baseline of `tools/bench.sh --vs-pytorch` (BENCHMARKS.md).

The twin is not written by hand: `describe` turns the TRAIN phase of the generated NetParameter (gcnet/nets.py)
into a plain layer list, and `Twin` runs that list with the PyTorch operator a PyTorch user would pick for each
Caffe layer, so both frameworks run the same graph with the same shapes:

    Convolution / Deconvolution   F.conv2d / F.conv_transpose2d (named params shared, as Caffe shares them)
    BatchNorm (+ in-place Scale)  F.batch_norm in training mode with the Scale's gamma / beta as its affine (one
                                  op, as nn.BatchNorm2d), momentum 1 - moving_average_fraction, Caffe's eps
    ReLU, Dropout, InnerProduct   F.relu (in place where Caffe is), F.dropout, F.linear
    Pooling MAX (mask top)        F.max_pool2d(ceil_mode=True, return_indices=True)
    MaxUnpool (Python)            F.max_unpool2d with the pooling indices (where two pooled cells share an argmax
                                  it keeps one value instead of their sum: the same memory traffic)
    UnpoolDeconvolution           F.max_unpool2d, then F.conv_transpose2d (what a PyTorch user writes for it)
    ElementwiseDistance (Python)  (a - b).abs()
    ContrastiveLoss (Python)      Eq. 4-5 with the rms or l2 distance and the margin of its param_str
    EuclideanLoss, SoftmaxWithLoss  sum((a - b)^2) / 2N, F.cross_entropy; each times its loss_weight

A parameter whose lr_mult is 0 everywhere (frozen Scale, BatchNorm statistics) gets no gradient.  One iteration
is what `caffe time` times: forward of the summed loss, then backward (gradients set to None before each).

    python -m gcnet.torch_twin NET.json --iterations 3 [--threads 1]

prints one JSON line {"forward_ms", "backward_ms", "fb_ms"} (averages over the iterations after one warm-up
iteration, like `caffe time`).  Needs torch (requirements-bench.txt), not Caffe.
"""
import argparse
import json
import math
import sys
import time

SUPPORTED = ("Data", "Slice", "Silence", "Convolution", "Deconvolution", "UnpoolDeconvolution", "BatchNorm", "Scale",
             "ReLU", "Pooling", "Python", "InnerProduct", "Dropout", "EuclideanLoss", "SoftmaxWithLoss", "Accuracy")


def _conv_geometry(p):
    kernel = p.kernel_h or (p.kernel_size[0] if p.kernel_size else 1)
    pad = p.pad_h if p.HasField("pad_h") else (p.pad[0] if p.pad else 0)
    stride = p.stride_h or (p.stride[0] if p.stride else 1)
    return {"num_output": p.num_output, "kernel": kernel, "pad": pad, "stride": stride, "bias": p.bias_term}


def describe(net_param):
    """The TRAIN phase of a NetParameter as a JSON-able list of layers (type, bottoms, tops, the few settings each
    type needs, param names and whether each param learns).  Raises ValueError on a layer type the twin lacks."""
    from caffe.proto import caffe_pb2
    outputs = [l.inner_product_param.num_output for l in net_param.layer if l.type == "InnerProduct"]
    n_classes = outputs[-1] if outputs else 1           # labels for the classifier's loss: i % classes
    layers = []
    for layer in net_param.layer:
        if any(r.phase == caffe_pb2.TEST for r in layer.include) or layer.type == "Accuracy":
            continue
        if layer.type not in SUPPORTED:
            raise ValueError("torch twin: no PyTorch counterpart for layer %s of type %s" % (layer.name, layer.type))
        d = {"name": layer.name, "type": layer.type, "bottom": list(layer.bottom), "top": list(layer.top),
             "loss_weight": list(layer.loss_weight),
             "params": [{"name": s.name, "learn": s.lr_mult != 0} for s in layer.param]}
        if layer.type == "Data":
            d.update(batch=layer.data_param.batch_size, crop=layer.transform_param.crop_size, n_classes=n_classes)
        elif layer.type == "Slice":
            d.update(axis=layer.slice_param.axis, points=list(layer.slice_param.slice_point))
        elif layer.type in ("Convolution", "Deconvolution"):
            d.update(_conv_geometry(layer.convolution_param))
        elif layer.type == "UnpoolDeconvolution":
            d.update(_conv_geometry(layer.convolution_param), out_h=layer.unpool_param.out_h,
                     out_w=layer.unpool_param.out_w)
        elif layer.type == "BatchNorm":
            p = layer.batch_norm_param
            d.update(momentum=1.0 - p.moving_average_fraction, eps=p.eps)
        elif layer.type == "Scale":
            d.update(bias=layer.scale_param.bias_term)
        elif layer.type == "Pooling":
            p = layer.pooling_param
            if p.pool != caffe_pb2.PoolingParameter.MAX:
                raise ValueError("torch twin: only MAX pooling (layer %s)" % layer.name)
            d.update(kernel=p.kernel_h or p.kernel_size, stride=p.stride_h or p.stride, pad=p.pad_h or p.pad)
        elif layer.type == "Python":
            d.update(layer=layer.python_param.layer, param=json.loads(layer.python_param.param_str or "{}"))
            if d["layer"] not in ("MaxUnpool", "ElementwiseDistance", "ContrastiveLoss"):
                raise ValueError("torch twin: no PyTorch counterpart for Python layer %s (%s)"
                                 % (layer.name, d["layer"]))
        elif layer.type == "InnerProduct":
            d.update(num_output=layer.inner_product_param.num_output, bias=layer.inner_product_param.bias_term)
        elif layer.type == "Dropout":
            d.update(ratio=layer.dropout_param.dropout_ratio)
        layers.append(d)
    return layers


class Twin(object):
    """The layer list of `describe` as PyTorch eager code (float32, CPU).  `step()` runs one forward + backward."""

    def __init__(self, layers, seed=0):
        import torch
        self.torch = torch
        torch.manual_seed(seed)
        self.layers = layers
        self.params = {}            # name -> tensor (shared by name as in Caffe)
        self.stats = {}             # BatchNorm layer name -> (running mean, running var)
        self.inputs = {}
        self.fused_scale = set()    # Scale layers folded into the BatchNorm before them
        self.pool_of_mask = {}      # mask blob -> the Pooling layer that wrote it (MaxUnpool needs its geometry)
        channels = {}               # blob -> channels, to size the parameters
        for i, d in enumerate(layers):
            t = d["type"]
            if t == "Data":
                n, crop = d["batch"], d["crop"]
                self.inputs[d["top"][0]] = torch.rand(n, 2, crop, crop)
                self.inputs[d["top"][1]] = torch.arange(n) % d["n_classes"]
                channels[d["top"][0]] = 2
            elif t == "Slice":
                c, start = channels[d["bottom"][0]], 0
                for top, end in zip(d["top"], d["points"] + [c]):
                    channels[top], start = end - start, end
            elif t in ("Convolution", "Deconvolution", "UnpoolDeconvolution"):
                cin, cout, k = channels[d["bottom"][0]], d["num_output"], d["kernel"]
                shape = (cout, cin, k, k) if t == "Convolution" else (cin, cout, k, k)
                fan_in = cin * k * k if t == "Convolution" else cout * k * k    # Caffe's xavier fan_in
                self._param(d, 0, shape, "xavier", fan_in)
                if d["bias"]:
                    self._param(d, 1, (cout,), "zero")
                channels[d["top"][0]] = cout
            elif t == "BatchNorm":
                c = channels[d["bottom"][0]]
                self.stats[d["name"]] = (torch.zeros(c), torch.ones(c))
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                if nxt and nxt["type"] == "Scale" and nxt["bottom"] == d["top"] and nxt["bias"]:
                    self.fused_scale.add(nxt["name"])
                channels[d["top"][0]] = c
            elif t == "Scale":
                c = channels[d["bottom"][0]]
                self._param(d, 0, (c,), "one")
                if d["bias"]:
                    self._param(d, 1, (c,), "zero")
                channels[d["top"][0]] = c
            elif t == "Pooling":
                if len(d["top"]) == 2:
                    self.pool_of_mask[d["top"][1]] = d
                channels[d["top"][0]] = channels[d["bottom"][0]]
            elif t == "InnerProduct":
                fan_in = self._flat_size(d["bottom"][0], channels)
                self._param(d, 0, (d["num_output"], fan_in), "xavier", fan_in)
                if d["bias"]:
                    self._param(d, 1, (d["num_output"],), "zero")
                channels[d["top"][0]] = d["num_output"]
            else:
                for top in d["top"]:
                    channels[top] = channels.get(d["bottom"][0]) if d["bottom"] else None
        self._learned = [p for p in self.params.values() if p.requires_grad]

    def _flat_size(self, blob, channels):
        """Input size of an InnerProduct: found by a forward without gradients up to that blob (cheap, once)."""
        torch = self.torch
        with torch.no_grad():
            blobs = self._forward(stop_at=blob)
        return int(blobs[blob][0].numel())

    def _param(self, d, i, shape, fill, fan_in=1):
        torch = self.torch
        spec = d["params"][i] if i < len(d["params"]) else {"name": "", "learn": True}
        name = spec["name"] or "%s/%d" % (d["name"], i)
        if name in self.params:                      # shared by name: one tensor; it learns if any user learns
            p = self.params[name]
            p.requires_grad_(p.requires_grad or spec["learn"])
        else:
            if fill == "xavier":
                a = math.sqrt(3.0 / fan_in)
                p = torch.empty(shape).uniform_(-a, a)
            else:
                p = torch.full(shape, 1.0 if fill == "one" else 0.0)
            p.requires_grad_(spec["learn"])
            self.params[name] = p
        d.setdefault("_pnames", {})[i] = name

    def _p(self, d, i):
        return self.params[d["_pnames"][i]]

    def _forward(self, stop_at=None):
        """Runs the layers; returns the blobs (and the summed weighted loss under key None)."""
        import torch.nn.functional as F
        torch = self.torch
        blobs, loss = dict(self.inputs), None
        for d in self.layers:
            if stop_at is not None and stop_at in blobs:
                break
            t, b = d["type"], [blobs.get(name) for name in d["bottom"]]
            out = None
            if t in ("Data", "Silence"):
                continue
            if t == "Slice":
                start = 0
                for top, end in zip(d["top"], d["points"] + [b[0].shape[d["axis"]]]):
                    blobs[top] = b[0].narrow(d["axis"], start, end - start)
                    start = end
                continue
            if t == "Convolution":
                out = F.conv2d(b[0], self._p(d, 0), self._p(d, 1) if d["bias"] else None, d["stride"], d["pad"])
            elif t in ("Deconvolution", "UnpoolDeconvolution"):
                x = b[0]
                if t == "UnpoolDeconvolution":
                    pool = self.pool_of_mask[d["bottom"][1]]
                    x = F.max_unpool2d(x, b[1], pool["kernel"], pool["stride"], pool["pad"],
                                       output_size=(d["out_h"], d["out_w"]))
                out = F.conv_transpose2d(x, self._p(d, 0), self._p(d, 1) if d["bias"] else None, d["stride"],
                                         d["pad"])
            elif t == "BatchNorm":
                mean, var = self.stats[d["name"]]
                nxt = self._next_scale(d)
                w, bias = (self._p(nxt, 0), self._p(nxt, 1)) if nxt else (None, None)
                out = F.batch_norm(b[0], mean, var, w, bias, training=True, momentum=d["momentum"], eps=d["eps"])
            elif t == "Scale":
                if d["name"] in self.fused_scale:
                    continue
                shape = (1, -1) + (1,) * (b[0].dim() - 2)
                out = b[0] * self._p(d, 0).view(shape)
                if d["bias"]:
                    out = out + self._p(d, 1).view(shape)
            elif t == "ReLU":
                out = F.relu(b[0], inplace=d["bottom"] == d["top"])
            elif t == "Pooling":
                if len(d["top"]) == 2:
                    out, idx = F.max_pool2d(b[0], d["kernel"], d["stride"], d["pad"], ceil_mode=True,
                                            return_indices=True)
                    blobs[d["top"][1]] = idx
                else:
                    out = F.max_pool2d(b[0], d["kernel"], d["stride"], d["pad"], ceil_mode=True)
            elif t == "Dropout":
                out = F.dropout(b[0], d["ratio"], training=True)
            elif t == "InnerProduct":
                out = F.linear(b[0].flatten(1), self._p(d, 0), self._p(d, 1) if d["bias"] else None)
            elif t == "Python":
                out = self._python(d, b)
            elif t == "EuclideanLoss":
                out = (b[0] - b[1]).pow(2).sum() / (2.0 * b[0].shape[0])
            elif t == "SoftmaxWithLoss":
                out = F.cross_entropy(b[0], b[1])
            blobs[d["top"][0]] = out
            if d["loss_weight"] or t in ("EuclideanLoss", "SoftmaxWithLoss"):
                w = d["loss_weight"][0] if d["loss_weight"] else 1.0
                if w:
                    loss = out * w if loss is None else loss + out * w
        blobs[None] = loss
        return blobs

    def _next_scale(self, bn):
        i = self.layers.index(bn)
        nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
        return nxt if nxt is not None and nxt["name"] in self.fused_scale else None

    def _python(self, d, b):
        import torch.nn.functional as F
        torch = self.torch
        kind, p = d["layer"], d["param"]
        if kind == "MaxUnpool":
            pool = self.pool_of_mask[d["bottom"][1]]
            return F.max_unpool2d(b[0], b[1], pool["kernel"], pool["stride"], pool["pad"],
                                  output_size=(p["out_h"], p["out_w"]))
        if kind == "ElementwiseDistance":
            return (b[0] - b[1]).abs()
        # ContrastiveLoss (Eq. 4-5): 1/(2N) sum [alpha max(0, m - d)^2 + (1 - alpha) d^2]
        n = b[0].shape[0]
        diff = (b[0] - b[1]).flatten(1)
        dist = diff.pow(2).sum(1).sqrt()
        if p.get("distance", "l2") == "rms":
            dist = dist / math.sqrt(diff.shape[1])
        alpha = (b[2].reshape(-1) != int(p.get("neutral_label", -1))).float()
        hinge = (float(p.get("margin", 1.0)) - dist).clamp(min=0)
        return (alpha * hinge.pow(2) + (1 - alpha) * dist.pow(2)).sum() / (2.0 * n)

    def step(self):
        """One forward + backward; returns (forward seconds, backward seconds)."""
        for p in self._learned:
            p.grad = None
        t0 = time.perf_counter()
        loss = self._forward()[None]
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1


def time_twin(layers, iterations, threads=1):
    """Averages (ms) over `iterations` forward + backward passes after one warm-up pass, as `caffe time`."""
    import torch
    torch.set_num_threads(threads)
    twin = Twin(layers)
    twin.step()
    f = b = 0.0
    for _ in range(iterations):
        tf, tb = twin.step()
        f, b = f + tf, b + tb
    return {"forward_ms": 1e3 * f / iterations, "backward_ms": 1e3 * b / iterations,
            "fb_ms": 1e3 * (f + b) / iterations}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m gcnet.torch_twin", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("net", help="layer list written by describe() (JSON)")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.iterations < 1 or a.threads < 1:
        ap.error("--iterations and --threads must be >= 1")
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.stderr.write("torch_twin: PyTorch is not installed here (pip install -r requirements-bench.txt)\n")
        return 2
    with open(a.net) as f:
        layers = json.load(f)
    print(json.dumps(time_twin(layers, a.iterations, a.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

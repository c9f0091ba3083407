"""Tests of python_layers/gcnet_layers.py: ElementwiseDistance, ContrastiveLoss, MaxUnpool.

Three levels:
  * the numpy kernels in float64 (finite differences, brute-force references, ties and zero distances);
  * the layers inside real Caffe nets (NetSpec -> prototxt -> caffe.Net), against Caffe's own ContrastiveLoss and
    MAX Pooling layers, with float32 finite differences through net.forward();
  * shape / parameter validation (clear ValueErrors naming the layer).

Caffe-dependent tests ask for conftest's `caffe` fixture (the one Caffe gate).
Run:  source tools/env.sh && python -m pytest -q tests/test_python_layers.py
"""
import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER_DIR = os.path.join(REPO, "python_layers")
if LAYER_DIR not in sys.path:  # tools/env.sh puts it on PYTHONPATH; this makes the numpy tests work without it
    sys.path.insert(0, LAYER_DIR)

try:                       # the numpy tests run without pycaffe; those in Caffe nets ask for the `caffe` fixture
    import caffe
    from caffe import layers as L, params as P
except ImportError:  # pragma: no cover - depends on the environment
    caffe = L = P = None

import gcnet_layers as G  # noqa: E402  (after the sys.path fix-up)


# ============================================================================================ helpers
class FakeBlob(object):
    """Stand-in for caffe.Blob (data/diff arrays, reshape, shape), float64 by default."""

    def __init__(self, shape=None, data=None, dtype=np.float64):
        if data is not None:
            self.data = np.array(data, dtype=dtype)
        else:
            self.data = np.zeros(shape, dtype=dtype)
        self.diff = np.zeros_like(self.data)

    def reshape(self, *shape):
        if tuple(shape) != self.data.shape:
            self.data = np.zeros(shape, dtype=self.data.dtype)
            self.diff = np.zeros_like(self.data)

    @property
    def shape(self):
        return self.data.shape


def fd_grad(f, x, idx, eps):
    """Central differences of scalar f() with respect to x[idx] for each idx (x modified in place and restored)."""
    out = []
    for i in idx:
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        out.append((fp - fm) / (2.0 * eps))
    return np.array(out)


def sample_indices(shape, k, rng):
    """Up to k distinct random multi-indices of an array of `shape`."""
    size = int(np.prod(shape))
    flat = rng.choice(size, size=min(k, size), replace=False)
    return [np.unravel_index(f, shape) for f in flat]


def ref_maxpool(x, k, s):
    """Brute-force Caffe MAX pooling (no pad, ceil rounding, first maximum in row-major order wins)."""
    n, c, h, w = x.shape
    ph = int(np.ceil((h - k) / float(s))) + 1
    pw = int(np.ceil((w - k) / float(s))) + 1
    out = np.zeros((n, c, ph, pw), dtype=x.dtype)
    mask = np.zeros((n, c, ph, pw), dtype=np.int64)
    for a in range(n):
        for b in range(c):
            for i in range(ph):
                for j in range(pw):
                    hs, ws = i * s, j * s
                    he, we = min(hs + k, h), min(ws + k, w)
                    win = x[a, b, hs:he, ws:we]
                    r, q = np.unravel_index(int(np.argmax(win)), win.shape)  # first occurrence of the maximum
                    out[a, b, i, j] = win[r, q]
                    mask[a, b, i, j] = (hs + r) * w + (ws + q)
    return out, mask


def ref_unpool(x, mask, out_h, out_w):
    n, c, ph, pw = x.shape
    y = np.zeros((n, c, out_h, out_w), dtype=np.float64)
    for a in range(n):
        for b in range(c):
            for i in range(ph):
                for j in range(pw):
                    m = int(mask[a, b, i, j])
                    y[a, b, m // out_w, m % out_w] += x[a, b, i, j]
    return y


def ref_unpool_grad(dy, mask):
    n, c, ph, pw = mask.shape
    out_w = dy.shape[3]
    dx = np.zeros(mask.shape, dtype=np.float64)
    for a in range(n):
        for b in range(c):
            for i in range(ph):
                for j in range(pw):
                    m = int(mask[a, b, i, j])
                    dx[a, b, i, j] = dy[a, b, m // out_w, m % out_w]
    return dx


def ref_contrastive(a, b, label, margin, neutral):
    """Per-pair loop over Eq. 4-5 with the 1/(2N) normalisation."""
    n = a.shape[0]
    total = 0.0
    dists = []
    for i in range(n):
        d = float(np.sqrt(np.sum((a[i].astype(np.float64) - b[i].astype(np.float64)) ** 2)))
        alpha = 1.0 if int(round(float(np.ravel(label[i])[0]))) != neutral else 0.0
        total += alpha * max(0.0, margin - d) ** 2 + (1.0 - alpha) * d ** 2
        dists.append(d)
    return total / (2.0 * n), np.array(dists)


def contrastive_pairs(rng, shape, margin, n_labels=4, neutral=0, min_gap=0.05):
    """Random pairs whose distances avoid 0 and the margin kink by min_gap and lie on both sides of the margin."""
    n = shape[0]
    p = int(np.prod(shape[1:]))
    a = rng.normal(size=shape)
    direction = rng.normal(size=(n, p))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    d = rng.uniform(min_gap, 2.0 * margin, size=n)
    d = np.where(np.abs(d - margin) < min_gap, margin + 2 * min_gap, d)
    d[0], d[-1] = 0.5 * margin, 1.5 * margin  # one inside, one outside the margin
    b = a - (direction * d[:, None]).reshape(shape)
    label = rng.integers(0, n_labels, size=n).astype(np.float64)
    label[0], label[-1] = neutral, neutral + 1  # both kinds of pair
    return a, b, label


def write_net(spec, tmp_path, name="net", force_backward=True):
    proto = spec.to_proto()
    proto.force_backward = force_backward
    path = tmp_path / (name + ".prototxt")
    path.write_text(str(proto))
    return caffe.Net(str(path), caffe.TRAIN)


def pylayer(*bottoms, layer, params=None, **kw):
    ps = json.dumps(params) if params is not None else ""
    return L.Python(*bottoms, python_param=dict(module="gcnet_layers", layer=layer, param_str=ps), **kw)


def layer_object(net, name):
    """The Python object behind a Python layer of a Caffe net (pycaffe returns the original instance)."""
    return net.layers[list(net._layer_names).index(name)]


# ============================================================================================ numpy kernels (float64)
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4, 4), (1, 7, 1, 1)])
def test_elementwise_distance_fd(shape):
    rng = np.random.default_rng(1)
    a = rng.normal(size=shape)
    b = a + rng.choice([-1, 1], size=shape) * rng.uniform(0.05, 1.0, size=shape)  # away from the kink
    w = rng.normal(size=shape)
    top = G.elementwise_distance_forward(a, b)
    np.testing.assert_allclose(top, np.abs(a - b), rtol=0, atol=0)
    da, db = G.elementwise_distance_backward(a, b, w)
    f = lambda: float(np.sum(w * G.elementwise_distance_forward(a, b)))
    idx = list(np.ndindex(shape))
    np.testing.assert_allclose(da[tuple(np.array(idx).T)], fd_grad(f, a, idx, 1e-6), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db[tuple(np.array(idx).T)], fd_grad(f, b, idx, 1e-6), rtol=1e-6, atol=1e-8)


def test_elementwise_distance_ties_use_zero_subgradient():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 3, 2, 2))
    b = a + rng.normal(size=a.shape)
    tie = rng.random(a.shape) < 0.4
    b[tie] = a[tie]
    w = rng.normal(size=a.shape)
    top = G.elementwise_distance_forward(a, b)
    assert np.all(top[tie] == 0)
    da, db = G.elementwise_distance_backward(a, b, w)
    assert np.all(da[tie] == 0) and np.all(db[tie] == 0)
    s = np.sign(a - b)
    np.testing.assert_array_equal(da[~tie], (s * w)[~tie])
    np.testing.assert_array_equal(db[~tie], (-s * w)[~tie])
    assert np.all(s[~tie] != 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_distance_gradient_equals_np_sign_bit_for_bit(dtype):
    """The kernel computes sign(a - b) by comparisons (np.sign is a slow scalar loop in numpy 1.x): the same bits as
    np.sign(a - b) * dtop, signed zeros, infinities and NaN included."""
    special = np.array([0.0, -0.0, 1.0, -1.0, 2.5, np.inf, -np.inf, np.nan, 1e-30], dtype)
    a, b = np.meshgrid(special, special)
    dtop = np.resize(np.array([1.5, -2.0, 0.0, -0.0, np.inf], dtype), a.shape)
    with np.errstate(invalid="ignore"):                  # inf - inf, inf * 0
        ref = np.sign(a - b) * dtop
        got = G.elementwise_distance_grad_a(a, b, dtop)
    assert got.dtype == ref.dtype and got.tobytes() == ref.tobytes()
    rng = np.random.default_rng(7)
    a, b, dtop = (rng.integers(-2, 3, size=(64, 96, 7, 7)).astype(dtype) for _ in range(3))   # many ties
    assert G.elementwise_distance_grad_a(a, b, dtop).tobytes() == (np.sign(a - b) * dtop).tobytes()


@pytest.mark.parametrize("shape,margin,neutral", [((6, 5), 1.0, 0), ((5, 3, 2, 2), 2.0, -1), ((4, 2, 3, 1), 0.5, 2)])
def test_contrastive_loss_fd(shape, margin, neutral):
    rng = np.random.default_rng(3)
    a, b, label = contrastive_pairs(rng, shape, margin, neutral=max(neutral, 0))
    alpha = G.contrastive_alpha(label, neutral)
    np.testing.assert_array_equal(alpha, (np.rint(label) != neutral).astype(float))
    loss, dist, diff = G.contrastive_loss_forward(a, b, alpha, margin)
    ref_loss, ref_dist = ref_contrastive(a, b, label, margin, neutral)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-12)
    assert np.any(dist < margin) and np.any(dist > margin)
    dloss = 1.7
    ddist = rng.normal(size=shape[0])
    g = G.contrastive_loss_backward(diff, dist, alpha, margin, dloss=dloss, ddist=ddist).reshape(shape)

    def f():
        l_, d_, _ = G.contrastive_loss_forward(a, b, alpha, margin)
        return dloss * l_ + float(np.dot(ddist, d_))

    idx = list(np.ndindex(shape))
    sel = tuple(np.array(idx).T)
    np.testing.assert_allclose(g[sel], fd_grad(f, a, idx, 1e-6), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(-g[sel], fd_grad(f, b, idx, 1e-6), rtol=1e-5, atol=1e-8)
    # pairs beyond the margin that are dissimilar get exactly no gradient from the loss part
    g0 = G.contrastive_loss_backward(diff, dist, alpha, margin).reshape(shape[0], -1)
    far = (alpha == 1) & (dist > margin)
    assert far.any() and np.all(g0[far] == 0)


def test_contrastive_loss_zero_distance_pairs():
    rng = np.random.default_rng(4)
    n, p, m = 6, 8, 1.0
    a = rng.normal(size=(n, p))
    b = a + 0.3 * rng.normal(size=(n, p))
    b[0] = a[0]  # dissimilar pair at d = 0: loss m^2/(2N), subgradient 0
    b[1] = a[1]  # similar pair at d = 0: loss 0, gradient 0 (exact)
    label = np.array([3, 0, 1, 0, 2, 1], dtype=np.float64)
    alpha = G.contrastive_alpha(label, 0)
    loss, dist, diff = G.contrastive_loss_forward(a, b, alpha, m)
    assert dist[0] == 0 and dist[1] == 0
    assert loss == pytest.approx(ref_contrastive(a, b, label, m, 0)[0], rel=1e-12)
    g = G.contrastive_loss_backward(diff, dist, alpha, m, ddist=np.ones(n))
    assert np.all(np.isfinite(g))
    assert np.all(g[0] == 0) and np.all(g[1] == 0)
    # the other pairs still get their exact gradient
    f = lambda: G.contrastive_loss_forward(a, b, alpha, m)[0] + float(np.sum(G.contrastive_loss_forward(
        a, b, alpha, m)[1]))
    idx = [(i, j) for i in range(2, n) for j in range(p)]
    np.testing.assert_allclose(g[tuple(np.array(idx).T)], fd_grad(f, a, idx, 1e-6), rtol=1e-5, atol=1e-8)


def test_contrastive_alpha_rounds_float_labels():
    np.testing.assert_array_equal(G.contrastive_alpha(np.array([0.0, 1.0, 2.0, 0.0]).reshape(4, 1, 1, 1), 0),
                                  [0, 1, 1, 0])
    np.testing.assert_array_equal(G.contrastive_alpha(np.array([0.0, 1.0, 6.0]), -1), [1, 1, 1])


@pytest.mark.parametrize("size,k", [(15, 3), (31, 3), (20, 5)])
def test_max_unpool_kernels(size, k):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, size, size))
    x[0, 0] = np.round(x[0, 0])  # ties
    x[1, 2] = 0.0  # a constant plane: every window's argmax is its first element
    pooled, mask = ref_maxpool(x, k, 2)
    idx = G.mask_to_flat_index(mask.astype(np.float32), size, size)
    y = G.max_unpool_forward(pooled, idx, x.shape)
    np.testing.assert_allclose(y, ref_unpool(pooled, mask, size, size), rtol=1e-12, atol=0)
    # collisions happen (overlapping windows) and are accumulated
    counts = np.bincount(idx)
    assert counts.max() > 1
    dy = rng.normal(size=x.shape)
    dx = G.max_unpool_backward(dy, idx, pooled.shape)
    np.testing.assert_array_equal(dx, ref_unpool_grad(dy, mask))
    # adjoint identity of a linear map: <unpool(p), dy> == <p, unpool^T(dy)>
    assert np.sum(y * dy) == pytest.approx(np.sum(pooled * dx), rel=1e-10)
    # finite differences on a few pooled cells
    f = lambda: float(np.sum(G.max_unpool_forward(pooled, idx, x.shape) * dy))
    sel = sample_indices(pooled.shape, 20, rng)
    np.testing.assert_allclose(dx[tuple(np.array(sel).T)], fd_grad(f, pooled, sel, 1e-6), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("bad,msg", [(0.5, "integral"), (-1.0, r"\[0, 16\)"), (16.0, r"\[0, 16\)")])
def test_mask_values_validated(bad, msg):
    mask = np.zeros((1, 1, 2, 2), dtype=np.float32)
    mask[0, 0, 1, 1] = bad
    with pytest.raises(ValueError, match=msg):
        G.mask_to_flat_index(mask, 4, 4)


# ============================================================================================ inside Caffe nets
def test_elementwise_distance_in_caffe(caffe, tmp_path):
    rng = np.random.default_rng(10)
    shape = (3, 4, 5, 5)
    n = caffe.NetSpec()
    n.a = L.Input(shape=dict(dim=list(shape)))
    n.b = L.Input(shape=dict(dim=list(shape)))
    n.delta = pylayer(n.a, n.b, layer="ElementwiseDistance")
    net = write_net(n, tmp_path)
    a = rng.normal(size=shape).astype(np.float32)
    b = (a + rng.choice([-1, 1], size=shape) * rng.uniform(0.1, 1.0, size=shape)).astype(np.float32)
    tie = rng.random(shape) < 0.2
    b[tie] = a[tie]
    net.blobs["a"].data[...] = a
    net.blobs["b"].data[...] = b
    net.forward()
    assert net.blobs["delta"].data.shape == shape
    np.testing.assert_array_equal(net.blobs["delta"].data, np.abs(a - b))
    w = rng.normal(size=shape).astype(np.float32)
    net.blobs["delta"].diff[...] = w
    net.backward()
    s = np.sign(a - b)
    np.testing.assert_array_equal(net.blobs["a"].diff, s * w)
    np.testing.assert_array_equal(net.blobs["b"].diff, -s * w)
    assert np.all(net.blobs["a"].diff[tie] == 0) and np.all(net.blobs["b"].diff[tie] == 0)

    # float32 finite differences through net.forward() (away from the ties)
    def f():
        net.forward()
        return float(np.sum(w.astype(np.float64) * net.blobs["delta"].data))

    sel = [i for i in sample_indices(shape, 40, rng) if not tie[i]]
    ga = np.array([s[i] * w[i] for i in sel])
    np.testing.assert_allclose(fd_grad(f, net.blobs["a"].data, sel, 1e-2), ga, rtol=1e-2, atol=1e-3)


def _contrastive_nets(tmp_path, shape, margin, neutral, label_shape, loss_weight=1.0, with_distance=False,
                      builtin=True, distance="l2"):
    """(Python-layer net, Caffe built-in ContrastiveLoss net or None).  The built-in layer CHECK-fails (aborting the
    process) unless the features are (N, C, 1, 1)."""
    n = caffe.NetSpec()
    n.a = L.Input(shape=dict(dim=list(shape)))
    n.b = L.Input(shape=dict(dim=list(shape)))
    n.label = L.Input(shape=dict(dim=list(label_shape)))
    params = {"margin": margin, "neutral_label": neutral, "distance": distance}
    if with_distance:
        n.loss, n.distance = pylayer(n.a, n.b, n.label, layer="ContrastiveLoss", params=params, ntop=2,
                                     loss_weight=[loss_weight, 0.5])
    else:
        n.loss = pylayer(n.a, n.b, n.label, layer="ContrastiveLoss", params=params, loss_weight=loss_weight)
    py = write_net(n, tmp_path, "py")
    if not builtin:
        return py, None
    m = caffe.NetSpec()
    m.a = L.Input(shape=dict(dim=list(shape)))
    m.b = L.Input(shape=dict(dim=list(shape)))
    m.sim = L.Input(shape=dict(dim=[shape[0], 1, 1, 1]))
    m.loss = L.ContrastiveLoss(m.a, m.b, m.sim, contrastive_loss_param=dict(margin=margin, legacy_version=False),
                               loss_weight=loss_weight)
    builtin = write_net(m, tmp_path, "builtin")
    return py, builtin


@pytest.mark.parametrize("margin,neutral,label_shape4", [(1.0, 0, False), (2.0, 0, True), (1.0, -1, False)])
def test_contrastive_loss_matches_caffe_builtin(caffe, tmp_path, margin, neutral, label_shape4):
    rng = np.random.default_rng(11)
    shape = (8, 12, 1, 1)  # Caffe's built-in layer needs (N, C, 1, 1)
    a, b, label = contrastive_pairs(rng, shape, margin, n_labels=5, neutral=max(neutral, 0), min_gap=0.2)
    a, b = a.astype(np.float32), b.astype(np.float32)
    label_shape = (shape[0], 1, 1, 1) if label_shape4 else (shape[0],)
    lw = 2.5
    py, builtin = _contrastive_nets(tmp_path, shape, margin, neutral, label_shape, loss_weight=lw)
    sim = (np.rint(label) == neutral).astype(np.float32)
    assert neutral == -1 or 0 < sim.sum() < len(sim)
    for net, third, value in ((py, "label", label), (builtin, "sim", sim)):
        net.blobs["a"].data[...] = a
        net.blobs["b"].data[...] = b
        net.blobs[third].data[...] = value.reshape(net.blobs[third].data.shape)
        net.forward()
        net.backward()
    lp, lb = float(py.blobs["loss"].data.ravel()[0]), float(builtin.blobs["loss"].data.ravel()[0])
    assert py.blobs["loss"].data.size == 1
    assert lp == pytest.approx(lb, rel=1e-5)
    assert lp == pytest.approx(ref_contrastive(a, b, label, margin, neutral)[0], rel=1e-5)
    # gradients: Caffe divides by (d + 1e-4) for dissimilar pairs, so they agree to ~1e-4 / d relative
    for blob in ("a", "b"):
        gp, gb = py.blobs[blob].diff, builtin.blobs[blob].diff
        assert np.abs(gp).max() > 0
        np.testing.assert_allclose(gp, gb, rtol=1e-3, atol=1e-6 * np.abs(gb).max())
    # loss_weight scales the gradient: compare with the float64 kernel at dloss = lw
    alpha = G.contrastive_alpha(label, neutral)
    _, dist, diff = G.contrastive_loss_forward(a, b, alpha, margin)
    g = G.contrastive_loss_backward(diff, dist, alpha, margin, dloss=lw).reshape(shape)
    np.testing.assert_allclose(py.blobs["a"].diff, g, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(py.blobs["b"].diff, -g, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("distance", ["l2", "rms"])
def test_contrastive_loss_fd_in_caffe_with_distance_top(caffe, tmp_path, distance):
    rng = np.random.default_rng(12)
    shape = (5, 3, 4, 4)  # spatial features are flattened by the Python layer
    margin, neutral = 1.5, 0
    # "rms" divides the l2 distance by sqrt(p): pairs are drawn around the margin in l2 units, m * sqrt(p)
    c = np.sqrt(np.prod(shape[1:])) if distance == "rms" else 1.0
    a, b, label = contrastive_pairs(rng, shape, margin * c, neutral=neutral, min_gap=0.2 * c)
    net, _ = _contrastive_nets(tmp_path, shape, margin, neutral, (shape[0],), loss_weight=1.0, with_distance=True,
                               builtin=False, distance=distance)
    net.blobs["a"].data[...] = a
    net.blobs["b"].data[...] = b
    net.blobs["label"].data[...] = label
    net.forward()
    ref_loss, ref_dist = ref_contrastive((a / c).astype(np.float32), (b / c).astype(np.float32), label, margin,
                                         neutral)
    assert net.blobs["distance"].data.shape == (shape[0],)
    np.testing.assert_allclose(net.blobs["distance"].data, ref_dist, rtol=1e-5)
    assert float(net.blobs["loss"].data[0]) == pytest.approx(ref_loss, rel=1e-5)
    net.backward()  # objective = 1 * loss + 0.5 * sum(distance)

    def f():
        net.forward()
        return float(net.blobs["loss"].data[0]) + 0.5 * float(np.sum(net.blobs["distance"].data, dtype=np.float64))

    for blob in ("a", "b"):
        sel = sample_indices(shape, 30, rng)
        ga = np.array([net.blobs[blob].diff[i] for i in sel])
        num = fd_grad(f, net.blobs[blob].data, sel, 1e-2)
        np.testing.assert_allclose(num, ga, rtol=2e-2, atol=2e-4)


def test_contrastive_loss_zero_distance_in_caffe(caffe, tmp_path):
    shape = (4, 6, 1, 1)
    rng = np.random.default_rng(13)
    a = rng.normal(size=shape).astype(np.float32)
    b = a.copy()  # every pair at distance 0
    label = np.array([0, 1, 2, 0], dtype=np.float32)
    py, builtin = _contrastive_nets(tmp_path, shape, 1.0, 0, (shape[0],))
    for net, third, value in ((py, "label", label), (builtin, "sim", (label == 0).astype(np.float32))):
        net.blobs["a"].data[...] = a
        net.blobs["b"].data[...] = b
        net.blobs[third].data[...] = value.reshape(net.blobs[third].data.shape)
        net.forward()
        net.backward()
    # 2 dissimilar pairs at d = 0 each contribute m^2: loss = 2 / (2 * 4)
    assert float(py.blobs["loss"].data[0]) == pytest.approx(0.25, rel=1e-6)
    assert float(py.blobs["loss"].data[0]) == pytest.approx(float(builtin.blobs["loss"].data.ravel()[0]), rel=1e-6)
    assert np.all(py.blobs["a"].diff == 0) and np.all(py.blobs["b"].diff == 0)
    assert np.all(np.isfinite(py.blobs["a"].diff))


POOL_CASES = [(64, 5), (64, 3), (31, 3), (15, 3), (31, 5)]


@pytest.mark.parametrize("size,k", POOL_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_max_unpool_after_caffe_pooling(caffe, tmp_path, size, k, ties):
    rng = np.random.default_rng(20 + size + k)
    shape = (2, 3, size, size)
    ph = int(np.ceil((size - k) / 2.0)) + 1
    n = caffe.NetSpec()
    n.x = L.Input(shape=dict(dim=list(shape)))
    n.pool, n.mask = L.Pooling(n.x, pool=P.Pooling.MAX, kernel_size=k, stride=2, ntop=2)
    n.unpool = pylayer(n.pool, n.mask, layer="MaxUnpool", params={"out_h": size, "out_w": size})
    net = write_net(n, tmp_path)
    if ties:
        x = rng.integers(0, 3, size=shape).astype(np.float32)  # many ties inside windows
        x[1, 1] = 0.0
    else:
        x = rng.normal(size=shape).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()
    pooled, mask = net.blobs["pool"].data.copy(), net.blobs["mask"].data.copy()
    assert pooled.shape == (2, 3, ph, ph)
    ref_p, ref_m = ref_maxpool(x, k, 2)
    np.testing.assert_array_equal(pooled, ref_p)  # our understanding of Caffe's mask semantics
    np.testing.assert_array_equal(mask, ref_m)
    y = net.blobs["unpool"].data
    assert y.shape == shape  # restores the pre-pool size
    np.testing.assert_allclose(y, ref_unpool(pooled, mask, size, size), rtol=1e-6, atol=1e-6)
    flat = (ref_m + (np.arange(6) * size * size).reshape(2, 3, 1, 1)).ravel()
    assert np.bincount(flat).max() > 1  # shared argmaxes are exercised (accumulated)
    dy = rng.normal(size=shape).astype(np.float32)
    net.blobs["unpool"].diff[...] = dy
    net.backward()
    np.testing.assert_allclose(net.blobs["pool"].diff, ref_unpool_grad(dy, mask), rtol=0, atol=0)
    # end to end through Caffe's pooling backward: x gets dy at each argmax, once per pooled cell using it
    counts = np.bincount(flat, minlength=x.size).reshape(shape)
    np.testing.assert_allclose(net.blobs["x"].diff, dy * counts, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels,size,k", [(32, 64, 5), (64, 31, 3), (96, 15, 3)])
def test_max_unpool_layer_bit_identical_to_numpy_kernels(caffe, tmp_path, channels, size, k):
    """The layer runs python_layers/max_unpool.c: on the decoders' shapes, with masks of Caffe's MAX pooling (ties,
    so overlapping windows share argmaxes up to four or nine times), its top and bottom diff equal the numpy kernels
    in float32 bit for bit (the same sums in the same order); after the first forward a -1 mask cell (a window
    without a maximum) places nothing and gets no gradient."""
    shape = (4, channels, size, size)
    n = caffe.NetSpec()
    n.x = L.Input(shape=dict(dim=list(shape)))
    n.pool, n.mask = L.Pooling(n.x, pool=P.Pooling.MAX, kernel_size=k, stride=2, ntop=2)
    n.unpool = pylayer(n.pool, n.mask, layer="MaxUnpool", params={"out_h": size, "out_w": size})
    net = write_net(n, tmp_path)
    rng = np.random.default_rng(size)
    x = rng.integers(-2, 3, size=shape).astype(np.float32) * rng.choice([1, 1e-3], size=shape).astype(np.float32)
    x[0, 0] = -0.0
    net.blobs["x"].data[...] = x
    net.forward()
    pooled, mask = net.blobs["pool"].data.copy(), net.blobs["mask"].data.copy()
    idx = G.mask_to_flat_index(mask, size, size)
    assert np.bincount(idx).max() >= 3                          # sums of three or more values: their order matters
    ref = G.max_unpool_forward(pooled, idx, shape)
    assert ref.dtype == np.float32 and net.blobs["unpool"].data.tobytes() == ref.tobytes()
    dy = rng.standard_normal(shape).astype(np.float32)
    net.blobs["unpool"].diff[...] = dy
    net.backward()
    assert net.blobs["pool"].diff.tobytes() == G.max_unpool_backward(dy, idx, pooled.shape).tobytes()
    # a later forward: the mask is not validated again; a -1 cell is skipped by the kernels
    layer = layer_object(net, "unpool")
    net.blobs["mask"].data[0, 0, 0, 0] = -1
    net.blobs["pool"].data[0, 0, 0, 0] = 5.0
    layer.forward([net.blobs["pool"], net.blobs["mask"]], [net.blobs["unpool"]])
    keep = np.ones(idx.size, bool)
    keep[0] = False
    ref = np.zeros(shape, np.float32)
    np.add.at(ref.reshape(-1), idx[keep], net.blobs["pool"].data.reshape(-1)[keep])
    assert net.blobs["unpool"].data.tobytes() == ref.tobytes()
    layer.backward([net.blobs["unpool"]], [True, False], [net.blobs["pool"], net.blobs["mask"]])
    assert net.blobs["pool"].diff[0, 0, 0, 0] == 0
    assert net.blobs["pool"].diff.reshape(-1)[1:].tobytes() == dy.reshape(-1)[idx[1:]].tobytes()


def test_max_unpool_fd_in_caffe(caffe, tmp_path):
    rng = np.random.default_rng(30)
    size, k = 15, 3
    x = rng.normal(size=(2, 2, size, size))
    pooled, mask = ref_maxpool(x, k, 2)
    n = caffe.NetSpec()
    n.p = L.Input(shape=dict(dim=list(pooled.shape)))
    n.mask = L.Input(shape=dict(dim=list(mask.shape)))
    n.unpool = pylayer(n.p, n.mask, layer="MaxUnpool", params={"out_h": size, "out_w": size})
    net = write_net(n, tmp_path)
    net.blobs["p"].data[...] = pooled
    net.blobs["mask"].data[...] = mask
    net.blobs["mask"].diff[...] = 7.0
    net.forward()
    w = rng.normal(size=x.shape).astype(np.float32)
    net.blobs["unpool"].diff[...] = w
    net.backward()
    assert np.all(net.blobs["mask"].diff == 0)  # no gradient to the mask

    def f():
        net.forward()
        return float(np.sum(w.astype(np.float64) * net.blobs["unpool"].data))

    sel = sample_indices(pooled.shape, 30, rng)
    ga = np.array([net.blobs["p"].diff[i] for i in sel])
    np.testing.assert_allclose(fd_grad(f, net.blobs["p"].data, sel, 1e-2), ga, rtol=1e-2, atol=1e-3)


def test_encoder_decoder_pool_chain_restores_sizes(caffe, tmp_path):
    """64 -> 31 -> 15 -> 7 with 5x5/3x3/3x3 windows (stride 2, ceil), and unpooling 7 -> 15 -> 31 -> 64."""
    n = caffe.NetSpec()
    n.x = L.Input(shape=dict(dim=[2, 2, 64, 64]))
    n.p1, n.m1 = L.Pooling(n.x, pool=P.Pooling.MAX, kernel_size=5, stride=2, ntop=2)
    n.p2, n.m2 = L.Pooling(n.p1, pool=P.Pooling.MAX, kernel_size=3, stride=2, ntop=2)
    n.p3, n.m3 = L.Pooling(n.p2, pool=P.Pooling.MAX, kernel_size=3, stride=2, ntop=2)
    n.u3 = pylayer(n.p3, n.m3, layer="MaxUnpool", params={"out_h": 15, "out_w": 15})
    n.u2 = pylayer(n.u3, n.m2, layer="MaxUnpool", params={"out_h": 31, "out_w": 31})
    n.u1 = pylayer(n.u2, n.m1, layer="MaxUnpool", params={"out_h": 64, "out_w": 64})
    net = write_net(n, tmp_path)
    x = np.random.default_rng(31).normal(size=(2, 2, 64, 64)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()
    assert [net.blobs[b].data.shape[2] for b in ("p1", "p2", "p3", "u3", "u2", "u1")] == [31, 15, 7, 15, 31, 64]
    # unpooling moves values without losing any: with accumulation the total is preserved at every stage
    # (overwriting colliding values would lose mass wherever windows share an argmax)
    total = float(np.sum(net.blobs["p3"].data, dtype=np.float64))
    for b in ("u3", "u2", "u1"):
        assert float(np.sum(net.blobs[b].data, dtype=np.float64)) == pytest.approx(total, rel=1e-5)
    assert np.count_nonzero(net.blobs["u1"].data) <= net.blobs["p3"].data.size


# ============================================================================================ validation
def _small_nets(tmp_path):
    n = caffe.NetSpec()
    n.a = L.Input(shape=dict(dim=[2, 3, 4, 4]))
    n.b = L.Input(shape=dict(dim=[2, 3, 4, 4]))
    n.label = L.Input(shape=dict(dim=[2]))
    n.pool, n.mask = L.Pooling(n.a, pool=P.Pooling.MAX, kernel_size=3, stride=2, ntop=2)
    n.delta = pylayer(n.a, n.b, layer="ElementwiseDistance")
    n.loss = pylayer(n.a, n.b, n.label, layer="ContrastiveLoss", params={"margin": 1.0}, loss_weight=1)
    n.unpool = pylayer(n.pool, n.mask, layer="MaxUnpool", params={"out_h": 4, "out_w": 4})
    return write_net(n, tmp_path, "small")


def test_layer_objects_are_reachable(caffe, tmp_path):
    net = _small_nets(tmp_path)
    assert isinstance(layer_object(net, "delta"), G.ElementwiseDistance)
    assert isinstance(layer_object(net, "loss"), G.ContrastiveLoss)
    assert isinstance(layer_object(net, "unpool"), G.MaxUnpool)
    assert layer_object(net, "unpool").out_h == 4


def _fb(*shape):
    return FakeBlob(shape)


@pytest.mark.parametrize("layer,bottoms,ntop,msg", [
    ("delta", [(2, 3)], 1, r"ElementwiseDistance: expected 2 bottom blob\(s\), got 1"),
    ("delta", [(2, 3), (2, 4)], 1, r"ElementwiseDistance: .*identical shapes, got \(2, 3\) vs \(2, 4\)"),
    ("delta", [(2, 3), (2, 3)], 2, r"ElementwiseDistance: expected 1 top blob\(s\), got 2"),
    ("loss", [(2, 3), (2, 3)], 1, r"ContrastiveLoss: expected 3 bottom blob\(s\), got 2"),
    ("loss", [(2, 3), (3, 3), (2,)], 1, r"ContrastiveLoss: .*identical shapes, got \(2, 3\) vs \(3, 3\)"),
    ("loss", [(2, 3), (2, 3), (3,)], 1, r"ContrastiveLoss: label must have shape \(2,\) .* got \(3,\)"),
    ("loss", [(2, 3), (2, 3), (2, 2)], 1, r"ContrastiveLoss: label must have shape .* got \(2, 2\)"),
    ("loss", [(2, 3), (2, 3), (2,)], 3, r"ContrastiveLoss: expected 1 or 2 top blob\(s\), got 3"),
    ("unpool", [(2, 3, 2, 2)], 1, r"MaxUnpool: expected 2 bottom blob\(s\), got 1"),
    ("unpool", [(2, 3, 2, 2), (2, 3, 2, 1)], 1, r"MaxUnpool: mask shape must equal x shape \(2, 3, 2, 2\), "
                                                r"got \(2, 3, 2, 1\)"),
    ("unpool", [(2, 3, 2), (2, 3, 2)], 1, r"MaxUnpool: x must be 4-D"),
    ("unpool", [(2, 3, 5, 2), (2, 3, 5, 2)], 1, r"MaxUnpool: pooled size .* exceeds the output size"),
])
def test_reshape_validation(caffe, tmp_path, layer, bottoms, ntop, msg):
    obj = layer_object(_small_nets(tmp_path), layer)
    with pytest.raises(ValueError, match=msg):
        obj.reshape([_fb(*s) for s in bottoms], [_fb(1) for _ in range(ntop)])
    with pytest.raises(ValueError, match=msg):
        obj.setup([_fb(*s) for s in bottoms], [_fb(1) for _ in range(ntop)])


@pytest.mark.parametrize("layer,param_str,msg", [
    ("delta", '{"margin": 1}', r"ElementwiseDistance: unknown param_str keys \['margin'\]"),
    ("loss", "{margin: 1}", r"ContrastiveLoss: param_str is not valid JSON"),
    ("loss", '{"margin": -1}', r"ContrastiveLoss: margin must be a positive"),
    ("loss", '{"neutral_label": 0.5}', r"ContrastiveLoss: neutral_label must be an integer"),
    ("loss", '{"distance": "l1"}', r"ContrastiveLoss: distance must be \"l2\" or \"rms\""),
    ("loss", '[1]', r"ContrastiveLoss: param_str must be a JSON object"),
    ("unpool", '{"out_h": 4}', r"MaxUnpool: param_str needs a positive integer 'out_w'"),
    ("unpool", '{"out_h": 4, "out_w": 0}', r"MaxUnpool: param_str needs a positive integer 'out_w'"),
])
def test_param_validation(caffe, tmp_path, layer, param_str, msg):
    obj = layer_object(_small_nets(tmp_path), layer)
    obj.param_str = param_str
    shapes = {"delta": [(2, 3), (2, 3)], "loss": [(2, 3), (2, 3), (2,)], "unpool": [(1, 1, 2, 2), (1, 1, 2, 2)]}
    with pytest.raises(ValueError, match=msg):
        obj.setup([_fb(*s) for s in shapes[layer]], [_fb(1)])


def test_direct_calls_respect_propagate_down(caffe, tmp_path):
    net = _small_nets(tmp_path)
    rng = np.random.default_rng(40)
    a, b = FakeBlob(data=rng.normal(size=(2, 3))), FakeBlob(data=rng.normal(size=(2, 3)))
    label = FakeBlob(data=[0.0, 1.0])
    for name, bottoms in (("delta", [a, b]), ("loss", [a, b, label])):
        obj = layer_object(net, name)
        top = [FakeBlob((1,))]
        obj.reshape(bottoms, top)
        obj.forward(bottoms, top)
        top[0].diff[...] = 1.0
        for blob in bottoms:
            blob.diff[...] = 42.0
        obj.backward(top, [False, True] + [False] * (len(bottoms) - 2), bottoms)
        assert np.all(a.diff == 42.0), name
        assert not np.all(b.diff == 42.0), name
        if name == "delta":                            # only b requested: d b = -sign(a - b) * dtop
            np.testing.assert_array_equal(b.diff, -np.sign(a.data - b.data) * top[0].diff)
        if name == "loss":
            assert np.all(label.diff == 42.0)
            obj.backward(top, [True, True, True], bottoms)  # force_backward asks for a label gradient: zero
            assert np.all(label.diff == 0) and not np.all(a.diff == 42.0)


def test_mismatched_shapes_raise_through_pycaffe(caffe, tmp_path):
    """A shape error inside a Caffe net surfaces as the layer's ValueError in pycaffe."""
    n = caffe.NetSpec()
    n.a = L.Input(shape=dict(dim=[2, 3]))
    n.b = L.Input(shape=dict(dim=[2, 4]))
    n.delta = pylayer(n.a, n.b, layer="ElementwiseDistance")
    with pytest.raises(ValueError, match=r"ElementwiseDistance: .*\(2, 3\) vs \(2, 4\)"):
        write_net(n, tmp_path)
    # and at forward time, after an input was reshaped
    n.b = L.Input(shape=dict(dim=[2, 3]))
    n.delta = pylayer(n.a, n.b, layer="ElementwiseDistance")
    net = write_net(n, tmp_path, "ok")
    net.blobs["b"].reshape(2, 5)
    with pytest.raises(ValueError, match=r"ElementwiseDistance: .*\(2, 3\) vs \(2, 5\)"):
        net.forward()


def test_max_unpool_mask_checked_after_each_reshape_and_index_buffer_reused(caffe, tmp_path):
    """The mask is validated at the first forward after a (re)shape; later forwards with new masks reuse the index
    buffer and still give the reference result (collisions summed)."""
    n = caffe.NetSpec()
    n.p = L.Input(shape=dict(dim=[1, 2, 2, 2]))
    n.mask = L.Input(shape=dict(dim=[1, 2, 2, 2]))
    n.unpool = pylayer(n.p, n.mask, layer="MaxUnpool", params={"out_h": 4, "out_w": 4})
    net = write_net(n, tmp_path)
    rng = np.random.default_rng(3)
    for masks in ([0, 2, 8, 10, 5, 5, 5, 15], [1, 1, 1, 1, 0, 3, 12, 15]):
        p = rng.standard_normal((1, 2, 2, 2)).astype(np.float32)
        mask = np.array(masks, dtype=np.float32).reshape(1, 2, 2, 2)
        net.blobs["p"].data[...] = p
        net.blobs["mask"].data[...] = mask
        net.forward()
        ref = G.max_unpool_forward(p, G.mask_to_flat_index(mask, 4, 4), (1, 2, 4, 4))
        np.testing.assert_array_equal(net.blobs["unpool"].data, ref)
    for blob in ("p", "mask"):
        net.blobs[blob].reshape(2, 2, 2, 2)
    net.blobs["mask"].data[...] = 0
    net.blobs["mask"].data[1, 1, 1, 1] = 16
    with pytest.raises(ValueError, match=r"MaxUnpool: mask values must lie in \[0, out_h\*out_w\)"):
        net.forward()


def test_bad_mask_raises_through_pycaffe(caffe, tmp_path):
    n = caffe.NetSpec()
    n.p = L.Input(shape=dict(dim=[1, 1, 2, 2]))
    n.mask = L.Input(shape=dict(dim=[1, 1, 2, 2]))
    n.unpool = pylayer(n.p, n.mask, layer="MaxUnpool", params={"out_h": 4, "out_w": 4})
    net = write_net(n, tmp_path)
    net.blobs["mask"].data[...] = np.array([0, 2, 8, -1], dtype=np.float32).reshape(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"MaxUnpool: mask values must lie in \[0, out_h\*out_w\)"):
        net.forward()

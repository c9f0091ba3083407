"""Custom Caffe Python layers of the GCNet reproduction (Kim et al., "Deep generative-contrastive networks for
facial expression recognition", sections 3.2-3.3 and Table 1).

Declared in a prototxt as (python_layers/ is on PYTHONPATH through tools/env.sh)::

    layer { name: "delta" type: "Python" bottom: "en2_pool3" bottom: "en2r_pool3" top: "delta"
            python_param { module: "gcnet_layers" layer: "ElementwiseDistance" } }
    layer { name: "loss_contr" type: "Python" bottom: "en2_pool3" bottom: "en2r_pool3" bottom: "label"
            top: "loss_contr" loss_weight: 1
            python_param { module: "gcnet_layers" layer: "ContrastiveLoss"
                           param_str: '{"margin": 1.0, "neutral_label": -1}' } }
    layer { name: "de1r_unpool3" type: "Python" bottom: "x" bottom: "en1_pool3_mask" top: "de1r_unpool3"
            python_param { module: "gcnet_layers" layer: "MaxUnpool" param_str: '{"out_h": 15, "out_w": 15}' } }

A Python layer is not a Caffe LossLayer: a ContrastiveLoss layer only contributes to the objective (and only
receives a gradient) when the prototxt gives it an explicit ``loss_weight``.

Layers
------
ElementwiseDistance   delta = |a - b| element-wise (Eq. 2, the contrastive representation).
ContrastiveLoss       Eq. 4-5 with alpha from the class label and the dataset's neutral class.
MaxUnpool             inverse of Caffe's MAX Pooling, driven by the pooling layer's mask top.

Conventions (the "documented choices" of this file)
---------------------------------------------------
* ElementwiseDistance at a == b: the subgradient 0 is used (np.sign(0) == 0), for both bottoms.
* ContrastiveLoss for a dissimilar pair (alpha = 1) at distance d == 0: the gradient of (m - d)^2 / 2 with respect
  to a is -(m - d) (a - b) / d, undefined at d = 0; the subgradient 0 is used.  Caffe's built-in layer instead
  divides by (d + 1e-4), which equals ours up to a relative 1e-4 / d; its loss value is identical.
* ContrastiveLoss normalisation: loss = 1/(2N) sum_n [...], as Caffe's ContrastiveLoss (legacy_version false)
  whose `sim` equals 1 - alpha.  The per-pair distance d_n is taken over all non-batch axes (flattened).
* MaxUnpool with overlapping windows (e.g. 5x5 stride 2): several pooled cells may share one argmax.  Their values
  are SUMMED at that position (not overwritten), so the layer is linear in x and its exact gradient is simply
  dx = dtop gathered at the mask positions (each pooled cell receives the full gradient of its target position).
* No gradient flows to the label (ContrastiveLoss) or to the mask (MaxUnpool); if Caffe asks for one
  (force_backward) their diff is set to zero.

The numeric kernels are plain numpy functions (no Caffe needed, any float dtype) so they can be tested in float64;
the layer classes are thin wrappers that validate shapes, cache what backward needs, and respect propagate_down.
MaxUnpool's layer runs the same maths in C (python_layers/max_unpool.c, float32, bit-identical to its numpy kernels).
"""
import json

import numpy as np

try:  # pragma: no cover - caffe is always present when Caffe itself loads this module
    import caffe
    _LayerBase = caffe.Layer
except ImportError:  # the numpy kernels stay importable (e.g. for tests of the maths) without pycaffe
    caffe = None
    _LayerBase = object

__all__ = ["ElementwiseDistance", "ContrastiveLoss", "MaxUnpool",
           "elementwise_distance_forward", "elementwise_distance_grad_a", "elementwise_distance_backward",
           "contrastive_loss_forward", "contrastive_loss_backward", "contrastive_alpha",
           "mask_to_flat_index", "max_unpool_forward", "max_unpool_backward"]


# ============================================================================================ numpy kernels
def elementwise_distance_forward(a, b, out=None):
    """delta = |a - b| element-wise (paper Eq. 2 with d = element-wise absolute difference); into `out` if given."""
    out = np.subtract(a, b, out=out)
    return np.abs(out, out=out)


def elementwise_distance_grad_a(a, b, dtop, out=None):
    """d a = sign(a - b) * dtop (subgradient 0 where a == b); into `out` if given.  The sign is (d > 0) - (d < 0),
    NaN kept: the values of np.sign (whose sign of 0 is +0), about 7x faster than numpy 1.x's scalar np.sign loop."""
    d = np.subtract(a, b, out=out)
    positive, negative, nan = np.greater(d, 0), np.less(d, 0), np.isnan(d)
    nan_values = d[nan] if nan.any() else None          # np.sign returns a NaN as it is (its sign bit too)
    np.subtract(positive, negative, out=d, dtype=d.dtype, casting="unsafe")
    if nan_values is not None:
        d[nan] = nan_values
    return np.multiply(d, dtop, out=d)


def elementwise_distance_backward(a, b, dtop):
    """Gradients of |a - b|: d a = sign(a - b) * dtop, d b = -d a."""
    da = elementwise_distance_grad_a(a, b, dtop)
    return da, -da


def contrastive_alpha(label, neutral_label):
    """alpha_n = 1 (dissimilar pair) unless label_n is the neutral class, then 0 (similar pair: X_r is neutral)."""
    lab = np.rint(np.asarray(label, dtype=np.float64).reshape(-1)).astype(np.int64)
    return (lab != int(neutral_label)).astype(np.float64)


def contrastive_loss_forward(a, b, alpha, margin):
    """Eq. 4-5 averaged over the batch.  Returns (loss, dist, diff) with diff = a - b flattened to (N, p) and
    dist_n = ||diff_n||_2.  loss = 1/(2N) sum_n [alpha_n max(0, m - d_n)^2 + (1 - alpha_n) d_n^2]."""
    n = a.shape[0]
    diff = np.subtract(a, b, dtype=np.float64).reshape(n, -1)       # exact float64 difference, one pass
    dist_sq = np.einsum("ij,ij->i", diff, diff)
    dist = np.sqrt(dist_sq)
    alpha = np.asarray(alpha, dtype=np.float64).reshape(n)
    hinge = np.maximum(0.0, margin - dist)
    loss = np.sum(alpha * hinge * hinge + (1.0 - alpha) * dist_sq) / (2.0 * n)
    return loss, dist, diff


def contrastive_loss_backward(diff, dist, alpha, margin, dloss=1.0, ddist=None):
    """Gradient of contrastive_loss_forward's loss (scaled by dloss) with respect to a, flattened to (N, p);
    the gradient with respect to b is its negative.

    similar (alpha 0):            d loss / d a_n = diff_n / N
    dissimilar (alpha 1), d < m:  d loss / d a_n = -(m - d_n) / d_n * diff_n / N   (0 at d_n == 0, a subgradient)
    dissimilar, d >= m:           0
    ddist (optional, (N,)): gradient arriving at the per-pair distance output; adds ddist_n * diff_n / d_n
    (again 0 at d_n == 0)."""
    n = diff.shape[0]
    alpha = np.asarray(alpha, dtype=np.float64).reshape(n)
    safe = np.where(dist > 0, dist, 1.0)
    hinge = np.maximum(0.0, margin - dist)
    coef = np.where(dist > 0, -hinge / safe, 0.0)          # dissimilar pairs, subgradient 0 at d == 0
    scale = (alpha * coef + (1.0 - alpha)) * (float(dloss) / n)
    if ddist is not None:
        scale = scale + np.where(dist > 0, np.asarray(ddist, dtype=np.float64).reshape(n) / safe, 0.0)
    return diff * scale[:, None]


def mask_to_flat_index(mask, out_h, out_w, who="MaxUnpool"):
    """Global flat indices into an (N, C, out_h, out_w) array from a Caffe MAX-pooling mask (N, C, h, w), whose
    values index the flattened out_h*out_w plane of the pooling input.  Validates the mask values."""
    mask = np.asarray(mask)
    plane = int(out_h) * int(out_w)
    m = mask.astype(np.int64)
    if mask.size:
        bad = m != mask
        if bad.any():
            raise ValueError("%s: mask values must be integral (a Caffe MAX Pooling mask top); got e.g. %r"
                             % (who, float(mask[bad].ravel()[0])))
        lo, hi = int(m.min()), int(m.max())
        if lo < 0 or hi >= plane:
            raise ValueError("%s: mask values must lie in [0, out_h*out_w) = [0, %d) for out_h=%d, out_w=%d; got "
                             "range [%d, %d] (a -1 marks a pooling window without a maximum, e.g. all-NaN input)"
                             % (who, plane, out_h, out_w, lo, hi))
    nc = int(np.prod(mask.shape[:2]))
    offs = (np.arange(nc, dtype=np.int64) * plane).reshape(mask.shape[:2] + (1, 1))
    return (m + offs).reshape(-1)


def max_unpool_forward(x, flat_index, out_shape, out=None):
    """Scatter x (N, C, h, w) to zeros of out_shape (N, C, H, W) at flat_index (from mask_to_flat_index), SUMMING
    values that share a position (overlapping pooling windows).  Writes into `out` (C-contiguous, e.g. a Caffe top's
    data) when given.  np.add.at is used: with numpy >= 1.25 it is ~10x faster here than np.bincount with a
    minlength of N*C*H*W (which allocates and converts a float64 array of the whole output)."""
    x = np.asarray(x)
    if out is None:
        out = np.zeros(out_shape, dtype=np.result_type(x.dtype, np.float32))
    else:
        if tuple(out.shape) != tuple(out_shape) or not out.flags.c_contiguous:
            raise ValueError("max_unpool_forward: out must be C-contiguous with shape %s, got %s"
                             % (tuple(out_shape), out.shape))
        out[...] = 0
    np.add.at(out.reshape(-1), flat_index, x.reshape(-1))
    return out


def max_unpool_backward(dtop, flat_index, in_shape):
    """Exact gradient of max_unpool_forward: dx = dtop gathered at the argmax positions."""
    return np.asarray(dtop).reshape(-1)[flat_index].reshape(in_shape)


# ============================================================================================ helpers
def _parse_params(layer, defaults):
    """param_str (JSON object, may be empty) -> dict over `defaults`; unknown keys are an error (typos)."""
    name = layer.__class__.__name__
    text = getattr(layer, "param_str", "") or ""
    text = text.strip()
    try:
        given = json.loads(text) if text else {}
    except ValueError as e:
        raise ValueError("%s: param_str is not valid JSON (%s): %r" % (name, e, text))
    if not isinstance(given, dict):
        raise ValueError("%s: param_str must be a JSON object, got %r" % (name, text))
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError("%s: unknown param_str keys %s (known: %s)" % (name, unknown, sorted(defaults)))
    out = dict(defaults)
    out.update(given)
    return out


def _shape(blob):
    return tuple(int(s) for s in blob.data.shape)


def _check_counts(layer, bottom, top, n_bottom, n_top):
    name = layer.__class__.__name__
    if len(bottom) not in n_bottom:
        raise ValueError("%s: expected %s bottom blob(s), got %d" % (name, " or ".join(map(str, n_bottom)),
                                                                     len(bottom)))
    if len(top) not in n_top:
        raise ValueError("%s: expected %s top blob(s), got %d" % (name, " or ".join(map(str, n_top)), len(top)))


def _check_same_shape(layer, a, b, names=("a", "b")):
    sa, sb = _shape(a), _shape(b)
    if sa != sb:
        raise ValueError("%s: bottoms %s and %s must have identical shapes, got %s vs %s"
                         % (layer.__class__.__name__, names[0], names[1], sa, sb))
    if len(sa) < 1 or sa[0] < 1:
        raise ValueError("%s: bottoms need a non-empty batch axis, got shape %s" % (layer.__class__.__name__, sa))
    return sa


# ============================================================================================ layers
class ElementwiseDistance(_LayerBase):
    """top = |a - b| element-wise; bottoms a, b of identical shape (N, ...), top of the same shape.

    Backward: d a = sign(a - b) * dtop, d b = -sign(a - b) * dtop.  Where a == b the subgradient 0 is used for
    both bottoms.  propagate_down is respected."""

    def setup(self, bottom, top):
        _parse_params(self, {})
        self._validate(bottom, top)

    def _validate(self, bottom, top):
        _check_counts(self, bottom, top, (2,), (1,))
        return _check_same_shape(self, bottom[0], bottom[1])

    def reshape(self, bottom, top):
        shape = self._validate(bottom, top)
        top[0].reshape(*shape)

    def forward(self, bottom, top):
        elementwise_distance_forward(bottom[0].data, bottom[1].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        # d a computed in the first requested bottom diff (no temporaries)
        if not (propagate_down[0] or propagate_down[1]):
            return
        g = bottom[0].diff if propagate_down[0] else bottom[1].diff
        elementwise_distance_grad_a(bottom[0].data, bottom[1].data, top[0].diff, out=g)
        if propagate_down[1]:
            np.negative(g, out=bottom[1].diff)        # d b = -d a (in place when only b is requested)


class ContrastiveLoss(_LayerBase):
    """Contrastive loss of Eq. 4-5.

    bottoms: a, b (N, ...) of identical shape (flattened per sample), label (N,) or (N, 1, ..., 1) (class index).
    param_str: {"margin": m (default 1.0), "neutral_label": k (default -1, no neutral class),
    "distance": "l2" (default, d_n = ||a_n - b_n||_2 as in the paper) or "rms" (d_n = ||a_n - b_n||_2 / sqrt(p),
    p the per-sample size: the margin is then on the scale of one feature)}.
    alpha_n = 1 if label_n != k else 0;
    top[0] (shape (1,)): 1/(2N) sum_n [alpha_n max(0, m - d_n)^2 + (1 - alpha_n) d_n^2].
    Optional top[1] `distance` (N,): d_n (with two tops give one loss_weight per top, e.g. [1, 0]); a gradient
    arriving there is back-propagated too.
    Backward scales by top[0].diff[0] (the loss_weight); a dissimilar pair at d_n == 0 gets the subgradient 0;
    no gradient to the label (its diff is zeroed if requested)."""

    def setup(self, bottom, top):
        p = _parse_params(self, {"margin": 1.0, "neutral_label": -1, "distance": "l2"})
        name = self.__class__.__name__
        if p["distance"] not in ("l2", "rms"):
            raise ValueError("%s: distance must be \"l2\" or \"rms\", got %r" % (name, p["distance"]))
        self.distance = p["distance"]
        try:
            self.margin = float(p["margin"])
        except (TypeError, ValueError):
            raise ValueError("%s: margin must be a number, got %r" % (name, p["margin"]))
        if not np.isfinite(self.margin) or self.margin <= 0:
            raise ValueError("%s: margin must be a positive finite number, got %r" % (name, p["margin"]))
        k = p["neutral_label"]
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not np.isfinite(k) or float(k) != int(k):
            raise ValueError("%s: neutral_label must be an integer class index (-1 for none), got %r" % (name, k))
        self.neutral_label = int(k)
        self._validate(bottom, top)

    def _input_scale(self, bottom):
        """1 for "l2"; 1/sqrt(p) for "rms" (the rms distance of a, b is the l2 distance of a/sqrt(p), b/sqrt(p))."""
        if self.distance == "l2":
            return 1.0
        return 1.0 / np.sqrt(bottom[0].data[0].size)

    def _validate(self, bottom, top):
        _check_counts(self, bottom, top, (3,), (1, 2))
        shape = _check_same_shape(self, bottom[0], bottom[1])
        n = shape[0]
        ls = _shape(bottom[2])
        if len(ls) < 1 or ls[0] != n or int(np.prod(ls[1:])) != 1:
            raise ValueError("%s: label must have shape (%d,) or (%d, 1, ..., 1) to match bottoms of shape %s, "
                             "got %s" % (self.__class__.__name__, n, n, shape, ls))
        return n

    def reshape(self, bottom, top):
        n = self._validate(bottom, top)
        top[0].reshape(1)
        if len(top) > 1:
            top[1].reshape(n)

    def forward(self, bottom, top):
        self._alpha = contrastive_alpha(bottom[2].data, self.neutral_label)
        c = self._input_scale(bottom)
        a, b = (bottom[0].data, bottom[1].data) if c == 1.0 else (bottom[0].data * c, bottom[1].data * c)
        loss, self._dist, self._diff = contrastive_loss_forward(a, b, self._alpha, self.margin)
        top[0].data[...] = loss
        if len(top) > 1:
            top[1].data[...] = self._dist

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] or propagate_down[1]:
            ddist = top[1].diff if len(top) > 1 else None
            g = contrastive_loss_backward(self._diff, self._dist, self._alpha, self.margin,
                                          dloss=top[0].diff.reshape(-1)[0], ddist=ddist)
            c = self._input_scale(bottom)
            if c != 1.0:
                g *= c
            shape = bottom[0].data.shape
            if propagate_down[0]:
                bottom[0].diff[...] = g.reshape(shape)
            if propagate_down[1]:       # float32(-g) == -float32(g): negate the rounded values when they exist
                if propagate_down[0]:
                    np.negative(bottom[0].diff, out=bottom[1].diff)
                else:
                    bottom[1].diff[...] = -g.reshape(shape)
        if len(propagate_down) > 2 and propagate_down[2]:
            bottom[2].diff[...] = 0


class MaxUnpool(_LayerBase):
    """Max unpooling driven by Caffe's MAX Pooling mask (SegNet-style decoder of Table 1).

    bottoms: x (N, C, h, w) pooled values, mask (N, C, h, w) = top[1] of the MAX Pooling layer (float index into
    the flattened H*W plane of the pooling input).  param_str: {"out_h": H, "out_w": W}, the pooling input's size.
    top (N, C, H, W): zeros except that every pooled value is placed at its argmax.  Pooled cells that share an
    argmax (overlapping windows) are SUMMED there, so the backward is exactly dx = dtop[mask] (each cell gets the
    full gradient of its position).  No gradient to the mask (its diff is zeroed if requested).
    The mask must be integral and in [0, H*W): this is checked at the first forward after each reshape (the whole
    mask, with a clear error), not at every forward: later masks come from the same Caffe MAX Pooling layer, whose
    indices always lie in the window (a -1 only marks a window with no value above -FLT_MAX, e.g. all NaN, when
    the net has already diverged; such a cell places nothing and gets no gradient).  Forward and backward run the C
    kernels of python_layers/max_unpool.c (bit-identical to max_unpool_forward / _backward above, about twice as
    fast as numpy's three passes; docs/choices.md)."""

    def setup(self, bottom, top):
        p = _parse_params(self, {"out_h": None, "out_w": None})
        name = self.__class__.__name__
        for key in ("out_h", "out_w"):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError("%s: param_str needs a positive integer %r (the pre-pooling size), got %r"
                                 % (name, key, v))
        self.out_h, self.out_w = int(p["out_h"]), int(p["out_w"])
        self._shape = None
        self._validate(bottom, top)
        self._kernels = _unpool_kernels()

    def _validate(self, bottom, top):
        name = self.__class__.__name__
        _check_counts(self, bottom, top, (2,), (1,))
        xs, ms = _shape(bottom[0]), _shape(bottom[1])
        if len(xs) != 4:
            raise ValueError("%s: x must be 4-D (N, C, h, w), got shape %s" % (name, xs))
        if ms != xs:
            raise ValueError("%s: mask shape must equal x shape %s, got %s" % (name, xs, ms))
        if xs[2] > self.out_h or xs[3] > self.out_w:
            raise ValueError("%s: pooled size (h, w) = %s exceeds the output size (out_h, out_w) = %s"
                             % (name, xs[2:], (self.out_h, self.out_w)))
        return xs

    def reshape(self, bottom, top):
        xs = self._validate(bottom, top)
        top[0].reshape(xs[0], xs[1], self.out_h, self.out_w)
        if xs != self._shape:          # new shape: the next mask is validated
            self._shape = xs
            self._mask_checked = False

    def _sizes(self):
        n, c, h, w = self._shape
        return n * c, h * w, self.out_h * self.out_w

    def forward(self, bottom, top):
        if not self._mask_checked:
            mask_to_flat_index(bottom[1].data, self.out_h, self.out_w, self.__class__.__name__)
            self._mask_checked = True
        self._kernels.max_unpool_forward(bottom[0].data.ctypes.data, bottom[1].data.ctypes.data, *self._sizes(),
                                         top[0].data.ctypes.data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            # dx = dtop gathered at the argmax positions, written straight into the bottom diff
            self._kernels.max_unpool_backward(top[0].diff.ctypes.data, bottom[1].data.ctypes.data, *self._sizes(),
                                              bottom[0].diff.ctypes.data)
        if len(propagate_down) > 1 and propagate_down[1]:
            bottom[1].diff[...] = 0


def _unpool_kernels():
    """The C kernels of MaxUnpool (python_layers/max_unpool.c through python_layers/gcnet_native.py)."""
    import ctypes
    import gcnet_native
    ptr, size = ctypes.c_void_p, ctypes.c_int64
    args = [ptr, ptr, size, size, size, ptr]
    return gcnet_native.load("max_unpool", {"max_unpool_forward": args, "max_unpool_backward": args})

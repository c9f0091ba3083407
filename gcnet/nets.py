"""Every network of the paper, generated from ONE definition with caffe.NetSpec.

Paper map (Fig. 2, Fig. 3, Table 1, Eq. 2-10):

    X, X_r        blobs `x`, `xr`: the Data layer's 2-channel Datum [X, X_r] sliced in two
    En_1          `en1_*`    encoder of the generator (Table 1 encoder)
    De_1r         `de1r_*`   decoder of the generator; Generator(X) = De_1r(En_1(X)) -> blob `gen_r` (X_r hat)
    En_2          `en2_*`    representation encoder on X; `en2r_*` is the same encoder (shared weights) on X_r hat
    d(.,.)        `delta`    element-wise distance |En_2(X) - En_2(X_r hat)| (Eq. 2, Python layer)
    classifier    `drop` -> `fc1` (384) -> `relu_fc1` -> `fc2` (classes) -> `loss_cls` (softmax cross entropy)
    L_Contr       `loss_contr`  contrastive loss on En_2(X), En_2(X_r hat) (Eq. 4-5), weight lambda_S      [S1]
    L_Gen,r       `loss_gen_r`  ||X_r - Generator(X)||^2 / 2 (Eq. 7-8), weight lambda_G,r              [all GCNets]
                  (each decoder ends in the single-channel block DeConv(5x5,1)-BNorm-ReLU of Table 1; its Scale
                  `<decoder>_scale1` is frozen while fine-tuning unless finetune_output_scale="decoder-rate")
    De_2r         `de2r_*`   decoder on En_2(X_r hat) -> `rec_r`; `loss_rec_r` vs X_r (Eq. 9), lambda_R,r  [R1]
    De_2i         `de2i_*`   decoder on En_2(X)       -> `rec_i`; `loss_rec_i` vs X   (Eq. 10), lambda_R,i [R1]

Caffe's EuclideanLoss is 1/(2N) sum ||.||^2, i.e. Eq. 7-10 averaged over the batch.
Pretraining nets (section 4.1): `encdec` (En_1 + De_1r on reconstruction of X) and `cnn_id` (En_2 + 2 FC on
identity).  Layer names are shared across nets so that net surgery copies weights by name (gcnet/surgery.py).
The choices the paper leaves open are NetOptions fields (gcnet/config.py) documented in docs/choices.md.
"""
import json
from typing import List, Sequence

import caffe
from caffe import layers as L
from caffe import params as P
from caffe.proto import caffe_pb2
from google.protobuf import text_format

from gcnet.config import (ALL_MODELS, CONTRASTIVE_DISTANCES, FINETUNE_OUTPUT_SCALE, MODELS, NetOptions,
                          has_reference_variant, has_true_reference)

PY_MODULE = "gcnet_layers"          # python_layers/gcnet_layers.py
WEIGHT_FILLER = dict(type="xavier")
BIAS_FILLER = dict(type="constant", value=0)

PHASES = ("train_val", "deploy", "deploy_ref")
# decoder output blob -> name of the decoder's last deconvolution layer (Deconvolution or UnpoolDeconvolution)
DECODER_OUTPUTS = {"gen_r": "de1r_deconv1", "rec_r": "de2r_deconv1", "rec_i": "de2i_deconv1"}


# ----------------------------------------------------------------------------------------------- geometry
def pooled_size(size: int, kernel: int, stride: int, pad: int = 0) -> int:
    """Caffe's Pooling output size (ceil rounding, clipped so the last window starts inside the padded input)."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def encoder_sizes(opts: NetOptions) -> List[int]:
    """Spatial size before each pooling layer and after the last: [64, 31, 15, 7] with the defaults."""
    sizes = [opts.crop]
    for k in opts.pool_kernels:
        sizes.append(pooled_size(sizes[-1], k, opts.pool_stride, opts.pool_pad))
    return sizes


def check_options(opts: NetOptions) -> None:
    n = len(opts.conv_channels)
    if not (len(opts.conv_kernels) == len(opts.pool_kernels) == len(opts.decoder_channels) == n):
        raise ValueError("conv_kernels, conv_channels, pool_kernels and decoder_channels need %d entries each" % n)
    # decoder layer j (j = n-1 ... 0 in encoder numbering) unpools with the mask of encoder pool j, whose channel
    # count is conv_channels[j]; so the deconv before it must output conv_channels[j].
    expected = tuple(opts.conv_channels[::-1][1:]) + (1,)
    if tuple(opts.decoder_channels) != expected:
        raise ValueError(
            "decoder_channels %s cannot use the encoder's pooling masks: after unpooling the %s-channel masks "
            "(encoder order reversed) the deconvolutions must output %s (see docs/choices.md: Table 1 prints "
            "32 then 64)" % (tuple(opts.decoder_channels), tuple(opts.conv_channels[::-1]), expected))
    if opts.finetune_output_scale not in FINETUNE_OUTPUT_SCALE:
        raise ValueError("finetune_output_scale must be one of %s, got %r"
                         % (", ".join(FINETUNE_OUTPUT_SCALE), opts.finetune_output_scale))
    if opts.contrastive_distance not in CONTRASTIVE_DISTANCES:
        raise ValueError("contrastive_distance must be one of %s, got %r"
                         % (", ".join(CONTRASTIVE_DISTANCES), opts.contrastive_distance))
    if opts.crop != 64:
        raise ValueError("fc1 = (0.5*Wsize)^2*3/2^3 assumes Wsize = 64; got crop %d" % opts.crop)


# ----------------------------------------------------------------------------------------------- param specs
def _params(name: str, lr: float, shared: bool, bias: bool = True) -> List[dict]:
    """[weight, bias] param specs; named (so that Caffe shares them) when the block is used twice (En_2)."""
    specs = [dict(lr_mult=lr, decay_mult=1)]
    if bias:
        specs.append(dict(lr_mult=2 * lr, decay_mult=0))   # Caffe's usual 2x rate for biases
    if shared:
        for spec, suffix in zip(specs, ("w", "b")):
            spec["name"] = "%s_%s" % (name, suffix)
    return specs


def _bn_params(name: str, shared: bool) -> List[dict]:
    # BatchNorm's mean, variance and moving-average factor are statistics, never updated by the solver.
    specs = [dict(lr_mult=0, decay_mult=0) for _ in range(3)]
    if shared:
        for spec, suffix in zip(specs, ("mean", "var", "factor")):
            spec["name"] = "%s_%s" % (name, suffix)
    return specs


def _bn_scale_relu(n, prefix: str, idx: int, top, owner: str, lr: float, shared: bool,
                   shared_stats: bool = True, scale_lr: float = None) -> None:
    """BNorm (Caffe BatchNorm + Scale with bias) and ReLU, in place on `top`.  `shared_stats` False gives a shared
    block its own BatchNorm statistics (while Scale, i.e. the learned gamma/beta, stays shared); `scale_lr` overrides
    the Scale's rate (0: frozen)."""
    stats_owner = owner if shared_stats else prefix
    setattr(n, "%s_bn%d" % (prefix, idx), L.BatchNorm(top, in_place=True, param=_bn_params(
        "%s_bn%d" % (stats_owner, idx), shared and (shared_stats or stats_owner == owner))))
    setattr(n, "%s_scale%d" % (prefix, idx), L.Scale(top, in_place=True, bias_term=True, param=_params(
        "%s_scale%d" % (owner, idx), lr if scale_lr is None else scale_lr, shared)))
    setattr(n, "%s_relu%d" % (prefix, idx), L.ReLU(top, in_place=True))


# ----------------------------------------------------------------------------------------------- builders
def encoder(n, prefix: str, bottom, opts: NetOptions, owner: str = None, lr: float = 1.0, masks: bool = True):
    """Table 1 encoder: 3 x [Conv - BNorm - ReLU - MaxPool].  Returns (output, [masks of pool1..3]); the pooling
    layers only produce masks (top `<prefix>_pool<i>_mask`) when a decoder will unpool with them (`masks`).

    `owner` != prefix re-uses the parameters of encoder `owner` (Caffe named-param sharing): En_2 applied to
    X (`en2_*`) and to the generated reference (`en2r_*`) is ONE encoder.
    """
    owner = owner or prefix
    shared = owner != prefix or prefix in ("en2",)
    with_masks, masks, top = masks, [], bottom
    for i, (k, c, pk) in enumerate(zip(opts.conv_kernels, opts.conv_channels, opts.pool_kernels), start=1):
        conv = L.Convolution(top, num_output=c, kernel_size=k, pad=k // 2 if opts.conv_pad_same else 0,
                             weight_filler=WEIGHT_FILLER, bias_filler=BIAS_FILLER,
                             param=_params("%s_conv%d" % (owner, i), lr, shared))
        setattr(n, "%s_conv%d" % (prefix, i), conv)
        _bn_scale_relu(n, prefix, i, conv, owner, lr, shared, opts.en2_shared_bn_stats)
        pool = L.Pooling(conv, pool=P.Pooling.MAX, kernel_size=pk, stride=opts.pool_stride, pad=opts.pool_pad,
                         ntop=2 if with_masks else 1)
        if with_masks:
            pool, mask = pool
            setattr(n, "%s_pool%d_mask" % (prefix, i), mask)
            masks.append(mask)
        setattr(n, "%s_pool%d" % (prefix, i), pool)
        top = pool
    return top, masks


def winograd_applies(kernel: int, pad: int) -> bool:
    """Whether Caffe's CPU Winograd path (patch 0010) takes a stride-1 (De)Convolution: 3x3 kernel, pad 1."""
    return kernel == 3 and pad == 1


def decoder(n, prefix: str, bottom, masks: Sequence, opts: NetOptions, lr: float, output_scale_lr: float = None):
    """Table 1 decoder, mirroring the encoder: 3 x [MaxUnPool (with the encoder's pooling mask) - DeConv - BNorm -
    ReLU], layers numbered by the encoder layer they mirror (`<prefix>_unpool3` is applied first).
    `output_scale_lr` is the rate of the single-channel output block's Scale (`<prefix>_scale1`; None: `lr`).
    With opts.fused_unpool, a MaxUnPool - DeConv pair that Winograd does not take (the 5x5 layer) is one
    UnpoolDeconvolution layer named `<prefix>_deconv<j>` (same weights, same results)."""
    sizes = encoder_sizes(opts)
    top = bottom
    n_layers = len(opts.conv_channels)
    for j, c in zip(range(n_layers, 0, -1), opts.decoder_channels):
        k = opts.conv_kernels[j - 1]
        pad = k // 2 if opts.conv_pad_same else 0
        conv = dict(num_output=c, kernel_size=k, pad=pad, stride=1, weight_filler=WEIGHT_FILLER,
                    bias_filler=BIAS_FILLER)
        if opts.fused_unpool and not winograd_applies(k, pad):
            deconv = L.UnpoolDeconvolution(top, masks[j - 1], convolution_param=conv, param=_params("", lr, False),
                                           unpool_param=dict(out_h=sizes[j - 1], out_w=sizes[j - 1]))
        else:
            unpool = L.Python(top, masks[j - 1], python_param=dict(
                module=PY_MODULE, layer="MaxUnpool",
                param_str=json.dumps({"out_h": sizes[j - 1], "out_w": sizes[j - 1]})))
            setattr(n, "%s_unpool%d" % (prefix, j), unpool)
            deconv = L.Deconvolution(unpool, convolution_param=conv, param=_params("", lr, False))
        setattr(n, "%s_deconv%d" % (prefix, j), deconv)
        _bn_scale_relu(n, prefix, j, deconv, prefix, lr, False, scale_lr=output_scale_lr if j == 1 else None)
        top = deconv
    return top


def classifier(n, bottom, n_out: int, opts: NetOptions, prefix: str = ""):
    """Dropout (0.5) before fc1 (384 = (0.5*64)^2*3/2^3), ReLU, fc2 with one output per class."""
    setattr(n, prefix + "drop", L.Dropout(bottom, dropout_ratio=opts.dropout))
    fc1 = L.InnerProduct(getattr(n, prefix + "drop"), num_output=opts.fc1, weight_filler=WEIGHT_FILLER,
                         bias_filler=BIAS_FILLER, param=_params("", 1.0, False))
    setattr(n, prefix + "fc1", fc1)
    if opts.fc1_relu:
        setattr(n, "relu_" + prefix + "fc1", L.ReLU(fc1, in_place=True))
    fc2 = L.InnerProduct(fc1, num_output=n_out, weight_filler=WEIGHT_FILLER, bias_filler=BIAS_FILLER,
                         param=_params("", 1.0, False))
    setattr(n, prefix + "fc2", fc2)
    return fc2


def _data_layer(source: str, batch: int, opts: NetOptions, phase: int):
    return L.Data(source=source, backend=P.Data.LMDB, batch_size=batch, ntop=2,
                  transform_param=dict(crop_size=opts.crop, mirror=opts.mirror and phase == caffe.TRAIN,
                                       scale=1.0 / 256),
                  include=dict(phase=phase))


# ----------------------------------------------------------------------------------------------- bodies
# A body builds everything after the inputs `x` (and `xr`, `label` when training) of a model (config.MODELS[m].body);
# `w` is the row's loss weights.  Each returns nothing; the loss layers exist only when not `deploy`.
def _autoencoder(n, w: dict, opts: NetOptions, deploy: bool) -> None:
    """encdec (section 4.1): En_1 + De_1r reconstructing X."""
    en1, masks = encoder(n, "en1", n.x, opts)
    n.gen_r = decoder(n, "de1r", en1, masks, opts, lr=1.0)
    if not deploy:
        n.loss_rec = L.EuclideanLoss(n.gen_r, n.x, loss_weight=w["loss_rec"])


def _output_scale_lr(opts: NetOptions) -> float:
    """Rate of the decoders' single-channel output Scale while fine-tuning (NetOptions.finetune_output_scale)."""
    return 0.0 if opts.finetune_output_scale == "frozen" else opts.decoder_lr_mult


def _generator(n, w: dict, opts: NetOptions, deploy: bool) -> None:
    """The first of the paper's two steps (section 1): Generator(X) = De_1r(En_1(X)) learned alone on X -> X_r
    (L_Gen,r, Eq. 7-8), trained as inside the GCNets: decoder at the fine-tuning rate, output Scale frozen."""
    en1, masks = encoder(n, "en1", n.x, opts)
    n.gen_r = decoder(n, "de1r", en1, masks, opts, lr=opts.decoder_lr_mult, output_scale_lr=_output_scale_lr(opts))
    if not deploy:
        n.loss_gen_r = L.EuclideanLoss(n.gen_r, n.xr, loss_weight=w["loss_gen_r"])


def _identity(n, w: dict, opts: NetOptions, deploy: bool) -> None:
    """cnn_id (section 4.1): En_2 + 2 FC on the identities of the pretraining set."""
    en2, _ = encoder(n, "en2", n.x, opts, masks=False)
    _head(n, classifier(n, en2, opts.n_identities, opts, "id_"), "loss_id", w, deploy)


def _cnn(n, w: dict, opts: NetOptions, deploy: bool) -> None:
    """The baseline CNN (Tables 2-5): En_2 + 2 FC on the expression classes."""
    en2, _ = encoder(n, "en2", n.x, opts, masks=False)
    _head(n, classifier(n, en2, opts.n_classes, opts), "loss_cls", w, deploy)


def _pair(n, w: dict, opts: NetOptions, deploy: bool) -> None:
    """Fig. 2(b): En_2 on X and on the TRUE reference X_r (one encoder, shared weights), d(.,.), classifier."""
    _contrast_with(n, n.xr, w, opts, deploy)


def _contrast_with(n, reference, w: dict, opts: NetOptions, deploy: bool) -> None:
    """En_2 on X and on `reference` (shared weights, own BatchNorm statistics), delta, classifier."""
    en2_x, _ = encoder(n, "en2", n.x, opts, masks=False)
    en2_r, _ = encoder(n, "en2r", reference, opts, owner="en2", masks=False)
    n.delta = L.Python(en2_x, en2_r, python_param=dict(module=PY_MODULE, layer="ElementwiseDistance"))
    _head(n, classifier(n, n.delta, opts.n_classes, opts), "loss_cls", w, deploy)


def _gcnet(n, w: dict, opts: NetOptions, deploy: bool) -> None:
    """GCNet (Fig. 3): Generator(X), En_2 on X and on it, delta, classifier; L_Contr with "loss_contr" (S1), De_2r
    and De_2i with "loss_rec_r" (R1) in the row's losses."""
    contrastive, recon = "loss_contr" in w, "loss_rec_r" in w
    dec_lr, out_lr = opts.decoder_lr_mult, _output_scale_lr(opts)
    # Generator(X) = De_1r(En_1(X)) estimates the reference X_r (section 3.2)
    en1, en1_masks = encoder(n, "en1", n.x, opts)
    n.gen_r = decoder(n, "de1r", en1, en1_masks, opts, lr=dec_lr, output_scale_lr=out_lr)
    # En_2 on X and on X_r hat (one encoder, shared weights)
    en2_x, en2_x_masks = encoder(n, "en2", n.x, opts, masks=recon)
    en2_r, en2_r_masks = encoder(n, "en2r", n.gen_r, opts, owner="en2", masks=recon)
    # contrastive representation delta = d(En_2(X), En_2(X_r hat)) (Eq. 2)
    n.delta = L.Python(en2_x, en2_r, python_param=dict(module=PY_MODULE, layer="ElementwiseDistance"))
    _head(n, classifier(n, n.delta, opts.n_classes, opts), "loss_cls", w, deploy)
    if recon:
        n.rec_r = decoder(n, "de2r", en2_r, en2_r_masks, opts, lr=dec_lr, output_scale_lr=out_lr)    # De_2r(En_2(Generator(X)))
        n.rec_i = decoder(n, "de2i", en2_x, en2_x_masks, opts, lr=dec_lr, output_scale_lr=out_lr)    # De_2i(En_2(X))
    if deploy:
        return
    if contrastive:
        n.loss_contr = L.Python(en2_x, en2_r, n.label, loss_weight=w["loss_contr"], python_param=dict(
            module=PY_MODULE, layer="ContrastiveLoss",
            param_str=json.dumps({"margin": opts.margin, "neutral_label": opts.neutral_label,
                                  "distance": opts.contrastive_distance})))
    n.loss_gen_r = L.EuclideanLoss(n.gen_r, n.xr, loss_weight=w["loss_gen_r"])
    if recon:
        n.loss_rec_r = L.EuclideanLoss(n.rec_r, n.xr, loss_weight=w["loss_rec_r"])
        n.loss_rec_i = L.EuclideanLoss(n.rec_i, n.x, loss_weight=w["loss_rec_i"])


# config.MODELS[model].body -> its builder (docs/ARCHITECTURE.md "Add a model")
BODIES = {"autoencoder": _autoencoder, "generator": _generator, "identity": _identity, "cnn": _cnn, "pair": _pair,
          "gcnet": _gcnet}


def _reference_input_body(n, w: dict, opts: NetOptions) -> None:
    """The deploy net with the person's own reference (phase "deploy_ref", inputs `x` and `xr`): En_2 on X and on
    the given X_r in place of Generator(X) (the same layers, weights and BatchNorm statistics as `en2r_*` on the
    generated reference), delta, classifier, `prob`.  No generator and no decoders: a reference is given."""
    _contrast_with(n, n.xr, w, opts, True)


def _head(n, out, loss_name: str, w: dict, deploy: bool) -> None:
    if deploy:
        n.prob = L.Softmax(out)
        return
    weight = {} if w[loss_name] == 1 else {"loss_weight": w[loss_name]}   # Caffe's default 1 left implicit
    setattr(n, loss_name, L.SoftmaxWithLoss(out, n.label, **weight))
    n.accuracy = L.Accuracy(out, n.label, include=dict(phase=caffe.TEST))


def build_net(model: str, opts: NetOptions = None, phase: str = "train_val") -> caffe_pb2.NetParameter:
    """NetParameter of `model` (one of config.ALL_MODELS) for phase "train_val", "deploy" or "deploy_ref" (the
    deploy net of a GCNet with the person's reference as input `xr`, see _reference_input_body)."""
    opts = opts or NetOptions()
    if model not in ALL_MODELS:
        raise ValueError("unknown model %r; known: %s" % (model, ", ".join(ALL_MODELS)))
    if phase not in PHASES:
        raise ValueError("phase must be one of %s, not %r" % (", ".join(PHASES), phase))
    if phase == "deploy_ref" and not has_reference_variant(model):
        raise ValueError("%s has no generated reference to replace: no deploy_ref net" % model)
    check_options(opts)
    facts = MODELS[model]
    if facts.body not in BODIES:
        raise ValueError("model %s: body %r is not one of gcnet.nets.BODIES (%s)" % (model, facts.body,
                                                                                  ", ".join(BODIES)))
    w = facts.loss_weights
    n = caffe.NetSpec()
    deploy = phase != "train_val"
    if deploy:
        n.x = L.Input(shape=dict(dim=[1, 1, opts.crop, opts.crop]))
        if has_true_reference(model):
            n.xr = L.Input(shape=dict(dim=[1, 1, opts.crop, opts.crop]))     # the person's reference face
    else:
        n.data, n.label = _data_layer(opts.train_source, opts.batch_size, opts, caffe.TRAIN)
        # Datum channels [X, X_r] -> x, xr
        n.x, n.xr = L.Slice(n.data, slice_param=dict(axis=1, slice_point=[1]), ntop=2)
        unused = [] if facts.generator or facts.true_reference else [n.xr]
        if not {"loss_cls", "loss_id"} & set(w):               # no classifier: the labels are not read
            unused.append(n.label)
        if unused:
            n.silence = L.Silence(*unused, ntop=0)
    if phase == "deploy_ref":
        n.xr = L.Input(shape=dict(dim=[1, 1, opts.crop, opts.crop]))
        _reference_input_body(n, w, opts)
    else:
        BODIES[facts.body](n, w, opts, deploy)
    net = n.to_proto()
    net.name = model
    # NetSpec names a layer after its top; the last deconvolution of a decoder has the output's name as top
    for layer in net.layer:
        if layer.type in ("Deconvolution", "UnpoolDeconvolution") and layer.name in DECODER_OUTPUTS:
            layer.name = DECODER_OUTPUTS[layer.name]
    if not deploy:
        # the TEST-phase Data layer has the same tops as the TRAIN one; NetSpec cannot name two layers' tops alike
        test = caffe.NetSpec()
        test.data, test.label = _data_layer(opts.test_source, opts.test_batch_size, opts, caffe.TEST)
        test_layer = test.to_proto().layer[0]
        test_layer.name = "data_test"
        net.layer[0].name = "data"
        net.layer.insert(1, test_layer)
    return net


def net_text(net: caffe_pb2.NetParameter) -> str:
    return text_format.MessageToString(net)


def write_net(model: str, opts: NetOptions, phase: str, path: str) -> None:
    header = "# Generated by tools/make_prototxt.py from gcnet/nets.py -- do not edit by hand.\n"
    with open(path, "w") as f:
        f.write(header + net_text(build_net(model, opts, phase)))

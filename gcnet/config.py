"""Single place for the paper's constants and for every choice the paper leaves open: the datasets, the paper's
numbers, the model table MODELS, the net options, the schedule table SCHEDULES and the solver options.

Every choice below is documented (with its reason) in docs/choices.md and can be changed with a flag of
tools/make_prototxt.py / tools/run_folds.sh.  Nothing here imports caffe.
"""
from dataclasses import dataclass, fields, replace
from typing import Dict, Optional, Tuple

from gcnet.util import DataError, given

# ----------------------------------------------------------------------------------------------- datasets
CKPLUS_EMOTIONS = ["neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]  # CK+ codes 0-7
BASIC6 = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    reader: str                 # module in gcnet.data
    class_names: Tuple[str, ...]
    neutral_label: int          # class index of "neutral", -1 when the protocol has no neutral class
    peak_frames: int = 3        # last N frames of a sequence are its peak samples
    table: str = ""             # the paper's table for this protocol


DATASETS: Dict[str, DatasetSpec] = {
    "ck+": DatasetSpec("ck+", "ckplus", tuple(CKPLUS_EMOTIONS[1:]), -1, 3, "Table 2"),
    "ck+8": DatasetSpec("ck+8", "ckplus", tuple(CKPLUS_EMOTIONS), 0, 3, "Table 3"),
    "oulu": DatasetSpec("oulu", "oulu", tuple(BASIC6), -1, 3, "Table 5"),
    "mmi": DatasetSpec("mmi", "mmi", tuple(BASIC6), -1, 3, "Table 4"),
    # the synthetic set is written in the CK+ layout and run with the 7-class CK+ protocol
    "synthetic": DatasetSpec("synthetic", "ckplus", tuple(CKPLUS_EMOTIONS[1:]), -1, 3, "none (synthetic data)"),
}


# seed of the synthetic CASIA-WebFace stand-in that the synthetic profiles pretrain on: fixed, like the real set, so
# that every run (of any --seed) shares one pretraining set
SYNTHETIC_WEBFACE_SEED = 0


def dataset_spec(name: str) -> DatasetSpec:
    """The DatasetSpec of `name`; DataError (exit 2) naming the known ones."""
    if name not in DATASETS:
        raise DataError("unknown dataset '%s' (known: %s)" % (name, ", ".join(DATASETS)))
    return DATASETS[name]

# ----------------------------------------------------------------------------------------------- paper numbers
# Averaged accuracy (%) of the paper's Tables 2-5.  Table 3's last row is printed as "GCNet S0R0" a second time
# in the paper; by its position (and Table 2's order) it is S1R1.
PAPER_RESULTS: Dict[str, Dict[str, float]] = {
    "ck+": {"LBP-TOP": 88.99, "HOG 3D": 91.44, "MSR": 91.4, "TMS (4-fold)": 91.89, "STM-ExpLet": 94.19,
            "DTAGN-Joint": 97.25, "3D-CNN": 85.9, "3D-CNN-DAP": 92.4,
            "cnn": 96.94, "gcnet_s0r0": 97.08, "gcnet_s1r0": 97.83, "gcnet_s0r1": 97.53, "gcnet_s1r1": 97.93},
    "ck+8": {"AURF": 92.22, "AUDB": 93.70, "Zero-bias CNN+AD": 96.4,
             "cnn": 95.47, "gcnet_s0r0": 95.74, "gcnet_s1r0": 96.75, "gcnet_s0r1": 96.50, "gcnet_s1r1": 97.28},
    "mmi": {"LBP-TOP": 59.51, "HOG 3D": 60.89, "ITBN": 59.7, "CSPL": 73.53, "STM-ExpLet": 75.12,
            "DTAGN-Joint": 70.24, "3D-CNN": 53.2, "3D-CNN-DAP": 63.4,
            "cnn": 77.68, "gcnet_s0r0": 76.20, "gcnet_s1r0": 78.86, "gcnet_s0r1": 77.00, "gcnet_s1r1": 81.53},
    "oulu": {"LBP-TOP": 68.13, "HOG 3D": 70.63, "AdaLBP": 73.54, "Atlases": 75.52, "STM-ExpLet": 74.59,
             "DTAGN-Joint": 81.46,
             "cnn": 83.96, "gcnet_s0r0": 84.65, "gcnet_s1r0": 86.39, "gcnet_s0r1": 85.83, "gcnet_s1r1": 86.11},
}

# ----------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelFacts:
    """One network: a row of MODELS.  nets.py builds it with BODIES[body], surgery.py initialises it by `sources`,
    its loss layers carry the weights of `losses`; the runner, figures and predict read the facts below."""
    kind: str                       # "pretrain": a pretraining net (section 4.1, CASIA-WebFace); "stage": the per-fold
                                    # generator of the paper's first step; "expression": a model of Tables 2-5
    body: str                       # its builder in gcnet/nets.py BODIES
    losses: Tuple[Tuple[str, float], ...]   # (loss layer, weight lambda), Eq. 4-10; Caffe's default 1 stays implicit
                                            # for the softmax losses
    # net surgery (gcnet/surgery.py): (target layer prefix, pretrained net, its layer prefix), the first match applies;
    # a layer that no rule matches keeps its filler's random values.  A rule from "generator" (the stage) takes
    # the stage's own source when the stage does not run (--generator-iters 0).
    sources: Tuple[Tuple[str, str, str], ...] = ()
    true_reference: bool = False    # En_2 compares X with the TRUE reference X_r (Fig. 2b): the bound of a reference

    @property
    def pretrain(self) -> bool:
        return self.kind == "pretrain"

    @property
    def loss_weights(self) -> Dict[str, float]:
        return dict(self.losses)

    @property
    def generator(self) -> bool:
        """Generator(X) = De_1r(En_1(X)) estimates the reference X_r (L_Gen,r: the GCNets and the stage)."""
        return "loss_gen_r" in self.loss_weights

    @property
    def contrastive(self) -> bool:
        """L_Contr on En_2(X), En_2(X_r hat) (S1)."""
        return "loss_contr" in self.loss_weights

    @property
    def reconstruction(self) -> bool:
        """De_2r, De_2i reconstruct X_r and X (R1)."""
        return "loss_rec_r" in self.loss_weights

    @property
    def source_nets(self) -> Tuple[str, ...]:
        """The nets its initial weights come from, in rule order."""
        return tuple(dict.fromkeys(net for _, net, _ in self.sources))


# surgery rules shared by the rows (section 4.1: "En_1, De_1r from the encoder-decoder, En_2 from the identity CNN")
EN1_DE1R_FROM_ENCDEC = (("en1_", "encdec", "en1_"), ("de1r_", "encdec", "de1r_"))
EN1_DE1R_FROM_GENERATOR = (("en1_", "generator", "en1_"), ("de1r_", "generator", "de1r_"))
EN2_FROM_CNN_ID = (("en2_", "cnn_id", "en2_"),)
EN2_TWICE_FROM_CNN_ID = (("en2r_", "cnn_id", "en2_"),) + EN2_FROM_CNN_ID     # En_2 on X and on the reference
DE2_FROM_ENCDEC = (("de2r_", "encdec", "de1r_"), ("de2i_", "encdec", "de1r_"))
# loss weights, section 4.1: "We arbitrarily set lambda_S = 1, lambda_G,r = 1, lambda_R,r = 0.25, lambda_R,i = 0.25"
GCNET_S0R0_LOSSES = (("loss_cls", 1.0), ("loss_gen_r", 1.0))
CONTRASTIVE_LOSS = (("loss_contr", 1.0),)
RECONSTRUCTION_LOSSES = (("loss_rec_r", 0.25), ("loss_rec_i", 0.25))

# the one table of the networks (nets, surgery, figures and the runner read it); docs/ARCHITECTURE.md "Add a model"
MODELS: Dict[str, ModelFacts] = {
    "encdec": ModelFacts("pretrain", "autoencoder", (("loss_rec", 1.0),)),
    "cnn_id": ModelFacts("pretrain", "identity", (("loss_id", 1.0),)),
    "generator": ModelFacts("stage", "generator", (("loss_gen_r", 1.0),), EN1_DE1R_FROM_ENCDEC),
    "cnn": ModelFacts("expression", "cnn", (("loss_cls", 1.0),), EN2_FROM_CNN_ID),
    "cnn_pair": ModelFacts("expression", "pair", (("loss_cls", 1.0),), EN2_TWICE_FROM_CNN_ID, true_reference=True),
    "gcnet_s0r0": ModelFacts("expression", "gcnet", GCNET_S0R0_LOSSES, EN1_DE1R_FROM_GENERATOR + EN2_TWICE_FROM_CNN_ID),
    "gcnet_s1r0": ModelFacts("expression", "gcnet", GCNET_S0R0_LOSSES + CONTRASTIVE_LOSS,
                             EN1_DE1R_FROM_GENERATOR + EN2_TWICE_FROM_CNN_ID),
    "gcnet_s0r1": ModelFacts("expression", "gcnet", GCNET_S0R0_LOSSES + RECONSTRUCTION_LOSSES,
                             EN1_DE1R_FROM_GENERATOR + EN2_TWICE_FROM_CNN_ID + DE2_FROM_ENCDEC),
    "gcnet_s1r1": ModelFacts("expression", "gcnet", GCNET_S0R0_LOSSES + CONTRASTIVE_LOSS + RECONSTRUCTION_LOSSES,
                             EN1_DE1R_FROM_GENERATOR + EN2_TWICE_FROM_CNN_ID + DE2_FROM_ENCDEC),
}
EXPRESSION_MODELS = tuple(m for m, f in MODELS.items() if f.kind == "expression")
PRETRAIN_MODELS = tuple(m for m, f in MODELS.items() if f.kind == "pretrain")
STAGE_MODELS = tuple(m for m, f in MODELS.items() if f.kind == "stage")
ALL_MODELS = PRETRAIN_MODELS + STAGE_MODELS + EXPRESSION_MODELS
# the expression models that carry a generated reference (the GCNets)
GCNET_MODELS = tuple(m for m in EXPRESSION_MODELS if MODELS[m].generator)


def has_generator(model: str) -> bool:
    return MODELS[model].generator


def has_contrastive(model: str) -> bool:
    return MODELS[model].contrastive


def has_reconstruction(model: str) -> bool:
    return MODELS[model].reconstruction


def has_true_reference(model: str) -> bool:
    return MODELS[model].true_reference


def has_reference_variant(model: str) -> bool:
    """An expression model whose generated reference the person's own can replace (its deploy_ref net)."""
    return MODELS[model].kind == "expression" and MODELS[model].generator


FINETUNE_OUTPUT_SCALE = ("frozen", "decoder-rate")      # NetOptions.finetune_output_scale
CONTRASTIVE_DISTANCES = ("l2", "rms")                   # NetOptions.contrastive_distance


@dataclass
class NetOptions:
    """Architecture choices (paper section 4.1, Table 1).  See docs/choices.md for the reasons."""
    crop: int = 64                       # Wsize: 66x66 aligned faces, random 64x64 crop
    # Table 1 encoder: (kernel, channels) of the convs and the max-pool windows
    conv_kernels: Tuple[int, ...] = (5, 3, 3)
    conv_channels: Tuple[int, ...] = (32, 64, 96)
    pool_kernels: Tuple[int, ...] = (5, 3, 3)
    pool_stride: int = 2                 # "each layer halves the size" -> stride 2 (64 -> 31 -> 15 -> 7, ceil rounding)
    pool_pad: int = 0
    conv_pad_same: bool = True           # pad = k // 2 so convs keep the size
    # decoder deconv output channels, in decoder order (after unpool3, unpool2, unpool1).  Table 1 prints 32, 64, 1,
    # which cannot feed the 64- and 32-channel pooling masks; the mirror order 64, 32, 1 is used.
    decoder_channels: Tuple[int, ...] = (64, 32, 1)
    # En_2 on X and on X_r hat shares its learned weights (conv, Scale); False gives each branch its own BatchNorm
    # running statistics, so that at test time each branch is normalised with statistics of its own inputs (real
    # faces vs generated references) as it was during training (docs/choices.md).
    en2_shared_bn_stats: bool = False
    fc1: int = 384                       # (0.5*64)^2 * 3 / 2^3
    dropout: float = 0.5
    fc1_relu: bool = True
    decoder_lr_mult: float = 10.0        # "learning rate at layers of the decoder networks is set to 10"
    # the Scale (gamma, beta) of each decoder's single-channel output block (DeConv(5x5,1) - BNorm - ReLU, Table 1)
    # while fine-tuning a GCNet and in the generator stage: "frozen" keeps the values of pretraining (lr_mult 0; fitted
    # to the targets, gcnet.bnstats.fit_output_scale), "decoder-rate" trains them at decoder_lr_mult like the rest of
    # the decoder (the paper's literal setting).  Their two gradients sum over
    # batch x 64 x 64 pixels and carry ~90% of the gradient norm; trained, they kill the output within a few
    # iterations or, under clipping, starve the classifier (measured, docs/choices.md).
    finetune_output_scale: str = "frozen"
    # each decoder's 5x5 layer as one UnpoolDeconvolution (Caffe patch 0012: the unpooling built one image at a time
    # inside the Deconvolution, bit-identical to MaxUnpool + Deconvolution, without writing the mostly-zero
    # unpooled blob) instead of the MaxUnpool Python layer + Deconvolution.  Only where Winograd (patch 0010) does
    # not apply, i.e. not for the 3x3 layers.  GPU mode runs its CPU code: off for --gpu runs (docs/choices.md).
    fused_unpool: bool = True
    # contrastive margin m of Eq. 4.  Caffe's default 1.0 is far below the distances between En_2 features
    # (96x7x7 = 4704 values; ~50-80 apart at initialisation), which would make L_Contr identically 0 for every
    # dissimilar pair, i.e. for all samples of the 6- and 7-class protocols.  See docs/choices.md.
    margin: float = 2.0                  # DEFAULT_MARGIN[contrastive_distance]
    # S of Eq. 4-5: "l2" = ||En_2(X) - En_2(X_r hat)||_2 (the paper), "rms" = the same divided by sqrt(p), p the
    # feature size (4704), so that a margin is on the scale of one feature (docs/choices.md).
    contrastive_distance: str = "rms"
    n_classes: int = 7
    neutral_label: int = -1
    n_identities: int = 100              # cnn_id output size (set from the pretraining data)
    batch_size: int = 64
    test_batch_size: int = 64
    mirror: bool = True
    train_source: str = "data/lmdb/fold_0/train"
    test_source: str = "data/lmdb/fold_0/test"


@dataclass
class SolverOptions:
    """Section 4.1: Nesterov, 'inverse' policy, base_lr 0.001, momentum 0.9, weight decay 1e-4, 3e5 iterations.
    The paper's "gamma term of 0.75" is read as Caffe's inv *power* 0.75 with Caffe's usual gamma 1e-4
    (lr = base_lr * (1 + gamma * iter) ** -power; see docs/choices.md)."""
    base_lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0001
    lr_policy: str = "inv"
    gamma: float = 0.0001
    power: float = 0.75
    max_iter: int = 300000
    display: int = 100
    snapshot: int = 10000
    test_interval: int = 1000
    test_iter: int = 10
    solver_mode: str = "CPU"
    random_seed: int = 1701
    # Caffe's clip_gradients (global L2 norm of all parameter gradients) of the expression models; 0 disables (the
    # paper).  Pretraining nets use PRETRAIN_CLIP_GRADIENTS.  See docs/choices.md for the measurements.
    clip_gradients: float = 0.0


# encdec / cnn_id: without clipping, encdec's summed-pixel reconstruction loss (~800 at start) kills the output ReLU
# of its decoder within a few iterations (docs/choices.md); the paper gives no pretraining settings.
PRETRAIN_CLIP_GRADIENTS = 10.0
# default contrastive margin m per NetOptions.contrastive_distance (docs/choices.md)
DEFAULT_MARGIN = {"l2": 100.0, "rms": 2.0}

# augmented copies per training sample in the LMDBs (gcnet.data.lmdb_build; --augment)
DEFAULT_AUGMENT = 4


# ----------------------------------------------------------------------------------------------- schedules
# The one table of training schedules (tools/run_folds.sh --profile NAME; "paper" also for tools/make_prototxt.py).
# A row sets what it names; Schedule.resolved() derives the rest from `iters`; the command line overrides any.
SCHEDULES: Dict[str, dict] = {
    # section 4.1: 3e5 iterations, mini-batch 64, ten folds; the pretraining iterations are not given (= iters)
    "paper": dict(n_folds=10, iters=300000, batch=64),
    # `synthetic` without --iters: a CPU-sized profile that shows the paper's mechanism (README "Results"): 100
    # identities give about 39 labelled sequences (about 120 test images) per fold; the encoder-decoder and En_2 are
    # pretrained once on a synthetic WebFace set of 300 other identities (the paper's CASIA-WebFace step, cached for
    # every later run), the generator is trained per fold on X -> X_r (the paper's first step), then the models.
    "synthetic-cpu": dict(
        subjects=100,             # synthetic identities written by gcnet.data.synthetic.make_synthetic
        n_folds=10,               # the paper's protocol (subject-independent 10 folds) ...
        folds="0-1",              # ... of which these are run (their LMDBs only are built)
        webface_identities=300,   # the synthetic WebFace set of the pretraining (other identities)
        pretrain_iters=3000,      # encdec / cnn_id iterations on it (once; cached)
        generator_iters=1000,     # the per-fold generator stage (X -> X_r)
        iters=200,                # expression-model iterations
        batch=16,
        augment=2,                # augmented copies per training sample in the LMDB
        display=20,
        bn_samples=512,           # training samples of the BatchNorm re-estimation and of the training-set scores
    ),
}
# `--profile ablation`: the six models at a larger equal budget on a larger synthetic set (about 600 test images
# over folds 0-1), for paired statistics with n >= 500 (README "Results")
SCHEDULES["ablation"] = dict(SCHEDULES["synthetic-cpu"], subjects=250, generator_iters=2000, iters=1000, display=50,
                             bn_samples=1024)
SYNTHETIC_PROFILES = ("synthetic-cpu", "ablation")     # schedules of the synthetic set (--profile)


@dataclass(frozen=True)
class Schedule:
    """How long and how each net trains: iterations of the expression models (`iters`, --iters), of encdec and
    cnn_id (`pretrain_iters`) and of the generator stage (`generator_iters`), Caffe's display / snapshot / test
    intervals and the learning-rate policy.  None: derived from `iters` by resolved()."""
    iters: int = 300000
    pretrain_iters: Optional[int] = None       # None: iters (the paper gives none)
    generator_iters: Optional[int] = None      # None: iters // 10; 0: no generator stage
    display: Optional[int] = None              # None: min(100, iters / 20)
    snapshot: Optional[int] = None             # None: min(10000, iters / 4)
    test_interval: Optional[int] = None        # None: min(1000, iters / 5)
    base_lr: float = SolverOptions.base_lr
    gamma: float = SolverOptions.gamma
    power: float = SolverOptions.power
    clip_gradients: float = SolverOptions.clip_gradients
    pretrain_clip_gradients: float = PRETRAIN_CLIP_GRADIENTS

    def resolved(self) -> "Schedule":
        """Every None replaced by its value derived from iters (a given 0 stays 0)."""
        it = self.iters
        display = given(self.display, min(100, max(1, it // 20)))
        return replace(self, pretrain_iters=given(self.pretrain_iters, it),
                       generator_iters=given(self.generator_iters, it // 10), display=display,
                       snapshot=given(self.snapshot, min(10000, max(display, it // 4))),
                       test_interval=given(self.test_interval, min(1000, max(display, it // 5))))

    def iters_of(self, model: str) -> int:
        """The iterations of `model`: pretraining nets, the generator stage, expression models."""
        kind = MODELS[model].kind
        return self.pretrain_iters if kind == "pretrain" else self.generator_iters if kind == "stage" else self.iters


def make_schedule(name: str = "paper", **options) -> Schedule:
    """The resolved Schedule of SCHEDULES[name] with the values in `options` (None: not given) in place of the
    row's."""
    row = SCHEDULES[name]
    names = [f.name for f in fields(Schedule)]
    values = {k: row[k] for k in names if k in row}
    values.update({k: v for k, v in options.items() if v is not None})
    return Schedule(**values).resolved()


def solver_options(schedule: Schedule, model: str, gpu: bool = False,
                   test_iter: int = SolverOptions.test_iter) -> SolverOptions:
    """The SolverOptions of `model` under `schedule` (the runner's solver.prototxt and tools/make_prototxt.py's):
    its iterations, the intervals clipped to them, the pretraining nets' clipping."""
    max_iter = schedule.iters_of(model)
    return SolverOptions(base_lr=schedule.base_lr, gamma=schedule.gamma, power=schedule.power, max_iter=max_iter,
                         display=min(schedule.display, max(1, max_iter)), snapshot=min(schedule.snapshot, max_iter),
                         test_interval=min(schedule.test_interval, max_iter), test_iter=test_iter,
                         solver_mode="GPU" if gpu else "CPU",
                         clip_gradients=schedule.pretrain_clip_gradients if MODELS[model].pretrain
                         else schedule.clip_gradients)

"""Where everything lives under a results folder: every module asks a ResultsLayout for its paths.

    <out>/<dataset>/lmdb/fold_K/{train,test,pretrain,test_index.json}   lmdb/manifest.json  lmdb/pretrain_webface
    <out>/<dataset>/pretrain/fold_K/{encdec,cnn_id}/                    (a link to the shared one with WebFace)
    <out>/pretrain/webface-<hash>/{encdec,cnn_id}/                      WebFace pretraining, shared under <out>
    <out>/<dataset>/generator/fold_K/                                   the per-fold generator (first step)
    <out>/<dataset>/<model>/fold_K/                                     one trained expression model
    <out>/<dataset>/reference_value/<reference>/fold_K/                 cnn_pair given G(X_r) or G(X) (diagnostic)
    <out>/<dataset>/{summary.json,summary.md,run_settings.json,run_report.json,figures/,slurm/}
"""
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from gcnet.config import DATASETS, EXPRESSION_MODELS, PRETRAIN_MODELS
from gcnet.util import read_json

REPO = Path(__file__).resolve().parents[1]     # the repository root, where Caffe runs the committed prototxt/
RESULTS = "results"          # the default results root (<repository>/results: run_folds.sh --out, the LMDB and snapshot
                             # paths of the committed prototxt/*/solver.prototxt and train_val.prototxt)
WEBFACE = "webface"          # pretrain/<WEBFACE>: pretrained once on CASIA-WebFace, shared by the folds (fold -1)

# files of a model folder (<model>/fold_K) and of a pretraining folder
TRAIN_VAL, DEPLOY, SOLVER = "train_val.prototxt", "deploy.prototxt", "solver.prototxt"
DEPLOY_REF = "deploy_ref.prototxt"   # GCNets: the deploy net with the person's reference X_r as input `xr`
ONNX, ONNX_REF = "model.onnx", "model_ref.onnx"     # tools/export_onnx.py: deploy and deploy_ref in ONNX
STAGE, META, TEST, TRAIN_LOG = "stage.json", "meta.json", "test.json", "train.log"
INIT, TRAINED, FINAL = "init.caffemodel", "trained.caffemodel", "final.caffemodel"
SURGERY_REPORT, BN_REPORT = "surgery.json", "bn_stats.json"
REMOVAL = "expression_removal.json"    # a GCNet folder's expression removal, read by the fold's cnn
SNAPSHOTS = "snapshots"      # caffe's snapshots/<model>_iter_N.{caffemodel,solverstate}


def fold_of(name: str) -> Optional[int]:
    """K of a folder named fold_K, else None."""
    m = re.fullmatch(r"fold_(\d+)", name)
    return int(m.group(1)) if m else None


def fold_name(k: int) -> str:
    return "fold_%d" % k


class LmdbLayout:
    """The files of one LMDB build (gcnet.data.lmdb_build) under `root`: <out>/<dataset>/lmdb, or any folder."""

    def __init__(self, root):
        self.root = Path(root)

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def folds_json(self) -> Path:
        return self.root / "folds.json"

    @property
    def build_report(self) -> Path:
        return self.root / "build_report.json"

    @property
    def align_cache(self) -> Path:
        return self.root / "align_cache.npz"

    @property
    def webface(self) -> Path:
        """The shared pretraining LMDB of a WebFace root (fold_K/pretrain links to it); its record is .json."""
        return self.root / "pretrain_webface"

    @property
    def webface_meta(self) -> Path:
        return self.root / "pretrain_webface.json"

    def fold(self, k: int) -> Path:
        return self.root / fold_name(k)

    def folds(self) -> List[int]:
        """K of every fold_K folder, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(k for k in (fold_of(p.name) for p in self.root.iterdir() if p.is_dir()) if k is not None)

    def split(self, k: int, split: str) -> Path:
        """split: train | test | pretrain."""
        return self.fold(k) / split

    def test_index(self, k: int) -> Path:
        return self.fold(k) / "test_index.json"

    def fold_manifest(self, k: int) -> Path:
        return self.fold(k) / "manifest.json"

    def relative(self, path) -> str:
        """`path` relative to the root, as the manifests record it ("fold_0/train")."""
        return Path(path).relative_to(self.root).as_posix()


class ResultsLayout:
    """The results of one dataset: root = <out>/<dataset> (or any folder given as root, e.g. a moved one)."""

    def __init__(self, out, dataset: str, root=None):
        self.dataset = dataset
        self.root = Path(root) if root is not None else Path(out) / dataset

    @classmethod
    def at(cls, root, dataset: Optional[str] = None) -> "ResultsLayout":
        """The layout whose root is `root` (<out>/<dataset>); the dataset, when not given, from its summary or
        a meta.json, else the folder name."""
        root = Path(root)
        if dataset is None:
            dataset = (read_json(root / "summary.json", {}) or {}).get("dataset")
        if dataset is None:
            metas = sorted(root.glob("*/fold_*/" + META))
            dataset = (read_json(metas[0], {}) or {}).get("dataset") if metas else None
        return cls(root.parent, dataset or root.name, root=root)

    # ------------------------------------------------------------------------------------------- LMDBs
    @property
    def lmdb_root(self) -> Path:
        return self.root / "lmdb"

    @property
    def lmdbs(self) -> LmdbLayout:
        return LmdbLayout(self.lmdb_root)

    def lmdb_fold(self, k: int) -> Path:
        return self.lmdbs.fold(k)

    def lmdb(self, k: int, split: str) -> Path:
        """split: train | test | pretrain."""
        return self.lmdbs.split(k, split)

    def test_index(self, k: int) -> Path:
        return self.lmdbs.test_index(k)

    def webface_lmdb(self, manifest: dict) -> Path:
        """The shared pretraining LMDB built from --pretrain-data (its manifest names it)."""
        path = (manifest.get("pretrain") or {}).get("path")
        return self.lmdb_root / path if path else self.lmdbs.webface

    def lmdb_manifest(self) -> Path:
        return self.lmdbs.manifest

    # ------------------------------------------------------------------------------------------- pretraining
    @property
    def pretrain_root(self) -> Path:
        return self.root / "pretrain"

    def pretrain_dir(self, k: int, net: str) -> Path:
        """pretrain/fold_K/<net>; k = -1: pretrain/webface/<net>."""
        return self.pretrain_root / (WEBFACE if k < 0 else fold_name(k)) / net

    def shared_pretrain_dir(self, tag: str, net: str) -> Path:
        """<out>/pretrain/webface-<tag>/<net>: the pretraining on --pretrain-data (the paper's CASIA-WebFace step,
        once for all data sets), shared by every dataset folder and profile under the same <out>; tag: the hash of
        the pretraining data (LMDB manifest)."""
        return self.root.parent / "pretrain" / ("%s-%s" % (WEBFACE, tag)) / net

    def pretrain_fold_link(self, k: int) -> Path:
        """pretrain/fold_K, a link to the shared pretraining when there is one."""
        return self.pretrain_root / fold_name(k)

    def pretrained(self, nets: Optional[Iterable[str]] = None, folds: Optional[Iterable[int]] = None,
                   need: Iterable[str] = (TRAIN_LOG,)) -> Dict[str, Dict[int, Path]]:
        """{net: {fold: dir}} of the pretraining folders holding every file of `need` (fold -1: webface)."""
        nets = list(nets or PRETRAIN_MODELS)
        folds = None if folds is None else set(folds)
        out: Dict[str, Dict[int, Path]] = {}
        if not self.pretrain_root.is_dir():
            return out
        for fdir in sorted(self.pretrain_root.iterdir()):
            k = -1 if fdir.name == WEBFACE else fold_of(fdir.name)
            if k is None or (folds is not None and k >= 0 and k not in folds):
                continue
            for net in nets:
                d = fdir / net
                if d.is_dir() and all((d / n).exists() for n in need):
                    out.setdefault(net, {})[k] = d
        return out

    def pretrain_stage_files(self) -> List[Path]:
        return sorted(self.pretrain_root.glob("*/*/" + STAGE))

    # ------------------------------------------------------------------------------------------- generator stage
    def generator_stage_files(self) -> List[Path]:
        return sorted(self.root.glob("generator/fold_*/" + STAGE))

    def generator_dir(self, k: int) -> Path:
        """generator/fold_K: the per-fold generator of the paper's first step (X -> X_r), GCNets start from it."""
        return self.root / "generator" / fold_name(k)

    # ------------------------------------------------------------------------------------------- models
    def model_dir(self, model: str, k: int) -> Path:
        return self.root / model / fold_name(k)

    def trained_models(self, models: Optional[Iterable[str]] = None, folds: Optional[Iterable[int]] = None,
                       need: Iterable[str] = ()) -> Dict[str, Dict[int, Path]]:
        """{model: {fold: dir}} of the <model>/fold_K folders that hold every file of `need`, models in
        config.EXPRESSION_MODELS order."""
        folds = None if folds is None else set(folds)
        out: Dict[str, Dict[int, Path]] = {}
        for m in EXPRESSION_MODELS:
            mdir = self.root / m
            if (models and m not in models) or not mdir.is_dir():
                continue
            for fdir in sorted(mdir.iterdir(), key=lambda p: (fold_of(p.name) is None, fold_of(p.name) or 0)):
                k = fold_of(fdir.name)
                if k is None or not fdir.is_dir() or (folds is not None and k not in folds):
                    continue
                if all((fdir / n).exists() for n in need):
                    out.setdefault(m, {})[k] = fdir
        return out

    def reference_value_dir(self, reference: str, k: int) -> Path:
        """cnn_pair retrained with a generated reference (gcnet.experiment.reference_value)."""
        return self.root / "reference_value" / reference / fold_name(k)

    @property
    def reference_value_json(self) -> Path:
        return self.root / "reference_value" / "reference_value.json"

    def class_names(self, n_classes: Optional[int] = None) -> List[str]:
        """Class names from a meta.json of the results, else the dataset's (gcnet.config), else 'class k'."""
        for meta in sorted(self.root.glob("*/fold_*/" + META)):
            names = (read_json(meta, {}) or {}).get("class_names")
            if names:
                return list(names)
        spec = DATASETS.get(self.dataset)
        if spec is not None:
            return list(spec.class_names)
        return ["class %d" % i for i in range(n_classes or 0)]

    # ------------------------------------------------------------------------------------------- run files
    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    @property
    def summary_md(self) -> Path:
        return self.root / "summary.md"

    @property
    def run_settings(self) -> Path:
        return self.root / "run_settings.json"

    @property
    def run_report(self) -> Path:
        return self.root / "run_report.json"

    @property
    def slurm_logs(self) -> Path:
        """Logs of the Slurm jobs of tools/slurm/submit.sh."""
        return self.root / "slurm"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    @property
    def figures_stamp(self) -> Path:
        return self.figures_dir / "inputs.json"

"""Which reader fits a data root.  `detect_layout(root) -> "ckplus" | "oulu" | "mmi" | "webface"`."""
import importlib
import os

from gcnet.data.records import DataError, check_root, check_subject_case

LOOKED_FOR = [
    ("ckplus", "cohn-kanade-images/ (CK+), with Emotion/ or Emotion_labels/"),
    ("oulu", "OriginalImg/VL/Strong/ (Oulu-CASIA VIS)"),
    ("mmi", "Sessions/ (MMI)"),
    ("webface", "<identity>/<image>.jpg folders (CASIA-WebFace)"),
]


def detect_layout(root: str) -> str:
    from gcnet.data import ckplus, mmi, oulu, webface
    a = check_root(root)
    if ckplus.find_base(a):
        return "ckplus"
    if oulu.find_base(a):
        return "oulu"
    if mmi.find_base(a):
        return "mmi"
    if webface.looks_like(a):
        return "webface"
    entries = sorted(n for n in os.listdir(a) if not n.startswith("."))
    shown = ", ".join(entries[:8]) + (" ..." if len(entries) > 8 else "")
    raise DataError("no known data set layout in %s (it holds: %s).\nLooked for, in the root or one folder down:\n%s"
                    % (a, shown, "\n".join("  - %s" % d for _, d in LOOKED_FOR)))


def get_reader(name: str):
    """The reader module gcnet.data.<name>."""
    if name not in [n for n, _ in LOOKED_FOR]:
        raise DataError("unknown reader '%s' (known: %s)" % (name, ", ".join(n for n, _ in LOOKED_FOR)))
    return importlib.import_module("gcnet.data." + name)


def read_dataset(dataset_name: str, root: str, landmarks_root=None, **opts):
    """Read `root` with the reader of `dataset_name` (gcnet.config.DATASETS, or "webface"), checking the layout."""
    from gcnet.config import dataset_spec
    want = "webface" if dataset_name == "webface" else dataset_spec(dataset_name).reader
    mod = get_reader(want)
    a = check_root(root)
    fits = mod.looks_like(a) if want == "webface" else mod.find_base(a) is not None
    if not fits:
        got = detect_layout(a)          # raises the full "no known layout" message when nothing fits
        raise DataError("dataset '%s' needs the %s layout (%s), but %s looks like %s"
                        % (dataset_name, want, dict(LOOKED_FOR)[want], a, got))
    res = mod.read(a, dataset_name, landmarks_root=landmarks_root, **opts)
    if want != "webface":               # (an identity split in pretraining puts no test face in training)
        check_subject_case(res)
    return res

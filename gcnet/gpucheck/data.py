"""The check's data, made here (where images can be decoded) and carried to the GPU machine.

The GPU machine's bundle has no OpenCV (140 MB installed; docs/choices.md, "The GPU bundle"), so it cannot decode
an image or build an LMDB.  It does not need to: the runner's LMDB stage is cached by a key of the data files'
paths, sizes and modification times and the build options (gcnet/data/lmdb_build/manifest.py).  So the synthetic
set and the seed-0 LMDBs are made here under one fixed root (the same absolute path here, in the clean root and on
the GPU machine), the files' times are set to one fixed second, and the bundle carries the LMDBs, the label and
landmark files, and the images as placeholders of the same size and signature (hollow_copy): the runner finds its
LMDBs up to date and never opens an image beyond its signature.  An image decoded there would fail loudly (no cv2).
"""
import os
import shutil
import subprocess
import sys
from typing import Optional

from gcnet.gpucheck import training
from gcnet.layout import ResultsLayout
from gcnet.util import IMAGE_EXTS, say

FILE_TIME = 1700000000            # every data file's mtime (s): tar keeps it exactly, so the LMDB key matches
SIGNATURE_BYTES = 16              # the start of an image kept in its placeholder (records.check_image_file reads 8)
DEFAULT_ROOT = "/tmp/gcnet-gpu"   # GCNET_GPU_ROOT: the same absolute path wherever the bundle's data is used


def data_root(root: str) -> str:
    return os.path.join(root, "data", "ck+_%dsubjects_seed0" % training.SUBJECTS)


def lmdb_dir(root: str, seed: int = 0) -> str:
    """Where the LMDBs of a seed are kept (copied into each run's results folder)."""
    return os.path.join(root, "data", "lmdb-seed%d" % seed)


def set_times(top: str) -> int:
    """Set the mtime (and atime) of every file and folder under `top` to FILE_TIME; returns the file count."""
    n = 0
    for d, dirs, files in os.walk(top):
        for f in files:
            os.utime(os.path.join(d, f), (FILE_TIME, FILE_TIME), follow_symlinks=False)
            n += 1
        os.utime(d, (FILE_TIME, FILE_TIME))
    return n


def prepare(root: str, repo: str, seeds=(0,), threads: int = 1) -> None:
    """The synthetic set at data_root(root) (made once, times fixed) and the LMDBs of each seed at lmdb_dir(root,
    seed), built by the runner itself (--stop-after lmdb) with the check's schedule."""
    data = data_root(root)
    if not os.path.isdir(data):
        say("[gpu data] synthetic set (%d subjects, seed 0) -> %s" % (training.SUBJECTS, data))
        subprocess.run([sys.executable, os.path.join(repo, "tools", "make_synthetic.py"), "--layout", "ck+",
                        "--subjects", str(training.SUBJECTS), "--seed", "0", "--out", data, "--quiet"], check=True)
        say("[gpu data] %d files, times set to %d" % (set_times(data), FILE_TIME))
    for seed in seeds:
        dst = lmdb_dir(root, seed)
        if os.path.isfile(os.path.join(dst, "manifest.json")):
            continue
        out = os.path.join(root, "prep-seed%d" % seed)
        say("[gpu data] LMDBs of seed %d (tools/run_folds.sh ... --stop-after lmdb) -> %s" % (seed, dst))
        lay = ResultsLayout(out, training.DATASET)
        kept = os.path.join(root, "align_cache.npz")   # the aligned faces (the seeds share them), not carried
        if os.path.exists(kept):
            os.makedirs(str(lay.lmdb_root), exist_ok=True)
            shutil.copyfile(kept, str(lay.lmdbs.align_cache))
        args = training.runner_args(data, out, seed, None, threads, extra=["--stop-after", "lmdb"])
        subprocess.run([sys.executable, "-m", "gcnet.experiment"] + args, cwd=repo, check=True)
        if lay.lmdbs.align_cache.exists():
            shutil.move(str(lay.lmdbs.align_cache), kept)
        shutil.move(str(lay.lmdb_root), dst)
        shutil.rmtree(out)


def hollow_copy(src: str, dst: str, exts=IMAGE_EXTS) -> dict:
    """Copy the tree src -> dst with every image replaced by a placeholder: its first SIGNATURE_BYTES bytes, then
    zeros up to its size (a sparse file), same mtime.  Other files are copied as they are.  -> counts."""
    n_img = n_other = size = 0
    for d, dirs, files in os.walk(src):
        rel = os.path.relpath(d, src)
        out_dir = os.path.normpath(os.path.join(dst, rel))
        os.makedirs(out_dir, exist_ok=True)
        for f in files:
            a, b = os.path.join(d, f), os.path.join(out_dir, f)
            st = os.stat(a)
            if os.path.splitext(f)[1].lower() in exts:
                with open(a, "rb") as fa, open(b, "wb") as fb:
                    fb.write(fa.read(SIGNATURE_BYTES))
                    fb.truncate(st.st_size)
                n_img += 1
                size += st.st_size
            else:
                shutil.copyfile(a, b)
                n_other += 1
            os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    for d, dirs, files in os.walk(src):          # folders' times last (writing into them changed them)
        st = os.stat(d)
        os.utime(os.path.normpath(os.path.join(dst, os.path.relpath(d, src))), ns=(st.st_atime_ns, st.st_mtime_ns))
    return {"images": n_img, "image_bytes": size, "other_files": n_other}


def check_root(root: Optional[str]) -> str:
    return os.path.abspath(root or os.environ.get("GCNET_GPU_ROOT") or DEFAULT_ROOT)

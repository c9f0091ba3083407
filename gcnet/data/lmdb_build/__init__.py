"""Paired LMDBs per fold (+ pretraining LMDB), with manifest, atomic writes and a cache.

The layout under the output folder and the Datum format: docs/ARCHITECTURE.md ("LMDB format").  Modules: build
(build_lmdbs, the stages in order), align_cache, augment, fold_build, manifest, store (LMDB writing).
The Datum codec and LMDB reading are gcnet.caffe_io's.
"""
from gcnet.data.lmdb_build.align_cache import AlignCache  # noqa: F401
from gcnet.data.lmdb_build.augment import (AUG_INTENSITY, AUG_ROTATION_DEG, AUG_SCALE, CANVAS_MARGIN,  # noqa: F401
                                           SIZE, augment_pair, crop)
from gcnet.data.lmdb_build.build import build_lmdbs  # noqa: F401
from gcnet.data.lmdb_build.manifest import BUILD_VERSION  # noqa: F401
from gcnet.data.lmdb_build.store import COMMIT_EVERY, Progress, lmdb_problem, write_lmdb  # noqa: F401

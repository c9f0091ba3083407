"""LMDB files of a build: atomic writing, the wholeness check, progress lines, leftovers of interrupted builds."""
import errno
import os
import shutil
import time
from typing import Callable, Iterable, Optional, Tuple

import numpy as np

from gcnet.caffe_io import encode_datum
from gcnet.data.lmdb_build.augment import SIZE
from gcnet.layout import LmdbLayout
from gcnet.util import cleanup_on_error, disk_free, fmt_duration

COMMIT_EVERY = 512


class Progress:
    """Progress lines with rate and ETA, at most every `every` seconds (and at the end)."""

    def __init__(self, total: int, what: str, out: Callable[[str], None], every: float = 5.0):
        self.total, self.what, self.out, self.every = total, what, out or (lambda s: None), every
        self.n, self.t0 = 0, time.time()
        self.last = self.t0

    def step(self, n: int = 1):
        self.n += n
        now = time.time()
        if now - self.last >= self.every and self.n < self.total:
            self.last = now
            rate = self.n / max(now - self.t0, 1e-9)
            eta = (self.total - self.n) / max(rate, 1e-9)
            self.out("  %s: %d/%d (%.0f/s, ETA %s)" % (self.what, self.n, self.total, rate, fmt_duration(eta)))

    def done(self):
        dt = time.time() - self.t0
        self.out("  %s: %d/%d done in %s" % (self.what, self.n, self.total, fmt_duration(dt)))


def rm(path: str) -> None:
    """Remove a file, link or folder tree; nothing when absent."""
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def lmdb_problem(path: str, expected: Optional[int] = None) -> Optional[str]:
    """None when the LMDB at `path` opens, is whole (LMDB stat/info vs file size) and holds `expected` entries;
    else what is wrong with it."""
    import lmdb
    mdb = os.path.join(path, "data.mdb")
    if not os.path.isfile(mdb):
        return "missing"
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False)
        try:
            st, info = env.stat(), env.info()
        finally:
            env.close()
    except lmdb.Error as e:
        return "cannot be opened (%s)" % e
    need, size = (info["last_pgno"] + 1) * st["psize"], os.path.getsize(mdb)
    if size < need:
        return "data.mdb is truncated (%d of %d bytes)" % (size, need)
    if expected is not None and st["entries"] != expected:
        return "holds %d entries, its manifest records %d" % (st["entries"], expected)
    return None


def remove_partials(lay: LmdbLayout, say) -> None:
    """Remove what an interrupted build left half-written (`*.partial*` in the root and its fold_K/)."""
    dirs = [str(lay.root)] + [str(lay.fold(k)) for k in lay.folds()]
    for d in dirs:
        if not os.path.isdir(d) or os.path.islink(d):
            continue
        for n in sorted(os.listdir(d)):
            if ".partial" in n:
                rm(os.path.join(d, n))
                say("[build_lmdb] removed %s (left by an interrupted build)" % os.path.join(d, n))


def write_lmdb(path: str, items: Iterable[Tuple[np.ndarray, int]], n: int, what: str, progress=None) -> int:
    """Write Datums to `<path>.partial` then rename to `path`.  items: (uint8 (2,66,66), label).  -> count."""
    import lmdb
    tmp = path + ".partial"
    rm(tmp)
    datum_bytes = 2 * SIZE * SIZE + 64
    map_size = max(n, 1) * (datum_bytes + 4096 + 256) * 2 + (64 << 20)
    count = 0
    pg = Progress(n, what, progress)
    with cleanup_on_error(path, tmp):
        env = lmdb.open(tmp, map_size=map_size, subdir=True, meminit=False)
        try:
            txn = env.begin(write=True)
            for data, label in items:
                txn.put(b"%08d" % count, encode_datum(data, label))
                count += 1
                pg.step()
                if count % COMMIT_EVERY == 0:
                    txn.commit()
                    txn = env.begin(write=True)
            txn.commit()
            env.sync(True)
        except lmdb.Error as e:
            # LMDB reports a full disk as an I/O error of the commit: say which it was
            full = disk_free(tmp) < 2 * COMMIT_EVERY * (datum_bytes + 4096)
            raise OSError(errno.ENOSPC if full else errno.EIO, "No space left on device" if full else str(e), path)
        finally:
            env.close()
    pg.done()
    rm(path)
    os.rename(tmp, path)
    return count

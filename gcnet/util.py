"""Small helpers shared by every module: printing, hashes, atomic JSON/text files, durations, fold lists."""
import datetime
import errno
import hashlib
import json
import math
import os
import re
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

# image files read by the data readers and tools/predict.py
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


class DataError(UsageError):
    """Fatal input error of the data (missing/empty root, no matching layout, nothing usable)."""


# ----------------------------------------------------------------------------------------------- printing
_print_lock = threading.Lock()


def say(msg: str = "") -> None:
    """print, one whole line at a time across threads, flushed."""
    with _print_lock:
        print(msg, flush=True)


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def fmt_duration(s: Optional[float]) -> str:
    """42s, 3m05s, 2h07m; "?" when unknown."""
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % (s // 60, s % 60)
    return "%dh%02dm" % (s // 3600, (s % 3600) // 60)


def fmt_num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return "%.4g" % v


# ----------------------------------------------------------------------------------------------- hashes
def given(value, default):
    """`value` when it was given (0 included), else `default`: never `value or default` (docs/choices.md)."""
    return default if value is None else value


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(str(path), "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha_text(*parts) -> str:
    """sha256 of the parts (strings as they are, anything else as sorted JSON), NUL-separated."""
    h = hashlib.sha256()
    for p in parts:
        h.update((p if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str)).encode())
        h.update(b"\0")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- files
def _tmp_name(path: str) -> str:
    return "%s.partial%d.%d" % (path, os.getpid(), threading.get_ident())   # (removed at the next start)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def cleanup_on_error(path, tmp):
    """Remove the temporary file or folder `tmp` when the block fails (a full disk must not leave half-written
    files behind); an OSError that names no file, or names `tmp`, is raised again naming `path`."""
    try:
        yield
    except BaseException as e:
        try:
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp)
            else:
                os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno and e.filename in (None, str(tmp)):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def os_error_line(e: OSError, path=None) -> str:
    """One line for an OSError: "no space left on device: cannot write PATH" for a full disk (or quota), else
    "PATH: reason"; `path` when the error names none."""
    where = e.filename or path or "?"
    if e.errno in NO_SPACE:
        return "no space left on device: cannot write %s (free some space, then rerun the same command)" % where
    return "%s: %s" % (where, e.strerror or e)


def _atomic_write(path, mode: str, write) -> None:
    path = str(path)
    tmp = _tmp_name(path)
    with cleanup_on_error(path, tmp):
        with open(tmp, mode) as f:
            write(f)
        os.replace(tmp, path)


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(repr(o))


def write_json(path, data) -> None:
    """Atomic: a reader sees the old file or the whole new one (numpy values and paths are converted); nothing is
    left behind when the write fails (a full disk: OSError naming `path`)."""
    _atomic_write(path, "w", lambda f: json.dump(data, f, indent=1, default=_json_default))


def write_text(path, text: str) -> None:
    _atomic_write(path, "w", lambda f: f.write(text))


def write_bytes(path, data: bytes) -> None:
    _atomic_write(path, "wb", lambda f: f.write(data))


def copy_file(src, dst) -> None:
    """Copy `src` to `dst` atomically (as write_json)."""
    def copy(f):
        with open(str(src), "rb") as s:
            shutil.copyfileobj(s, f, 1 << 20)
    _atomic_write(dst, "wb", copy)


def run_logged(cmd, log_path, timeout: float, **kwargs):
    """Run cmd with its stdout and stderr written to log_path, stopped after `timeout` s.  -> (exit status or None,
    None or "timed out after Ns").  kwargs go to subprocess.run (cwd, env)."""
    import subprocess
    with open(log_path, "w") as log:
        try:
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, **kwargs).returncode, None
        except subprocess.TimeoutExpired:
            return None, "timed out after %ds" % timeout


def disk_free(path) -> int:
    """Free bytes for an unprivileged writer on the file system of `path` (or of its nearest existing parent)."""
    p = os.path.abspath(str(path))
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def read_json(path, default=None):
    """The parsed file, or `default` when it is missing or not JSON."""
    try:
        with open(str(path)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


# ----------------------------------------------------------------------------------------------- folder walks
def walk_files(root, exts=None):
    """Files under `root` whose names end in one of `exts` (all when None; hidden names left out), recursively in
    sorted order, following symbolic links to folders; a folder reached a second time (a link loop, or two links
    to one folder) is not walked again.  -> (files, [(path, why)] of what was not walked: loops, unlistable
    folders), so that nothing is left out silently."""
    files, left = [], []
    seen = {os.path.realpath(str(root))}

    def failed(e):
        left.append((e.filename, "cannot list this folder (%s)" % e.strerror))

    for cur, dirs, names in os.walk(str(root), onerror=failed, followlinks=True):
        keep = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(cur, d))
            if real in seen:
                left.append((os.path.join(cur, d), "not followed: it leads to %s, which this walk already went "
                                                   "through (a link loop or a second link)" % real))
            else:
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        files += [os.path.join(cur, n) for n in sorted(names)
                  if not n.startswith(".") and (exts is None or n.lower().endswith(tuple(exts)))]
    return files, left


# ----------------------------------------------------------------------------------------------- fold lists
def parse_folds(text: str, n_folds: Optional[int] = None) -> List[int]:
    """"0-9", "3", "0,2,5-7" -> sorted fold indices, each in [0, n_folds) when n_folds is given; UsageError."""
    out = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if a > b:
                raise UsageError("bad fold range %r: %d > %d" % (part, a, b))
            out.update(range(a, b + 1))
        elif re.fullmatch(r"\d+", part):
            out.add(int(part))
        else:
            raise UsageError("bad --folds %r: use e.g. 0-9, 3 or 0,2,5-7" % text)
    if not out:
        raise UsageError("--folds %r selects no fold" % text)
    bad = sorted(k for k in out if n_folds is not None and k >= n_folds)
    if bad:
        raise UsageError("fold(s) %s out of range: there are %d folds (0-%d)"
                         % (",".join(map(str, bad)), n_folds, n_folds - 1))
    return sorted(out)

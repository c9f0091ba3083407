"""C kernels of the Python layers, compiled once per source and loaded through ctypes (docs/choices.md, "MaxUnpool
in C").  The shared library is cached as <GCNET_KERNELS_DIR>/<name>-<hash of source and command>.so; tools/setup.sh
builds it, and a changed source is rebuilt at its first use (written to a temporary name, then renamed, so parallel
training jobs never load a half-written file).  No compiler or a failed compile is an error, not a slower fallback."""
import ctypes
import hashlib
import os
import shlex
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CFLAGS = ["-O3", "-shared", "-fPIC", "-std=c99"]
_loaded = {}


def kernels_dir():
    """Where the compiled kernels live: $GCNET_KERNELS_DIR (tools/env.sh: in setup's cache), else a user cache."""
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gcnet-kernels")
    return os.environ.get("GCNET_KERNELS_DIR") or default


def library_path(name):
    """Path of the compiled `<name>.c` (not built here); it names the source's and the command's hash."""
    cc = shlex.split(os.environ.get("CC") or "cc")
    with open(os.path.join(HERE, name + ".c"), "rb") as f:
        key = hashlib.sha256(f.read() + " ".join(cc + CFLAGS).encode()).hexdigest()[:16]
    return os.path.join(kernels_dir(), "%s-%s.so" % (name, key)), cc


def build(name):
    """Compile python_layers/<name>.c unless its library exists; returns (the library's path, True if compiled now)."""
    path, cc = library_path(name)
    if os.path.exists(path):
        return path, False
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    except OSError as e:
        raise RuntimeError("cannot write the Python layers' C kernels to %s (%s); set GCNET_KERNELS_DIR to a writable "
                           "folder" % (os.path.dirname(path), e))
    os.close(fd)
    cmd = cc + CFLAGS + ["-o", tmp, os.path.join(HERE, name + ".c")]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    except OSError as e:
        os.unlink(tmp)
        raise RuntimeError("cannot compile the Python layers' C kernels (%s): %s; install a C compiler or set CC"
                           % (" ".join(cmd), e))
    if proc.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError("compiling %s.c failed (%s):\n%s" % (name, " ".join(cmd), proc.stdout))
    os.chmod(tmp, 0o755)                    # mkstemp's 0600 would hide it from other users of a shared cache
    os.replace(tmp, path)
    return path, True


def build_all():
    """Compile every python_layers/*.c that is not compiled yet (tools/setup.sh, run_folds.sh call this); returns
    [(library path, True if compiled now)]."""
    return [build(name) for name in sorted(f[:-2] for f in os.listdir(HERE) if f.endswith(".c"))]


def load(name, functions):
    """The ctypes library of python_layers/<name>.c (built if needed), with `functions` {name: argtypes} declared
    (return type void)."""
    if name not in _loaded:
        lib = ctypes.CDLL(build(name)[0])
        for fn, argtypes in functions.items():
            getattr(lib, fn).argtypes = argtypes
            getattr(lib, fn).restype = None
        _loaded[name] = lib
    return _loaded[name]

"""Child processes, signals and the folder lock of the runner.

One Supervisor per run holds the stop flag and the running children: the first SIGINT/SIGTERM asks every
`caffe train` to snapshot and stop (-sigint_effect stop), the third kills them.  Every child runs in its own
session, so that a terminal Ctrl-C reaches only the runner.
"""
import datetime
import errno
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional

from gcnet import layout
from gcnet.logparse import last_lines
from gcnet.util import UsageError, say

REPO = Path(os.environ.get("GCNET_ROOT") or layout.REPO)


class Interrupted(Exception):
    """The run is stopping (a signal): snapshots are kept, a rerun resumes."""


class JobError(Exception):
    """One job failed; the others go on and the summary says why."""


class Supervisor:
    """The stop flag and the child processes of one run."""

    def __init__(self):
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._children: Dict[int, subprocess.Popen] = {}
        self._signals = 0
        self._in_jobs = threading.Event()     # set while jobs run: a signal then stops the children, not Python

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)

    @contextmanager
    def running_jobs(self):
        self._in_jobs.set()
        try:
            yield
        finally:
            self._in_jobs.clear()

    def _on_signal(self, signum, frame):
        self._signals += 1
        self.stop.set()
        if not self._in_jobs.is_set():
            raise KeyboardInterrupt()    # data generation / LMDB build (atomic: an interrupted build is redone)
        with self._lock:
            kids = list(self._children.values())
        if self._signals == 1:
            say("\n%s: asking caffe to snapshot and stop (send it again twice to kill at once) ..."
                % signal.Signals(signum).name)
            for p in kids:
                try:
                    p.send_signal(signal.SIGINT)       # caffe train: -sigint_effect stop = snapshot, then exit
                except OSError:
                    pass
        elif self._signals >= 3:
            say("killing %d child process(es)" % len(kids))
            for p in kids:
                try:
                    p.kill()
                except OSError:
                    pass

    def run_logged(self, cmd: List[str], cwd, log_path, env, on_line=None) -> int:
        """Run cmd with stdout+stderr appended to log_path (and fed line by line to on_line); its exit status."""
        with open(str(log_path), "a") as log:
            log.write("=== gcnet runner %s: %s (cwd %s)\n"
                      % (datetime.datetime.now().isoformat(timespec="seconds"),
                         " ".join(shlex.quote(c) for c in cmd), cwd))
            log.flush()
            if self.stop.is_set():
                raise Interrupted()
            p = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, bufsize=1,
                                 universal_newlines=True, errors="replace")
            with self._lock:
                self._children[p.pid] = p
            try:
                if self.stop.is_set():                      # a signal between the check and the registration
                    p.send_signal(signal.SIGINT)
                for line in p.stdout:
                    log.write(line)
                    log.flush()
                    if on_line is not None:
                        try:
                            on_line(line)
                        except Exception as e:  # a progress bug must never kill a training
                            log.write("=== gcnet runner: progress error %r\n" % e)
                return p.wait()
            finally:
                with self._lock:
                    self._children.pop(p.pid, None)
                if p.poll() is None:
                    p.kill()
                    p.wait()

    def run_step(self, cmd: List[str], d: Path, log_name: str, what: str, env: dict) -> None:
        """One step of a job as a subprocess logging to <d>/<log_name>.log; JobError (its last error line) on
        failure, Interrupted when the run is stopping."""
        rc = self.run_logged(cmd, d, d / (log_name + ".log"), env)
        if rc != 0:
            if self.stop.is_set():
                raise Interrupted()
            tail = [line for line in last_lines(str(d / (log_name + ".log")), 40) if line.strip()]
            err = next((line for line in reversed(tail) if line.startswith("error:")), None)
            raise JobError("%s failed (status %d): %s" % (what, rc, err or (tail[-1] if tail else "?")))


class FileLock:
    """fcntl.flock on <dir>/.lock: serialises stages between runners (threads, Slurm array tasks); waiting for it
    ends with Interrupted once `stop` is set."""

    def __init__(self, directory, name: str = ".lock", stop: Optional[threading.Event] = None):
        os.makedirs(str(directory), exist_ok=True)
        self.path = os.path.join(str(directory), name)
        self.stop = stop
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            say("  waiting for another runner holding %s ..." % self.path)
            while True:
                if self.stop is not None and self.stop.is_set():
                    os.close(self.fd)
                    raise Interrupted()
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def child_env(threads: int, gpu: Optional[int] = None, quiet_glog: bool = False) -> dict:
    """Environment of a child: `threads` BLAS/OpenMP threads, glog to stderr, the project on PYTHONPATH."""
    env = dict(os.environ)
    t = str(threads)
    env.update(OPENBLAS_NUM_THREADS=t, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, GLOG_logtostderr="1",
               PYTHONUNBUFFERED="1")
    env["GLOG_minloglevel"] = "1" if quiet_glog else "0"
    pp = [str(REPO), str(REPO / "python_layers")]
    env["PYTHONPATH"] = os.pathsep.join(pp + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
    return env


def n_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


_caffe_cache = {}


def caffe_binary() -> str:
    exe = shutil.which("caffe")
    if not exe:
        raise UsageError("`caffe` is not on PATH: run `source tools/env.sh` (build Caffe first with tools/setup.sh)")
    return exe


def python_layer_kernels() -> None:
    """Compile the Python layers' C kernels now (a no-op when cached): no compiler is one clear error before any
    work, not a failure inside every training (python_layers/gcnet_native.py)."""
    try:
        import gcnet_native
    except ImportError:
        raise UsageError("python_layers/ is not on PYTHONPATH: run `source tools/env.sh`")
    try:
        gcnet_native.build_all()
    except RuntimeError as e:
        raise UsageError(str(e))


# Caffe's CPU code paths that our patches switch by environment variable at net construction (docs/choices.md):
# 0008 fuses BatchNorm-Scale-ReLU blocks, 0010 runs 3x3 convolutions with Winograd F(4x4, 3x3); "0" keeps Caffe's.
CAFFE_SWITCHES = {"fuse_bn_scale_relu": "CAFFE_FUSE_BN_SCALE_RELU", "winograd": "CAFFE_WINOGRAD"}


def caffe_settings() -> Dict[str, object]:
    """The Caffe this run uses, for summary.json: build mode, version, install folder (its name is the build key:
    Debian source + patches + options) and which patched CPU paths its processes take (they inherit this
    environment)."""
    return {"caffe_build": os.environ.get("CAFFE_BUILD", "unknown"), "caffe_version": caffe_version(),
            "caffe_root": os.path.basename(os.environ.get("CAFFE_ROOT", "")),
            "caffe_switches": {name: os.environ.get(var, "1") != "0" for name, var in CAFFE_SWITCHES.items()}}


def caffe_version() -> str:
    if "v" not in _caffe_cache:
        try:
            out = subprocess.run([caffe_binary(), "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 universal_newlines=True, timeout=60).stdout
            _caffe_cache["v"] = out.strip().splitlines()[0] if out.strip() else "unknown"
        except Exception as e:
            _caffe_cache["v"] = "unknown (%s)" % e
    return _caffe_cache["v"]


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, universal_newlines=True, timeout=30).stdout.strip()
        if not rev:
            return "unknown (no commit)"
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
                               timeout=30).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"

"""Parse a BVLC Caffe 1.0 training log (the output of ``caffe train``) into per-iteration records.

The line formats (Caffe 1.0's solver.cpp, sgd_solver.cpp, tools/caffe.cpp, glog prefix optional) are listed in
docs/ARCHITECTURE.md, "Caffe log lines".  ``parse_log(path_or_text)`` returns a dict (``LogParser.result``);
``LogParser`` is the incremental form of the live progress (``feed(line)`` returns the events a line completed).
Training outputs are the raw blob values (before the loss weight; the weighted ones under ``weighted``); of an
output blob with several elements only the first is kept.
"""
import math
import os
import re
from typing import Iterable, List, Optional, Union

__all__ = ["LogParser", "parse_log", "train_series", "test_series", "last_lines"]

_NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|-?inf|NaN|-?Inf))"
# glog prefix: severity, MMDD, time, thread id, file:line]
# (glog >= 0.6 prints the year too: I20261130 13:37:08.188868)
_PREFIX = re.compile(r"^([IWEF])(?:\d{4})?(\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d+)\s+\d+\s+([^\]]+)\]\s?")
_ITER = re.compile(r"^Iteration (\d+)(?: \(" + _NUM + r" iter/s, " + _NUM + r"s/(\d+) iters?\))?, loss = " + _NUM)
_LR = re.compile(r"^Iteration (\d+), lr = " + _NUM)
_OUT = re.compile(r"^\s*(Train|Test) net output #(\d+): (\S+) = " + _NUM + r"(?: \(\* " + _NUM + r" = " + _NUM
                  + r" loss\))?")
_TESTING = re.compile(r"^Iteration (\d+), Testing net \(#(\d+)\)")
_TEST_LOSS = re.compile(r"^Test loss: " + _NUM)
_SNAP_MODEL = re.compile(r"^Snapshotting to (?:binary proto|HDF5) file (\S+)")
_SNAP_STATE = re.compile(r"^Snapshotting solver state to (?:binary proto|HDF5) file (\S+)")
_RESUME = re.compile(r"^(?:Resuming from|Restoring previous solver status from) (\S+)")
_MAX_ITER = re.compile(r"^\s*max_iter: (\d+)")
_DISPLAY = re.compile(r"^\s*display: (\d+)")
_ITER_IN_NAME = re.compile(r"_iter_(\d+)\.")


def _num(s: Optional[str]) -> Optional[float]:
    if s is None:
        return None
    try:
        return float(s)
    except ValueError:
        low = s.lower()
        if low == "nan":
            return math.nan
        if low.endswith("inf"):
            return -math.inf if low.startswith("-") else math.inf
        raise


def _split_prefix(line: str):
    """-> (severity or None, seconds-of-day (float) or None, message)"""
    m = _PREFIX.match(line)
    if not m:
        return None, None, line.rstrip("\n")
    sev = m.group(1)
    hh, mm, ss, frac = int(m.group(4)), int(m.group(5)), int(m.group(6)), m.group(7)
    day = int(m.group(3))
    t = ((day * 24 + hh) * 60 + mm) * 60 + ss + float("0." + frac)
    return sev, t, line[m.end():].rstrip("\n")


class LogParser:
    """Incremental parser.  ``feed(line)`` -> list of completed events, each a dict with ``kind``:

    * ``train``: {iter, loss, lr, iter_per_s, secs_per_display, outputs: {name: raw}, weighted: {name: w*raw}, t}
    * ``test``: {iter, net, loss (or None), outputs, weighted, t}
    * ``snapshot``: {iter, path, what: "model"|"solverstate"}
    * ``resume``: {path, iter}
    * ``done``: {early: bool}
    * ``fatal``: {message}
    """

    def __init__(self):
        self.train: List[dict] = []
        self.test: List[dict] = []
        self.snapshots: List[dict] = []
        self.resumes: List[dict] = []
        self.errors: List[str] = []
        self.max_iter: Optional[int] = None
        self.display: Optional[int] = None
        self.done = False
        self.stopped_early = False
        self._cur_train: Optional[dict] = None
        self._cur_test: Optional[dict] = None
        self._last_t: Optional[float] = None

    # -- helpers
    def _close_train(self, out: list):
        if self._cur_train is not None:
            self.train.append(self._cur_train)
            out.append(dict(self._cur_train, kind="train"))
            self._cur_train = None

    def _close_test(self, out: list):
        if self._cur_test is not None:
            self.test.append(self._cur_test)
            out.append(dict(self._cur_test, kind="test"))
            self._cur_test = None

    def feed(self, line: str) -> List[dict]:
        out: List[dict] = []
        sev, t, msg = _split_prefix(line)
        if t is not None:
            self._last_t = t
        if sev == "F" or msg.startswith("Check failed") or msg.startswith("*** Check failure"):
            self.errors.append(msg)
            out.append({"kind": "fatal", "message": msg})
            return out
        if self.max_iter is None or self.display is None:
            m = _MAX_ITER.match(msg)
            if m and self.max_iter is None:
                self.max_iter = int(m.group(1))
                return out
            m = _DISPLAY.match(msg)
            if m and self.display is None:
                self.display = int(m.group(1))
                return out
        m = _OUT.match(msg)
        if m:
            kind, name = m.group(1), m.group(3)
            raw = _num(m.group(4))
            weight = _num(m.group(5))
            target = self._cur_train if kind == "Train" else self._cur_test
            if target is not None:
                if name in target["outputs"]:
                    # a non-scalar output blob (Caffe logs every element): keep the first, count the rest
                    target["extra_elements"] = target.get("extra_elements", 0) + 1
                    return out
                target["outputs"][name] = raw
                if weight is not None:
                    target["weighted"][name] = _num(m.group(6))
            return out
        m = _LR.match(msg)
        if m:
            it, lr = int(m.group(1)), _num(m.group(2))
            if self._cur_train is not None and self._cur_train["iter"] == it:
                self._cur_train["lr"] = lr
                self._close_train(out)
            else:
                self._close_train(out)
                rec = {"iter": it, "loss": None, "lr": lr, "iter_per_s": None, "secs_per_display": None,
                       "outputs": {}, "weighted": {}, "t": t}
                self.train.append(rec)
                out.append(dict(rec, kind="train"))
            return out
        m = _ITER.match(msg)
        if m:
            self._close_train(out)
            self._close_test(out)
            self._cur_train = {"iter": int(m.group(1)), "loss": _num(m.group(5)), "lr": None,
                               "iter_per_s": _num(m.group(2)), "secs_per_display": _num(m.group(3)),
                               "outputs": {}, "weighted": {}, "t": t}
            if m.group(2) is None:               # the final forward-only pass: complete at once
                self._close_train(out)
            return out
        m = _TESTING.match(msg)
        if m:
            self._close_train(out)
            self._close_test(out)
            self._cur_test = {"iter": int(m.group(1)), "net": int(m.group(2)), "loss": None,
                              "outputs": {}, "weighted": {}, "t": t}
            return out
        m = _TEST_LOSS.match(msg)
        if m:
            if self._cur_test is not None:
                self._cur_test["loss"] = _num(m.group(1))
            return out
        m = _SNAP_STATE.match(msg) or _SNAP_MODEL.match(msg)
        if m:
            self._close_train(out)
            self._close_test(out)
            path = m.group(1)
            mi = _ITER_IN_NAME.search(os.path.basename(path))
            ev = {"iter": int(mi.group(1)) if mi else None, "path": path,
                  "what": "solverstate" if "solver state" in msg else "model"}
            self.snapshots.append(ev)
            out.append(dict(ev, kind="snapshot"))
            return out
        m = _RESUME.match(msg)
        if m:
            path = m.group(1)
            if not any(r["path"] == path for r in self.resumes[-1:]):
                mi = _ITER_IN_NAME.search(os.path.basename(path))
                ev = {"path": path, "iter": int(mi.group(1)) if mi else None}
                self.resumes.append(ev)
                self.done = self.stopped_early = False    # a new run of the solver starts
                out.append(dict(ev, kind="resume"))
            return out
        if msg.startswith("Optimization stopped early"):
            self.stopped_early = True
            self._close_train(out)
            self._close_test(out)
            out.append({"kind": "done", "early": True})
            return out
        if msg.startswith("Optimization Done"):
            self._close_train(out)
            self._close_test(out)
            if not self.done:
                self.done = True
                out.append({"kind": "done", "early": self.stopped_early})
            return out
        if (msg.startswith("Traceback (most recent call last)") or msg.startswith("terminate called")
                or re.match(r"^\w*(Error|Exception): ", msg)):
            self.errors.append(msg)
        return out

    def flush(self) -> List[dict]:
        out: List[dict] = []
        self._close_train(out)
        self._close_test(out)
        return out

    def result(self) -> dict:
        """{"train": [...], "test": [...], "snapshots", "resumes", "max_iter", "display", "done", "stopped_early",
        "errors", "last_iter"} -- ``train``/``test`` deduplicated by iteration (a resumed run overrides the
        records of the iterations it repeats) and sorted."""
        self.flush()
        return {
            "train": _dedup(self.train),
            "test": _dedup(self.test, key=lambda r: (r["iter"], r["net"])),
            "snapshots": list(self.snapshots),
            "resumes": list(self.resumes),
            "max_iter": self.max_iter,
            "display": self.display,
            "done": self.done and not self.stopped_early,
            "stopped_early": self.stopped_early,
            "errors": list(self.errors),
            "last_iter": max(r["iter"] for r in self.train) if self.train else None,
        }


def _dedup(records, key=lambda r: r["iter"]):
    by = {}
    for r in records:
        k = key(r)
        if k in by and r.get("loss") is None and not r.get("outputs"):
            # the forward-only final line: keep the richer record, only fill in a missing loss
            continue
        by[k] = r
    return [by[k] for k in sorted(by)]


def parse_log(src: Union[str, os.PathLike, Iterable[str]]) -> dict:
    """Parse a whole log: a path, the log text itself, or an iterable of lines."""
    p = LogParser()
    if isinstance(src, os.PathLike) or (isinstance(src, str) and "\n" not in src and os.path.exists(src)):
        with open(src, "r", errors="replace") as f:
            for line in f:
                p.feed(line)
    else:
        lines = src.splitlines() if isinstance(src, str) else src
        for line in lines:
            p.feed(line)
    return p.result()


def train_series(parsed: dict, name: str):
    """(iters, values) of one training output (``"loss"`` = the total smoothed loss, ``"lr"``)."""
    its, vals = [], []
    for r in parsed["train"]:
        v = r.get(name) if name in ("loss", "lr") else r["outputs"].get(name)
        if v is not None:
            its.append(r["iter"])
            vals.append(v)
    return its, vals


def test_series(parsed: dict, name: str, net: int = 0):
    its, vals = [], []
    for r in parsed["test"]:
        if r["net"] == net and name in r["outputs"]:
            its.append(r["iter"])
            vals.append(r["outputs"][name])
    return its, vals


def last_lines(path: str, n: int = 15) -> List[str]:
    """The last n lines of a (possibly big) log file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return data.splitlines()[-n:]

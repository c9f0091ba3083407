"""`caffe train` of one job: resume from the latest snapshot, a progress line per display interval, snapshots
pruned, the last weights copied to the job's output .caffemodel."""
import glob
import math
import os
import re
import time
from pathlib import Path
from typing import List, Optional, Tuple

from gcnet.experiment.plan import Context, Job, solver_iters
from gcnet.experiment.procs import Interrupted, JobError, caffe_binary, child_env
from gcnet.layout import SNAPSHOTS, SOLVER, TRAIN_LOG
from gcnet.logparse import LogParser
from gcnet.util import copy_file, disk_free, fmt_duration, fmt_num, now, say

_SNAP_RE = re.compile(r"_iter_(\d+)\.solverstate$")


def snapshots(d: Path) -> List[Tuple[int, Path, Path]]:
    """[(iteration, solverstate, caffemodel)] of the complete snapshot pairs of a job folder, by iteration."""
    out = []
    for st in glob.glob(str(d / SNAPSHOTS / "*_iter_*.solverstate")):
        m = _SNAP_RE.search(st)
        cm = st[: -len(".solverstate")] + ".caffemodel"
        if m and os.path.exists(cm) and os.path.getsize(st) > 0:
            out.append((int(m.group(1)), Path(st), Path(cm)))
    return sorted(out)


def usable_snapshots(d: Path, label: str) -> List[Tuple[int, Path, Path]]:
    """snapshots(d), after removing (and saying so) the weights of snapshots without solver state and each latest
    pair whose files do not parse (a snapshot cut short by a full disk or a kill): resuming from it would end in a
    Caffe abort at every rerun.  Call it only while no caffe trains in `d` (under the job's lock)."""
    from gcnet.caffe_io import WeightsError, load_net_param
    paired = {str(cm) for _, _, cm in snapshots(d)}
    for cm in glob.glob(str(d / SNAPSHOTS / "*_iter_*.caffemodel")):
        if cm not in paired:            # a snapshot whose solver state was never written (killed, disk full)
            say("%s removed %s (an incomplete snapshot)" % (label, cm))
            os.remove(cm)
    snaps = snapshots(d)
    while snaps:
        it, st, cm = snaps[-1]
        try:
            load_net_param(cm)
            _check_solverstate(st)
            return snaps
        except WeightsError as e:
            say("%s snapshot at iteration %d is damaged (%s): removed" % (label, it, e))
            for p in (st, cm):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
            snaps = snaps[:-1]
    return snaps


def _check_solverstate(path: Path) -> None:
    """WeightsError naming a .solverstate that does not parse or names no iteration."""
    from caffe.proto import caffe_pb2
    from gcnet.caffe_io import WeightsError
    st = caffe_pb2.SolverState()
    try:
        st.ParseFromString(path.read_bytes())
    except Exception as e:
        raise WeightsError("%s is damaged (%s)" % (path, e))
    if not len(st.history):
        raise WeightsError("%s is damaged (no solver history)" % path)


def prune_snapshots(d: Path, keep: int) -> None:
    for _, st, cm in snapshots(d)[:-keep] if keep > 0 else []:
        for p in (st, cm):
            try:
                p.unlink()
            except OSError:
                pass


def finalize(d: Path, weights: Path, final: Path, keep: int) -> None:
    """Copy `weights` to `final` atomically and keep the last `keep` snapshots."""
    copy_file(weights, final)
    prune_snapshots(d, keep)


class Progress:
    """Live progress of one training: one line per display interval, with rate and ETA."""

    def __init__(self, label: str, max_iter: int):
        self.label = label
        self.max_iter = max_iter
        self.parser = LogParser()
        self.t0 = None
        self.it0 = None
        self.last_acc = None
        self.fatal: List[str] = []

    def __call__(self, line: str):
        for ev in self.parser.feed(line):
            k = ev["kind"]
            if k == "train" and ev.get("lr") is not None:
                self._print(ev)
            elif k == "test":
                acc = ev["outputs"].get("accuracy")
                if acc is not None:
                    self.last_acc = (ev["iter"], acc)
            elif k == "fatal":
                self.fatal.append(ev["message"])

    def _print(self, ev):
        now = time.time()
        it = ev["iter"]
        if self.t0 is None:
            self.t0, self.it0 = now, it
        rate = (it - self.it0) / (now - self.t0) if now > self.t0 and it > self.it0 else None
        # (Caffe's own iter/s of the first display of a run is meaningless: measured here instead)
        eta = (self.max_iter - it) / rate if rate and rate > 0 else None
        parts = ["%s iter %d/%d" % (self.label, it, self.max_iter), "loss %s" % fmt_num(ev.get("loss"))]
        parts += ["%s %s" % (n, fmt_num(v)) for n, v in ev["outputs"].items()]
        parts.append("lr %.3g" % ev["lr"])
        if self.last_acc is not None:
            parts.append("val_acc %.3f" % self.last_acc[1])
        say(" ".join(parts) + ("  %.2f it/s  ETA %s" % (rate, fmt_duration(eta)) if eta is not None else "  ETA ?"))

    def divergence(self) -> Optional[str]:
        """"loss_gen_r = inf at iteration 8" when the last training record has a non-finite loss."""
        for r in reversed(self.parser.train):
            vals = dict(r["outputs"])
            if r.get("loss") is not None:
                vals = dict(vals, loss=r["loss"])
            if not vals:
                continue
            bad = [(n, v) for n, v in vals.items() if v is not None and not math.isfinite(v)]
            if bad:
                return "%s = %s at iteration %d" % (bad[0][0], bad[0][1], r["iter"])
            return None
        return None


def disk_full_note(d: Path, weights: Optional[str]) -> Optional[str]:
    """"no space left on device ..." when the disk of job folder `d` has no room for another snapshot (caffe's
    own message for a failed snapshot write is a CHECK failure that does not say so), else None."""
    files = glob.glob(str(d / SNAPSHOTS / "*.caffemodel")) + ([str(d / weights)] if weights else [])
    snapshot = max([os.path.getsize(p) for p in files if os.path.isfile(p)] + [1 << 20])
    free = disk_free(d)
    if free < 2 * snapshot:
        return "no space left on device: %s has %d KiB free, a snapshot needs about %d KiB" % (
            d, free >> 10, snapshot >> 10)
    return None


def train_with_caffe(ctx: Context, job: Job, weights: Optional[str], final_name: str) -> str:
    """caffe train of job.dir's solver.prototxt (resuming from the latest snapshot) to its max_iter, the last weights
    copied to `final_name`; returns "trained" | "resumed" | "finalized"; JobError / Interrupted."""
    s, d, max_iter = ctx.s, job.dir, solver_iters(job)
    (d / SNAPSHOTS).mkdir(exist_ok=True)
    final = d / final_name
    snaps = usable_snapshots(d, job.label)
    action = "trained"
    cmd = [caffe_binary(), "train", "--solver=" + SOLVER, "--sigint_effect=stop", "--sighup_effect=snapshot"]
    if job.gpu is not None:
        cmd.append("--gpu=%d" % job.gpu)
    if snaps and snaps[-1][0] >= max_iter:
        say("%s training already complete (snapshot at iteration %d)" % (job.label, snaps[-1][0]))
        finalize(d, snaps[-1][2], final, s.keep_snapshots)
        return "finalized"
    if snaps:
        it, st, _ = snaps[-1]
        say("%s resuming from %s (iteration %d of %d)" % (job.label, st.relative_to(d), it, max_iter))
        cmd.append("--snapshot=%s" % st.relative_to(d))
        action = "resumed"
        # (a resumed training is not bit-identical to an uninterrupted one: the summary says which were resumed)
        job.state.setdefault("resumed", []).append({"from_iteration": it, "max_iter": max_iter, "at": now()})
    else:
        job.state["resumed"] = []          # a training from the start: earlier resumptions no longer apply
        if weights:
            cmd.append("--weights=%s" % weights)
    prog = Progress(job.label, max_iter)

    def on_line(line):
        prog(line)
        if "Snapshotting solver state" in line:
            prune_snapshots(d, s.keep_snapshots + 1)   # +1: the one being written is not complete yet

    rc = ctx.sup.run_logged(cmd, d, d / TRAIN_LOG, child_env(s.threads, job.gpu), on_line)
    res = prog.parser.result()
    snaps = snapshots(d)
    job.diverged = prog.divergence()
    if rc != 0:
        why = prog.fatal[0] if prog.fatal else (res["errors"][0] if res["errors"] else "")
        if job.diverged:
            why = (why + "; " if why else "") + "training diverged: " + job.diverged
        full = disk_full_note(d, weights)
        if full:
            why = (why + "; " if why else "") + full
        raise JobError("caffe train exited with status %d%s" % (rc, (": " + why) if why else ""))
    if not snaps or snaps[-1][0] < max_iter or res["stopped_early"]:
        if ctx.sup.stop.is_set() or res["stopped_early"]:
            raise Interrupted()
        raise JobError("caffe train ended without a snapshot at iteration %d" % max_iter)
    finalize(d, snaps[-1][2], final, s.keep_snapshots)
    return action

"""Speed: `caffe time` of every net at batch 64 (tools/bench.py), trainings sharing one GPU, and the paper's schedule
(section 4.1: 3e5 iterations, mini-batch 64, 10 folds) estimated from them."""
import json
import os
import sys
import time
from typing import Dict, Optional, Sequence

from gcnet import config as C
from gcnet.util import run_logged

PAPER_ITERS = 300000
PAPER_FOLDS = 10
PAPER_BATCH = 64
# the paper's five models (Tables 2-5: the CNN and the four GCNets); cnn_pair is this project's bound
PAPER_MODELS = ("cnn",) + C.GCNET_MODELS
GENERATOR_ITERS = PAPER_ITERS // 10     # the runner's default generator stage (--iters / 10) per fold
SHARED_MODEL = "gcnet_s1r1"             # the net timed with several copies on one GPU


def caffe_times(repo: str, models: Sequence[str], iterations: int, gpu: Optional[int], log_path: str,
                timeout: float, concurrent: int = 1, threads: Optional[int] = None, batch: int = PAPER_BATCH) -> dict:
    """tools/bench.py (caffe time, forward + backward) -> {"ms": {model: ms per iteration}, seconds, error}."""
    json_path = log_path + ".json"
    cmd = [sys.executable, os.path.join(repo, "tools", "bench.py"), "--batch", str(batch), "--iterations",
           str(iterations), "--models", ",".join(models), "--concurrent", str(concurrent), "--json", json_path]
    if gpu is not None:
        cmd += ["--gpu", str(gpu)]
    env = dict(os.environ)
    if threads:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.time()
    rc, error = run_logged(cmd, log_path, timeout, cwd=repo, env=env)
    ms = {}
    if error is None and rc == 0 and os.path.exists(json_path):
        with open(json_path) as f:
            for m, builds in json.load(f)["models"].items():
                ms[m] = list(builds.values())[0]["fb"]
    elif error is None:
        error = "tools/bench.py exit %s: see %s" % (rc, os.path.basename(log_path))
    return {"ms": ms, "iterations": iterations, "batch": batch, "concurrent": concurrent, "threads": threads,
            "seconds": round(time.time() - t0, 1), "error": error}


def hours(ms: float, iters: int, folds: int = 1) -> float:
    return ms * iters * folds / 3.6e6


def paper_estimate(ms: Dict[str, float], shared: Optional[Dict[int, float]] = None) -> dict:
    """The paper's schedule from ms per iteration (batch 64): the five models x 3e5 iterations x 10 folds (the
    issue's figure), and the whole pipeline (plus cnn_pair, the generator stage 3e4 per fold and the pretraining
    of encdec and cnn_id, 3e5 each, once).  `shared` {jobs: ms per iteration of SHARED_MODEL with that many copies
    on one GPU} gives the throughput gain of run_folds.sh --jobs on one GPU, applied to every model."""
    missing = [m for m in PAPER_MODELS if ms.get(m) is None]
    if missing:
        return {"error": "no ms/iteration for %s" % ", ".join(missing)}
    per_model = {m: round(hours(ms[m], PAPER_ITERS, PAPER_FOLDS), 2) for m in PAPER_MODELS}
    five = sum(per_model.values())
    extra = {}
    for m, iters, folds in (("cnn_pair", PAPER_ITERS, PAPER_FOLDS), ("generator", GENERATOR_ITERS, PAPER_FOLDS),
                            ("encdec", PAPER_ITERS, 1), ("cnn_id", PAPER_ITERS, 1)):
        if ms.get(m) is not None:
            extra[m] = round(hours(ms[m], iters, folds), 2)
    pipeline = five + sum(extra.values())
    out = {"formula": "caffe time ms/iteration (forward + backward, batch 64) x 3e5 iterations x 10 folds",
           "five_models": list(PAPER_MODELS), "hours_per_model": per_model, "five_models_hours": round(five, 1),
           "five_models_days": round(five / 24, 2), "pipeline_extra_hours": extra,
           "pipeline_hours": round(pipeline, 1), "pipeline_days": round(pipeline / 24, 2),
           "fits_a_week": pipeline <= 7 * 24,
           "not_counted": "solver updates, data loading, in-training tests, BatchNorm re-estimation and tests"}
    if shared and shared.get(1):
        gains = {k: k * shared[1] / v for k, v in shared.items() if v}
        best = max(gains, key=lambda k: gains[k])
        out["jobs_on_one_gpu"] = {"model": SHARED_MODEL, "ms_per_iteration_each": shared,
                                  "throughput_gain": {k: round(g, 2) for k, g in gains.items()}, "best_jobs": best,
                                  "five_models_hours": round(five / gains[best], 1),
                                  "pipeline_hours": round(pipeline / gains[best], 1),
                                  "pipeline_days": round(pipeline / gains[best] / 24, 2),
                                  "fits_a_week": pipeline / gains[best] <= 7 * 24}
    return out


def generator_iterations(ms: Dict[str, float], seconds: float, overhead: float, slack: float = 1.3) -> int:
    """Iterations n for the generator experiment (encdec and cnn_id pretrained n iterations each, then the generator
    stage n iterations, batch 64) to fit `seconds`: n = (seconds - overhead) / (slack x the three nets' caffe time
    per iteration); slack covers the solver update and the data layer.  At least 1."""
    per_iter = sum(ms[m] for m in ("encdec", "cnn_id", "generator")) / 1000.0 * slack
    return max(1, int((seconds - overhead) / per_iter))

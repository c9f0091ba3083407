"""One fold of cnn and gcnet_s1r1 trained on the synthetic set with the project's runner (tools/run_folds.sh), on
the GPU or the CPU, and the comparison of a GPU run with CPU runs of the same schedule and other seeds.

The schedule (SCHEDULE) is small enough for this CPU (a few CPU-minutes per seed) and runs every training stage of
the main job: pretraining (encdec, cnn_id on the fold's training faces), the generator stage, the two models, BatchNorm
re-estimation, test.  --seed changes the LMDB shuffling and augmentation, not the data set or the nets' random_seed.

Judgement (docs/choices.md): the GPU run is treated as one more seed.  For each compared quantity (each net's mean
displayed loss over the second half of its iterations, each model's test accuracy, the generator's L_Gen,r) the
CPU seeds give a 99% prediction interval for one more draw (gcnet.stats.prediction_interval); the GPU agrees when
every quantity lies inside its interval.
"""
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence

from gcnet.layout import FINAL, TEST, TRAIN_LOG, ResultsLayout
from gcnet.logparse import parse_log, train_series
from gcnet.stats import prediction_interval
from gcnet.util import read_json, run_logged

DATASET = "synthetic"
SUBJECTS = 100                     # the synthetic set of the main job's CPU profile
FOLD = 0
# short enough that the three CPU seeds cost under 10 CPU-minutes here (docs/choices.md)
SCHEDULE = dict(models="cnn,gcnet_s1r1", folds=str(FOLD), n_folds=10, iters=60, pretrain_iters=60,
                generator_iters=20, batch=16, augment=2, display=5, bn_samples=256)
PRETRAIN_NETS = ("encdec", "cnn_id")
REFERENCE_SEEDS = (0, 1, 2)
ACCURACY_FLOOR_IMAGES = 2          # the accuracy sd is at least 2 test images' worth (seeds may agree exactly)
LOSS_FLOOR = 0.01                  # ... and a loss sd at least 1% of its mean


def runner_args(data_root: str, out: str, seed: int, gpu: Optional[int], threads: int,
                schedule: Optional[dict] = None, extra: Sequence[str] = ()) -> List[str]:
    """The tools/run_folds.sh arguments of one run of `schedule` (default SCHEDULE)."""
    s = dict(SCHEDULE, **(schedule or {}))
    return [DATASET, "--data", data_root, "--out", out, "--models", s["models"], "--folds", s["folds"],
            "--n-folds", str(s["n_folds"]), "--iters", str(s["iters"]), "--pretrain-iters", str(s["pretrain_iters"]),
            "--generator-iters", str(s["generator_iters"]), "--batch", str(s["batch"]), "--augment",
            str(s["augment"]), "--display", str(s["display"]), "--bn-samples", str(s["bn_samples"]),
            "--seed", str(seed), "--jobs", "1", "--threads", str(threads), "--no-figures",
            "--gpu", "cpu" if gpu is None else str(gpu)] + list(extra)


def run(repo: str, data_root: str, out: str, seed: int, gpu: Optional[int], threads: int, log_path: str,
        timeout: float, lmdb_src: Optional[str] = None, schedule: Optional[dict] = None,
        extra: Sequence[str] = ()) -> dict:
    """The runner with runner_args (`python -m gcnet.experiment`, what tools/run_folds.sh runs once tools/env.sh
    is sourced: here the environment is the bundle's); the LMDBs copied from lmdb_src first when given (built where
    the images can be decoded).  -> {exit, seconds, error, out}."""
    lay = ResultsLayout(out, DATASET)
    if lmdb_src and not lay.lmdb_manifest().exists():
        os.makedirs(lay.root, exist_ok=True)
        shutil.copytree(lmdb_src, lay.lmdb_root, symlinks=True)
    cmd = [sys.executable, "-m", "gcnet.experiment"] + runner_args(data_root, out, seed, gpu, threads, schedule,
                                                                    extra)
    t0 = time.time()
    rc, error = run_logged(cmd, log_path, timeout, cwd=repo)
    if error is None and rc != 0:
        error = "the runner exited %s: see %s" % (rc, os.path.basename(log_path))
    return {"exit": rc, "seconds": round(time.time() - t0, 1), "error": error, "out": out, "seed": seed,
            "command": " ".join(cmd),
            "device": "cpu" if gpu is None else "gpu %d" % gpu}


def _net_dirs(lay: ResultsLayout, models: Sequence[str]) -> Dict[str, str]:
    dirs = {n: lay.pretrain_dir(FOLD, n) for n in PRETRAIN_NETS}
    dirs["generator"] = lay.generator_dir(FOLD)
    dirs.update({m: lay.model_dir(m, FOLD) for m in models})
    return dirs


def extract(out: str, models: Sequence[str] = tuple(SCHEDULE["models"].split(","))) -> dict:
    """What a run left: per net the displayed losses and the training time; per model the test accuracy and the
    predictions; the generator's measures on the held-out identities."""
    lay = ResultsLayout(out, DATASET)
    nets = {}
    for name, d in _net_dirs(lay, models).items():
        log = d / TRAIN_LOG
        if not log.exists():
            nets[name] = {"error": "no %s" % log}
            continue
        its, loss = train_series(parse_log(str(log)), "loss")
        st = read_json(d / "stage.json", {}) or {}
        nets[name] = {"iters": its, "loss": loss, "train_seconds": st.get("train_seconds"),
                      "final": (d / FINAL).exists()}
    tests = {}
    for m in models:
        t = read_json(lay.model_dir(m, FOLD) / TEST, None)
        tests[m] = ({"accuracy": t["accuracy"], "n": t["n_test"], "predictions": t["predictions"]} if t
                    else {"error": "no test.json"})
    gen = (read_json(lay.generator_dir(FOLD) / TEST, {}) or {}).get("generator")
    return {"nets": nets, "tests": tests, "generator": gen}


def late_loss(net: dict) -> Optional[float]:
    """The mean displayed loss over the second half of a net's iterations (one number per training)."""
    its, loss = net.get("iters") or [], net.get("loss") or []
    if not its:
        return None
    half = [v for i, v in zip(its, loss) if i >= its[-1] / 2.0]
    return sum(half) / len(half) if half else None


def quantities(run: dict) -> Dict[str, Optional[float]]:
    """The compared numbers of one extracted run."""
    q = {"loss/%s" % n: late_loss(v) for n, v in run["nets"].items()}
    q.update({"accuracy/%s" % m: t.get("accuracy") for m, t in run["tests"].items()})
    q["l_gen_r/generator"] = (run.get("generator") or {}).get("l_gen_r")
    return q


def _floor(name: str, values: Sequence[float], n_test: Optional[int]) -> float:
    if name.startswith("accuracy/") and n_test:
        return ACCURACY_FLOOR_IMAGES / float(n_test)
    return LOSS_FLOOR * abs(sum(values) / len(values))


def agreement(a: Sequence, b: Sequence) -> Optional[float]:
    """Fraction of test images with the same predicted class."""
    if not a or not b or len(a) != len(b):
        return None
    return sum(int(x == y) for x, y in zip(a, b)) / float(len(a))


def _mean_abs(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    pairs = list(zip(a, b))
    return sum(abs(x - y) for x, y in pairs) / len(pairs) if pairs else None


def compare(run: dict, reference: Dict[int, dict]) -> dict:
    """The run (GPU) against the CPU runs {seed: extracted run} of the same schedule; `reference` must hold >= 2
    seeds.  -> {"agree": bool, "quantities": {name: {value, reference, interval, inside}}, "curves": ...}."""
    seeds = sorted(reference)
    if len(seeds) < 2:
        raise ValueError("the comparison needs CPU runs with >= 2 seeds, got %s" % seeds)
    q_run = quantities(run)
    q_ref = {s: quantities(reference[s]) for s in seeds}
    out, outside = {}, []
    for name, value in q_run.items():
        ref = [q_ref[s].get(name) for s in seeds]
        entry = {"value": value, "reference": dict(zip(seeds, ref))}
        if value is None or any(r is None for r in ref):
            entry.update(inside=False, why="missing in the %s" % ("run" if value is None else "reference"))
        else:
            m = name.split("/", 1)[1]
            n_test = (run["tests"].get(m) or {}).get("n") if name.startswith("accuracy/") else None
            pi = prediction_interval(ref, floor=_floor(name, ref, n_test))
            entry.update(interval=pi["interval"], sd=pi["sd"], inside=pi["interval"][0] <= value <= pi["interval"][1])
        if not entry["inside"]:
            outside.append(name)
        out[name] = entry
    curves = {}
    base = reference[seeds[0]]
    for n, net in run["nets"].items():
        ref_net = base["nets"].get(n) or {}
        if not net.get("iters") or not ref_net.get("iters"):
            continue
        d_run = _mean_abs(net["loss"], ref_net["loss"])
        d_seeds = [_mean_abs((reference[s]["nets"].get(n) or {}).get("loss") or [], ref_net["loss"]) for s in seeds[1:]]
        curves[n] = {"mean_abs_diff_to_seed_%d" % seeds[0]: d_run,
                     "seed_pairs_mean_abs_diff": {"%d-%d" % (seeds[0], s): d for s, d in zip(seeds[1:], d_seeds)},
                     "first_loss": {"run": net["loss"][0], "seed_%d" % seeds[0]: ref_net["loss"][0]}}
    preds = {}
    for m, t in run["tests"].items():
        p0 = (base["tests"].get(m) or {}).get("predictions")
        preds[m] = {"run_vs_seed_%d" % seeds[0]: agreement(t.get("predictions"), p0),
                    "seeds": {"%d-%d" % (seeds[0], s): agreement((reference[s]["tests"].get(m) or {})
                                                                 .get("predictions"), p0) for s in seeds[1:]}}
    return {"agree": not outside, "outside": outside, "quantities": out, "loss_curves": curves,
            "prediction_agreement": preds, "rule": "99%% prediction interval of one more seed from the %d CPU seeds "
            "(Student t, df %d); every quantity inside" % (len(seeds), len(seeds) - 1)}


def strip_predictions(run: dict) -> dict:
    """The extracted run without the per-image predictions (for the log)."""
    return dict(run, tests={m: {k: v for k, v in t.items() if k != "predictions"} for m, t in run["tests"].items()})

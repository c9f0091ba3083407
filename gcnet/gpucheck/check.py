"""The whole GPU check in one process, inside a time budget (tools/gpu_check.sh): device information, Caffe's unit
tests and pycaffe's on the device, `caffe time` of every net at batch 64, trainings sharing the GPU, one fold
trained and compared with the committed CPU runs, the paper-schedule estimate, and the generator experiment with
the time left.  Writes <out>/gpu_check.json after every step and <out>/gpu_check.log (every step's output).
Mode "cpu" runs the same steps on a CPU build (the rehearsal of tools/gpu_check.sh --dry-run)."""
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Optional, Sequence

from gcnet import config as C
from gcnet.gpucheck import data, gtests, timing, training
from gcnet.util import now, read_json, write_json

SCHEMA = 1
# seconds: the most each step may take on the GPU machine (x CPU_SLOWER in the CPU rehearsal)
STEPS = ("info", "gtests", "pycaffe", "timing", "training", "shared", "estimate", "generator")
STEP_CAPS = {"info": 60, "gtests": 150, "pycaffe": 60, "timing": 120, "training": 180, "shared": 60,
             "estimate": 10, "generator": 180}       # the generator: "about three minutes" (the issue)
CPU_SLOWER = 10
GPU_TIME_ITERATIONS, CPU_TIME_ITERATIONS = 20, 1
GENERATOR_OVERHEAD = 60             # s of the generator run that is not training (nets, surgery, BN, test)
CPU_GENERATOR_ITERATIONS = 4        # the rehearsal only runs the generator experiment's code path
MIN_STEP = 10


class Check:
    def __init__(self, repo: str, root: str, out: str, mode: str, budget: float, reference: Optional[str],
                 steps: Optional[Sequence[str]] = None):
        self.repo, self.root, self.out, self.mode, self.budget = repo, root, out, mode, budget
        self.selected = list(steps or STEPS)
        self.reference_path = reference
        self.gpu = 0 if mode == "gpu" else None
        self.t0 = time.time()
        self.scratch = tempfile.mkdtemp(prefix="gpucheck-", dir=root)
        os.makedirs(out, exist_ok=True)
        self.log_path = os.path.join(out, "gpu_check.log")
        self.result = {"schema": SCHEMA, "mode": mode, "started": now(), "budget_s": budget, "steps": {},
                       "steps_selected": self.selected,
                       "host": {"cores": os.cpu_count(), "platform": platform.platform(),
                                "python": platform.python_version()},
                       "bundle": read_json(os.path.join(os.environ.get("GCNET_BUNDLE", ""), "manifest.json"), None)}
        open(self.log_path, "w").close()

    # ------------------------------------------------------------------------------------------ plumbing
    def left(self) -> float:
        return self.budget - (time.time() - self.t0)

    def say(self, msg: str) -> None:
        line = "[gpu_check %4ds] %s" % (time.time() - self.t0, msg)
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def attach(self, title: str, path: str) -> None:
        """Append a step's own log to gpu_check.log."""
        with open(self.log_path, "a") as f, open(path, errors="replace") as g:
            f.write("\n===== %s (%s) =====\n%s\n===== end of %s =====\n" % (title, os.path.basename(path), g.read(),
                                                                         title))

    def sublog(self, name: str) -> str:
        return os.path.join(self.scratch, name + ".log")

    def save(self) -> None:
        self.result["seconds"] = round(time.time() - self.t0, 1)
        write_json(os.path.join(self.out, "gpu_check.json"), self.result)

    def step(self, name: str, fn: Callable[[float], dict], reserve: float = 0.0):
        """Run fn(timeout) unless not selected or the budget is spent; record its result (or its error), save."""
        if name not in self.selected:
            return None
        cap = STEP_CAPS[name] * (1 if self.mode == "gpu" else CPU_SLOWER)
        timeout = min(cap, self.left() - reserve)
        if timeout < MIN_STEP:
            self.say("%s: skipped, %.0fs of the budget left" % (name, self.left()))
            self.result["steps"][name] = {"skipped": "budget (%.0fs left)" % self.left()}
            self.save()
            return None
        self.say("%s (at most %ds) ..." % (name, timeout))
        t0 = time.time()
        try:
            r = fn(timeout)
        except Exception as e:                       # a step's failure is recorded; the others still run
            r = {"error": "%s: %s" % (type(e).__name__, e)}
        r.setdefault("step_seconds", round(time.time() - t0, 1))
        self.result["steps"][name] = r
        self.say("%s: %s" % (name, "ERROR " + str(r["error"]) if r.get("error") else "done in %.0fs"
                             % r["step_seconds"]))
        self.save()
        return r

    # ------------------------------------------------------------------------------------------ steps
    def info(self, timeout: float) -> dict:
        path = self.sublog("info")
        out = {}
        with open(path, "w") as log:
            cmds = [["caffe", "--version"]]
            if self.mode == "gpu":
                cmds = [["nvidia-smi"], ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                                         "--format=csv,noheader"], ["caffe", "device_query", "-gpu", "0"]] + cmds
            for cmd in cmds:
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                                   timeout=timeout)
                log.write("$ %s (exit %d)\n%s\n" % (" ".join(cmd), p.returncode, p.stdout))
                out[" ".join(cmd[:2])] = {"exit": p.returncode, "output": p.stdout[-4000:]}
        self.attach("device information", path)
        card = {}
        if self.mode == "gpu":
            q = out["nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap"]["output"].strip()
            parts = [p.strip() for p in q.splitlines()[0].split(",")] if q else []
            if len(parts) >= 4:
                card = {"name": parts[0], "driver": parts[1], "memory": parts[2], "compute_capability": parts[3]}
            m = re.search(r"CUDA Version:\s*([0-9.]+)", out["nvidia-smi"]["output"])
            card["cuda_version"] = m.group(1) if m else None
            card["device_query_exit"] = out["caffe device_query"]["exit"]
            m = re.search(r"Name:\s*(.+)", out["caffe device_query"]["output"])
            card["caffe_device_name"] = m.group(1).strip() if m else None
        self.result["card"] = card or None
        bad = [k for k, v in out.items() if v["exit"] != 0]
        return {"card": card, "commands": {k: v["exit"] for k, v in out.items()},
                "error": "failed: %s" % ", ".join(bad) if bad else None}

    def caffe_tests(self, timeout: float) -> dict:
        tests_root = os.path.join(os.environ["GCNET_BUNDLE"], "caffe-tests")
        binary = os.path.join(os.environ["GCNET_BUNDLE"], "bin", "test.testbin")
        listing = subprocess.run([binary, "--gtest_list_tests"], stdout=subprocess.PIPE, universal_newlines=True,
                                 cwd=tests_root, timeout=60).stdout
        cases = gtests.test_cases(gtests.net_layer_types(os.path.join(self.repo, "prototxt")))
        names = gtests.select(gtests.parse_listing(listing), cases, self.mode)
        path = self.sublog("caffe_tests")
        r = gtests.run_gtests(binary, tests_root, names, path, timeout,
                              _known_failures(os.path.join(self.repo, "tools", "caffe_known_failures.txt")))
        self.attach("Caffe unit tests (%s)" % self.mode, path)
        r["cases"] = ["%s%s" % (c, "" if s is None else " (*%s*)" % s) for c, s in cases]
        r["unexpected_failures"] = [t for t in r["failed_tests"] if t not in r["known_failures"]]
        if r["unexpected_failures"] and not r.get("error"):
            r["error"] = "%d test(s) failed" % len(r["unexpected_failures"])
        return r

    def pycaffe_tests(self, timeout: float) -> dict:
        path = self.sublog("pycaffe_tests")
        r = gtests.run_pycaffe_tests(os.path.join(os.environ["GCNET_BUNDLE"], "caffe-tests", "python"), self.mode,
                                     path, timeout)
        self.attach("pycaffe tests (%s mode)" % self.mode, path)
        if r["failed"] and not r.get("error"):
            r["error"] = "%d test(s) failed" % r["failed"]
        return r

    def time_nets(self, timeout: float) -> dict:
        path = self.sublog("caffe_time")
        its = GPU_TIME_ITERATIONS if self.mode == "gpu" else CPU_TIME_ITERATIONS
        r = timing.caffe_times(self.repo, C.ALL_MODELS, its, self.gpu, path, timeout)
        self.attach("caffe time, batch 64", path)
        self.result["ms_per_iteration"] = r["ms"]
        return r

    def shared(self, timeout: float) -> dict:
        one = (self.result.get("ms_per_iteration") or {}).get(timing.SHARED_MODEL)
        if one is None:
            return {"error": "no single-job time of %s" % timing.SHARED_MODEL}
        ms, runs = {1: one}, {}
        cores = os.cpu_count() or 1
        t_end = time.time() + timeout
        for k in ((2, 4) if self.mode == "gpu" else (2,)):
            path = self.sublog("shared_%d" % k)
            r = timing.caffe_times(self.repo, [timing.SHARED_MODEL], GPU_TIME_ITERATIONS if self.mode == "gpu"
                                   else CPU_TIME_ITERATIONS, self.gpu, path, max(1.0, t_end - time.time()),
                                   concurrent=k, threads=max(1, cores // k))
            self.attach("caffe time, %d copies at once" % k, path)
            runs[k] = r
            if r.get("error"):
                break
            ms[k] = r["ms"].get(timing.SHARED_MODEL)
        return {"ms_per_iteration_each": ms, "error": next((r["error"] for r in runs.values() if r.get("error")),
                                                           None)}

    def train(self, timeout: float) -> dict:
        out = os.path.join(self.root, "results", "train-%s" % self.mode)
        path = self.sublog("training")
        threads = 1 if self.mode == "cpu" else min(4, os.cpu_count() or 1)
        r = training.run(self.repo, data.data_root(self.root), out, 0, self.gpu, threads, path, timeout,
                         lmdb_src=data.lmdb_dir(self.root, 0))
        self.attach("training: tools/run_folds.sh, seed 0, %s" % self.mode, path)
        run = training.extract(out)
        r["run"] = training.strip_predictions(run)
        r["schedule"] = training.SCHEDULE
        ref = load_reference(self.reference_path)
        if ref is None:
            r["comparison"] = {"error": "no CPU reference (%s)" % self.reference_path}
        else:
            r["reference_seconds"] = ref.get("seconds")
            r["comparison"] = training.compare(run, ref["seeds"])
            if not r["comparison"]["agree"] and not r.get("error"):
                r["error"] = "outside the CPU seeds' interval: %s" % ", ".join(r["comparison"]["outside"])
        self.result["training_comparison"] = {"agree": (r["comparison"] or {}).get("agree"),
                                              "seconds": r["seconds"], "reference_seconds": r.get("reference_seconds")}
        return r

    def estimate(self, timeout: float) -> dict:
        shared = (self.result["steps"].get("shared") or {}).get("ms_per_iteration_each")
        est = timing.paper_estimate(self.result.get("ms_per_iteration") or {},
                                    {int(k): v for k, v in shared.items() if v} if shared else None)
        self.result["estimate"] = est
        return dict(est)

    def generator(self, timeout: float) -> dict:
        ms = self.result.get("ms_per_iteration") or {}
        if any(ms.get(m) is None for m in ("encdec", "cnn_id", "generator")):
            return {"error": "no caffe time of encdec, cnn_id and generator"}
        n = (timing.generator_iterations(ms, timeout, GENERATOR_OVERHEAD) if self.mode == "gpu"
             else CPU_GENERATOR_ITERATIONS)
        out = os.path.join(self.root, "results", "generator-%s" % self.mode)
        path = self.sublog("generator")
        sched = dict(models="gcnet_s1r1", batch=timing.PAPER_BATCH, iters=n, pretrain_iters=n, generator_iters=n,
                     display=max(1, n // 20))
        r = training.run(self.repo, data.data_root(self.root), out, 0, self.gpu, min(4, os.cpu_count() or 1),
                         path, timeout, lmdb_src=data.lmdb_dir(self.root, 0), schedule=sched,
                         extra=["--stop-after", "generator"])
        self.attach("generator experiment", path)
        run = training.extract(out, models=())
        r.update(iterations=n, batch=timing.PAPER_BATCH, planned_seconds=round(timeout),
                 generator=run["generator"], nets={k: {"train_seconds": v.get("train_seconds"),
                                                       "last_loss": (v.get("loss") or [None])[-1]}
                                                   for k, v in run["nets"].items()})
        self.result["generator_experiment"] = {k: r.get(k) for k in ("iterations", "batch", "seconds", "generator")}
        return r

    # ------------------------------------------------------------------------------------------ all
    def run(self) -> int:
        self.say("mode %s, budget %ds, results in %s" % (self.mode, self.budget, self.out))
        # reserve: seconds kept for the steps after it (the generator takes what is left)
        self.step("info", self.info)
        self.step("gtests", self.caffe_tests, reserve=200)
        self.step("pycaffe", self.pycaffe_tests, reserve=190)
        self.step("timing", self.time_nets, reserve=150)
        self.step("training", self.train, reserve=40)
        self.step("shared", self.shared, reserve=10)
        self.step("estimate", self.estimate)
        self.step("generator", self.generator, reserve=10)
        return self.finish()

    def finish(self) -> int:
        steps = self.result["steps"]
        g, p = steps.get("gtests") or {}, steps.get("pycaffe") or {}
        self.result["tests"] = {"passed": g.get("passed", 0) + p.get("passed", 0),
                                "failed": g.get("failed", 0) + p.get("failed", 0),
                                "caffe_gtest": {k: g.get(k) for k in ("passed", "failed", "selected")},
                                "pycaffe": {k: p.get(k) for k in ("passed", "failed")}}
        errors = {k: v["error"] for k, v in steps.items() if v.get("error")}
        skipped = [k for k, v in steps.items() if v.get("skipped")]
        self.result["verdict"] = {"ok": not errors and not skipped, "errors": errors, "skipped": skipped}
        self.result["finished"] = now()
        self.save()
        t = self.result["tests"]
        self.say("tests: %d passed, %d failed (Caffe %s/%s, pycaffe %s/%s)" % (
            t["passed"], t["failed"], g.get("passed"), g.get("failed"), p.get("passed"), p.get("failed")))
        for m, v in (self.result.get("ms_per_iteration") or {}).items():
            self.say("  %-11s %8.1f ms/iteration (batch 64)" % (m, v))
        est = self.result.get("estimate") or {}
        if est.get("five_models_hours") is not None:
            self.say("paper schedule: 5 models x 3e5 x 10 folds %.1f h; whole pipeline %.1f h%s" % (
                est["five_models_hours"], est["pipeline_hours"], "; with %d jobs on the GPU %.1f h" % (
                    est["jobs_on_one_gpu"]["best_jobs"], est["jobs_on_one_gpu"]["pipeline_hours"])
                if est.get("jobs_on_one_gpu") else ""))
        tc = self.result.get("training_comparison") or {}
        self.say("training vs CPU seeds: %s" % {True: "agree", False: "DIFFER", None: "not compared"}[tc.get("agree")])
        ge = self.result.get("generator_experiment") or {}
        if ge.get("generator"):
            gg = ge["generator"]
            self.say("generator, %s iterations at batch %s: L_Gen,r %.2f, copy X %.2f, mean reference %.2f" % (
                ge["iterations"], ge["batch"], gg["l_gen_r"], gg["baseline_copy_x"], gg["baseline_mean_reference"]))
        self.say("verdict: %s%s" % ("OK" if self.result["verdict"]["ok"] else "NOT OK",
                                    "" if self.result["verdict"]["ok"] else " " + json.dumps(
                                        {"errors": errors, "skipped": skipped})))
        self.say("wrote %s and %s" % (os.path.join(self.out, "gpu_check.json"), self.log_path))
        return 0 if self.result["verdict"]["ok"] else 1


def _known_failures(path: str):
    """The test-name patterns of tools/caffe_known_failures.txt (first word of each line; '#' comments)."""
    with open(path) as f:
        return [l.split()[0] for l in (x.split("#")[0] for x in f) if l.strip()]


def load_reference(path: Optional[str]) -> Optional[dict]:
    """The committed CPU runs (reference()), seeds as ints."""
    ref = read_json(path, None) if path else None
    if ref:
        ref["seeds"] = {int(k): v for k, v in ref["seeds"].items()}
    return ref


def reference(repo: str, root: str, out_json: str, seeds, threads: int) -> int:
    """The CPU runs of the check's schedule, one per seed, here (tools/env.sh's build), -> out_json."""
    data.prepare(root, repo, seeds=seeds, threads=threads)
    res: Dict[str, object] = {"schema": SCHEMA, "created": now(), "schedule": training.SCHEDULE,
                              "dataset": {"subjects": training.SUBJECTS, "fold": training.FOLD,
                                          "data_root": data.data_root(root)},
                              "environment": {"caffe_build": os.environ.get("CAFFE_BUILD"),
                                              "caffe_root": os.path.basename(os.environ.get("CAFFE_ROOT", "")),
                                              "python": platform.python_version(), "cores": os.cpu_count(),
                                              "threads": threads},
                              "seeds": {}, "seconds": {}}
    for seed in seeds:
        out = os.path.join(root, "reference", "seed_%d" % seed)
        log = os.path.join(root, "reference", "seed_%d.log" % seed)
        os.makedirs(os.path.dirname(log), exist_ok=True)
        print("[gpu_check reference] seed %d on the CPU -> %s (log %s)" % (seed, out, log), flush=True)
        r = training.run(repo, data.data_root(root), out, seed, None, threads, log, 24 * 3600,
                         lmdb_src=data.lmdb_dir(root, seed))
        if r["error"]:
            print("error: seed %d: %s" % (seed, r["error"]), file=sys.stderr)
            return 1
        res["seeds"][str(seed)] = training.extract(out)
        res["seconds"][str(seed)] = r["seconds"]
        write_json(out_json, res)
    print("[gpu_check reference] wrote %s" % out_json, flush=True)
    return 0

"""python -m gcnet.gpucheck: the commands behind tools/gpu_check.sh and tools/gpu_bundle.sh (see their --help).

  run        the check (--mode gpu on the GPU machine, cpu in the rehearsal), in the bundle's environment
  reference  the CPU runs of the check's training schedule (here, tools/env.sh's build) -> cpu_reference.json
  data       the synthetic set and the seed LMDBs under the check's root (here; needs OpenCV)
  hollow     copy a data tree with every image replaced by a same-size placeholder (the bundle's data)
  cases      print the gtest cases of the layers our nets use (tools/setup.sh --runtest-cases)
Exit status: 0 ok, 1 a check failed or a run failed, 2 bad usage.
"""
import argparse
import os
import sys

from gcnet.util import UsageError, parse_folds

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _seeds(text: str):
    seeds = parse_folds(text)
    if len(seeds) < 2:
        raise UsageError("--seeds needs at least 2 seeds (the comparison's spread), got %s" % text)
    return seeds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gcnet.gpucheck", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    r.add_argument("--out", required=True, help="folder of gpu_check.json and gpu_check.log")
    r.add_argument("--budget", type=float, default=360.0, help="seconds for the whole check (default 360)")
    r.add_argument("--root", help="the check's root (default $GCNET_GPU_ROOT or /tmp/gcnet-gpu)")
    r.add_argument("--reference", default=os.path.join(REPO, "gpu_check", "cpu_reference.json"))
    r.add_argument("--steps", help="comma list of steps to run (default all: %s)" % ",".join(
        ("info", "gtests", "pycaffe", "timing", "training", "shared", "estimate", "generator")))
    f = sub.add_parser("reference")
    f.add_argument("--out", default=os.path.join(REPO, "gpu_check", "cpu_reference.json"))
    f.add_argument("--seeds", default="0-2")
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--root")
    d = sub.add_parser("data")
    d.add_argument("--root")
    d.add_argument("--threads", type=int, default=1)
    h = sub.add_parser("hollow")
    h.add_argument("src")
    h.add_argument("dst")
    sub.add_parser("cases")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "cases":            # (numpy-free: tools/gpu_bundle.sh asks before the venv exists)
            from gcnet.gpucheck import gtests
            types = gtests.net_layer_types(os.path.join(REPO, "prototxt"))
            print(" ".join(dict.fromkeys(c for c, _ in gtests.test_cases(types))))
            return 0
        from gcnet.gpucheck import check, data
        if a.cmd == "run":
            if not a.budget > 0:
                raise UsageError("--budget must be > 0, got %s" % a.budget)
            if not os.environ.get("GCNET_BUNDLE"):
                raise UsageError("GCNET_BUNDLE is not set: run the check through tools/gpu_check.sh")
            steps = None
            if a.steps is not None:
                steps = [x.strip() for x in a.steps.split(",") if x.strip()]
                bad = [x for x in steps if x not in check.STEPS]
                if bad or not steps:
                    raise UsageError("--steps: unknown or no step(s) %s; choose from %s" % (
                        ",".join(bad), ",".join(check.STEPS)))
            root = data.check_root(a.root)
            return check.Check(REPO, root, os.path.abspath(a.out), a.mode, a.budget, a.reference, steps).run()
        if a.cmd in ("reference", "data") and a.threads < 1:
            raise UsageError("--threads must be >= 1, got %d" % a.threads)
        if a.cmd == "reference":
            return check.reference(REPO, data.check_root(a.root), os.path.abspath(a.out), _seeds(a.seeds), a.threads)
        if a.cmd == "data":
            data.prepare(data.check_root(a.root), REPO, threads=a.threads)
            return 0
        if not os.path.isdir(a.src):
            raise UsageError("no folder %s" % a.src)
        print(data.hollow_copy(a.src, a.dst))
        return 0
    except UsageError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

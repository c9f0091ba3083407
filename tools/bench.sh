#!/usr/bin/env bash
# Forward/backward time per iteration of every train_val net with `caffe time` (the figures of BENCHMARKS.md).
#
#   tools/bench.sh [--batch 64] [--iterations 10] [--models cnn,gcnet_s1r1] [--gpu ID]
#                  [--builds PREFIX[,PREFIX...]] [--fused-unpool on|off[,...]] [--repeats R] [--profile]
#
# Sources tools/env.sh, then runs tools/bench.py (its --help explains every option): one line per model (and
# build) with the median over the repeats of Caffe's own "Average Forward-Backward" figure; --builds compares
# installed builds interleaved in one run; --profile adds per-layer-type shares and GFLOP/s beside an sgemm rate.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in -h|--help) sed -n 2,9p "$0"; exit 0 ;; esac
[ -f "$REPO/tools/env.sh" ] || { echo "bench: run tools/setup.sh first" >&2; exit 2; }
# shellcheck disable=SC1091
source "$REPO/tools/env.sh"
exec python "$REPO/tools/bench.py" "$@"

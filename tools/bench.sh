#!/usr/bin/env bash
# Forward/backward time per iteration of every train_val net with `caffe time` (the figures of BENCHMARKS.md).
#
#   tools/bench.sh [--batch 64] [--iterations 10] [--models cnn,gcnet_s1r1] [--gpu ID]
#
# The nets are generated from gcnet/nets.py with the given batch and read a random LMDB of 2x66x66 Datums (the
# format of the real pipeline), written to a temporary folder. Prints one line per model: median ms per
# forward-backward over the iterations (Caffe's own "Average Forward-Backward" figure).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -f "$REPO/tools/env.sh" ] || { echo "bench: run tools/setup.sh first" >&2; exit 2; }
# shellcheck disable=SC1091
source "$REPO/tools/env.sh"
BATCH=64; ITERS=10; MODELS="encdec,cnn_id,cnn,gcnet_s0r0,gcnet_s1r0,gcnet_s0r1,gcnet_s1r1"; GPU=""
while [ $# -gt 0 ]; do
  case "$1" in
    --batch) BATCH="$2"; shift ;;
    --iterations) ITERS="$2"; shift ;;
    --models) MODELS="$2"; shift ;;
    --gpu) GPU="$2"; shift ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "bench: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
python - "$TMP/lmdb" "$BATCH" <<'EOF'
import sys, lmdb, numpy as np
from caffe.proto import caffe_pb2
import os
path, n = sys.argv[1], 2 * int(sys.argv[2])
os.makedirs(path)
rng = np.random.RandomState(0)
for sub in ("train", "test", "pretrain"):
    env = lmdb.open("%s/%s" % (path, sub), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for i in range(n):
            d = caffe_pb2.Datum(channels=2, height=66, width=66, label=i % 7,
                                data=rng.randint(0, 256, (2, 66, 66), dtype=np.uint8).tobytes())
            txn.put(b"%08d" % i, d.SerializeToString())
    env.close()
EOF
python "$REPO/tools/make_prototxt.py" --out "$TMP/nets" --models "$MODELS" --batch "$BATCH" --data-root "$TMP/lmdb" >/dev/null
echo "caffe time, batch $BATCH, $ITERS iterations, build ${CAFFE_BUILD}, OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-default}"
printf '%-12s %14s %14s %14s\n' model "fwd+bwd ms" "forward ms" "backward ms"
for m in ${MODELS//,/ }; do
  log="$TMP/$m.log"
  GLOG_minloglevel=0 GLOG_logtostderr=1 caffe time -model "$TMP/nets/$m/train_val.prototxt" -iterations "$ITERS" \
    ${GPU:+-gpu "$GPU"} >"$log" 2>&1 || { tail -5 "$log" >&2; echo "bench: caffe time failed for $m" >&2; exit 1; }
  fb=$(sed -n 's/.*Average Forward-Backward: \([0-9.]*\) ms.*/\1/p' "$log")
  f=$(sed -n 's/.*Average Forward pass: \([0-9.]*\) ms.*/\1/p' "$log")
  b=$(sed -n 's/.*Average Backward pass: \([0-9.]*\) ms.*/\1/p' "$log")
  printf '%-12s %14s %14s %14s\n' "$m" "$fb" "$f" "$b"
done

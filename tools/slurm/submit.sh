#!/usr/bin/env bash
# Submit all stages of one dataset to Slurm as dependent jobs:
#   tools/slurm/submit.sh <dataset> [tools/run_folds.sh options]     e.g.
#   tools/slurm/submit.sh ck+ --data /data/CK+ --out /scratch/gcnet/results
#
#   1 prep      one job: the per-fold LMDBs
#   2 pretrain  array, one task per fold: encdec + cnn_id
#   3 train     array, one task per (model, fold): surgery, caffe train, test
#   4 collect   summary.{md,json} + figures, after the array (also when some tasks failed)
# Extra sbatch options (partition, account, time...) via SBATCH_* environment variables, e.g.
#   SBATCH_PARTITION=gpu SBATCH_ACCOUNT=myproj SBATCH_TIMELIMIT=48:00:00 tools/slurm/submit.sh ck+ --data ...
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[[ $# -ge 1 ]] || { sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 2; }
if [[ ! -f "$REPO/tools/env.sh" ]]; then
  echo "submit.sh: $REPO/tools/env.sh is missing: run tools/setup.sh first" >&2; exit 2
fi
# shellcheck disable=SC1091
source "$REPO/tools/env.sh"
export GCNET_ROOT="$REPO"
# validates the options (exit 2 with a message) and sizes the arrays
N_FOLDS=$(python -m gcnet.runner "$@" --stop-after pretrain --count-tasks)
N_TASKS=$(python -m gcnet.runner "$@" --count-tasks)
S="$REPO/tools/slurm"
cd "$REPO"
prep=$(sbatch --parsable --export=ALL --gres=none "$S/run_folds.sbatch" prep "$@")
pre=$(sbatch --parsable --export=ALL --dependency="afterok:$prep" --array="0-$((N_FOLDS - 1))" \
      "$S/run_folds.sbatch" pretrain "$@")
train=$(sbatch --parsable --export=ALL --dependency="afterok:$pre" --array="0-$((N_TASKS - 1))" \
        "$S/run_folds.sbatch" train "$@")
col=$(sbatch --parsable --export=ALL --dependency="afterany:$train" "$S/collect.sh" "$@")
echo "submitted: prep $prep, pretrain $pre (${N_FOLDS} tasks), train $train (${N_TASKS} tasks), collect $col"

#!/usr/bin/env bash
# Submit all stages of one dataset to Slurm as dependent jobs:
#   tools/slurm/submit.sh <dataset> [tools/run_folds.sh options] [Slurm resources]
#   tools/slurm/submit.sh ck+ --data /data/CK+ --out /scratch/gcnet/results --gpu 0 --cpus-per-task 4 --mem 16G
#
#   1 prep      one job: the per-fold LMDBs
#   2 pretrain  array, one task per fold: encdec + cnn_id (a shared WebFace one once), then the fold's generator stage
#   3 train     array, one task per (model, fold): surgery, caffe train, test
#   4 collect   summary.{md,json} + figures, after the array (also when some tasks failed)
#
# Slurm resources (passed to sbatch as its own flags; every job gets the same CPUs and memory):
#   --cpus-per-task N   CPUs of each job (default 2)
#   --mem SIZE          memory of each job, sbatch syntax: 4G, 16000M, 0 = all of the node (default 4G)
#   --time T            time limit of the prep, pretrain and train jobs (default 24:00:00, collect 1:00:00);
#                       Slurm sends SIGTERM 10 minutes before it and the task snapshots and requeues itself
#   --gpu ...           (a run option) any GPU id asks for one GPU per pretrain/train task (--gres=gpu:1);
#                       without it, or with --gpu cpu (the default), no GPU is requested
# Job logs: <out>/<dataset>/slurm/<step>-<job>[_<task>].out.  Other sbatch options (partition, account...)
# through sbatch's SBATCH_* variables, e.g. SBATCH_PARTITION=gpu SBATCH_ACCOUNT=myproj tools/slurm/submit.sh ...
# If an sbatch fails, the jobs already submitted are cancelled and the failing step is named (exit 1);
# bad options exit 2.
set -euo pipefail
PROG="submit.sh"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
S="$REPO/tools/slurm"
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; }
die() { echo "$PROG: $1" >&2; exit "${2:-2}"; }

CPUS=2 MEM=4G TIME="" RUN_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --cpus-per-task|--mem|--time)
      [[ $# -ge 2 && -n "$2" && "$2" != -* ]] || die "$1 needs a value"
      case "$1" in --cpus-per-task) CPUS=$2 ;; --mem) MEM=$2 ;; --time) TIME=$2 ;; esac
      shift 2 ;;
    --cpus-per-task=*) CPUS=${1#*=}; shift ;;
    --mem=*) MEM=${1#*=}; shift ;;
    --time=*) TIME=${1#*=}; shift ;;
    *) RUN_ARGS+=("$1"); shift ;;
  esac
done
[[ ${#RUN_ARGS[@]} -ge 1 ]] || { usage >&2; exit 2; }
[[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "--cpus-per-task must be a positive number, not '$CPUS'"
[[ "$MEM" =~ ^[0-9]+[KMGT]?$ ]] || die "--mem must be a size like 4G or 16000M (0 = all of the node), not '$MEM'"
[[ -z "$TIME" || "$TIME" =~ ^[0-9:-]+$ ]] || die "--time must be a Slurm time like 24:00:00 or 2-00:00:00, not '$TIME'"
command -v sbatch >/dev/null 2>&1 || die "sbatch is not on PATH: run this on a Slurm login node"
[[ -f "$REPO/tools/env.sh" ]] || die "$REPO/tools/env.sh is missing: run tools/setup.sh first"
# shellcheck disable=SC1091
source "$REPO/tools/env.sh"
export GCNET_ROOT="$REPO"

# the runner's own parser validates the options (one-line error, exit 2) and sizes the arrays
PLAN=$(python - "${RUN_ARGS[@]}" <<'EOF'
import sys
from gcnet.experiment import cli
from gcnet.util import UsageError
try:
    s = cli.settings_from(sys.argv[1:])
except UsageError as e:
    sys.exit("submit.sh: %s" % e)
print(len(s.folds), len(s.folds) * len(s.models), "gpu" if s.gpus else "cpu", s.layout.slurm_logs)
EOF
) || exit 2
read -r N_FOLDS N_TASKS DEVICE LOGS <<<"$PLAN"
mkdir -p "$LOGS" || die "cannot create the log folder $LOGS"

COMMON=(--parsable --export=ALL --cpus-per-task="$CPUS" --mem="$MEM")
TASK=("${COMMON[@]}")
[[ -n "$TIME" ]] && TASK+=(--time="$TIME")
GPU=()
[[ "$DEVICE" == gpu ]] && GPU=(--gres=gpu:1)

SUBMITTED=()
submit() {  # submit STEP sbatch-arguments...: prints the job id; on failure cancels what was submitted
  local step=$1 out rc; shift
  set +e
  out=$(sbatch "$@" 2>&1); rc=$?
  set -e
  local id=${out%%;*}
  if [[ $rc -ne 0 || ! "$id" =~ ^[0-9]+$ ]]; then
    local msg
    msg=$(printf '%s' "$out" | tr '\n' ' ' | sed 's/ *$//')
    if [[ ${#SUBMITTED[@]} -gt 0 ]]; then
      scancel "${SUBMITTED[@]%%:*}" 2>/dev/null || true
      msg="$msg; cancelled the jobs already submitted (${SUBMITTED[*]})"
    fi
    echo "$PROG: sbatch of the $step step failed: $msg" >&2
    exit 1
  fi
  SUBMITTED+=("$id:$step")
  LAST=$id
}

submit prep "${TASK[@]}" --job-name=gcnet-prep --output="$LOGS/prep-%j.out" \
  "$S/run_folds.sbatch" prep "${RUN_ARGS[@]}"
prep=$LAST
submit pretrain "${TASK[@]}" "${GPU[@]}" --job-name=gcnet-pretrain --output="$LOGS/pretrain-%A_%a.out" \
  --dependency="afterok:$prep" --array="0-$((N_FOLDS - 1))" "$S/run_folds.sbatch" pretrain "${RUN_ARGS[@]}"
pre=$LAST
submit train "${TASK[@]}" "${GPU[@]}" --job-name=gcnet-train --output="$LOGS/train-%A_%a.out" \
  --dependency="afterok:$pre" --array="0-$((N_TASKS - 1))" "$S/run_folds.sbatch" train "${RUN_ARGS[@]}"
train=$LAST
submit collect "${COMMON[@]}" --job-name=gcnet-collect --output="$LOGS/collect-%j.out" \
  --dependency="afterany:$train" "$S/collect.sh" "${RUN_ARGS[@]}"
col=$LAST
echo "submitted: prep $prep, pretrain $pre (${N_FOLDS} tasks), train $train (${N_TASKS} tasks), collect $col;" \
     "${CPUS} CPUs, ${MEM} memory${GPU:+, 1 GPU} per job; logs in $LOGS"

#!/bin/bash
# Summary (+ figures) of a dataset from what the array tasks left on disk:
#   sbatch tools/slurm/collect.sh <dataset> [the same options as the tasks, e.g. --out DIR --models ... --folds ...]
# or directly (no Slurm):  tools/slurm/collect.sh <dataset> [options]
#SBATCH --job-name=gcnet-collect
#SBATCH --time=01:00:00
set -uo pipefail
REPO="${GCNET_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}}"
if [[ ! -f "$REPO/tools/env.sh" ]]; then
  echo "collect.sh: $REPO/tools/env.sh is missing (run tools/setup.sh; set GCNET_ROOT to the checkout)" >&2
  exit 2
fi
# shellcheck disable=SC1091
source "$REPO/tools/env.sh"
# no cd: the job runs where it was submitted, so relative --data/--out paths keep their meaning
exec python -m gcnet.experiment "$@" --collect

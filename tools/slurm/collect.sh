#!/bin/bash
# Summary (+ figures) of a dataset from what the array tasks left on disk:
#   sbatch tools/slurm/collect.sh <dataset> [the same options as the tasks, e.g. --out DIR --models ... --folds ...]
# or directly (no Slurm):  tools/slurm/collect.sh <dataset> [options]
#SBATCH --job-name=gcnet-collect
#SBATCH --output=gcnet-%x-%j.out
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=01:00:00
set -uo pipefail
REPO="${GCNET_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}}"
if [[ ! -f "$REPO/tools/env.sh" ]]; then
  echo "collect.sh: $REPO/tools/env.sh is missing (run tools/setup.sh; set GCNET_ROOT to the checkout)" >&2
  exit 2
fi
# shellcheck disable=SC1091
source "$REPO/tools/env.sh"
cd "$REPO" || exit 2
exec python -m gcnet.runner "$@" --collect

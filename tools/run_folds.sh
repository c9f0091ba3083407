#!/usr/bin/env bash
# Run the GCNet experiments of one dataset (all stages, cached and resumable): see `tools/run_folds.sh --help`
# and gcnet/experiment/.   tools/run_folds.sh <ck+|ck+8|mmi|oulu|synthetic> [--data ROOT] [options]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_SH="$REPO/tools/env.sh"
if [[ ! -f "$ENV_SH" ]]; then
  for a in "$@"; do
    if [[ "$a" == "-h" || "$a" == "--help" ]]; then      # the help works before the setup
      PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m gcnet.experiment --help
    fi
  done
  echo "run_folds.sh: $ENV_SH is missing: build Caffe and the Python environment first with tools/setup.sh" >&2
  exit 2
fi
# shellcheck disable=SC1090
source "$ENV_SH"
exec python -m gcnet.experiment "$@"

"""Compatibility: `python -m gcnet.runner ...` is `python -m gcnet.experiment ...` (tools/run_folds.sh)."""
import sys

from gcnet.experiment.cli import main
from gcnet.experiment.evaluate import evaluate  # noqa: F401  (old import path of the test stage)

if __name__ == "__main__":
    sys.exit(main())

"""python -m gcnet.experiment: the command line of tools/run_folds.sh."""
import sys

from gcnet.experiment.cli import main

sys.exit(main())

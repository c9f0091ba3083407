"""The experiment runner behind tools/run_folds.sh (docs/ARCHITECTURE.md, "Experiment runner")."""

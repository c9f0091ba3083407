"""The GPU path checked: what tools/gpu_check.sh runs on a GPU machine (and rehearses on a CPU build), and the data
and CPU reference that tools/gpu_bundle.sh / gpu_check.sh --reference make here (README, "GPU builds")."""

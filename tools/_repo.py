"""Puts the repository root first on sys.path, so that a tool run as `tools/X.py` (or `python tools/X.py`) imports
this tree's gcnet package.  Every tool imports it first (`from _repo import REPO`): the one place that edits
sys.path."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[:1] != [REPO]:
    sys.path.insert(0, REPO)

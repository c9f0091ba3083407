"""Subject-independent folds (paper section 4.2: "individuals are grouped by sampling in ID ascending order with ten
even intervals"): the subjects with at least one usable labelled sample are sorted by ID ascending (digit runs
compared as numbers, so S5 < S10 and S005 < S010 alike) and the subject of rank i goes to fold i mod n_folds.
"""
import json
from typing import Dict, Iterable, List

from gcnet.data.records import DataError, natural_key
from gcnet.util import write_json

RULE = "subjects with >= 1 usable labelled sample, sorted by ID ascending (natural order); rank i -> fold i mod n"


def assign_folds(subjects: Iterable[str], n_folds: int = 10) -> Dict[str, int]:
    if n_folds < 2:
        raise DataError("need at least 2 folds, got %d" % n_folds)
    subs = sorted(set(subjects), key=lambda s: (natural_key(s), s))
    if len(subs) < n_folds:
        raise DataError("only %d subject(s) with usable samples; %d folds need at least %d"
                        % (len(subs), n_folds, n_folds))
    return {s: i % n_folds for i, s in enumerate(subs)}


def fold_subjects(folds: Dict[str, int], k: int) -> List[str]:
    return sorted((s for s, f in folds.items() if f == k), key=natural_key)


def write_folds(path: str, folds: Dict[str, int], n_folds: int, **extra) -> None:
    data = {"n_folds": n_folds, "rule": RULE,
            "folds": {s: folds[s] for s in sorted(folds, key=natural_key)},
            "subjects_by_fold": {str(k): fold_subjects(folds, k) for k in range(n_folds)}}
    data.update(extra)
    write_json(path, data)


def read_folds(path: str) -> Dict[str, int]:
    try:
        with open(path) as f:
            data = json.load(f)
        return {str(s): int(k) for s, k in data["folds"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError("cannot read folds file %s: %s" % (path, e))

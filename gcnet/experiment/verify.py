"""Outputs of a finished stage verified when they are reused (as the LMDBs are by gcnet.data.lmdb_build): each
.caffemodel a stage writes has its sha256 recorded in stage.json (and final.caffemodel's in meta.json, which
gcnet.inference checks on every load); a file whose bytes differ from the record, or that does not parse when
there is no record, is removed with a line saying so, and the stage that wrote it runs again.  The temporary
files of writes cut short (a kill, a full disk) are removed at the next start."""
import os
import time
from pathlib import Path
from typing import Dict, List, Optional

from gcnet.caffe_io import WeightsError, load_net_param
from gcnet.layout import FINAL, META, SURGERY_REPORT
from gcnet.util import read_json, say, sha256_file, write_json

# what is removed with a damaged file, so that its stage runs again
REDO_WITH = {"init.caffemodel": (SURGERY_REPORT,)}


def weights_problem(path, sha: Optional[str] = None) -> Optional[str]:
    """None when the .caffemodel at `path` is whole: its sha256 is `sha` (when recorded), else it parses as a
    NetParameter with weights; otherwise what is wrong with it."""
    path = Path(path)
    if sha:
        try:
            return None if sha256_file(path) == sha else "its sha256 differs from the one recorded when it was written"
        except OSError as e:
            return "cannot be read (%s)" % (e.strerror or e)
    try:
        load_net_param(path)
    except WeightsError as e:
        return str(e).replace(str(path) + " ", "", 1)
    return None


def remove_damaged(d: Path, recorded: Dict[str, str], names, label: str) -> List[str]:
    """Remove each of the files `names` of folder `d` that exists and is damaged (weights_problem against its
    `recorded` sha256), with what goes with it (REDO_WITH); says so; -> the names removed."""
    removed = []
    for name in names:
        p = Path(d) / name
        if not p.exists():
            continue
        why = weights_problem(p, recorded.get(name))
        if why is None:
            continue
        say("%s %s is damaged (%s): removed, its stage runs again" % (label, p, why))
        for q in (name,) + REDO_WITH.get(name, ()):
            try:
                (Path(d) / q).unlink()
            except FileNotFoundError:
                pass
        removed.append(name)
    return removed


def record_output(state: dict, d: Path, name: str) -> None:
    """state["outputs_sha256"][name] = sha256 of d/name (the record remove_damaged checks)."""
    state.setdefault("outputs_sha256", {})[name] = sha256_file(Path(d) / name)


def record_final_in_meta(state: dict, d: Path) -> None:
    """meta.json says which weights the folder holds: "weights" (the file) and "weights_sha256" (as recorded in
    `state`), checked by every load (gcnet.inference.check_recorded_weights)."""
    sha = (state.get("outputs_sha256") or {}).get(FINAL) or sha256_file(Path(d) / FINAL)
    meta = read_json(Path(d) / META)
    if isinstance(meta, dict) and (meta.get("weights"), meta.get("weights_sha256")) != (FINAL, sha):
        write_json(Path(d) / META, dict(meta, weights=FINAL, weights_sha256=sha))


def remove_leftovers(d: Path, label: str, min_age: float = 0.0) -> List[str]:
    """Remove the temporary files that interrupted writes left in folder `d` (not its sub-folders): gcnet.util's
    `*.partial<pid>.<thread>` and the `*.tmp` of older versions; those modified less than `min_age` seconds ago
    are kept (in a folder shared by concurrent runners, another one may be writing them).  -> the removed."""
    removed = []
    try:
        names = sorted(os.listdir(str(d)))
    except OSError:
        return removed
    now = time.time()
    for n in names:
        p = os.path.join(str(d), n)
        if not (".partial" in n or n.endswith(".caffemodel.tmp")) or not os.path.isfile(p):
            continue
        try:
            if now - os.path.getmtime(p) >= min_age:
                os.remove(p)
                removed.append(p)
                say("%s removed %s (left by an interrupted write)" % (label, p))
        except OSError:
            pass
    return removed

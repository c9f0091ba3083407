"""The one stage-cache scheme: a stage is skipped when the key of its inputs equals the key recorded with its
outputs and those outputs exist.  key = sha256 of a version tag and the inputs (prototxts with <out> replaced,
data fingerprint, weights' sha256, options).  Records: stage.json ("hash"; "bnstats": {"hash"}) of a job folder,
test.json ("inputs_hash"), figures/inputs.json ("hash").  The keys are those of the former gcnet/runner.py (its
prototxt header included): results made before the split stay valid.
"""
import hashlib
import os
from pathlib import Path
from typing import Iterable, Optional

from gcnet.config import has_generator
from gcnet.experiment.plan import Context, Job, portable
from gcnet.layout import FINAL, META, REMOVAL, STAGE, TEST, TRAIN_LOG, TRAINED
from gcnet.util import read_json, sha256_file, sha_text


def fresh(record: Optional[dict], key: str, outputs: Iterable = (), field: str = "hash") -> bool:
    return bool(record) and record.get(field) == key and all(Path(p).exists() for p in outputs)


def read_state(d: Path) -> dict:
    """The stage.json of a job folder ({} when none)."""
    return read_json(Path(d) / STAGE, {}) or {}


# ----------------------------------------------------------------------------------------------- stage keys
def _without_intervals(solver: str) -> str:
    """Solver text without display/snapshot: how often caffe logs and snapshots does not change the weights."""
    return "\n".join(line for line in solver.splitlines() if not line.startswith(("display:", "snapshot:")))


def pretrain_keys(ctx: Context, job: Job, fingerprint: str):
    """(key, legacy key) of a pretraining: the legacy key (the former runner.py) also hashed display and snapshot, so that a
    new --iters retrained the pretraining nets; a result recorded under it is still accepted."""
    tv, sv = portable(job.texts["train_val"], ctx), job.texts["solver"]
    # encdec's final weights: BatchNorm statistics and output Scale fitted on bn_samples of its data
    extra = (ctx.s.bn_samples, ctx.s.batch) if job.model == "encdec" and ctx.s.fit_output_scale else ()
    return (sha_text("pretrain-v2", tv, _without_intervals(sv), fingerprint, *extra),
            sha_text("pretrain-v1", tv, sv, fingerprint, *extra))


def train_key(ctx: Context, job: Job, fingerprint: str, init_sha: dict) -> str:
    """surgery + caffe train: nets, solver, data, the pretrained weights and the BatchNorm choice of surgery."""
    return sha_text("model-v2", portable(job.texts["train_val"], ctx), job.texts["solver"], fingerprint, init_sha,
                    ctx.s.surgery_bn_stats)


def generator_key(ctx: Context, job: Job, fingerprint: str, encdec_sha: str) -> str:
    """The generator stage: its nets and solver, the fold's data, encdec's weights, the re-estimation's samples."""
    return sha_text("generator-v1", portable(job.texts["train_val"], ctx), job.texts["solver"], fingerprint,
                    encdec_sha, ctx.s.bn_samples, ctx.s.batch)


def bnstats_key(ctx: Context, job: Job, fingerprint: str) -> str:
    s = ctx.s
    return sha_text("bnstats-v1", sha256_file(job.dir / TRAINED), s.recalibrate_bn, s.bn_samples, s.batch,
                    fingerprint)


def test_key(ctx: Context, job: Job, fingerprint: str) -> str:
    s = ctx.s
    parts = [portable(job.texts["deploy"], ctx), portable(job.texts["train_val"], ctx), sha256_file(job.dir / FINAL),
             fingerprint, s.bn_samples, s.batch, portable(job.texts.get("deploy_ref", ""), ctx)]
    if "encdec" in job.pretrained and has_generator(job.model):       # the blurred-copy baseline's autoencoder
        parts.append(sha256_file(job.pretrained["encdec"] / FINAL))
    return sha_text("test-v5", *parts)


def figures_key(root: Path) -> str:
    """What the figures are made from: logs, weights, test results and expression removal (size + mtime; the summary
    that the mechanism figure reads is derived from them), and the figure code."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.name in (TEST, TRAIN_LOG, FINAL, META, REMOVAL) and "figures" not in p.parts:
            st = p.stat()
            h.update(("%s %d %d\n" % (p.relative_to(root), st.st_size, st.st_mtime_ns)).encode())
    code = Path(__file__).resolve().parents[1] / "figures"
    for f in sorted(code.rglob("*.py")) if code.is_dir() else [code.with_suffix(".py")]:
        h.update(f.read_bytes())
    return h.hexdigest()


def figures_fresh(stamp: Path, key: str) -> bool:
    done = read_json(stamp, {}) or {}
    return fresh(done, key) and bool(done.get("files")) and all(os.path.exists(f) for f in done["files"])

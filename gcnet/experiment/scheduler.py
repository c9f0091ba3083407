"""Jobs side by side: a pool of --jobs threads, each job on its own GPU (round robin) or the CPU."""
import concurrent.futures as cf
import queue
import time
from typing import Callable, List

from gcnet.experiment.cache import read_state
from gcnet.experiment.plan import Context, Job
from gcnet.experiment.procs import Interrupted, JobError
from gcnet.layout import TRAIN_LOG
from gcnet.logparse import last_lines
from gcnet.util import NO_SPACE, UsageError, os_error_line, say


def run_jobs(ctx: Context, jobs: List[Job], fn: Callable[[Context, Job], None]) -> None:
    """fn(ctx, job) for each job; a failing job is recorded (status, error, log tail) and the others go on."""
    s = ctx.s
    gq: "queue.Queue" = queue.Queue()
    if s.gpus:
        for i in range(s.jobs):
            gq.put(s.gpus[i % len(s.gpus)])

    def work(job: Job):
        if ctx.sup.stop.is_set():
            job.status = "skipped"
            return
        job.gpu = gq.get() if s.gpus else None
        t0 = time.time()
        try:
            fn(ctx, job)
        except Interrupted:
            job.status = "interrupted"
        except (JobError, UsageError) as e:
            job.status, job.error = "failed", str(e)
        except OSError as e:    # a full disk: one line naming the path
            job.status, job.error = "failed", os_error_line(e, job.dir) if e.errno in NO_SPACE else \
                "%s: %s" % (type(e).__name__, e)
        except Exception as e:  # anything else: report, keep the other folds going
            job.status, job.error = "failed", "%s: %s" % (type(e).__name__, e)
        finally:
            job.seconds = time.time() - t0
            if s.gpus:
                gq.put(job.gpu)
        if job.status == "failed":
            job.log_tail = read_state(job.dir).get("log_tail") or last_lines(str(job.dir / TRAIN_LOG), 10)
            say("%s FAILED: %s" % (job.label, job.error))
            for line in job.log_tail[-5:]:
                say("    | " + line)
        elif job.status == "interrupted":
            say("%s interrupted" % job.label)

    with ctx.sup.running_jobs():
        with cf.ThreadPoolExecutor(max_workers=s.jobs) as ex:
            pending = {ex.submit(work, j) for j in jobs}
            while pending:
                done, pending = cf.wait(pending, timeout=0.5)
                for f in done:
                    f.result()

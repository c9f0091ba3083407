"""gcnet.logparse on a log in the exact formats of Caffe 1.0 (solver.cpp, sgd_solver.cpp, tools/caffe.cpp)."""
import math

from gcnet.logparse import LogParser, last_lines, parse_log, train_series
from gcnet.logparse import test_series as _test_series

SAMPLE = """\
I0412 13:45:10.000100  4242 caffe.cpp:204] Using CPU.
I0412 13:45:10.000200  4242 solver.cpp:45] Initializing solver from parameters:
test_iter: 2
test_interval: 20
base_lr: 0.001
display: 10
max_iter: 40
lr_policy: "inv"
I0412 13:45:11.100000  4242 caffe.cpp:239] Starting Optimization
I0412 13:45:11.100100  4242 solver.cpp:293] Solving gcnet_s1r1
I0412 13:45:11.100200  4242 solver.cpp:294] Learning Rate Policy: inv
I0412 13:45:11.200000  4242 solver.cpp:351] Iteration 0, Testing net (#0)
I0412 13:45:11.900000  4242 solver.cpp:418]     Test net output #0: accuracy = 0.142857
I0412 13:45:11.900100  4242 solver.cpp:418]     Test net output #1: loss_cls = 1.9459 (* 1 = 1.9459 loss)
I0412 13:45:12.500000  4242 solver.cpp:239] Iteration 0 (0 iter/s, 1.3s/10 iters), loss = 2.41
I0412 13:45:12.500100  4242 solver.cpp:258]     Train net output #0: loss_cls = 1.9459 (* 1 = 1.9459 loss)
I0412 13:45:12.500200  4242 solver.cpp:258]     Train net output #1: loss_contr = 0.3 (* 1 = 0.3 loss)
I0412 13:45:12.500300  4242 solver.cpp:258]     Train net output #2: loss_gen_r = 0.1 (* 1 = 0.1 loss)
I0412 13:45:12.500400  4242 solver.cpp:258]     Train net output #3: loss_rec_i = 0.12 (* 0.25 = 0.03 loss)
I0412 13:45:12.500500  4242 solver.cpp:258]     Train net output #4: loss_rec_r = 0.14 (* 0.25 = 0.035 loss)
I0412 13:45:12.500600  4242 sgd_solver.cpp:112] Iteration 0, lr = 0.001
I0412 13:45:14.500000  4242 solver.cpp:239] Iteration 10 (5 iter/s, 2s/10 iters), loss = 2.2
I0412 13:45:14.500100  4242 solver.cpp:258]     Train net output #0: loss_cls = 1.7 (* 1 = 1.7 loss)
I0412 13:45:14.500200  4242 solver.cpp:258]     Train net output #1: loss_contr = nan (* 1 = nan loss)
I0412 13:45:14.500600  4242 sgd_solver.cpp:112] Iteration 10, lr = 0.000999251
I0412 13:45:16.500000  4242 solver.cpp:468] Snapshotting to binary proto file snapshots/gcnet_s1r1_iter_20.caffemodel
I0412 13:45:16.600000  4242 sgd_solver.cpp:284] Snapshotting solver state to binary proto file snapshots/gcnet_s1r1_iter_20.solverstate
I0412 13:45:16.700000  4242 solver.cpp:351] Iteration 20, Testing net (#0)
I0412 13:45:16.800000  4242 solver.cpp:401] Test loss: 1.5
I0412 13:45:16.900000  4242 solver.cpp:418]     Test net output #0: accuracy = 0.5
I0412 13:45:16.900100  4242 solver.cpp:418]     Test net output #1: loss_cls = 1.2 (* 1 = 1.2 loss)
I0412 13:45:17.000000  4242 solver.cpp:239] Iteration 20 (4.5 iter/s, 2.2s/10 iters), loss = 1.9
I0412 13:45:17.000100  4242 solver.cpp:258]     Train net output #0: loss_cls = 1.2e-01 (* 1 = 0.12 loss)
I0412 13:45:17.000600  4242 sgd_solver.cpp:112] Iteration 20, lr = 9.98503e-04
I0412 13:45:17.500000  4242 solver.cpp:468] Snapshotting to binary proto file snapshots/gcnet_s1r1_iter_23.caffemodel
I0412 13:45:17.600000  4242 sgd_solver.cpp:284] Snapshotting solver state to binary proto file snapshots/gcnet_s1r1_iter_23.solverstate
I0412 13:45:17.700000  4242 solver.cpp:310] Optimization stopped early.
I0412 13:45:17.800000  4242 caffe.cpp:250] Optimization Done.
=== gcnet runner: resuming ===
I0412 13:50:00.000000  4300 caffe.cpp:235] Resuming from snapshots/gcnet_s1r1_iter_23.solverstate
I0412 13:50:00.100000  4300 sgd_solver.cpp:318] SGDSolver: restoring history
I0412 13:50:01.000000  4300 solver.cpp:239] Iteration 30 (3 iter/s, 3.3s/10 iters), loss = 1.5
I0412 13:50:01.000100  4300 solver.cpp:258]     Train net output #0: loss_cls = 0.9 (* 1 = 0.9 loss)
I0412 13:50:01.000600  4300 sgd_solver.cpp:112] Iteration 30, lr = 0.000997756
I0412 13:50:04.000000  4300 solver.cpp:468] Snapshotting to binary proto file snapshots/gcnet_s1r1_iter_40.caffemodel
I0412 13:50:04.100000  4300 sgd_solver.cpp:284] Snapshotting solver state to binary proto file snapshots/gcnet_s1r1_iter_40.solverstate
I0412 13:50:04.200000  4300 solver.cpp:331] Iteration 40, loss = 1.4
I0412 13:50:04.300000  4300 solver.cpp:351] Iteration 40, Testing net (#0)
I0412 13:50:04.400000  4300 solver.cpp:418]     Test net output #0: accuracy = 0.75
I0412 13:50:04.400100  4300 solver.cpp:418]     Test net output #1: loss_cls = 0.8 (* 1 = 0.8 loss)
I0412 13:50:04.500000  4300 solver.cpp:336] Optimization Done.
I0412 13:50:04.500100  4300 caffe.cpp:250] Optimization Done.
"""


def test_train_records():
    r = parse_log(SAMPLE)
    assert r["max_iter"] == 40 and r["display"] == 10
    its = [t["iter"] for t in r["train"]]
    assert its == [0, 10, 20, 30, 40]
    first = r["train"][0]
    assert first["loss"] == 2.41 and first["lr"] == 0.001 and first["iter_per_s"] == 0
    assert first["secs_per_display"] == 1.3
    assert first["outputs"] == {"loss_cls": 1.9459, "loss_contr": 0.3, "loss_gen_r": 0.1, "loss_rec_i": 0.12,
                                "loss_rec_r": 0.14}
    assert first["weighted"]["loss_rec_i"] == 0.03
    assert math.isnan(r["train"][1]["outputs"]["loss_contr"])
    assert r["train"][2]["lr"] == 9.98503e-04 and r["train"][2]["outputs"]["loss_cls"] == 0.12
    # the forward-only line after the last iteration: a loss, no lr/outputs
    assert r["train"][-1]["loss"] == 1.4 and r["train"][-1]["lr"] is None
    assert r["last_iter"] == 40


def test_test_records_snapshots_resume_done():
    r = parse_log(SAMPLE)
    assert [(t["iter"], t["outputs"]["accuracy"]) for t in r["test"]] == [(0, 0.142857), (20, 0.5), (40, 0.75)]
    assert r["test"][1]["loss"] == 1.5 and r["test"][1]["outputs"]["loss_cls"] == 1.2
    states = [s for s in r["snapshots"] if s["what"] == "solverstate"]
    assert [s["iter"] for s in states] == [20, 23, 40]
    assert states[0]["path"] == "snapshots/gcnet_s1r1_iter_20.solverstate"
    assert r["resumes"] == [{"path": "snapshots/gcnet_s1r1_iter_23.solverstate", "iter": 23}]
    assert r["done"] is True            # the resumed run finished
    assert r["errors"] == []


def test_series_helpers():
    r = parse_log(SAMPLE)
    assert train_series(r, "loss_cls") == ([0, 10, 20, 30], [1.9459, 1.7, 0.12, 0.9])
    assert train_series(r, "lr")[0] == [0, 10, 20, 30]
    assert _test_series(r, "accuracy") == ([0, 20, 40], [0.142857, 0.5, 0.75])


def test_incremental_events_and_stopped_early():
    p = LogParser()
    events = []
    stop = SAMPLE.index("=== gcnet runner")
    for line in SAMPLE[:stop].splitlines():
        events += p.feed(line)
    kinds = [e["kind"] for e in events]
    assert kinds.count("train") == 3
    # a train record is emitted once its lr line arrived, with all its outputs
    tr = [e for e in events if e["kind"] == "train"]
    assert tr[0]["lr"] == 0.001 and len(tr[0]["outputs"]) == 5
    assert {"kind": "done", "early": True} in events
    res = p.result()
    assert res["stopped_early"] and not res["done"]


def test_fatal_and_plain_lines(tmp_path):
    text = ("Iteration 5 (2 iter/s, 1s/5 iters), loss = 0.5\n"
            "    Train net output #0: loss_id = 4.6 (* 1 = 4.6 loss)\n"
            "Iteration 5, lr = 0.001\n"
            "F0412 13:45:12.500000  4242 net.cpp:757] Cannot copy param 0 weights from layer 'en2_conv1'; "
            "shape mismatch.\n"
            "*** Check failure stack trace: ***\n")
    f = tmp_path / "train.log"
    f.write_text(text)
    r = parse_log(str(f))
    assert r["train"][0]["outputs"] == {"loss_id": 4.6}
    assert r["errors"] and "shape mismatch" in r["errors"][0]
    assert last_lines(str(f), 2)[-1] == "*** Check failure stack trace: ***"
    assert parse_log(f)["train"][0]["iter"] == 5       # PathLike


def test_glog_with_year_and_vector_outputs():
    # glog >= 0.6 prints the year (I20261130 ...); a non-scalar output blob is logged element by element
    text = ("I20261130 13:37:08.100000 13005 solver.cpp:239] Iteration 40 (2.5 iter/s, 16s/40 iters), loss = 0.7\n"
            "I20261130 13:37:08.100100 13005 solver.cpp:258]     Train net output #0: en2_pool1_mask = 0\n"
            "I20261130 13:37:08.100200 13005 solver.cpp:258]     Train net output #1: en2_pool1_mask = 2\n"
            "I20261130 13:37:08.100300 13005 solver.cpp:258]     Train net output #2: loss_cls = 0.6 (* 1 = 0.6 loss)\n"
            "I20261130 13:37:08.100400 13005 sgd_solver.cpp:112] Iteration 40, lr = 0.00099\n")
    r = parse_log(text)
    assert len(r["train"]) == 1
    t = r["train"][0]
    assert t["iter"] == 40 and t["iter_per_s"] == 2.5 and t["lr"] == 0.00099
    assert t["outputs"] == {"en2_pool1_mask": 0.0, "loss_cls": 0.6} and t["extra_elements"] == 1

import sqlite3

import numpy as np
import pytest

from bench.errors import BenchError
from bench.spec import RunSpec
from bench.store import Store


def _start(store, seed=0, method="ce"):
    spec = RunSpec(method=method, seed=seed)
    store.start(spec.key(), spec.to_dict(), method.upper())
    return spec.key()


def _finish(store, key, acc=80.0):
    store.finish(key, metrics={"acc_last": acc, "acc_best": acc + 1}, env={"torch": "x"},
                 history=[{"stage": "train", "epoch": 0, "loss": 1.0, "test_acc": acc}],
                 samples={"dataset_index": [5, 7], "clean_label": [0, 1], "observed_label": [0, 0],
                          "is_noisy": [False, True]},
                 values={"weight": np.array([0.9, 0.1])}, arrays={"curve": np.ones((2, 3))})


def test_finish_writes_everything_and_reads_back(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    key = _start(store)
    assert store.status(key) == "running"
    _finish(store, key)
    assert store.status(key) == "done"
    runs = store.runs()
    assert runs.loc[0, "acc_last"] == 80.0 and runs.loc[0, "display_name"] == "CE"
    samples = store.samples(key)
    assert samples["is_noisy"].tolist() == [False, True] and samples["weight"].tolist() == [0.9, 0.1]
    assert samples["dataset_index"].tolist() == [5, 7]
    assert store.array(key, "curve").shape == (2, 3)
    assert store.history(key)["test_acc"].tolist() == [80.0]


def test_a_crash_inside_finish_leaves_no_done_row_and_no_partial_rows(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    key = _start(store)
    with pytest.raises(KeyError):  # missing sample column: fails half-way through the transaction
        store.finish(key, metrics={"acc_last": 1.0}, env={}, history=[{"stage": "train", "epoch": 0}],
                     samples={"dataset_index": [1], "clean_label": [1]})
    assert store.status(key) == "running"
    assert store.history(key).empty
    _finish(store, key)  # the rerun completes it
    assert store.status(key) == "done"
    assert store.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1


def test_rerun_after_failure_replaces_rows_and_counts_attempts(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    key = _start(store)
    store.fail(key, "diverged at epoch 3: loss is nan", history=[{"stage": "train", "epoch": 0}])
    assert store.status(key) == "failed"
    assert store.runs("failed").loc[0, "error"].startswith("diverged")
    _start(store)
    _finish(store, key)
    _finish(store, key)  # finishing twice does not duplicate per-sample rows
    assert len(store.samples(key)) == 2 and len(store.history(key)) == 1
    assert store.conn.execute("SELECT attempts FROM runs").fetchone()[0] == 2


def test_foreign_and_corrupt_files_are_refused(tmp_path):
    foreign = tmp_path / "other.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE x (a)")
    conn.commit()
    conn.close()
    with pytest.raises(BenchError, match="another program"):
        Store(foreign)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(BenchError, match="not a readable"):
        Store(junk)
    with pytest.raises(BenchError, match="no results store"):
        Store(tmp_path / "missing.sqlite", create=False)
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(BenchError, match="is empty, not a reweight-bench store"):
        Store(empty, create=False)  # a reader (bench table) writes nothing into it
    assert empty.stat().st_size == 0
    with pytest.raises(BenchError, match="directory"):
        Store(tmp_path)


def test_store_reopens_and_keeps_data(tmp_path):
    path = tmp_path / "s.sqlite"
    store = Store(path)
    key = _start(store)
    _finish(store, key)
    store.close()
    assert Store(path).status(key) == "done"


def test_runs_of_every_status_mix_done_and_unfinished(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    done = _start(store, seed=0)
    _finish(store, done, acc=70.0)
    running = _start(store, seed=1)
    failed = _start(store, seed=2)
    store.fail(failed, "diverged")
    every = store.runs(None).set_index("key")
    assert set(every.index) == {done, running, failed}
    assert every.loc[done, "acc_last"] == 70.0 and every.loc[done, "status"] == "done"
    assert np.isnan(every.loc[running, "acc_last"]) and every.loc[failed, "status"] == "failed"
    assert store.runs("running")["key"].tolist() == [running]

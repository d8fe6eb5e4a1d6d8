import sqlite3
import types

import numpy as np
import pytest

from bench import store as store_module
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
    assert samples["clean_label"].tolist() == [0, 1] and samples["observed_label"].tolist() == [0, 0]
    assert store.array(key, "curve").shape == (2, 3)
    assert store.history(key)["test_acc"].tolist() == [80.0]
    # the 12-character keys that tables and figure names show read the same run
    assert store.samples(key[:12]).equals(samples) and store.history(key[:12]).equals(store.history(key))
    assert store.array(key[:12], "curve").shape == (2, 3)
    for read in (store.samples, store.history, lambda k: store.array(k, "curve")):
        with pytest.raises(BenchError, match="no run with a key starting 'ffff'"):  # not an empty frame
            read("ffff")


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


def test_finishing_a_run_that_was_never_started_is_a_key_error(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(KeyError, match="never started"):
        _finish(store, "0123456789ab")
    assert store.conn.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 0


def test_an_interrupt_inside_finish_is_rolled_back_too(tmp_path):
    class Interrupting(dict):
        def __getitem__(self, name):
            if name == "is_noisy":
                raise KeyboardInterrupt  # Ctrl-C half-way through the transaction
            return super().__getitem__(name)

    store = Store(tmp_path / "s.sqlite")
    key = _start(store)
    with pytest.raises(KeyboardInterrupt):
        store.finish(key, metrics={"acc_last": 1.0}, env={}, history=[{"stage": "train", "epoch": 0}],
                     samples=Interrupting(dataset_index=[1], clean_label=[1], observed_label=[1]))
    assert store.status(key) == "running" and store.history(key).empty
    _finish(store, key)  # no transaction left open: the next one starts
    assert store.status(key) == "done"


def test_a_rerun_is_running_again_with_its_own_start_and_no_stale_end_or_error(tmp_path, monkeypatch):
    clock = iter([100.0, 130.0, 200.0, 250.0, 300.0, 320.0])
    monkeypatch.setattr(store_module, "time", types.SimpleNamespace(time=lambda: next(clock)))
    store = Store(tmp_path / "s.sqlite")
    key = _start(store)  # at 100

    def row():
        return store.conn.execute("SELECT status, attempts, started, ended, wall_s, error FROM runs").fetchone()

    store.fail(key, "diverged", history=[{"stage": "train", "epoch": 0}, {"stage": "train", "epoch": 1}])  # at 130
    assert row() == ("failed", 1, 100.0, 130.0, 30.0, "diverged")
    _start(store)  # the rerun, at 200
    assert row() == ("running", 2, 200.0, None, None, None)
    store.fail(key, "diverged again", history=[{"stage": "train", "epoch": 0}])  # at 250
    assert row() == ("failed", 2, 200.0, 250.0, 50.0, "diverged again")
    assert store.history(key)["epoch"].tolist() == [0]  # the earlier attempt's epochs are replaced
    _start(store)  # at 300
    _finish(store, key)  # at 320
    assert row() == ("done", 3, 300.0, 320.0, 20.0, None)


def test_finishing_a_run_touches_no_other_run(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    first, second, third = _start(store, seed=0), _start(store, seed=1), _start(store, seed=2)
    _finish(store, first, acc=70.0)
    store.finish(second, metrics={"acc_last": 60.0}, env={},
                 history=[{"stage": "a", "epoch": 0, "loss": 3.0}, {"stage": "a", "epoch": 1, "loss": 2.0},
                          {"stage": "b", "epoch": 0, "loss": 1.0}],
                 samples={"dataset_index": [9, 8, 7], "clean_label": [2, 2, 2], "observed_label": [2, 2, 1],
                          "is_noisy": [False, False, True]},
                 values={"weight": np.array([0.5, 0.25, np.nan])}, arrays={"curve": np.zeros((3, 3))})
    assert store.status(third) == "running"
    assert store.status(first) == "done" and store.runs().set_index("key").loc[first, "acc_last"] == 70.0
    assert len(store.history(first)) == 1 and store.samples(first)["weight"].tolist() == [0.9, 0.1]
    assert store.array(first, "curve").tolist() == np.ones((2, 3)).tolist()
    assert store.array(second, "curve").tolist() == np.zeros((3, 3)).tolist()
    history = store.history(second)  # in the order logged
    assert list(zip(history["stage"], history["epoch"], history["loss"])) == [("a", 0, 3.0), ("a", 1, 2.0),
                                                                            ("b", 0, 1.0)]
    weights = store.samples(second)["weight"].tolist()
    assert weights[:2] == [0.5, 0.25] and np.isnan(weights[2])  # NaN is stored as NULL
    assert set(store.runs(None, keys=[second, third])["key"]) == {second, third}
    assert store.runs("done", keys=[second])["key"].tolist() == [second]


def test_resolve_key_finds_exactly_one_run(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    keys = [_start(store, seed=s) for s in range(20)]
    assert store.resolve_key(keys[0][:8]) == keys[0]
    with pytest.raises(BenchError, match="no run with a key starting 'zzz'"):
        store.resolve_key("zzz")
    with pytest.raises(BenchError, match="20 runs with a key starting ''"):
        store.resolve_key("")
    wildcard = "_" + keys[0][1:8]  # an underscore is a character, not a wildcard
    with pytest.raises(BenchError, match="no run with a key starting"):
        store.resolve_key(wildcard)
    with pytest.raises(BenchError, match="no run"):
        store.resolve_key(keys[0][:4] + "%")


def _rows(store, key):
    """Every row of a run: its runs row and its rows in the per-run tables."""
    rows = {"runs": store.conn.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchall()}
    for table in store_module.RUN_TABLES:
        rows[table] = store.conn.execute(f"SELECT * FROM {table} WHERE run_key = ? ORDER BY 2, 3", (key,)).fetchall()
    return rows


def test_merging_copies_finished_and_failed_runs_whole_and_keeps_what_is_finished_here(tmp_path):
    """``bench merge``: a run finished in the source and not here arrives with every row (history,
    samples, values, arrays, its times and env); a failed one only where the key is new here; a run
    finished here stays as it is; an interrupted source run is left out; merging again, or from a
    store into itself, changes nothing."""
    source, here = Store(tmp_path / "shard.sqlite"), Store(tmp_path / "all.sqlite")
    done, failed, interrupted, both, retried = (_start(source, seed) for seed in range(5))
    for key in (done, both, retried):
        _finish(source, key)
    source.fail(failed, "diverged (test)")
    _start(here, 3)
    _finish(here, both, acc=11.0)  # finished in both stores: this one is kept
    _start(here, 4)
    here.fail(retried, "killed (test)")  # failed here, finished there: the finished one arrives
    seen = []
    assert here.merge_from(source, progress=lambda done, total: seen.append((done, total))) == {
        "done": 2, "failed": 1, "kept": 1, "differing": 1, "interrupted": 1}  # both: acc 11 here, 80 there
    assert seen == [(n, 5) for n in range(1, 6)]  # after each run (bench merge's bar on a terminal)
    for key in (done, failed, retried):
        assert _rows(here, key) == _rows(source, key)
    assert here.status(interrupted) is None and here.runs().set_index("key").loc[both, "acc_last"] == 11.0
    assert here.samples(done)["weight"].tolist() == [0.9, 0.1] and here.array(done, "curve").shape == (2, 3)
    before = {key: _rows(here, key) for key in (done, failed, both, retried)}
    assert here.merge_from(source) == {"done": 0, "failed": 0, "kept": 4, "differing": 1, "interrupted": 1}
    assert {key: _rows(here, key) for key in before} == before
    with pytest.raises(BenchError, match="into itself"):
        here.merge_from(Store(tmp_path / "all.sqlite", create=False))


def test_a_store_reached_through_a_symlink_has_the_same_writer_lock(tmp_path):
    from bench.store import StoreInUse, writer_lock

    Store(tmp_path / "real.sqlite").close()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "link.sqlite").symlink_to(tmp_path / "real.sqlite")
    with writer_lock(tmp_path / "real.sqlite"):
        with pytest.raises(StoreInUse, match="being written by another"):
            with writer_lock(tmp_path / "other" / "link.sqlite"):
                pass


def test_a_finished_run_is_never_turned_into_a_failure(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    key = _start(store)
    _finish(store, key)
    store.fail(key, "a late failure of another writer", history=[{"stage": "train", "epoch": 0}])
    assert store.status(key) == "done"
    assert store.conn.execute("SELECT error FROM runs").fetchone()[0] is None
    assert store.history(key)["test_acc"].tolist() == [80.0]


def test_a_full_disk_is_reported_as_such_and_leaves_the_store_usable(tmp_path):
    """SQLite rolls a transaction back itself when the disk is full; the store must then report
    that error, not 'cannot rollback - no transaction is active'."""
    store = Store(tmp_path / "s.sqlite")
    key = _start(store)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # as a disk with 2 pages left
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.finish(key, metrics={"acc_last": 1.0}, env={}, history=[{"stage": "train", "epoch": 0}],
                     arrays={"big": np.zeros(100_000)})
    assert not store.conn.in_transaction and store.status(key) == "running"
    store.conn.execute("PRAGMA max_page_count = 1073741823")
    _finish(store, key)
    assert store.status(key) == "done"


def test_resolve_key_ignores_case_and_lists_the_candidates(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    keys = sorted(_start(store, seed=s) for s in range(20))
    assert store.resolve_key(keys[0][:8].upper()) == keys[0]  # keys are lower-case hex
    first = max("0123456789abcdef", key=lambda c: sum(k.startswith(c) for k in keys))
    several = [k for k in keys if k.startswith(first)]  # 20 keys, 16 first characters: at least 2
    with pytest.raises(BenchError, match=f"{len(several)} runs with a key starting '{first}' in .*: "
                                         f"{several[0][:12]}, {several[1][:12]}"):
        store.resolve_key(first.upper())


def test_a_store_that_cannot_be_created_says_so(tmp_path, monkeypatch):
    import sqlite3

    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(sqlite3, "connect", refuse)
    with pytest.raises(BenchError, match="cannot create the store .*new.sqlite"):
        Store(tmp_path / "new.sqlite")


def test_bench_merge_says_how_many_runs_both_stores_finished_with_other_results(tmp_path, capsys):
    """The same run finished in both stores is kept as it is here; where the two disagree (trained
    twice on kernels that are not bit-reproducible) the merge says how many did."""
    from bench.cli import main

    source, here = Store(tmp_path / "gpu2.sqlite"), Store(tmp_path / "gpu1.sqlite")
    same, other = _start(source, 0), _start(source, 1)
    _start(here, 0), _start(here, 1)
    _finish(source, same)
    _finish(here, same)
    _finish(source, other, acc=80.0)
    _finish(here, other, acc=79.5)
    source.close()
    here.close()
    assert main(["merge", str(tmp_path / "gpu2.sqlite"), "--store", str(tmp_path / "gpu1.sqlite")]) == 0
    err = capsys.readouterr().err
    assert "0 runs copied (0 done, 0 failed), 2 already in" in err
    assert "(kept as they are there; 1 of them finished in both with other results" in err
    assert Store(tmp_path / "gpu1.sqlite", create=False).runs().set_index("key").loc[other, "acc_last"] == 79.5


def test_a_runs_only_merge_copies_results_and_history_and_a_full_merge_completes_it(tmp_path):
    """``bench merge --runs-only``: the run's row and per-epoch history arrive, none of its
    per-sample rows; a full merge of the same run later brings them (it is not "kept" as it is);
    a runs-only merge never strips a run that is here in full."""
    source, slim = Store(tmp_path / "full.sqlite"), Store(tmp_path / "slim.sqlite")
    key = _start(source)
    _finish(source, key)
    assert slim.merge_from(source, runs_only=True) == {"done": 1, "failed": 0, "kept": 0, "differing": 0,
                                                       "interrupted": 0}
    rows, full = _rows(slim, key), _rows(source, key)
    assert rows["runs"] == full["runs"] and rows["epochs"] == full["epochs"] and full["samples"]
    assert all(rows[table] == [] for table in store_module.PER_SAMPLE_TABLES)
    assert not slim.has_samples(key) and source.has_samples(key)
    assert slim.runs()["acc_last"].tolist() == source.runs()["acc_last"].tolist() == [80.0]
    assert slim.merge_from(source, runs_only=True)["kept"] == 1
    assert slim.merge_from(source) == {"done": 1, "failed": 0, "kept": 0, "differing": 0,
                                       "interrupted": 0}  # completed
    assert _rows(slim, key) == full
    assert slim.merge_from(source, runs_only=True)["kept"] == 1 and _rows(slim, key) == full


def test_a_merged_runs_history_keeps_its_stages_in_training_order(tmp_path):
    """CurveNet's probe epochs come before its allocate epochs; a merge read the source's rows by
    the epochs table's key (stage name, then epoch), so the merged history began with 'allocate'."""
    source, here = Store(tmp_path / "shard.sqlite"), Store(tmp_path / "all.sqlite")
    key = _start(source, method="curvenet")
    history = [{"stage": stage, "epoch": epoch, "loss": 1.0, "test_acc": 50.0 + epoch}
               for stage in ("probe", "allocate") for epoch in range(2)]
    source.finish(key, metrics={"acc_last": 51.0, "acc_best": 51.0}, env={}, history=history,
                  samples={"dataset_index": [5], "clean_label": [0], "observed_label": [0], "is_noisy": [False]})
    assert here.merge_from(source)["done"] == 1
    assert here.history(key)[["stage", "epoch"]].values.tolist() == [["probe", 0], ["probe", 1],
                                                                      ["allocate", 0], ["allocate", 1]]
    assert here.history(key).equals(source.history(key))

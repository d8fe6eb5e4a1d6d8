"""`bench forget` (bench/forget.py): runs listed first, deleted with --yes (all their rows, their
checkpoints and those of fused groups holding them), never while a bench run writes the store."""

import sqlite3
import sys
from pathlib import Path

from bench.cli import main
from bench.store import RUN_TABLES, Store, writer_lock

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import fake_store  # noqa: E402


def rows_per_table(path) -> dict:
    conn = sqlite3.connect(path)
    try:
        return {table: conn.execute(f"SELECT run_key, COUNT(*) FROM {table} GROUP BY run_key").fetchall()
                for table in RUN_TABLES} | {"runs": conn.execute("SELECT key FROM runs ORDER BY key").fetchall()}
    finally:
        conn.close()


def test_forget_lists_then_deletes_the_runs_with_all_their_rows_and_checkpoints(tmp_path, capsys):
    path, cache = tmp_path / "s.sqlite", tmp_path / "cache"
    store = fake_store.build(path)
    curvenet = fake_store.add_fake_curvenet_run(store)  # with samples, values and arrays
    keys = dict(zip(store.runs(None)["key"], store.runs(None)["method"]))
    store.close()
    folder = cache / "checkpoints"
    folder.mkdir(parents=True)
    other = next(k for k, m in keys.items() if m == "mwnet")
    for name in (f"{curvenet}.pt", "group1.pt", "group2.pt", f"{other}.pt"):
        (folder / name).write_bytes(b"x")
    (folder / "group1.members").write_text(f"{other}\n{curvenet}\n")  # a fused group holding it
    (folder / "group2.members").write_text(f"{other}\n")
    before = rows_per_table(path)

    args = ["forget", "--store", str(path), "--cache-dir", str(cache), "--method", "curvenet", "--cell",
            "fmnist-mini:8:flip2:0.25"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert curvenet[:12] in out and out.count("| CurveNet") == 1 and "1 run would be forgotten; add --yes" in err
    assert rows_per_table(path) == before and len(list(folder.iterdir())) == 6  # nothing removed without --yes

    assert main([*args, "--yes"]) == 0
    err = capsys.readouterr().err
    assert "forgot 1 run in" in err and "and 2 checkpoints in" in err
    after = rows_per_table(path)
    for table, counts in before.items():
        assert after[table] == [r for r in counts if curvenet not in r], table  # only its rows went
    assert any(curvenet in r for r in before["arrays"]) and any(curvenet in r for r in before["samples"])
    assert {p.name for p in folder.iterdir()} == {"group2.members", "group2.pt", f"{other}.pt"}
    assert Store(path, create=False).status(curvenet) is None  # the next bench run trains it again


def test_forget_by_key_and_status_and_what_it_refuses(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    fake_store.build(path).close()
    failed = Store(path, create=False).runs("failed")["key"].iloc[0]
    cache = tmp_path / "elsewhere"
    assert main(["forget", "--store", str(path), "--status", "failed", "--yes", "--cache-dir", str(cache)]) == 0
    err = capsys.readouterr().err
    assert "forgot 1 run in" in err and Store(path, create=False).status(failed) is None
    # an unfinished run may have left a checkpoint in the cache it ran with: say where none was found
    assert f"; no checkpoint of them in {cache} (runs trained with another --cache-dir keep theirs there" in err
    runs = Store(path, create=False).runs("done")
    mwnet, curvenet = (runs[runs["method"] == m]["key"].iloc[0] for m in ("mwnet", "curvenet"))
    # every selector must hold: of the two keys, only the MW-Net run is of --method mwnet
    assert main(["forget", mwnet[:10], curvenet, "--store", str(path), "--method", "mwnet", "--yes",
                 "--cache-dir", str(cache)]) == 0
    err = capsys.readouterr().err
    assert "forgot 1 run in" in err and "checkpoint" not in err  # a finished run's went with its result
    left = set(Store(path, create=False).runs("done")["key"])
    assert left == set(runs["key"]) - {mwnet}
    assert main(["forget", "--store", str(path)]) == 2
    assert "name the runs to forget" in capsys.readouterr().err
    assert main(["forget", "zzzz", "--store", str(path)]) == 2
    assert "no run with a key starting 'zzzz'" in capsys.readouterr().err
    assert main(["forget", "--store", str(path), "--cell", "cifar10:3:none"]) == 0
    assert "nothing to forget" in capsys.readouterr().err


def test_forget_says_which_checkpoints_it_could_not_remove(tmp_path, capsys, monkeypatch):
    """The runs are removed first; a checkpoint that cannot be removed after them is one line
    saying what to delete, not a traceback."""
    import bench.forget as forget

    path = tmp_path / "s.sqlite"
    fake_store.build(path).close()

    def refused(keys, cache_dir):
        raise PermissionError(13, "Permission denied", str(cache_dir))

    monkeypatch.setattr(forget, "remove_checkpoints", refused)
    assert main(["forget", "--store", str(path), "--status", "failed", "--yes", "--cache-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "forgot 1 run in" in err and "could not all be removed" in err and "Permission denied" in err
    assert "Traceback" not in err and Store(path, create=False).runs("failed").empty


def test_forget_waits_for_no_bench_run_writing_the_store(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    fake_store.build(path).close()
    before = rows_per_table(path)
    with writer_lock(path):  # as a bench run holds it
        assert main(["forget", "--store", str(path), "--status", "all", "--yes"]) == 2
    assert "is being written by another `bench run`" in capsys.readouterr().err
    assert rows_per_table(path) == before


def test_forget_refuses_when_a_bench_run_changed_the_runs_after_they_were_listed(tmp_path, capsys, monkeypatch):
    """The runs are chosen before the writer lock is taken; a bench run that finished in between
    (a run --status failed named, now done) must not have its result deleted, even where another
    run failed meanwhile and the number of runs named is the same."""
    import contextlib

    import bench.store

    path = tmp_path / "s.sqlite"
    fake_store.build(path).close()
    runs = Store(path, create=False).runs(None)
    failed = runs.loc[runs["status"] == "failed", "key"].iloc[0]
    done = runs.loc[runs["status"] == "done", "key"].iloc[0]
    real_lock = bench.store.writer_lock

    @contextlib.contextmanager
    def lock_after_a_rerun(store_path):
        store = Store(store_path)  # a bench run retried the failed run and finished it meanwhile
        store.conn.execute("UPDATE runs SET status = 'running' WHERE key = ?", (failed,))
        store.finish(failed, metrics={"acc_last": 50.0}, history=[], env={})
        # and another run failed meanwhile: as many failed runs as listed, but not the same one
        store.conn.execute("UPDATE runs SET status = 'failed' WHERE key = ?", (done,))
        store.close()
        with real_lock(store_path):
            yield

    monkeypatch.setattr(bench.store, "writer_lock", lock_after_a_rerun)
    assert main(["forget", "--store", str(path), "--status", "failed", "--yes"]) == 2
    assert "changed since they were listed" in capsys.readouterr().err
    assert Store(path, create=False).status(failed) == "done"
    assert Store(path, create=False).status(done) == "failed"  # nothing was deleted


def test_forget_by_method_and_cell_takes_runs_in_every_state_and_says_which_methods_have_none(tmp_path, capsys):
    """Without --status every state is selected (a failed run too); a named method without runs
    is said on stderr; no checkpoint is mentioned when none was removed."""
    path = tmp_path / "s.sqlite"
    fake_store.build(path).close()
    failed = Store(path, create=False).runs("failed")["key"].iloc[0]
    assert main(["forget", "--store", str(path), "--cache-dir", str(tmp_path / "cache"), "--method", "mwnet",
                 "--cell", "cifar10:200:none", "--yes"]) == 0
    err = capsys.readouterr().err
    assert "forgot 1 run in" in err and " and 1 checkpoint" not in err and "no checkpoint of them in" in err
    assert Store(path, create=False).status(failed) is None
    assert main(["forget", "--store", str(path), "--method", "ce"]) == 0
    err = capsys.readouterr().err
    assert f"no runs of ce in {path}" in err and "nothing to forget" in err


def test_forget_removes_the_run_list_of_a_fused_group_whose_checkpoint_is_gone(tmp_path, capsys):
    path, cache = tmp_path / "s.sqlite", tmp_path / "cache"
    fake_store.build(path).close()
    failed = Store(path, create=False).runs("failed")["key"].iloc[0]
    folder = cache / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "group1.members").write_text(f"{failed}\n")  # its .pt already removed
    (folder / "group2.members").write_text("somethingelse\n")
    assert main(["forget", "--store", str(path), "--cache-dir", str(cache), "--status", "failed", "--yes"]) == 0
    assert "forgot 1 run in" in capsys.readouterr().err
    assert {p.name for p in folder.iterdir()} == {"group2.members"}


def test_forget_refuses_a_read_only_store_and_deletes_nothing(tmp_path, capsys, monkeypatch):
    import os

    path = tmp_path / "s.sqlite"
    fake_store.build(path).close()
    before = rows_per_table(path)
    real_access = os.access
    # a read-only file (faked: the tests may run as root, who may write anything)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if (mode == os.W_OK and Path(p) == path)
                        else real_access(p, mode, **kw))
    assert main(["forget", "--store", str(path), "--status", "all", "--yes"]) == 2
    assert "is not writable" in capsys.readouterr().err
    monkeypatch.undo()
    assert rows_per_table(path) == before


def test_forget_gives_the_space_of_the_forgotten_runs_back_to_the_disk(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    store = fake_store.build(path)
    for seed in range(3):  # runs with per-sample rows and arrays: most of a real store's bytes
        fake_store.add_fake_curvenet_run(store, seed=seed)
    every = store.runs(None)
    others = sorted((key,) for key in every.loc[every["method"] != "curvenet", "key"])
    store.close()
    before = path.stat().st_size
    assert main(["forget", "--store", str(path), "--method", "curvenet", "--yes"]) == 0
    err = capsys.readouterr().err
    after = path.stat().st_size
    assert after < before / 2, (before, after)  # compacted, not just rows marked free inside the file
    assert f"(its file: {before / 1024:,.0f} KiB -> {after / 1024:,.0f} KiB)" in err
    assert not (tmp_path / "s.sqlite-wal").exists() or (tmp_path / "s.sqlite-wal").stat().st_size == 0
    assert rows_per_table(path)["runs"] == others  # the other runs are all still there, and read
    assert sorted(Store(path, create=False).runs(None)["key"]) == [key for key, in others]


def test_a_method_named_with_its_variant_forgets_only_that_variants_runs(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    fake_store.build(path).close()
    every = Store(path, create=False).runs(None)
    noise = set(every["key"][every["display_name"] == "MW-Net(noise)"])
    imb = set(every["key"][every["display_name"] == "MW-Net(imb)"])
    assert noise and imb

    assert main(["show", "--store", str(path), "--method", "MW-Net(imb)"]) == 0  # bench show selects alike
    out = capsys.readouterr().out
    assert out.count("| MW-Net(imb)") == len(imb) and "MW-Net(noise)" not in out

    assert main(["forget", "--store", str(path), "--method", "mw-net(noise)", "--yes"]) == 0
    assert f"forgot {len(noise)} runs in" in capsys.readouterr().err
    left = set(Store(path, create=False).runs(None)["key"])
    assert not left & noise and imb <= left  # MW-Net(imb)'s runs stay

    assert main(["forget", "--store", str(path), "--method", "MW-Net(imb),MW-Net", "--yes"]) == 0  # the plain name: all
    assert not set(Store(path, create=False).runs(None)["key"]) & imb

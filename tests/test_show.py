"""`bench show`: the runs of a store, one line each, and one run in full (bench/show.py), on the
fake store of tests/fixtures (made-up metrics, nothing trained)."""

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import show
from bench.cli import main
from bench.store import Store, writer_lock

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import fake_store  # noqa: E402

SL2 = "CurveNet [curvenet.skip_layers=2]"


@pytest.fixture
def store_path(tmp_path):
    """The fake store, plus a run left `running` by a bench run that ended (no lock file)."""
    path = tmp_path / "s.sqlite"
    store = fake_store.build(path)
    spec = fake_store.paper_spec("ce", "cifar10", 10, "flip2", 0.4, 3)
    store.start(spec.key(), spec.to_dict(), "CE")
    store.close()
    return path


def shown(capsys, *args) -> tuple[str, str]:
    assert main(["show", *args]) == 0
    return capsys.readouterr()


def records(capsys, *args) -> pd.DataFrame:
    out, _ = shown(capsys, *args, "--format", "csv")
    return pd.read_csv(io.StringIO(out), keep_default_na=False, na_values=[""])


def test_the_listing_has_every_run_with_its_state_and_why_it_failed_or_is_still_running(store_path, capsys):
    every = Store(store_path, create=False).runs(None)
    table = records(capsys, "--store", str(store_path))
    assert len(table) == len(every) == 11 and set(table["key"]) == set(every["key"])
    by_label = table.groupby("method")
    assert sorted(by_label.get_group("MW-Net(imb)")["acc_last"].dropna()) == [11.0, 12.0, 13.0]
    assert by_label.get_group("MW-Net(imb) [epochs=3]")["acc_last"].tolist() == [10.5]  # its own row, as in tables
    assert by_label.get_group(SL2)["acc_last"].tolist() == [19.5]  # settings that set a run apart, as `bench table`
    failed = table[table["status"] == "failed"].iloc[0]
    assert failed["note"] == "diverged at epoch 3: loss is nan (fake)" and pd.isna(failed["acc_last"])
    running = table[table["status"] == "running"].iloc[0]
    assert running["note"].startswith("interrupted") and running["seed"] == 3
    assert (table["attempts"] == 1).all() and table["commit"].isna().all()  # the fixture names no commit
    # the fake store mixes presets: the cell names its protocol
    assert "cifar10 imb200 clean [quick/small_cnn]" in set(table["cell"])
    out, err = shown(capsys, "--store", str(store_path))
    assert out.startswith("| key ") and "| 2026" not in out.splitlines()[0]
    assert all(len(line.split("|")[1].strip()) == 12 for line in out.splitlines()[2:])  # keys as tables show them
    assert err.strip().startswith("11 of the 11 runs in") and "9 done, 1 failed, 1 running" in err


def test_the_listing_filters_by_status_method_and_cell(store_path, capsys):
    assert records(capsys, "--store", str(store_path), "--status", "failed")["method"].tolist() == ["MW-Net(noise)"]
    curvenet = records(capsys, "--store", str(store_path), "--method", "curvenet", "--cell", "cifar10:1:flip2:0.4")
    assert sorted(curvenet["method"]) == ["CurveNet [curvenet.skip_layers=0]"] * 2 + [SL2]
    both = records(capsys, "--store", str(store_path), "--method", "curvenet,ce", "--status", "running")
    assert both["method"].tolist() == ["CE"]
    out, err = shown(capsys, "--store", str(store_path), "--method", "focal")  # a method not run (yet)
    assert "no runs of focal" in err and "its runs are of ce, curvenet, mwnet" in err
    assert "0 of the 11 runs" in err
    assert main(["show", "--store", str(store_path), "--method", "curvnet"]) == 2  # a typo
    assert "unknown method 'curvnet'; the methods are aum, cb, ce," in capsys.readouterr().err
    assert main(["show", "--store", str(store_path), "--method", "ce,,curvenet"]) == 2  # as bench run says it
    assert "--method 'ce,,curvenet' has an empty item" in capsys.readouterr().err
    # the names tables show, case aside, are the registry's
    assert records(capsys, "--store", str(store_path), "--method", "CurveNet")["key"].tolist() == \
        records(capsys, "--store", str(store_path), "--method", "curvenet")["key"].tolist()
    mwnet = records(capsys, "--store", str(store_path), "--method", "mwnet")
    assert len(mwnet) and mwnet["method"].str.startswith("MW-Net(").all()  # MW-Net(noise), MW-Net(imbalance)
    assert records(capsys, "--store", str(store_path), "--method", "mw-net")["key"].tolist() == mwnet["key"].tolist()
    listed = json.loads(shown(capsys, "--store", str(store_path), "--cell", "cifar10:50:none", "--format", "json")[0])
    assert sorted(r["acc_best"] for r in listed) == [16.0, 17.0, 18.0] and all(len(r["key"]) == 16 for r in listed)


def test_a_running_run_is_being_trained_only_while_a_live_writer_that_started_it_holds_the_lock(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    store = fake_store.build(path)
    before = fake_store.paper_spec("ce", "cifar10", 10, "flip2", 0.4, 0)
    store.start(before.key(), before.to_dict(), "CE")
    store.conn.execute("UPDATE runs SET started = started - 5 WHERE key = ?", (before.key(),))  # before the lock
    store.conn.commit()
    now = fake_store.paper_spec("ce", "cifar10", 10, "flip2", 0.4, 1)
    with writer_lock(path):
        store.start(now.key(), now.to_dict(), "CE")
        notes = dict(zip(*records(capsys, "--store", str(path), "--status", "running")[["seed", "note"]].T.values))
        assert notes[1] == f"being trained (bench run pid {os.getpid()})"
        assert notes[0].startswith("interrupted")  # an earlier command's run, not this writer's
    notes = records(capsys, "--store", str(path), "--status", "running")["note"]
    assert all(n.startswith("interrupted") for n in notes) and len(notes) == 2  # the lock is free again
    lock = show.writer(path)
    (path.parent / "s.sqlite.lock").write_text(f"pid {lock['pid']} on elsewhere, since 2020-01-01 00:00:00")
    notes = records(capsys, "--store", str(path), "--status", "running")["note"]
    assert all(n.startswith("being trained on elsewhere, or interrupted") for n in notes)
    store.close()


def test_without_the_kernel_lock_table_a_lock_is_held_while_its_process_lives(tmp_path, monkeypatch):
    lock = tmp_path / "s.sqlite.lock"
    lock.write_text("x")
    real = show.Path

    def no_proc(p, *a):
        return real("/nonexistent/locks") if str(p) == "/proc/locks" else real(p, *a)

    monkeypatch.setattr(show, "Path", no_proc)
    assert show._flock_held(lock, os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not show._flock_held(lock, child.pid)

    def not_yours(pid, sig):  # another user's process: alive, though no signal may reach it
        raise PermissionError(pid)

    monkeypatch.setattr(show.os, "kill", not_yours)
    assert show._flock_held(lock, 12345)


def test_one_run_in_full_spec_env_result_history_and_its_records(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    store = fake_store.build(path)
    key = fake_store.add_fake_curvenet_run(store)
    failed = store.runs("failed")["key"].iloc[0]
    store.close()
    out, _ = shown(capsys, key[:8], "--store", str(path))
    lines = out.splitlines()
    assert lines[0] == f"run {key}"
    assert lines[1].split() == ["method", "CurveNet", "(curvenet)"]
    assert "fmnist-mini imb8 flip2:0.25, preset quick" in lines[2] and "status    done after 1 attempt" in out
    assert "curvenet.skip_layers=0" in out and "fake=test fixture" in out and "acc_last=" in out
    history = Store(path, create=False).history(key)
    assert f"history ({len(history)} epoch" in out and out.rstrip().endswith("|")
    # counted from 1 as in the progress lines: the table's last epoch row is the stored last + 1
    epochs = [line.split("|")[2].strip() for line in out.splitlines() if line.startswith("| ") and "epoch" not in line]
    assert epochs[-1] == str(int(history["epoch"].iloc[-1]) + 1)
    detail = json.loads(shown(capsys, key, "--store", str(path), "--format", "json")[0])
    assert detail["history"] == json.loads(history.to_json(orient="records"))
    assert detail["arrays"] and detail["sample_values"] and detail["samples"] == 75
    assert detail["spec"]["method"] == "curvenet" and detail["env"] == fake_store.FAKE_ENV
    out, _ = shown(capsys, failed, "--store", str(path))
    assert "status    failed after 1 attempt" in out and "error     diverged at epoch 3" in out
    assert "command   — no bench run command asks for run" in out  # the fixture's specs are made up


def test_one_run_in_full_gives_the_command_that_asks_for_it(tmp_path, capsys):
    from bench.arguments import build_specs
    from bench.cli import make_parser

    (spec,) = build_specs(make_parser().parse_args(["run", "--methods", "focal", "--seeds", "5", "--epochs", "3",
                                                    "--set", "focal.gamma=2"]))
    store = Store(tmp_path / "s.sqlite")
    fake_store.add_run(store, spec, "Focal", 12.0)
    store.close()
    out, _ = shown(capsys, spec.key(), "--store", str(tmp_path / "s.sqlite"))
    assert "  command   python -m bench run --methods focal --seeds 5 --epochs 3 --set focal.gamma=2.0\n" in out
    detail = json.loads(shown(capsys, spec.key(), "--store", str(tmp_path / "s.sqlite"), "--format", "json")[0])
    assert detail["command"].endswith("--set focal.gamma=2.0") and detail["command_note"] == ""


@pytest.mark.parametrize("args, message", [
    ([""], "11 runs with a key starting ''"),  # a prefix of more than one
    (["zzzz"], "no run with a key starting 'zzzz'"),
    (["--method", "ce", "KEY"], "KEY shows one run; drop --method"),
    (["--status", "done", "KEY"], "KEY shows one run; drop --status"),
    (["--format", "csv", "KEY"], "one run has no CSV form"),
    (["--cell", "cifar10:20"], "malformed --cell"),
])
def test_bad_input_is_one_line(store_path, capsys, args, message):
    if "KEY" in args:
        args[args.index("KEY")] = Store(store_path, create=False).runs("done")["key"].iloc[0]
    assert main(["show", *args, "--store", str(store_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error:") and message in err and len(err.strip().splitlines()) == 1


def test_a_missing_store_is_an_error_and_is_not_created(tmp_path, capsys):
    assert main(["show", "--store", str(tmp_path / "none.sqlite")]) == 2
    assert "bench: error:" in capsys.readouterr().err and not (tmp_path / "none.sqlite").exists()


def test_the_listing_names_the_suites_commit_of_each_run(store_path, capsys):
    conn = sqlite3.connect(store_path)
    key = conn.execute("SELECT key FROM runs WHERE status = 'done' LIMIT 1").fetchone()[0]
    conn.execute("UPDATE runs SET env_json = ? WHERE key = ?",
                 (json.dumps({"suite_commit": "0123456789abcdef0123456789abcdef01234567+dirty"}), key))
    conn.commit()
    conn.close()
    table = records(capsys, "--store", str(store_path))
    assert dict(zip(table["key"], table["commit"]))[key] == "01234567+"


# --- details a user reads (mutation-tested) ---

def test_a_running_run_in_full_says_what_it_is_and_when_it_started(store_path, capsys):
    running = Store(store_path, create=False).runs("running")
    key = running["key"].iloc[0]
    out, _ = shown(capsys, key, "--store", str(store_path))
    assert "  status    running after 1 attempt: interrupted (the same bench run command resumes it" in out
    started = next(line for line in out.splitlines() if line.startswith("  started"))
    assert started == f"  started   {show._when(running['started'].iloc[0])}" and started.strip() != "started   —"
    table = records(capsys, "--store", str(store_path), "--status", "running")
    assert table["when"].tolist() == [show._when(running["started"].iloc[0])]  # when it started: it has not ended
    failed = records(capsys, "--store", str(store_path), "--status", "failed")
    assert failed["minutes"].isna().all() and failed["when"].str.startswith("20").all()


def test_only_an_flock_on_the_lock_file_counts_as_held(tmp_path):
    import fcntl

    lock = tmp_path / "s.sqlite.lock"
    lock.write_text("x")
    with open(lock, "r+") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)  # a POSIX lock is not bench run's writer lock
        assert not show._flock_held(lock, os.getpid())
        fcntl.flock(f, fcntl.LOCK_EX)
        assert show._flock_held(lock, os.getpid())


def test_a_run_started_in_the_second_the_lock_was_taken_is_being_trained():
    lock = {"pid": 7, "host": "here", "since": 1000.0, "held": True}
    assert show.running_note(lock, 1000.0) == "being trained (bench run pid 7)"
    assert show.running_note(lock, 999.5).startswith("interrupted")


def test_a_lock_file_that_names_no_pid_is_no_writer(tmp_path):
    for text in ("xid 12 on host, since 2020-01-01 00:00:00", "pid x on host, since 2020-01-01 00:00:00",
                 "pid 12 on host, since yesterday"):
        (tmp_path / "s.sqlite.lock").write_text(text)
        assert show.writer(tmp_path / "s.sqlite") is None
    (tmp_path / "s.sqlite.lock").write_text("pid 12 on host, since 2020-01-01 00:00:00")
    assert show.writer(tmp_path / "s.sqlite")["host"] == "host"


def test_small_values_read_as_users_expect():
    assert show._commit(json.dumps({"suite_commit": "unknown"})) == "" and show._commit(None) == ""
    assert show._when(None) == "" and show._when(float("nan")) == ""  # never "1970" nor an error
    assert show._reason("Traceback (most recent call last):\n  File 'x'\nValueError: boom\n") == "ValueError: boom"
    assert show._reason(None) == "no reason stored"
    assert show._value(0.123456) == "0.1235" and show._value(None) == "—"
    assert show._value(list(range(12))) == "[" + ", ".join(map(str, range(12))) + "]"
    assert show._value(list(range(13))) == "[13 values]"


def test_method_names_are_case_blind_and_each_named_once(store_path):
    runs = Store(store_path, create=False).runs(None)
    assert show.method_names("FOCAL", runs) == ["focal"]  # a registry name not run yet
    assert show.method_names("curvenet,CurveNet, curvenet", runs) == ["curvenet"]
    assert show.method_names("", runs) is None


def test_the_listing_shows_the_data_seed_where_it_is_not_the_training_seed_and_two_decimals(tmp_path, capsys):
    store = Store(tmp_path / "s.sqlite")
    spec = fake_store.paper_spec("ce", "cifar10", 10, "flip2", 0.4, 0)
    fake_store.add_run(store, spec, "CE", 12.345)
    store.close()
    assert "data_seed" not in records(capsys, "--store", str(tmp_path / "s.sqlite")).columns
    row = [c.strip() for c in shown(capsys, "--store", str(tmp_path / "s.sqlite"))[0].splitlines()[2].split("|")]
    assert row[7:9] == ["12.35", "13.35"]  # acc_last, acc_best: two decimals
    store = Store(tmp_path / "s.sqlite")
    fake_store.add_run(store, spec.replace(data_seed=7), "CE", 12.0)
    store.close()
    table = records(capsys, "--store", str(tmp_path / "s.sqlite"))
    assert sorted(zip(table["seed"], table["data_seed"])) == [(0, 0), (0, 7)]
    out, _ = shown(capsys, spec.replace(data_seed=7).key(), "--store", str(tmp_path / "s.sqlite"))
    assert "preset paper, model resnet32, seed 0, data seed 7" in out


def test_a_resumed_run_counts_its_attempts_and_its_best_epoch_from_1(tmp_path, capsys):
    store = Store(tmp_path / "s.sqlite")
    spec = fake_store.paper_spec("ce", "cifar10", 10, "flip2", 0.4, 0)
    store.start(spec.key(), spec.to_dict(), "CE")
    store.start(spec.key(), spec.to_dict(), "CE")  # killed and run again
    store.finish(spec.key(), metrics={"acc_last": 12.0, "acc_best": 13.0, "best_epoch": 4}, env=fake_store.FAKE_ENV,
                 history=[{"stage": "train", "epoch": 0, "loss": 1.0}])
    store.close()
    assert records(capsys, "--store", str(tmp_path / "s.sqlite"))["attempts"].tolist() == [2]
    out, _ = shown(capsys, spec.key(), "--store", str(tmp_path / "s.sqlite"))
    assert "status    done after 2 attempts" in out and "best_epoch=5" in out


def test_a_spec_of_another_version_gives_no_command_and_says_why():
    command, why = show.reproducing_command({"method": "ce"})
    assert command is None and why.startswith("its spec does not fit this version of the suite")


def test_the_separation_line_says_what_the_trust_is_and_what_is_unknown():
    sep = {"record": "score", "noise_auroc": float("nan"), "tail_auroc": 75.0, "clean": 10, "noisy": 0,
           "clean_tail": 3, "tail": [2, 3], "removed": 4, "precision": None, "recall": None, "removed_clean_tail": 0,
           "clean_tail_pool": 0}
    text = " ".join(show._separation_line(sep).split())
    assert "noise AUROC — (10 clean vs 0 mislabelled samples)" in text and "trust = minus its score" in text
    assert "3 clean samples of tail classes 2,3" in text and "clean tail samples" not in text  # no pool: no share
    balanced = " ".join(show._separation_line({**sep, "tail": [], "record": "weight", "mean_clean": 0.9,
                                               "mean_noisy": None, "mean_clean_tail": None}).split())
    assert "tail AUROC 75.0% (no tail classes: the classes are balanced), trust = its weight" in balanced


def test_the_listing_labels_runs_as_among_all_the_stores_runs(store_path, capsys):
    store = Store(store_path)
    spec = fake_store.paper_spec("curvenet", "cifar10", 1, "flip2", 0.4, 1,
                                 {**fake_store.CURVENET_PARAMS, "skip_layers": 2})
    store.start(spec.key(), spec.to_dict(), "CurveNet")
    store.close()
    table = records(capsys, "--store", str(store_path), "--status", "running", "--method", "curvenet")
    assert table["method"].tolist() == [SL2]  # as among the cell's done CurveNet runs of skip_layers 0 and 2
    _, err = shown(capsys, "--store", str(store_path))
    assert f"12 of the 12 runs in {store_path}: 9 done, 1 failed, 2 running;" in err


def test_an_empty_store_lists_nothing(tmp_path, capsys):
    Store(tmp_path / "s.sqlite").close()
    out, err = shown(capsys, "--store", str(tmp_path / "s.sqlite"))
    assert out.startswith("| key ") and "0 of the 0 runs" in err

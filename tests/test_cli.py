"""The command line end to end: bad arguments, a real CE run, idempotent reruns, killed runs."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.store import Store

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "2", "--quiet"]


def bench(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


BAD_RUN_ARGS = [
    (["--methods", "nope"], "unknown method"),
    (["--methods", "ce", "--dataset", "mnist"], "unknown dataset"),
    (["--methods", "ce", "--imbalance", "0.5"], "imbalance"),
    (["--methods", "ce", "--noise", "flip2:1.5"], "rate must lie in [0, 1)"),
    (["--methods", "ce", "--noise", "pairflip:0.2"], "noise type"),
    (["--methods", "ce", "--noise", "flip2"], "noise"),
    (["--methods", "ce", "--grid", "cifar1000"], "unknown grid"),
    (["--methods", "ce", "--preset", "huge"], "unknown preset"),
    (["--methods", "ce", "--model", "vgg"], "unknown model"),
    (["--methods", "ce", "--set", "lr"], "malformed --set"),
    (["--methods", "ce", "--set", "ce.gamma=2"], "no setting"),
    (["--methods", "ce", "--set", "focal.gamma=2"], "not in --methods"),
    (["--methods", "ce", "--set", "frobnicate=2"], "unknown setting"),
    (["--methods", "ce", "--epochs", "0"], "epochs"),
    (["--methods", "ce", "--fuse", "0"], "--fuse must be at least 1"),
    # protocol values no run can train with are refused before any run starts
    (["--methods", "ce", "--set", "lr=-1"], "lr must be positive"),
    (["--methods", "ce", "--set", "weight_decay=-1"], "weight_decay must be non-negative"),
    (["--methods", "ce", "--set", "momentum=5"], "momentum must be in [0, 1)"),
    (["--methods", "ce", "--set", "warmup_epochs=-2"], "warmup_epochs must be non-negative"),
    (["--methods", "ce", "--set", "milestones=5,3"], "milestones must be increasing"),
    (["--methods", "ce", "--set", "batch_size=0"], "batch_size must be at least 1"),
    (["--methods", "ce", "--set", "lr_decay=0"], "lr_decay must be positive"),
    (["--methods", "ce", "--set", "momentum=0"], "nesterov must be false"),
    (["--methods", "ce", "--set", "init=xavier"], "unknown init"),
    (["--methods", "ce", "--set", "meta_per_class=-1"], "meta_per_class must be non-negative"),
    (["--methods", "ce", "--set", "precision=fp16"], "unknown precision"),
    (["--methods", "ce", "--set", "meta_per_class=3", "--meta-per-class", "4"], "disagree"),
    (["--methods", "ce", "--seeds", "-1"], "non-negative"),
    (["--methods", "ce", "--meta-per-class", "5000"], "meta"),
    (["--methods", "ce", "--device", "tpu"], "unknown device"),
    (["--methods", "ce", "--dataset", "cifar10", "--data-dir", "/nonexistent-dir"], "cifar"),
    (["--methods", "ce", "--grid", "quick", "--imbalance", "3"], "either --grid"),
    # scaling out: bad executor settings fail before anything starts or is written
    (["--methods", "ce", "--jobs", "0"], "--jobs must be at least 1"),
    (["--methods", "ce", "--jobs", "two"], "invalid int"),
    (["--methods", "ce", "--executor", "nope"], "invalid choice"),
    (["--methods", "ce", "--gpus-per-run", "-1"], "--gpus-per-run must be non-negative"),
    (["--methods", "ce", "--executor", "ray", "--gpus-per-run", "1.5"], "whole number"),
    (["--methods", "ce", "--gpus-per-run", "0.5"], "--gpus-per-run is for --executor ray"),
    (["--methods", "ce", "--address", "127.0.0.1:6379"], "--address is for --executor ray"),
    (["--methods", "ce", "--executor", "ray", "--device", "cuda"], "needs --gpus-per-run"),
    (["--methods", "ce", "--max-retries", "-1"], "--max-retries must be non-negative"),
    (["--methods", "ce", "--checkpoint-every", "-5"], "--checkpoint-every must be non-negative"),
    (["--methods", "ce", "--checkpoint-every", "nan"], "--checkpoint-every must be non-negative"),
    # settings that conflict or do not fit the run (QUICK gives --epochs 2)
    (["--methods", "ce", "--set", "epochs=3"], "--epochs 2 and epochs=3 (--set or --sweep) disagree"),
    (["--methods", "ce", "--sweep", "epochs=1,2"], "--epochs 2 and epochs=1 (--set or --sweep) disagree"),
    # a bad value in --sweep is named as the user wrote it, not as the --set it expands to
    (["--methods", "ce", "--sweep", "lr=0.1,abc"], "error: lr=abc: cannot read 'abc' as float"),
    (["--methods", "ce", "--sweep", "model=small_cnn,resnet32", "--set", "model=x"], "give each setting in --set or"),
    (["--methods", "ce", "--set", "epochs=2.5"], "epochs=2.5: cannot read '2.5' as int"),
    (["--methods", "ce", "--precision", "bf16", "--set", "precision=fp32"], "disagree"),
    (["--methods", "ce", "--set", "milestones=1,3"], "milestones must be at most the 2 epochs"),
    (["--methods", "ce", "--set", "warmup_epochs=3"], "warmup_epochs must be at most the 2 epochs"),
    (["--methods", "ce", "--set", "lr=abc"], "lr=abc: cannot read 'abc' as float"),
    (["--methods", "mwnet", "--meta-per-class", "0"], "MW-Net needs a clean meta set"),
    (["--methods", "ce", "--device", "cuda:99"], "--device cuda:99"),
    (["--paper", "2", "--methods", "ce"], "--paper 2 picks the table's own methods and cells; drop --methods"),
    # bounds: each just past what a run can take
    (["--methods", "ce", "--seeds", ","], "--seeds ',' has an empty item"),
    # an empty item in a list, or a setting given twice, is refused rather than dropped or overwritten
    (["--methods", "ce", "--seeds", "0,,1"], "--seeds '0,,1' has an empty item"),
    (["--methods", "ce", "--imbalance", "10,"], "--imbalance '10,' has an empty item"),
    (["--methods", "ce,,focal"], "--methods 'ce,,focal' has an empty item"),
    (["--methods", "focal", "--sweep", "focal.gamma=1,,2"], "--sweep focal.gamma: '1,,2' has an empty item"),
    (["--methods", "ce", "--set", "milestones=1,,2"], "milestones=1,,2: cannot read '1,,2' as tuple"),
    (["--methods", "focal", "--set", "focal.gamma=1", "--set", "focal.gamma=2"],
     "--set focal.gamma is given twice (1 and 2)"),
    (["--methods", "ce", "--set", "lr=0.1", "--set", "lr=0.2"], "--set lr is given twice (0.1 and 0.2)"),
    (["--methods", "ce", "--dataset", "npz:"], "npz: needs the file's path"),
    (["--methods", "ce", "--seeds", "1,x"], "--seeds must be a comma-separated list of integers"),
    (["--methods", "ce", "--data-seed", "-1"], "--data-seed must lie in 0 .. 2**63 - 1, got -1"),
    (["--methods", "ce", "--seeds", "0,9223372036854775808"], "--seeds must be at most 2**63 - 1"),
    (["--methods", "ce", "--dataset", ""], "--dataset is empty; give a value or leave the option out"),
    (["--methods", "ce", "--set", "curvnet.embed_dim=32"], "unknown method 'curvnet'; did you mean 'curvenet'?"),
    (["--methods", "ce", "--set", ".gamma=1"], "--set .gamma=...: no method before the dot"),
    (["--methods", "ce", "--noise", ""], "--noise is empty"),
    (["--methods", "ce", "--model", ""], "--model is empty"),
    (["--methods", "ce", "--shard", ""], "--shard is empty"),  # not the whole grid on every array job
    (["--paper", ""], "--paper is empty"),
    (["--methods", "ce", "--noise", "flip2:0.4,"], "--noise 'flip2:0.4,' has an empty item"),
    (["--methods", "ce", "--model", "resnet32", "--set", "model=small_cnn"],
     "--model resnet32 and model=small_cnn (--set or --sweep) disagree"),
    (["--methods", "mwnet", "--train-on-meta", "--set", "train_on_meta=false"],
     "--train-on-meta True and train_on_meta=false (--set or --sweep) disagree"),  # the option as typed
    (["--methods", "ce", "--meta-per-class", "-1"], "--meta-per-class must be non-negative, got -1"),
    (["--methods", "ce", "--imbalance", "10,x"], "--imbalance must be a comma-separated list of numbers"),
    (["--methods", "ce", "--grid", "quick", "--noise", "none"], "either --grid"),
    (["--methods", "ce", "--grid", "cifar10", "--dataset", "fmnist-mini"], "defined on cifar10, not fmnist-mini"),
    (["--methods", "ce", "--set", "lr=0"], "lr must be positive"),
    (["--methods", "ce", "--set", "lr=inf"], "lr=inf: cannot read 'inf' as float"),
    (["--methods", "ce", "--set", "momentum=1"], "momentum must be in [0, 1)"),
    (["--methods", "ce", "--set", "milestones=1,1"], "milestones must be increasing"),
    (["--methods", "ce", "--set", "milestones=0,1"], "milestones must be increasing"),
    (["--methods", "ce", "--set", "meta_batch_size=0"], "meta_batch_size must be at least 1"),
    (["--methods", "ce", "--set", "seed=3"], "unknown setting 'seed'"),
    (["--methods", "ce", "--set", "nesterov=maybe"], "nesterov=maybe: cannot read 'maybe' as bool"),
]


@pytest.mark.parametrize("args,message", BAD_RUN_ARGS, ids=[" ".join(a) for a, _ in BAD_RUN_ARGS])
def test_bad_run_arguments_give_one_line_and_exit_2_and_write_nothing(args, message, tmp_path, capsys):
    store = tmp_path / "store.sqlite"
    code = main(["run", *QUICK, *args, "--store", str(store)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("bench: error:")
    assert message.lower() in err.lower()
    assert not store.exists()


def test_set_reaches_every_protocol_field_it_names():
    """``--set`` takes every field its error message lists; meta_per_class and precision (not in
    the presets) mean the same as their own flags."""
    from bench.arguments import build_specs
    from bench.cli import make_parser
    from bench.spec import PROTOCOL_FIELDS

    def specs(*args):
        return build_specs(make_parser().parse_args(["run", "--methods", "ce", *args]))

    assert specs("--set", "meta_per_class=7") == specs("--meta-per-class", "7")
    assert specs("--set", "epochs=5") == specs("--epochs", "5")  # the schedule scales either way
    assert specs("--set", "epochs=5")[0].milestones == (2,)  # quick's 8, 10 of 20 epochs, scaled
    assert specs("--set", "precision=bf16") == specs("--precision", "bf16")
    assert specs("--set", "precision=bf16")[0].precision == "bf16"
    (spec,) = specs()
    for field in PROTOCOL_FIELDS:  # each field, set to its current value, parses and leaves the run as is
        value = getattr(spec, field)
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        assert specs("--set", f"{field}={text}") == [spec], field


def test_train_on_meta_reaches_the_methods_without_a_meta_set_only():
    """``--train-on-meta`` (PROTOCOL.md §7's fair-data option) marks the runs of methods that do
    not learn from the meta set; MW-Net's and CurveNet's runs, and every run without the flag,
    keep their keys."""
    from bench.arguments import build_specs
    from bench.cli import make_parser
    from bench.errors import BenchError

    def specs(*args, methods="ce,mwnet"):
        return {s.method: s for s in build_specs(make_parser().parse_args(["run", "--methods", methods, *args]))}

    plain, fair = specs(), specs("--train-on-meta")
    assert fair["ce"].train_on_meta and not fair["mwnet"].train_on_meta
    assert fair["mwnet"].key() == plain["mwnet"].key() and fair["ce"].key() != plain["ce"].key()
    assert "train_on_meta" not in plain["ce"].to_dict()  # runs stored before the option keep their keys
    assert specs("--set", "train_on_meta=true") == fair
    with pytest.raises(BenchError, match="learn from it already"):
        specs("--train-on-meta", methods="mwnet,curvenet")
    with pytest.raises(BenchError, match="no meta set to add"):
        specs("--train-on-meta", "--meta-per-class", "0", methods="ce")


def test_runs_on_an_npz_file_are_keyed_by_its_contents(tmp_path):
    """Fixing your npz file makes new runs (results on its earlier version are not reused), and a
    file that changes between keying and training is refused instead of trained under the old key."""
    import numpy as np

    from bench import execute
    from bench.arguments import build_specs
    from bench.cli import make_parser
    from bench.errors import BenchError

    def write(seed):
        rng = np.random.default_rng(seed)
        np.savez(path, x_train=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), y_train=np.arange(40) % 2,
                 x_test=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), y_test=np.arange(6) % 2)
        execute._dataset.cache_clear()  # a new process would read the file afresh
        execute.biased_data.cache_clear()

    def spec():
        (s,) = build_specs(make_parser().parse_args(["run", "--methods", "ce", "--dataset", f"npz:{path}",
                                                     "--imbalance", "1", "--noise", "none"]))
        return s

    path = tmp_path / "mine.npz"
    write(0)
    first = spec()
    assert len(first.data_sha256) == 16 and first.to_dict()["data_sha256"] == first.data_sha256
    assert spec().key() == first.key()  # the same file, the same run
    write(1)
    assert spec().key() != first.key()
    with pytest.raises(BenchError, match="changed since this run was asked for"):
        execute.load_data(first)
    (builtin,) = build_specs(make_parser().parse_args(["run", "--methods", "ce"]))
    assert builtin.data_sha256 == "" and "data_sha256" not in builtin.to_dict()  # stored keys hold


def test_a_meta_method_asked_to_train_on_its_meta_set_is_refused():
    import torch

    from bench.errors import BenchError
    from bench.execute import execute
    from bench.spec import RunSpec

    with pytest.raises(BenchError, match="learns from the meta set"):
        execute(RunSpec(method="mwnet", train_on_meta=True), device=torch.device("cpu"), cache_dir=None)


def test_bad_store_files_exit_2(tmp_path, capsys):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 100)
    assert main(["table", "--store", str(junk)]) == 2
    assert main(["table", "--store", str(tmp_path / "missing.sqlite")]) == 2
    assert main(["run", "--methods", "ce", "--store", str(tmp_path), *QUICK]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("bench: error:") for e in errors)


def _foreign_sqlite(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (text TEXT)")
    con.commit()
    con.close()


def _unwritable_dir(tmp_path):
    """tmp_path/locked, mode 0o500; as root the mode bits do not stop writes, so the test also has
    os.access refuse it (what the store's checks ask)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked


# (command, arguments given tmp_path, expected message); the path under test is the last --store
BAD_PATHS = [
    ("run", lambda t: ["--methods", "ce", "--dataset", "cifar10", "--data-dir", str(t / "empty")], "no usable files"),
    ("run", lambda t: ["--methods", "ce", "--store", "/proc/self/bench.sqlite"], "not writable"),
    ("run", lambda t: ["--methods", "ce", "--store", str(_unwritable_dir(t) / "s.sqlite")], "not writable"),
    ("run", lambda t: ["--methods", "ce", "--store", str(t / "foreign.sqlite")], "another program"),
    ("run", lambda t: ["--methods", "ce", "--store", str(t / "junk.sqlite")], "not a readable"),
    ("table", lambda t: ["--store", str(t / "foreign.sqlite")], "another program"),
    ("table", lambda t: ["--store", str(t / "junk.sqlite")], "not a readable"),
    ("table", lambda t: ["--store", str(t / "missing.sqlite")], "no results store"),
    ("table", lambda t: ["--store", str(t / "empty")], "directory"),
    ("table", lambda t: ["--store", str(t / "junk.sqlite" / "s.sqlite")], "junk.sqlite is not a directory"),
    ("run", lambda t: ["--methods", "ce", "--store", str(t / "junk.sqlite" / "s.sqlite")], "is not a directory"),
    ("table", lambda t: ["--store", str(t / "new" / "m.sqlite")], "/new does not exist"),
    ("run", lambda t: ["--methods", "ce", "--cache-dir", str(t / "junk.sqlite" / "cache")], "a file, not a directory"),
]


@pytest.mark.parametrize("command,make_args,message", BAD_PATHS,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BAD_PATHS)])
def test_bad_paths_give_one_line_and_exit_2_and_write_nothing(command, make_args, message, tmp_path, capsys,
                                                              monkeypatch):
    real_access, locked = os.access, tmp_path / "locked"
    monkeypatch.setattr(os, "access", lambda path, mode: not (Path(path) == locked and mode & os.W_OK)
                        and real_access(path, mode))
    (tmp_path / "empty").mkdir()
    _foreign_sqlite(tmp_path / "foreign.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    args = make_args(tmp_path)
    if command == "run":
        args = [*args, *QUICK] + ([] if "--store" in args else ["--store", str(tmp_path / "new.sqlite")])
    code = main([command, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("bench: error:")
    assert message.lower() in err.lower()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # no store created, no existing file touched
    assert not any((tmp_path / "empty").iterdir())


def test_argparse_errors_are_one_line_too():
    result = bench("run", "--methods", "ce", "--epochs", "two")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_ce_run_prints_a_table_and_a_rerun_trains_nothing(tmp_path, capsys):
    store = tmp_path / "store.sqlite"
    first = bench("run", "--methods", "ce", "--store", str(store), *QUICK)
    assert first.returncode == 0, first.stderr
    assert "| CE" in first.stdout and "fmnist-mini imb10 flip2:0.4" in first.stdout
    assert "1 trained" in first.stderr
    second = bench("run", "--methods", "ce", "--store", str(store), "--seeds", "0,0", *QUICK)
    assert second.returncode == 0
    assert "1 run requested: 0 trained, 1 already in the store" in second.stderr  # the same run asked twice
    assert second.stdout == first.stdout
    # the tables in this process (the commands' processes are tested above)
    assert main(["table", "--store", str(store), "--format", "csv"]) == 0 and "CE" in capsys.readouterr().out
    assert main(["table", "--store", str(store), "--metric", "minutes", "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]  # the run's own training time, in minutes
    assert row["metric"] == "train_minutes" and row["n"] == 1 and 0 < row["mean"] < 10
    for extra, message in ((["--paper", "1"], "for the plain table"), (["--group", "few"], "has no --group")):
        assert main(["table", "--store", str(store), "--metric", "minutes", *extra]) == 2
        assert message in capsys.readouterr().err


def test_a_run_whose_only_run_failed_says_so_not_that_the_store_is_empty(tmp_path, capsys):
    """`bench run` on a store with other finished runs, its one run failed (earlier, not retried:
    nothing trains): the table text says none of the requested runs finished."""
    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    import fake_store

    from bench.arguments import build_specs
    from bench.cli import make_parser

    args = ["--methods", "ce", "--seeds", "0", "--store", str(tmp_path / "s.sqlite"),
            "--cache-dir", str(tmp_path / "cache"), *QUICK]
    store = fake_store.build(tmp_path / "s.sqlite")  # other finished runs
    (spec,) = build_specs(make_parser().parse_args(["run", *args]))
    fake_store.add_run(store, spec, "CE", 0.0, status="failed")
    store.close()
    assert main(["run", *args]) == 1
    out, err = capsys.readouterr()
    assert "1 failed earlier and not retried" in err
    assert out == "the requested run did not finish\n"


def test_a_dry_run_says_what_each_run_would_do_and_trains_and_writes_nothing(tmp_path, capsys):
    """--dry-run: per run, its state in the store and what the command would do (skip a done run,
    skip a failed one unless --retry-failed, resume from a checkpoint, train, alone or in a fused
    group); no store, lock or cache is created, and no GPU is needed to plan a GPU grid."""
    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    import fake_store

    from bench.arguments import build_specs
    from bench.cli import make_parser
    from bench.execute import checkpoint_path

    path, cache = tmp_path / "s.sqlite", tmp_path / "cache"
    args = ["--methods", "ce", "--seeds", "0,1,2,3,4", "--store", str(path), "--cache-dir", str(cache), *QUICK]

    def dry(*extra):
        assert main(["run", *args, "--dry-run", *extra]) == 0
        out, err = capsys.readouterr()
        return [line.split("|")[-2].strip() for line in out.splitlines()[2:]], err

    assert dry() == (["train"] * 5, "5 runs requested: 5 to train, 0 already in the store, 0 failed earlier and "
                                    f"not retried (store: {path}); --dry-run: nothing trained\n")
    assert not path.exists() and not cache.exists() and not Path(f"{path}.lock").exists()
    specs = build_specs(make_parser().parse_args(["run", *args]))
    store = fake_store.build(path)
    fake_store.add_run(store, specs[0], "CE", 50.0)
    fake_store.add_run(store, specs[1], "CE", 0.0, status="failed")
    store.close()
    checkpoint_path(specs[2], cache).parent.mkdir(parents=True)
    checkpoint_path(specs[2], cache).touch()  # a killed run's last checkpoint
    before = path.read_bytes()
    would, err = dry()
    assert would == ["skip", "skip (--retry-failed)", "resume", "train", "train"]
    assert ("5 runs requested: 3 to train (1 from a checkpoint), 1 already in the store, 1 failed earlier and not "
            "retried") in err
    assert dry("--retry-failed", "--fuse", "2", "--device", "cuda")[0] == [
        "skip", "train in a fused group of 2", "train in a fused group of 2", "train in a fused group of 2",
        "train in a fused group of 2"]
    assert path.read_bytes() == before
    assert main(["run", *args, "--dry-run", "--device", "tpu"]) == 2  # planned on any machine, but spelt right
    assert "unknown device 'tpu'" in capsys.readouterr().err


def test_a_dry_run_plans_a_grid_whose_data_is_not_on_this_machine(tmp_path, capsys):
    """A paper grid can be planned where its data is not (a laptop, before copying CIFAR to the
    cluster): the dry run says the data cannot be read and lists the runs; a real run refuses."""
    args = ["run", "--methods", "ce", "--grid", "cifar10", "--data-dir", str(tmp_path), "--store",
            str(tmp_path / "s.sqlite")]
    assert main([*args, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "bench: note: cifar10's data cannot be read here (CIFAR-10: no usable files in" in err
    assert err.count("bench: note:") == 1 and "18 runs requested: 18 to train" in err
    assert len([line for line in out.splitlines() if "| train" in line]) == 18
    assert main(args) == 2 and "CIFAR-10: no usable files in" in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite").exists()


def test_a_dry_run_estimates_training_time_from_stored_runs_of_the_same_settings(tmp_path, capsys):
    """The median training minutes of stored runs that differ only in their seeds, per run to
    train, and their sum; runs with no such counterpart get none."""
    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    import fake_store

    from bench.arguments import build_specs
    from bench.cli import make_parser

    path = tmp_path / "s.sqlite"
    args = ["--methods", "ce,focal", "--seeds", "0,1,2,3", "--store", str(path), "--cache-dir", str(tmp_path / "c"),
            *QUICK]
    specs = build_specs(make_parser().parse_args(["run", *args]))
    store = fake_store.build(path)
    for spec, seconds in zip(specs[:3], (60.0, 120.0, 300.0)):  # CE seeds 0-2 done: median 2 minutes
        fake_store.add_run(store, spec, "CE", 50.0)
        store.conn.execute("UPDATE runs SET env_json = ? WHERE key = ?", (json.dumps({"train_s": seconds}),
                                                                          spec.key()))
    other = build_specs(make_parser().parse_args(["run", *args[:4], "--epochs", "3", "--quiet"]))[0]
    fake_store.add_run(store, other, "CE", 50.0)  # CE with other settings: no estimate from it
    store.conn.commit()
    store.close()
    assert main(["run", *args, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()[2:]]
    estimates = {(r[0], r[2]): r[-2] for r in rows}
    assert estimates[("CE", "3")] == "2.0" and estimates[("CE", "0")] == ""  # done: nothing to train
    assert all(estimates[("Focal", str(seed))] == "" for seed in range(4))
    assert "about 2.0 min for 1 of the 5 runs to train; 4 have no such run" in err


def test_shards_split_a_grid_into_near_equal_parts_of_whole_seed_groups(capsys):
    """--shard I/N: the parts of one command are disjoint, make up the grid, keep each cell and
    method's seeds together (so --fuse can group them), and differ in size by one group at most."""
    from bench.arguments import build_specs, shard_specs
    from bench.cli import make_parser
    from bench.fused_runs import fuse_key

    args = make_parser().parse_args(["run", "--methods", "ce,focal,mwnet", "--imbalance", "1,10,100",
                                     "--seeds", "0,1,2"])
    specs = build_specs(args)
    parts = [shard_specs(specs, i, 4) for i in range(1, 5)]
    assert sorted(s.key() for part in parts for s in part) == sorted(s.key() for s in specs)  # 27 runs
    assert sorted(len(part) for part in parts) == [6, 6, 6, 9]  # 9 groups of 3 seeds, dealt out in turn
    owner = {fuse_key(s): i for i, part in enumerate(parts) for s in part}
    assert all(owner[fuse_key(s)] == i for i, part in enumerate(parts) for s in part)
    assert len(owner) == 9
    for bad in ("0/2", "3/2", "2", "a/b"):
        assert main(["run", "--methods", "ce", "--shard", bad, "--dry-run"]) == 2
        assert f"--shard must be I/N with 1 <= I <= N (e.g. 2/4), got '{bad}'" in capsys.readouterr().err


def test_shard_jobs_stores_merge_into_the_grids_store(tmp_path, capsys):
    """Two --shard jobs, each with its own store, merged: the grid's store, with nothing left to
    train; a shard with no runs says so, trains nothing and leaves an empty store, so that the
    merge of every shard's store works; a source that is no store is refused before anything is
    written."""
    grid = ["--methods", "ce", "--imbalance", "10,100", "--epochs", "1", "--quiet",
            "--cache-dir", str(tmp_path / "cache")]
    for i in (1, 2):
        assert main(["run", *grid, "--shard", f"{i}/2", "--store", str(tmp_path / f"s{i}.sqlite")]) == 0
        assert f"--shard {i}/2: 1 of the 2 runs asked for" in capsys.readouterr().err
    assert main(["run", *grid, "--shard", "3/3", "--store", str(tmp_path / "s3.sqlite")]) == 0
    assert "--shard 3/3: 0 of the 2 runs asked for" in capsys.readouterr().err
    assert Store(tmp_path / "s3.sqlite", create=False).runs(None).empty
    assert main(["merge", str(tmp_path / "s3.sqlite"), str(tmp_path / "s4.sqlite"), "--store",
                 str(tmp_path / "all.sqlite")]) == 2
    assert "no store at " in capsys.readouterr().err and not (tmp_path / "all.sqlite").exists()
    (tmp_path / "junk.sqlite").write_text("not a store")
    merged = tmp_path / "all.sqlite"
    assert main(["merge", str(tmp_path / "s1.sqlite"), str(tmp_path / "junk.sqlite"), "--store", str(merged)]) == 2
    assert "junk.sqlite is not a readable reweight-bench store" in capsys.readouterr().err and not merged.exists()
    # the destination among the sources: refused before the sources ahead of it are copied
    before = Store(tmp_path / "s2.sqlite", create=False).runs(None)["key"].tolist()
    assert main(["merge", str(tmp_path / "s1.sqlite"), str(tmp_path / "s2.sqlite"),
                 "--store", str(tmp_path / "s2.sqlite")]) == 2
    assert "into itself" in capsys.readouterr().err
    assert Store(tmp_path / "s2.sqlite", create=False).runs(None)["key"].tolist() == before
    assert main(["merge", str(tmp_path / "s1.sqlite"), str(tmp_path / "s2.sqlite"), str(tmp_path / "s3.sqlite"),
                 "--store", str(merged)]) == 0
    err = capsys.readouterr().err
    assert "s1.sqlite: 1 run copied (1 done, 0 failed), 0 already in" in err and "s2.sqlite: 1 run copied" in err
    assert main(["run", *grid, "--store", str(merged), "--dry-run"]) == 0
    assert "2 runs requested: 0 to train, 2 already in the store" in capsys.readouterr().err


def test_a_run_killed_mid_way_is_never_done_and_the_rerun_completes_it(tmp_path):
    """A SIGKILLed run stays not-done, a second writer is refused meanwhile, and a rerun completes
    it. On the CPU even where a GPU is present: there the 12 epochs (16 s here) would end before the kill."""
    store = tmp_path / "store.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = ["--methods", "ce", "--store", str(store), "--imbalance", "100", "--quiet", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", *run, "--epochs", "12"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    status = None
    while time.time() < deadline and status != "running":
        time.sleep(0.2)
        if store.exists():
            try:
                row = sqlite3.connect(store).execute("SELECT status FROM runs").fetchone()
                status = row[0] if row else None
            except sqlite3.OperationalError:
                pass
    time.sleep(1.0)
    # stopped mid-way, so that it cannot finish however long the next command takes on a busy machine
    proc.send_signal(signal.SIGSTOP)
    # a second `bench run` on the store while the first trains is refused, before it trains anything
    second = bench("run", *run, "--epochs", "12")
    assert second.returncode == 2 and "is being written by another `bench run` (pid" in second.stderr
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert status == "running"
    rows = sqlite3.connect(store).execute("SELECT status FROM runs").fetchall()
    assert rows == [("running",)]  # nor did the second command touch the store
    rerun = bench("run", *run, "--epochs", "2")
    assert rerun.returncode == 0  # a different spec (2 epochs): the killed one stays not-done
    rerun = bench("run", *run, "--epochs", "12")
    assert rerun.returncode == 0 and "1 trained" in rerun.stderr
    statuses = sorted(sqlite3.connect(store).execute("SELECT status FROM runs").fetchall())
    assert statuses == [("done",), ("done",)]


def test_sigterm_stops_a_run_as_ctrl_c_does_and_keeps_its_checkpoint(tmp_path):
    """A batch system's preemption (SIGTERM) ends `bench run` with one line and exit 143; the run
    stays not-done and its checkpoint stays for the next command."""
    store, cache = tmp_path / "store.sqlite", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--methods", "ce", "--store", str(store),
                             "--epochs", "30", "--quiet", "--cache-dir", str(cache), "--checkpoint-every", "0"],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoints = cache / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not any(checkpoints.glob("*.pt")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "bench: terminated; finished runs are in the store" in err and "Traceback" not in err
    assert sqlite3.connect(store).execute("SELECT status FROM runs").fetchall() == [("running",)]
    assert len(list(checkpoints.glob("*.pt"))) == 1


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX process groups")
def test_sigterm_to_the_whole_job_with_workers_leaves_its_runs_to_resume_and_no_process(tmp_path):
    """A batch system stops a job by signalling every process of it (SLURM's scancel): with
    --jobs 2 the driver and both workers get SIGTERM at once. The runs stay not-done with one
    attempt (a worker's death is not counted as a crash of its run), their checkpoints stay, and
    no process of the job is left."""
    store, cache = tmp_path / "store.sqlite", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--methods", "ce", "--seeds", "0,1", "--jobs", "2",
                             "--store", str(store), "--epochs", "30", "--quiet", "--cache-dir", str(cache),
                             "--checkpoint-every", "0"], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    checkpoints = cache / "checkpoints"
    deadline = time.time() + 180
    while time.time() < deadline and len(list(checkpoints.glob("*.pt"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "bench: terminated; finished runs are in the store" in err and "Traceback" not in err
    rows = sqlite3.connect(store).execute("SELECT status, attempts FROM runs").fetchall()
    assert rows == [("running", 1), ("running", 1)]
    assert len(list(checkpoints.glob("*.pt"))) == 2
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)  # some process of the job is still there
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("a process of the job outlived it")


def test_an_interrupt_speaks_of_runs_only_where_the_command_trains(monkeypatch, capsys):
    """Ctrl-C in `bench list` (or `timing`, `table`, which store no runs) is "bench: interrupted";
    in `bench run` it also says where the finished runs are."""
    import bench.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_list", interrupted)
    monkeypatch.setattr(cli, "cmd_run", interrupted)
    assert cli.main(["list"]) == 130
    assert capsys.readouterr().err == "bench: interrupted\n"
    assert cli.main(["run", "--methods", "ce", "--dry-run"]) == 130
    assert capsys.readouterr().err == ("bench: interrupted; finished runs are in the store, the rest will run "
                                       "next time\n")


def test_a_store_that_fails_mid_run_is_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    import bench.store

    def broken_finish(self, key, **kw):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(bench.store.Store, "finish", broken_finish)
    cache = tmp_path / "cache"
    code = main(["run", "--methods", "ce", "--epochs", "1", "--quiet", "--store", str(tmp_path / "s.sqlite"),
                 "--cache-dir", str(cache), "--checkpoint-every", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "bench: error: the results store failed: disk I/O error" in err
    assert len(list((cache / "checkpoints").glob("*.pt"))) == 1


def test_list_names_every_registered_method():
    import methods
    result = bench("list")
    assert result.returncode == 0
    for name in methods.names():
        assert name in result.stdout
    # each method's --set settings with their paper defaults, and what the quick preset changes
    assert "gamma=1.0" in result.stdout and "tau=nominal, t_k=10, exponent=1.0; quick: t_k=1" in result.stdout


def test_precision_and_graph_options_reach_the_run(tmp_path):
    """``--precision bf16`` makes a different run (its key) and ``--no-graph`` is accepted; the store
    records how the steps ran and the memory format: eager and contiguous on CPU; on a machine with
    a GPU (device auto) the fp32 run's steps are captured, the --no-graph run's eager, both
    channels_last."""
    import json

    import torch

    from bench.store import Store

    store = tmp_path / "store.sqlite"
    one_epoch = ["--epochs", "1", "--quiet", "--imbalance", "100"]  # the options' wiring, not training, is under test
    fp32 = bench("run", "--methods", "ce", "--store", str(store), *one_epoch)
    bf16 = bench("run", "--methods", "ce", "--store", str(store), "--precision", "bf16", "--no-graph", *one_epoch)
    assert fp32.returncode == 0 and bf16.returncode == 0, bf16.stderr
    assert "1 trained" in bf16.stderr  # not the fp32 run again
    from bench.cpu import has_native_bf16
    cuda = torch.cuda.is_available()
    emulated = not cuda and not has_native_bf16()
    assert ("no native bf16" in bf16.stderr) == emulated  # emulated bf16 (CPU) is said to be slow
    assert "no native bf16" not in fp32.stderr
    runs = Store(store, create=False).runs("done")
    assert len(runs) == 2
    specs = [json.loads(text) for text in runs["spec_json"]]
    envs = {s.get("precision", "fp32"): json.loads(e) for s, e in zip(specs, runs["env_json"])}
    assert sorted(envs) == ["bf16", "fp32"]
    assert envs["fp32"]["steps"] == ("captured" if cuda else "eager") and envs["bf16"]["steps"] == "eager"
    assert all(e["channels_last"] is cuda and e["cudnn_benchmark"] is cuda for e in envs.values())
    bad = bench("run", "--methods", "ce", "--store", str(store), "--precision", "fp16", *QUICK)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def _bench_as_user(prefix: list[str], cwd, *args) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` in ``cwd`` under ``prefix`` (:func:`_as_unprivileged`), this checkout's code."""
    return subprocess.run([*prefix, sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=cwd)


def _as_unprivileged() -> list[str]:
    """A command prefix under which file modes apply (root, with setpriv: without the capabilities
    that let root read and write anything)."""
    if os.geteuid() != 0:
        return []
    import shutil
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: file modes do not apply")
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}"]


@pytest.mark.parametrize("read_only", ["directory", "file"])
def test_a_read_only_store_is_read_by_table_and_refused_by_run(read_only, tmp_path):
    """A colleague's results on a read-only share: ``bench table`` reads them and leaves no
    -wal/-shm files; ``bench run`` prints the table of runs all stored already, and says the store
    is not writable, before training anything, when a run would need training."""
    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    import fake_store

    from bench.arguments import build_specs
    from bench.cli import make_parser

    shared = tmp_path / "shared"
    shared.mkdir()
    store = fake_store.build(shared / "s.sqlite")
    (in_store,) = build_specs(make_parser().parse_args(["run", "--methods", "ce", "--seeds", "1", *QUICK]))
    fake_store.add_run(store, in_store, "CE", 42.0)  # a stored run this test's `bench run` asks for again
    store.close()
    prefix = _as_unprivileged()
    (shared / "s.sqlite").chmod(0o444)
    if read_only == "directory":
        shared.chmod(0o555)

    def bench_as_user(*args):
        return _bench_as_user(prefix, tmp_path, *args)
    try:
        table = bench_as_user("table", "--store", str(shared / "s.sqlite"), "--format", "csv")
        run = bench_as_user("run", "--methods", "ce", "--seeds", "0,1", "--store", str(shared / "s.sqlite"), *QUICK)
        rerun = bench_as_user("run", "--methods", "ce", "--seeds", "1", "--store", str(shared / "s.sqlite"), *QUICK)
    finally:
        shared.chmod(0o755)
    assert table.returncode == 0, table.stderr
    assert "MW-Net(imb),cifar10 imb50 clean" in table.stdout  # fake_store: 11, 12, 13 -> 12.0 ± 1.0 (n=3)
    assert ",acc_last,12.0,1.0,3" in table.stdout
    assert run.returncode == 2 and "bench: error: store" in run.stderr and "is not writable" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1  # seed 0 would need training: refused up front
    assert rerun.returncode == 0, rerun.stderr  # every run asked for is stored: only their table
    assert "0 trained, 1 already in the store" in rerun.stderr and "42.00 (n=1)" in rerun.stdout
    assert sorted(p.name for p in shared.iterdir()) == ["s.sqlite"]  # no -wal, -shm, checkpoint left


def test_output_into_a_closed_pipe_ends_quietly():
    """``bench list | head -1``: the reader leaves early; no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=REPO)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141  # 128 + SIGPIPE, as a shell tool killed by it
    assert err == ""


@pytest.mark.parametrize("asked, expected", [
    (["--methods", "ce,focal,cb,ldam_drw,coteaching,o2u,aum,mwnet,curvenet", "--seeds", "0,3"], None),
    (["--methods", "ce"], ["run", "--methods", "ce"]),
    (["--methods", "curvenet", "--set", "curvenet.skip_layers=3", "--set", "curvenet.meta_set=pseudo",
      "--meta-per-class", "0", "--epochs", "7", "--set", "lr=0.05", "--precision", "bf16", "--seeds", "2"],
     ["run", "--methods", "curvenet", "--seeds", "2", "--meta-per-class", "0", "--precision", "bf16", "--epochs", "7",
      "--set", "lr=0.05", "--set", "curvenet.meta_set=pseudo", "--set", "curvenet.skip_layers=3"]),
    (["--methods", "focal,mwnet", "--grid", "table2", "--set", "focal.gamma=2", "--data-seed", "4", "--train-on-meta",
      "--model", "wrn16_8", "--epochs", "6", "--set", "milestones=3,5", "--set", "warmup_epochs=0",
      "--set", "mwnet.meta_lr=0.01", "--set", "nesterov=false"], None),
    (["--methods", "o2u", "--imbalance", "1,100", "--noise", "none,uniform:0.2", "--set", "o2u.drop_rate=realised"],
     None),
    # values :g would shorten (12.3457, 1.23457e+06, 0.123457) keep every digit
    (["--methods", "ce", "--imbalance", "12.3456789,1234567", "--noise", "flip2:0.123456789"], None),
])
def test_the_command_for_a_run_asks_for_exactly_that_run(asked, expected):
    """bench show KEY's command (bench.arguments.run_command): what differs from the defaults, and
    building it again gives the run's key (checked inside; here over every method and option)."""
    from bench.arguments import build_specs, run_command
    from bench.cli import make_parser

    for spec in build_specs(make_parser().parse_args(["run", *asked])):
        argv = run_command(spec)
        assert [s.key() for s in build_specs(make_parser().parse_args(argv))] == [spec.key()]
        if expected is not None:
            assert argv == expected
        if "--train-on-meta" in asked and spec.method == "focal":
            assert "--train-on-meta" in argv and "--data-seed" in argv and "--set" in argv


def test_the_command_for_your_own_npz_data_names_the_file(tmp_path):
    import numpy as np

    from bench.arguments import build_specs, run_command
    from bench.cli import make_parser

    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=rng.integers(0, 256, (200, 8, 8), dtype=np.uint8), y_train=np.arange(200) % 4,
             x_test=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), y_test=np.arange(40) % 4)
    (spec,) = build_specs(make_parser().parse_args(["run", "--methods", "ce", "--dataset", f"npz:{path}",
                                                    "--imbalance", "1", "--noise", "none"]))
    assert run_command(spec)[:4] == ["run", "--methods", "ce", "--dataset"] and spec.data_sha256


def test_a_spec_no_command_can_ask_for_is_refused():
    from bench.arguments import run_command
    from bench.errors import BenchError
    from bench.spec import RunSpec

    with pytest.raises(BenchError, match="no bench run command asks for run"):
        run_command(RunSpec(method="mwnet", params=(("variant", "imb"),)))  # the others missing


def test_sweeps_ask_for_every_combination_of_their_values_each_run_once():
    from bench.arguments import asked_specs, sweep_sets
    from bench.cli import make_parser

    assert sweep_sets(None) == [[]]
    assert sweep_sets(["focal.gamma=0.5,2", "lr=0.05,0.1"]) == [
        ["focal.gamma=0.5", "lr=0.05"], ["focal.gamma=0.5", "lr=0.1"], ["focal.gamma=2", "lr=0.05"],
        ["focal.gamma=2", "lr=0.1"]]
    args = make_parser().parse_args(["run", "--methods", "focal,ce", "--seeds", "0,1", "--sweep", "focal.gamma=0.5,2",
                                     "--sweep", "lr=0.05,0.1", "--set", "epochs=3"])
    specs = asked_specs(args)
    got = sorted((s.method, dict(s.params).get("gamma"), s.lr, s.seed, s.epochs) for s in specs)
    # focal: 2 gammas x 2 lrs x 2 seeds; CE has no gamma: 2 lrs x 2 seeds, each once
    assert got == sorted([("focal", g, lr, seed, 3) for g in (0.5, 2.0) for lr in (0.05, 0.1) for seed in (0, 1)]
                         + [("ce", None, lr, seed, 3) for lr in (0.05, 0.1) for seed in (0, 1)])
    assert len({s.key() for s in specs}) == len(specs) == 12


@pytest.mark.parametrize("args, message", [
    (["--sweep", "lr"], "malformed --sweep 'lr'; expected KEY=V1,V2,..."),
    (["--sweep", "lr=0.1", "--sweep", "lr=0.2"], "--sweep lr is given twice"),
    (["--sweep", "lr=0.1,0.1"], "repeats a value"),
    (["--sweep", "lr=0.1,0.2", "--set", "lr=0.3"], "lr: give each setting in --set or in --sweep, not both"),
    (["--sweep", "focal.gamma=1,2"], "--sweep focal.gamma names a method that is not in --methods (ce)"),
    (["--sweep", "lr=0.1,-1"], "lr must be positive"),
    (["--sweep", "ce.gamma=1"], "method 'ce' has no setting 'gamma'"),
])
def test_bad_sweeps_are_one_line_errors(capsys, args, message):
    assert main(["run", "--methods", "ce", *args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error:") and message in err, err
    assert main(["runs-for", "--paper", "2", "--sweep", "lr=0.1,0.2", "--dry-run"]) == 2
    assert "--paper 2 runs the table's own settings; drop --sweep" in capsys.readouterr().err


def test_a_sweep_trains_a_table_row_per_value_and_the_dry_run_names_the_values(tmp_path, capsys):
    args = ["run", "--methods", "ce", "--sweep", "lr=0.05,0.1", "--epochs", "1", "--imbalance", "100", "--noise",
            "none", "--store", str(tmp_path / "s.sqlite"), "--cache-dir", str(tmp_path / "c"), "--quiet"]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert [line.split("|")[3].strip() for line in out.splitlines()[2:]] == ["lr=0.05", "lr=0.1"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| CE")]
    assert rows == ["CE [lr=0.05]", "CE [lr=0.1]"]
    results = [line.split("] ", 1)[1].split(" fmnist")[0] for line in err.splitlines() if " acc " in line]
    assert results == ["CE [lr=0.05]", "CE [lr=0.1]"]  # each run's line names its value too


def test_epochs_says_which_methods_keep_their_own_stages(tmp_path, capsys):
    """--epochs scales the classifier's schedule only: CurveNet's probe, O2U-Net's cycles and
    Co-teaching's forget-rate ramp keep their length unless set, and the run says so once per
    method (a 2-epoch CurveNet run trains 30 probe epochs first)."""
    args = ["run", "--dry-run", "--store", str(tmp_path / "s.sqlite"), "--seeds", "0,1"]
    assert main([*args, "--methods", "curvenet,o2u,ce,coteaching", "--epochs", "2"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert notes == [
        "bench: note: --epochs 2 shortens the classifier's schedule, not CurveNet's own stages "
        "(curvenet.probe_epochs=12, curvenet.half_period=3, curvenet.periods=3); shorten those with --set",
        "bench: note: --epochs 2 shortens the classifier's schedule, not O2U-Net's own stages "
        "(o2u.cycle_length=5, o2u.cycles=2); shorten those with --set",
        "bench: note: --epochs 2 shortens the classifier's schedule, not Co-teaching's own stages "
        "(coteaching.t_k=1); shorten those with --set"]
    assert main([*args, "--methods", "curvenet", "--epochs", "2", "--set", "curvenet.probe_epochs=2",
                 "--set", "curvenet.periods=1", "--set", "curvenet.half_period=1"]) == 0
    assert main([*args, "--methods", "curvenet,o2u"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_a_setting_that_does_nothing_keeps_its_preset_value_and_is_said(tmp_path, capsys):
    """Class-Balanced's gamma enters only its focal losses and sigmoid_init only its sigmoid ones:
    given with the softmax loss, each stays at the preset's value, so the run is the plain one
    (same key, same row, nothing trained twice), and `bench run` says so once."""
    from bench.arguments import asked_specs
    from bench.cli import make_parser

    plain = _asked("--methods", "cb")
    given = ["--methods", "cb", "--set", "cb.gamma=2", "--set", "cb.sigmoid_init=false"]
    notes = []
    assert [s.key() for s in asked_specs(make_parser().parse_args(["run", *given]), notes)] == [plain[0].key()]
    assert notes == [
        "cb.gamma=2.0 does nothing with cb.loss=softmax; those runs keep cb.gamma=1.0, the same runs as without it",
        "cb.sigmoid_init=False does nothing with cb.loss=softmax; those runs keep cb.sigmoid_init=True, "
        "the same runs as without it"]
    swept = _asked("--methods", "cb", "--sweep", "cb.loss=softmax,softmax_focal,sigmoid", "--set", "cb.gamma=2")
    params = [dict(s.params) for s in swept]
    assert [(p["loss"], p["gamma"]) for p in params] == [("softmax", 1.0), ("softmax_focal", 2.0), ("sigmoid", 1.0)]
    assert swept[0].key() == plain[0].key()
    assert main(["run", "--dry-run", "--store", str(tmp_path / "s.sqlite"), *given]) == 0
    err = capsys.readouterr().err
    assert err.count("bench: note: cb.gamma=2.0 does nothing") == 1 and "cb.sigmoid_init=False does nothing" in err
    assert main(["run", "--dry-run", "--store", str(tmp_path / "s.sqlite"), "--methods", "cb",
                 "--set", "cb.loss=focal", "--set", "cb.gamma=2"]) == 0
    assert "does nothing" not in capsys.readouterr().err


@pytest.mark.parametrize("method, unused, switch", [
    ("ldam_drw", ["ldam_drw.beta=0.99", "ldam_drw.reduction=batch"], "ldam_drw.drw=false,true"),
    ("curvenet", ["curvenet.drw_counts=clean"], "curvenet.drw=false,true"),
    ("curvenet", ["curvenet.pseudo_per_class=5"], "curvenet.meta_set=clean,pseudo"),
])
def test_settings_of_a_switched_off_part_do_nothing_until_it_is_on(method, unused, switch):
    """LDAM's DRW settings without DRW, CurveNet's DRW counts without DRW and its pseudo-meta size
    with the clean meta set: the run is the one without them; with the part on, they count."""
    sets = [a for item in unused for a in ("--set", item)]
    off, on = _asked("--methods", method, "--sweep", switch, *sets)
    switched_off = switch.split(",")[0]
    assert off.key() == _asked("--methods", method, "--set", switched_off)[0].key()
    for item in unused:  # with the part on, each keeps the value given
        name, value = item.split(".", 1)[1].split("=")
        assert str(dict(on.params)[name]) in (value, str(float(value)) if value[0].isdigit() else value)


def test_meta_batch_size_keeps_its_preset_value_for_methods_that_read_no_meta_set():
    """Only MW-Net and CurveNet draw meta batches: given to CE, meta_batch_size would change its key
    and nothing else (a sweep over it trained CE once per value), so CE keeps the preset's 128."""
    from bench.arguments import asked_specs
    from bench.cli import make_parser

    plain = _asked("--methods", "ce,mwnet")
    notes = []
    given = asked_specs(make_parser().parse_args(["run", "--methods", "ce,mwnet", "--set", "meta_batch_size=64"]),
                        notes)
    assert (given[0].method, given[0].meta_batch_size, given[0].key()) == ("ce", 128, plain[0].key())
    assert (given[1].method, given[1].meta_batch_size) == ("mwnet", 64) and given[1].key() != plain[1].key()
    assert notes == ["meta_batch_size=64 does nothing for ce (no meta set read); those runs keep "
                     "meta_batch_size=128, the same runs as without it"]
    swept = _asked("--methods", "ce,mwnet", "--sweep", "meta_batch_size=64,128")
    assert sorted((s.method, s.meta_batch_size) for s in swept) == [("ce", 128), ("mwnet", 64), ("mwnet", 128)]
    assert _asked("--methods", "mwnet", "--set", "meta_batch_size=64")[0].key() == given[1].key()


def _asked(*args):
    from bench.arguments import asked_specs
    from bench.cli import make_parser

    return asked_specs(make_parser().parse_args(["run", *args]))


def test_runs_are_methods_by_cells_by_seeds_in_the_commands_order():
    """The command's order (what --shard deals out and --fuse groups): methods outermost, then the
    cells (imbalance before noise), then the seeds."""
    specs = _asked("--methods", "ce,focal", "--imbalance", "1,10", "--noise", "none,flip2:0.2", "--seeds", "0,1")
    assert [(s.method, s.imbalance, s.noise_type, s.noise_rate, s.seed) for s in specs] == [
        (m, imb, kind, rate, seed) for m in ("ce", "focal") for imb in (1.0, 10.0)
        for kind, rate in (("none", 0.0), ("flip2", 0.2)) for seed in (0, 1)]


def test_the_same_run_asked_for_twice_is_one_run():
    (one,) = _asked("--methods", "ce", "--seeds", "0,0")
    assert _asked("--methods", "ce,ce", "--seeds", "3,3", "--noise", "flip2:0.4,flip2:0.40") == [
        one.replace(seed=3, data_seed=3)]
    specs = _asked("--methods", "ce", "--seeds", "2,0,2,1")
    assert [s.seed for s in specs] == [2, 0, 1]


def test_equal_values_written_differently_or_left_at_their_default_ask_for_the_same_run():
    (plain,) = _asked("--methods", "focal")
    for args in (["--noise", "flip2:0.40"], ["--noise", "flip2:.4"], ["--imbalance", "10.0"], ["--imbalance", "1e1"],
                 ["--seeds", "0", "--data-seed", "0"], ["--epochs", "20"], ["--set", "lr=0.10"],
                 ["--set", "milestones=8,10"], ["--set", "focal.gamma=1"], ["--set", "focal.gamma=1.0"],
                 ["--precision", "fp32"], ["--meta-per-class", "20"], ["--preset", "quick"],
                 ["--set", "nesterov=yes"], ["--set", "train_on_meta=false"], ["--model", "small_cnn"]):
        (spec,) = _asked("--methods", "focal", *args)
        assert spec.key() == plain.key(), args
    (clean,) = _asked("--methods", "ce", "--noise", "none")
    for args in (["--noise", "flip2:0"], ["--noise", "uniform:0.0"]):
        assert _asked("--methods", "ce", *args)[0].key() == clean.key(), args


def test_the_data_seed_defaults_to_each_runs_training_seed():
    specs = _asked("--methods", "ce", "--seeds", "3,5")
    assert [(s.seed, s.data_seed) for s in specs] == [(3, 3), (5, 5)]
    assert [(s.seed, s.data_seed) for s in _asked("--methods", "ce", "--seeds", "3,5", "--data-seed", "0")] == \
        [(3, 0), (5, 0)]


def test_a_grid_runs_under_its_own_preset_unless_one_is_given():
    specs = _asked("--methods", "ce", "--grid", "cifar10")
    assert len(specs) == 18 and {(s.preset, s.model, s.epochs, s.dataset) for s in specs} == {
        ("paper", "resnet32", 200, "cifar10")}
    quick = _asked("--methods", "ce", "--grid", "cifar10", "--preset", "quick")
    assert {(s.preset, s.model, s.epochs) for s in quick} == {("quick", "small_cnn", 20)}


def test_the_paper_preset_defaults_to_a_clean_balanced_cifar10_cell_and_scales_its_own_schedule():
    (spec,) = _asked("--methods", "ce", "--preset", "paper")
    assert (spec.dataset, spec.imbalance, spec.noise_type, spec.noise_rate, spec.model) == \
        ("cifar10", 1.0, "none", 0.0, "resnet32")
    (short,) = _asked("--methods", "ce", "--preset", "paper", "--epochs", "100")
    assert (short.epochs, short.milestones, short.warmup_epochs) == (100, (40, 50), 2)  # the paper's 5 of 200
    (short,) = _asked("--methods", "ce", "--preset", "paper", "--set", "epochs=100")
    assert (short.epochs, short.milestones, short.warmup_epochs) == (100, (40, 50), 2)


def test_protocol_values_at_their_bounds_are_taken_by_bench_run():
    for args in (["--set", "weight_decay=0"], ["--set", "meta_per_class=0"], ["--meta-per-class", "0"],
                 ["--set", "milestones=1,2", "--epochs", "2"], ["--set", "warmup_epochs=2", "--epochs", "2"],
                 ["--shard", "2/2"], ["--shard", "1/1"]):
        assert main(["run", "--methods", "ce", *args, "--dry-run"]) == 0, args


def test_shard_texts_are_read_as_index_and_count():
    from bench.arguments import parse_shard

    assert parse_shard("1/1") == (1, 1) and parse_shard("2/2") == (2, 2) and parse_shard("3/8") == (3, 8)


def test_the_paper_tables_runs_take_the_users_preset_and_settings_on_top():
    from bench.arguments import paper_specs
    from bench.cli import make_parser

    def specs(*args):
        return paper_specs(make_parser().parse_args(["runs-for", "--paper", "8", "--seeds", "0", *args]))

    assert {s.preset for s in specs()} == {"paper"}
    assert {s.preset for s in specs("--preset", "quick")} == {"quick"}
    rows = specs("--set", "curvenet.skip_layers=3")  # the rows' own skip_layers=1, 2, 3 give way to the user's
    assert {dict(s.params)["skip_layers"] for s in rows} == {3}


def test_a_methods_setting_on_a_paper_table_applies_to_the_rows_of_that_method():
    """Table 2 trains MW-Net and CurveNet in separate requests: a CurveNet setting reaches every
    CurveNet run and no MW-Net run (it failed, naming a --methods the user never gave); a method
    the table does not train, or a meta-set size on Table 7 (which sets its own), is one line."""
    from bench.arguments import paper_specs
    from bench.cli import make_parser
    from bench.errors import BenchError

    def specs(n, *args):
        return paper_specs(make_parser().parse_args(["runs-for", "--paper", n, "--seeds", "0", *args]))

    plain = specs("2")
    tuned = specs("2", "--set", "curvenet.embed_dim=32", "--set", "lr=0.05")
    assert len(tuned) == len(plain) and {s.lr for s in tuned} == {0.05}
    assert {dict(s.params).get("embed_dim") for s in tuned if s.method == "curvenet"} == {32}
    assert [s.params for s in tuned if s.method == "mwnet"] == [s.params for s in plain if s.method == "mwnet"]
    with pytest.raises(BenchError, match="table 2 does not train 'focal' \\(its methods: curvenet, mwnet\\)"):
        specs("2", "--set", "focal.gamma=1")
    for extra in (["--meta-per-class", "5"], ["--set", "meta_per_class=5"]):
        with pytest.raises(BenchError, match="--paper 7 sets the meta-set size of each row itself"):
            specs("7", *extra)


def test_one_setting_typed_two_ways_is_one_run():
    """1 and 1.0 for a float setting whose default is None (MW-Net's meta_lr), and -0 and 0, are
    one setting: one key, so one run (they were two, trained twice by --sweep meta_lr=1,1.0)."""
    def keys(*args):
        return [s.key() for s in _asked(*args)]

    assert keys("--methods", "mwnet", "--set", "mwnet.meta_lr=1") == keys("--methods", "mwnet", "--set",
                                                                       "mwnet.meta_lr=1.0")
    assert keys("--methods", "mwnet", "--set", "mwnet.meta_weight_decay=0") == keys(
        "--methods", "mwnet", "--set", "mwnet.meta_weight_decay=0.0")
    (spec,) = _asked("--methods", "mwnet", "--set", "mwnet.meta_lr=1")
    assert dict(spec.params)["meta_lr"] == 1.0 and type(dict(spec.params)["meta_lr"]) is float
    assert keys("--methods", "ce", "--noise", "flip2:-0") == keys("--methods", "ce", "--noise", "none")
    assert keys("--methods", "focal", "--set", "focal.gamma=-0") == keys("--methods", "focal", "--set",
                                                                      "focal.gamma=0")
    assert len(_asked("--methods", "mwnet", "--sweep", "mwnet.meta_lr=1,1.0")) == 1


def test_the_command_for_a_run_keeps_every_digit_of_its_settings():
    from bench.arguments import run_command

    (spec,) = _asked("--methods", "focal", "--set", "lr=0.123456789", "--set", "focal.gamma=1.23456789")
    argv = run_command(spec)
    assert "lr=0.123456789" in argv and "focal.gamma=1.23456789" in argv


def test_cells_and_rows_differing_past_six_digits_keep_distinct_labels():
    """Labels (cells, sweep rows, --cell texts) write a value in full where ``:g`` would round it,
    so two cells or settings never share a label; the usual values stay short."""
    from bench.arguments import swept
    from bench.data.bias import noise_text, number_text

    assert [number_text(v) for v in (10.0, 0.4, 1.0, 200.0)] == ["10", "0.4", "1", "200"]
    assert number_text(12.3456789) == "12.3456789" and number_text(1234567.0) == "1234567.0"
    a, b = _asked("--methods", "ce", "--imbalance", "12.3456789,12.3457", "--noise", "flip2:0.4000001")
    assert a.cell.label() != b.cell.label() and a.cell.label() == "fmnist-mini imb12.3456789 flip2:0.4000001"
    assert noise_text("flip2", 0.4) == "flip2:0.4"
    (spec,) = _asked("--methods", "ce", "--set", "lr=0.1000001")
    assert swept(spec, ["lr=0.1000001"]) == "lr=0.1000001"


def test_empty_sweep_values_are_refused_not_skipped():
    from bench.arguments import sweep_sets
    from bench.errors import BenchError

    assert sweep_sets(["lr=0.1, 0.2"]) == [["lr=0.1"], ["lr=0.2"]]
    for item in ("lr=0.1,,0.2", "lr=0.1,0.2,", "lr=,"):
        with pytest.raises(BenchError, match="has an empty item"):
            sweep_sets([item])


def test_shards_deal_the_seed_groups_out_in_the_commands_order():
    from bench.arguments import shard_specs

    specs = _asked("--methods", "mwnet,ce,focal,cb", "--seeds", "0,1")
    parts = [[(s.method, s.seed) for s in shard_specs(specs, i, 3)] for i in (1, 2, 3)]
    assert parts == [[("mwnet", 0), ("mwnet", 1), ("cb", 0), ("cb", 1)], [("ce", 0), ("ce", 1)],
                     [("focal", 0), ("focal", 1)]]


def test_every_run_option_reaches_the_grid_and_the_defaults_are_documented(tmp_path, monkeypatch, capsys):
    """What `bench run` hands bench.execute.run_grid (replaced here: nothing trains): each option's
    value, and without them their documented defaults; the seeds default to 0."""
    import torch

    from bench import execute, executors
    from bench.execute import RunOptions

    seen = {}

    def fake_run_grid(specs, store, **kw):
        seen.clear()
        seen.update(kw, specs=list(specs))
        return dict(done=0, skipped=0, failed=0, failed_earlier=0)

    monkeypatch.setattr(execute, "run_grid", fake_run_grid)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # --deterministic sets it: absent again after the test
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    base = ["run", "--methods", "ce", "--epochs", "1", "--store", str(tmp_path / "s.sqlite")]
    assert main([*base, "--device", "cpu", "--cache-dir", str(tmp_path / "c"), "--data-dir", str(tmp_path),
                 "--retry-failed", "--quiet", "--max-retries", "5", "--checkpoint-every", "7.5", "--no-graph",
                 "--compile", "--deterministic", "--fuse", "3", "--jobs", "2", "--seeds", "4,6"]) == 0
    assert seen["device"] == torch.device("cpu") and seen["cache_dir"] == tmp_path / "c"
    assert seen["data_dir"] == str(tmp_path) and seen["retry_failed"] is True and seen["show_progress"] is False
    assert seen["max_retries"] == 5 and seen["checkpoint_every_s"] == 7.5 and seen["fuse"] == 3
    assert seen["options"] == RunOptions(graph=False, compile=True, deterministic=True)
    assert isinstance(seen["executor"], executors.LocalExecutor) and seen["executor"].capacity == 2
    assert [s.seed for s in seen["specs"]] == [4, 6]
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"]  # set before any CUDA work, here and in the workers
    capsys.readouterr()
    assert main(base) == 0
    assert seen["cache_dir"] == Path(".bench_cache") and seen["data_dir"] is None
    assert seen["retry_failed"] is False and seen["show_progress"] is True
    assert seen["max_retries"] == 2 and seen["checkpoint_every_s"] == 60.0 and seen["fuse"] == 1
    assert seen["options"] == RunOptions(graph=True, compile=False, deterministic=False)
    assert isinstance(seen["executor"], executors.SerialExecutor)
    assert [(s.seed, s.data_seed) for s in seen["specs"]] == [(0, 0)]


def test_bf16_runs_are_checked_for_slow_bf16_on_their_device_except_in_a_dry_run(tmp_path, monkeypatch, capsys):
    import bench.cli
    from bench import execute

    checked = []
    monkeypatch.setattr(bench.cli, "warn_if_slow_bf16", lambda device, precision: checked.append((str(device),
                                                                                                precision)))
    monkeypatch.setattr(execute, "run_grid", lambda specs, store, **kw: dict(done=0, skipped=0, failed=0,
                                                                             failed_earlier=0))
    base = ["run", "--methods", "ce", "--epochs", "1", "--device", "cpu", "--store", str(tmp_path / "s.sqlite")]
    assert main([*base, "--precision", "bf16", "--dry-run"]) == 0 and checked == []
    assert main(base) == 0 and checked == []
    assert main([*base, "--precision", "bf16"]) == 0 and checked == [("cpu", "bf16")]


def test_an_unwritable_cache_dir_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """--cache-dir under a directory this user cannot write (os.access says so: as root the mode
    bits would not) is one line and exit 2, before a store is created."""
    import bench.cli

    locked, real_access = tmp_path / "locked", os.access
    locked.mkdir()
    monkeypatch.setattr(bench.cli.os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    store = tmp_path / "s.sqlite"
    code = main(["run", "--methods", "ce", *QUICK, "--cache-dir", str(locked / "cache"), "--store", str(store)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"bench: error: --cache-dir {locked / 'cache'}: {locked} is not writable"
    assert not store.exists() and not any(locked.iterdir())


@pytest.mark.parametrize("extra", [["--method", "ce"], ["--cell", "fmnist-mini:10:flip2:0.4"]])
def test_a_paper_table_refuses_method_and_cell_filters(extra, tmp_path, capsys):
    assert main(["table", "--paper", "2", *extra, "--store", str(tmp_path / "none.sqlite")]) == 2
    assert "--paper 2 shows the table's own rows and cells; drop --method/--cell" in capsys.readouterr().err


def test_a_short_output_into_a_closed_pipe_ends_quietly_too(tmp_path):
    """``bench table ... | head -1`` where the table fits in stdout's buffer: the flush at the end
    of the command meets the closed pipe inside main, not at the interpreter's exit."""
    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    import fake_store

    fake_store.build(tmp_path / "s.sqlite").close()
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": str(REPO)}  # buffered
    proc = subprocess.Popen([sys.executable, "-m", "bench", "table", "--store", str(tmp_path / "s.sqlite"),
                             "--format", "csv", "--method", "ce"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=REPO)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "BrokenPipeError" not in err


@pytest.mark.parametrize("bad,message", [
    (["--fuse", "0"], "--fuse must be at least 1"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--max-retries", "-1"], "--max-retries must be non-negative"),
    (["--device", "tpu"], "unknown device"),
])
def test_an_empty_shard_refuses_bad_options_as_every_other_shard_does(bad, message, tmp_path, capsys):
    """In an array job of N shards one bad command fails on every shard: a shard without runs checks
    --fuse, --jobs / --max-retries (executors.from_args) and --device too, and writes no store."""
    grid = ["run", "--methods", "ce", "--imbalance", "10,100", "--epochs", "1", "--quiet", *bad]
    assert main([*grid, "--shard", "1/3", "--store", str(tmp_path / "s1.sqlite")]) == 2  # a shard with runs
    assert message in capsys.readouterr().err
    assert main([*grid, "--shard", "3/3", "--store", str(tmp_path / "s3.sqlite")]) == 2  # the empty shard
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s3.sqlite").exists()


def test_a_method_setting_its_name_does_not_show_is_kept_and_said_under_the_table(tmp_path, capsys):
    """`--set coteaching.t_k=5` leaves the row named Co-teaching (its name shows tau, not T_k): the
    run's env keeps the setting and its default, and the notes under `bench run`'s and `bench
    table`'s tables say it, so a lone such run does not pass for the method at its defaults."""
    from bench.store import Store

    store = tmp_path / "store.sqlite"
    args = ["--methods", "coteaching", "--set", "coteaching.t_k=5", "--store", str(store),
            "--cache-dir", str(tmp_path / "cache"), *QUICK]
    assert main(["run", *args]) == 0
    said = "Co-teaching: coteaching.t_k 5 (the quick preset: 1), epochs 2 (the quick preset: 20)"
    assert said in capsys.readouterr().err
    opened = Store(store, create=False)
    (env,) = [json.loads(text) for text in opened.runs("done")["env_json"]]
    opened.close()
    assert env["method_settings"] == {"t_k": [5, 1]}
    assert main(["table", "--store", str(store)]) == 0
    out, err = capsys.readouterr()
    assert "| Co-teaching " in out and said in err


def test_a_read_only_store_with_runs_still_in_its_wal_shows_them_or_says_why_not(tmp_path):
    """A writer killed (or still running as the store's owner) leaves its last runs in the -wal
    file: a reader who cannot write the store sees them too (read-only WAL, beside the -shm file),
    and where it cannot read them (no -shm, a read-only directory) it says so; it used to read the
    file as immutable, without them."""
    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    import fake_store

    from bench.spec import RunSpec
    prefix = _as_unprivileged()
    shared, copied = tmp_path / "shared", tmp_path / "copied"
    shared.mkdir()
    copied.mkdir()
    store = fake_store.build(shared / "s.sqlite")
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.conn.execute("PRAGMA wal_autocheckpoint = 0")  # what follows stays in the -wal file
    fake_store.add_run(store, RunSpec(method="ce", seed=77), "CE", 42.0)
    for name in ("s.sqlite", "s.sqlite-wal"):  # a killed writer's files, without the -shm
        (copied / name).write_bytes((shared / name).read_bytes())

    def table_as_user(path):
        return _bench_as_user(prefix, tmp_path, "table", "--store", str(path), "--format", "csv")
    try:
        for folder in (shared, copied):
            (folder / "s.sqlite").chmod(0o444)
            folder.chmod(0o555)
        seen, refused = table_as_user(shared / "s.sqlite"), table_as_user(copied / "s.sqlite")
    finally:
        for folder in (shared, copied):
            folder.chmod(0o755)
        store.close()
    assert seen.returncode == 0, seen.stderr
    assert any(line.startswith("CE,") and ",acc_last,42.0," in line for line in seen.stdout.splitlines())
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "s.sqlite-wal holds runs not yet written into" in refused.stderr

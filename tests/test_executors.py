"""Executors: worker processes (--jobs N), Ray (--executor ray), retries of dead workers,
diverged runs. The driver is the only writer of the store in every case."""

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import bench.execute
import methods
from bench import executors
from bench.arguments import build_specs
from bench.cli import main, make_parser
from bench.errors import BenchError
from bench.execute import RunResult, checkpoint_path, execute, pending, run_grid
from bench.store import Store

TINY = ["--methods", "ce", "--epochs", "1", "--imbalance", "100", "--noise", "none"]


def specs_for(*args):
    return build_specs(make_parser().parse_args(["run", *args]))


def rows(store_path):
    con = sqlite3.connect(store_path)
    out = {r[0]: r[1:] for r in con.execute("SELECT key, status, attempts, error, metrics_json FROM runs")}
    con.close()
    return out


def crashy_task(spec, *, marker_dir, **kwargs):
    """A task whose process dies: seed 0 on its first attempt only, seed 1 on every attempt."""
    marker = Path(marker_dir) / f"{spec.key()}.tried"
    if spec.seed == 1 or (spec.seed == 0 and not marker.exists()):
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return execute(spec, **kwargs)


def scripted_task(spec, **kwargs):
    """A task that trains nothing: seed 1 hits a user error, 2 a method's bug (an exception the run
    does not catch), 3 blocks (until it is stopped); any other seed is done at once."""
    if spec.seed == 1:
        raise BenchError(f"seed {spec.seed}: a user error")
    if spec.seed == 2:
        raise RuntimeError("a method's bug")
    if spec.seed == 3:
        threading.Event().wait(120)
    return RunResult(spec, "done", metrics={"acc_last": 50.0}, history=[{"stage": "train", "epoch": 0}],
                     samples={"dataset_index": [3], "clean_label": [0], "observed_label": [0], "is_noisy": [0]})


def unsendable_task(spec, **kwargs):
    """Seed 0 records a value that does not pickle (a lambda); other seeds are done as scripted."""
    result = scripted_task(spec)
    if spec.seed == 0:
        result.values = {"score": lambda: 0}
    return result


class RecordingExecutor(executors.LocalExecutor):
    """The worker pool, keeping how each of its worker processes ended."""

    def __init__(self, jobs):
        super().__init__(jobs, task=scripted_task)
        self.exits = []

    def _reap(self, worker):
        code = super()._reap(worker)
        self.exits.append(code)
        return code


# ----------------------------------------------------------------------------- helpers

def test_worker_threads_share_the_cores_and_respect_omp_num_threads():
    assert executors.worker_threads(1, cores=8, env={}) == 8
    assert executors.worker_threads(3, cores=8, env={}) == 2
    assert executors.worker_threads(16, cores=8, env={}) == 1
    assert executors.worker_threads(2, cores=8, env={"OMP_NUM_THREADS": "1"}) == 1
    assert executors.worker_threads(2, cores=8, env={"OMP_NUM_THREADS": "junk"}) == 4


def test_from_args_picks_the_executor_and_workers_share_the_cores(monkeypatch):
    def executor(*args):
        return executors.from_args(make_parser().parse_args(["run", "--methods", "ce", *args]))

    assert type(executor()) is executors.SerialExecutor
    assert type(executor("--max-retries", "0")) is executors.SerialExecutor  # no retries is allowed
    pool = executor("--jobs", "4")
    assert type(pool) is executors.LocalExecutor and pool.capacity == 4
    with pytest.raises(BenchError, match="--jobs must be at least 1, got 0"):
        executors.LocalExecutor(0)
    monkeypatch.setattr(executors, "available_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    pool.start(device="cpu", data_dir=None, cache_dir=None, checkpoint_every_s=0)  # spawns nothing yet
    assert pool.threads == 2  # each of the 4 workers gets its share of the 8 cores


def test_workers_share_the_gpus_round_robin():
    cuda = torch.device("cuda")
    assert [executors.worker_device(s, cuda, device_count=2).index for s in range(5)] == [0, 1, 0, 1, 0]
    assert executors.worker_device(3, torch.device("cuda", 1), device_count=2).index == 1
    assert executors.worker_device(3, torch.device("cpu"), device_count=2).type == "cpu"


def test_packing_runs_on_one_gpu_without_mps_is_said(monkeypatch, tmp_path, capsys):
    """Several workers on one GPU take turns without NVIDIA MPS: ``--jobs`` says so, once, and how
    to start it; nothing on the CPU, one worker per GPU, or with MPS up."""
    cuda = torch.device("cuda")
    hint = executors.packing_hint(4, cuda, device_count=1, mps=False)
    assert "up to 4 runs on each GPU" in hint and "nvidia-cuda-mps-control -d" in hint
    assert "up to 2 runs" in executors.packing_hint(4, cuda, device_count=2, mps=False)
    assert "up to 4 runs" in executors.packing_hint(4, torch.device("cuda", 1), device_count=2, mps=False)
    assert executors.packing_hint(4, cuda, device_count=1, mps=True) is None
    assert executors.packing_hint(2, cuda, device_count=2, mps=False) is None
    assert executors.packing_hint(1, cuda, device_count=1, mps=False) is None
    assert executors.packing_hint(4, torch.device("cpu"), device_count=1, mps=False) is None
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert not executors.mps_running()
    (tmp_path / "control").touch()  # the daemon's control pipe
    assert executors.mps_running() and executors.packing_hint(4, cuda, device_count=1) is None
    # --jobs prints it once when its workers start
    monkeypatch.setattr(executors, "packing_hint", lambda jobs, device: f"hint for {jobs} on {device.type}")
    executors.LocalExecutor(3).start(device=torch.device("cpu"), data_dir=None, cache_dir=None, checkpoint_every_s=0)
    assert capsys.readouterr().err == "hint for 3 on cpu\n"


def test_keep_freed_memory_sets_glibcs_malloc_thresholds_once_per_process(monkeypatch):
    """bench/cpu.py, the workers' allocator setting: mallopt(M_MMAP_THRESHOLD, 32 MiB), then
    M_TRIM_THRESHOLD 2^31 - 1 (never trim) and M_TOP_PAD 64 MiB, with glibc's option numbers
    (-3, -1, -2 in malloc.h); once per process; False where mallopt refuses or off Linux."""
    import types

    from bench import cpu

    calls = []

    def libc_whose_mallopt_returns(result):
        def mallopt(option, value):
            calls.append((option, value))
            return result
        return lambda name: types.SimpleNamespace(mallopt=mallopt)

    monkeypatch.setattr(cpu, "_done", None)
    monkeypatch.setattr(cpu.ctypes, "CDLL", libc_whose_mallopt_returns(1))
    assert cpu.keep_freed_memory() is True
    assert calls == [(-3, 32 * 2**20), (-1, 2**31 - 1), (-2, 64 * 2**20)]
    assert cpu.keep_freed_memory() is True and len(calls) == 3  # once per process
    monkeypatch.setattr(cpu, "_done", None)
    monkeypatch.setattr(cpu.ctypes, "CDLL", libc_whose_mallopt_returns(0))
    assert cpu.keep_freed_memory() is False
    calls.clear()
    monkeypatch.setattr(cpu, "_done", None)
    monkeypatch.setattr(cpu.sys, "platform", "darwin")
    assert cpu.keep_freed_memory() is False and calls == []


def test_the_slow_bf16_note_is_for_bf16_on_a_cpu_without_native_bf16_only(monkeypatch, capsys):
    """bench/cpu.py: one stderr line for --precision bf16 on a CPU that emulates bf16; nothing for
    fp32, on CUDA, or where the CPU has it; a torch without oneDNN's probe counts as no bf16."""
    from bench import cpu

    monkeypatch.setattr(cpu, "has_native_bf16", lambda: False)
    cpu.warn_if_slow_bf16(torch.device("cpu"), "bf16")
    assert "no native bf16" in capsys.readouterr().err
    for device, precision in ((torch.device("cpu"), "fp32"), (torch.device("cuda"), "bf16"), ("cuda:1", "bf16")):
        cpu.warn_if_slow_bf16(device, precision)
        assert capsys.readouterr().err == "", (device, precision)
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: True)
    cpu.warn_if_slow_bf16("cpu", "bf16")
    assert capsys.readouterr().err == ""
    monkeypatch.undo()

    def probe_fails():
        raise RuntimeError("no oneDNN in this build")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", probe_fails, raising=False)
    assert cpu.has_native_bf16() is False


def test_exit_codes_are_described():
    assert "SIGKILL" in executors.describe_exit(-9) and "out of memory" in executors.describe_exit(-9)
    assert "SIGSEGV" in executors.describe_exit(-11)
    assert "code 3" in executors.describe_exit(3)


def test_without_ray_the_ray_executor_is_a_one_line_error_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    store = tmp_path / "s.sqlite"
    assert main(["run", *TINY, "--quiet", "--executor", "ray", "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install .[ray]" in err
    assert not store.exists()


def test_an_unreachable_ray_address_is_an_error_not_a_hang():
    """ray.init retries an address nobody listens at for ever; bench checks it first."""
    import socket

    from bench.executors import check_reachable

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        check_reachable(f"127.0.0.1:{port}")
        check_reachable(f"ray://127.0.0.1:{port}")
    finally:
        listener.close()
    for address in (f"127.0.0.1:{port}", "ray://127.0.0.1:1"):
        with pytest.raises(BenchError, match=f"cannot reach Ray at {address}: .*ray start --head"):
            check_reachable(address)
    check_reachable("auto")  # left to Ray


def test_a_silent_ray_address_times_out(monkeypatch):
    from bench.executors import check_reachable

    def silent(address, timeout):
        raise TimeoutError("timed out")

    monkeypatch.setattr(executors.socket, "create_connection", silent)
    with pytest.raises(BenchError, match="cannot reach Ray at 10.1.2.3:6379: no answer within 0.5 s"):
        check_reachable("10.1.2.3:6379", timeout_s=0.5)


# ------------------------------------------------------------------------ diverged runs

def test_a_diverged_run_is_failed_the_grid_goes_on_and_only_retry_failed_reruns_it(tmp_path, capsys):
    store_path, cache = tmp_path / "s.sqlite", tmp_path / "cache"
    diverging = specs_for(*TINY, "--set", "lr=1e30")
    fine = specs_for(*TINY)
    counts = run_grid(diverging + fine, Store(store_path), device=torch.device("cpu"), cache_dir=cache,
                      show_progress=False, checkpoint_every_s=0)
    assert counts == {"skipped": 0, "failed_earlier": 0, "done": 1, "failed": 1}
    got = rows(store_path)
    assert got[diverging[0].key()][0] == "failed" and "diverged at train epoch 1" in got[diverging[0].key()][2]
    assert got[fine[0].key()][0] == "done"
    assert not list(cache.glob("checkpoints/*"))  # failed or done: no checkpoint left

    args = ["run", *TINY, "--set", "lr=1e30", "--store", str(store_path), "--cache-dir", str(cache), "--quiet"]
    capsys.readouterr()
    assert main(args) == 1  # a failed run is not a success the second time either
    err = capsys.readouterr().err
    assert "0 trained, 0 already in the store, 0 failed, 1 failed earlier and not retried" in err
    assert f"run {diverging[0].key()}: diverged at train epoch 1" in err and "--retry-failed" in err
    assert rows(store_path)[diverging[0].key()][:2] == ("failed", 1)
    assert main([*args, "--retry-failed"]) == 1  # tried again, diverges again
    assert "1 failed" in capsys.readouterr().err
    status, attempts, error, _ = rows(store_path)[diverging[0].key()]
    assert (status, attempts) == ("failed", 2) and error.startswith("diverged at train epoch 1")


# ----------------------------------- the driver: what runs, user errors, a method's bug

def test_pending_skips_done_and_failed_runs_and_the_grid_counts_them(tmp_path):
    store, cache = Store(tmp_path / "s.sqlite"), tmp_path / "cache"
    done, failed, new = specs_for(*TINY, "--seeds", "4,5,6")
    for spec in (done, failed):
        store.start(spec.key(), spec.to_dict(), "CE")
    store.finish(done.key(), metrics={"acc_last": 1.0}, history=[], env={})
    store.fail(failed.key(), "diverged")
    stale = checkpoint_path(done, cache)  # a kill between the commit and the clean-up left these
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"checkpoint")
    stale.with_name(stale.name + ".tmp123").write_bytes(b"half-written")
    grid = [done, failed, new, new]
    assert pending(store, grid) == [new]  # each run once
    assert pending(store, grid, retry_failed=True) == [failed, new]
    counts = run_grid(grid, store, device=torch.device("cpu"), cache_dir=cache, show_progress=False,
                      executor=executors.SerialExecutor(task=scripted_task))
    assert counts == {"skipped": 1, "failed_earlier": 1, "done": 1, "failed": 0}
    assert not any(stale.parent.iterdir())  # the done run's checkpoint and temp file are gone
    assert store.conn.execute("SELECT attempts FROM runs WHERE key = ?", (new.key(),)).fetchone()[0] == 1
    counts = run_grid(grid, store, device=torch.device("cpu"), cache_dir=cache, show_progress=False,
                      retry_failed=True, executor=executors.SerialExecutor(task=scripted_task))
    assert counts == {"skipped": 2, "failed_earlier": 0, "done": 1, "failed": 0}
    assert store.status(failed.key()) == "done"


def test_a_user_error_stops_the_grid_once_the_run_in_flight_is_committed(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    specs = specs_for(*TINY, "--seeds", "0,1,4")
    with pytest.raises(BenchError, match="seed 1: a user error"):
        run_grid(specs, store, device=torch.device("cpu"), cache_dir=tmp_path, show_progress=False,
                 executor=executors.SerialExecutor(task=scripted_task))
    assert [store.status(s.key()) for s in specs] == ["done", "running", None]  # not retried, nothing after it


def test_a_user_error_stops_dispatching_while_another_run_is_still_in_flight(tmp_path):
    """With --jobs 2: seed 1's user error arrives while seed 0 still trains; seed 4 is not started,
    seed 0 is committed when it ends, then the grid raises the error."""
    specs = specs_for(*TINY, "--seeds", "0,1,4")

    class TwoSlots:
        capacity = 2

        def __init__(self):
            self.submitted, self.waits = [], 0

        def start(self, **kwargs):
            pass

        def submit(self, item):
            self.submitted.append(item.seed)

        def wait(self):
            self.waits += 1
            seed = {1: 1, 2: 0}[self.waits]  # the user error first, then the run in flight
            spec = next(s for s in specs if s.seed == seed)
            return [(spec, "error", "seed 1: a user error")] if seed == 1 else [(spec, "done", scripted_task(spec))]

        def abort(self):
            pass

        def close(self):
            pass

    store, pool = Store(tmp_path / "s.sqlite"), TwoSlots()
    with pytest.raises(BenchError, match="seed 1: a user error"):
        run_grid(specs, store, device=torch.device("cpu"), cache_dir=tmp_path, show_progress=False, executor=pool)
    assert pool.submitted == [0, 1] and pool.waits == 2
    assert [store.status(s.key()) for s in specs] == ["done", "running", None]


def test_each_run_has_its_own_checkpoint(tmp_path):
    specs = specs_for(*TINY, "--imbalance", "50,100", "--noise", "none,flip2:0.2", "--seeds", "0,1")
    assert len({checkpoint_path(s, tmp_path) for s in specs}) == len(specs) == 8


def test_a_methods_bug_is_a_failed_run_with_its_history_and_a_user_error_before_training_is_raised(monkeypatch):
    (spec,) = specs_for(*TINY)

    # a method's bug, and a one-line outcome of this run's training: that run fails, with its history
    for error, reason in ((ZeroDivisionError("a method's bug"), "ZeroDivisionError: a method's bug"),
                          (BenchError("AUM removed every training sample"), "AUM removed every training sample")):
        def failing_fit(self, run, error=error):
            run.log(0, stage="train", loss=1.0)
            raise error

        monkeypatch.setattr(methods.get("ce"), "fit", failing_fit)
        result = execute(spec, device=torch.device("cpu"), cache_dir=None)
        assert (result.status, result.error) == ("failed", reason)
        assert result.history == [{"stage": "train", "epoch": 0, "loss": 1.0}]

    def missing_data(spec_, data_dir=None):  # before training: the user's to fix, the grid stops
        raise BenchError("a user error")

    monkeypatch.setattr(bench.execute, "load_data", missing_data)
    with pytest.raises(BenchError, match="a user error"):
        execute(spec, device=torch.device("cpu"), cache_dir=None)


def test_execute_keeps_per_sample_records_as_values_and_larger_ones_as_arrays(monkeypatch):
    (spec,) = specs_for(*TINY)

    def recording_fit(self, run):
        n = len(run.data.train_y)
        run.record("weight", np.arange(n) / n)
        run.record("curve", np.ones((n, 2)))
        return run.model()  # untrained: only what is kept matters here

    monkeypatch.setattr(methods.get("ce"), "fit", recording_fit)
    result = execute(spec, device=torch.device("cpu"), cache_dir=None)
    n = len(result.samples["is_noisy"])
    assert result.status == "done" and set(result.values) == {"weight"} and set(result.arrays) == {"curve"}
    assert result.values["weight"].tolist() == (np.arange(n) / n).tolist() and result.arrays["curve"].shape == (n, 2)


def test_device_names_are_checked_and_resolved_against_the_machine(monkeypatch):
    """``--device``: auto, cpu, cuda and cuda:N only (not cpu:1, meta or mps); auto is CUDA where
    present; cuda without a GPU, or cuda:N past the last GPU, is a one-line error."""
    from bench.execute import check_device_name, resolve_device

    assert check_device_name("auto") is None and check_device_name("cuda:1") == torch.device("cuda", 1)
    for bad in ("cpu:1", "meta", "mps", "tpu"):
        with pytest.raises(BenchError, match="unknown device"):
            check_device_name(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(BenchError, match="2 CUDA device"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(BenchError, match="no CUDA device is available"):
        resolve_device("cuda")


def test_a_runs_env_records_the_suites_commit_dirty_or_not_and_the_thread_count(monkeypatch):
    """What each run's ``env`` keeps of where it ran: the commit (``+dirty`` with uncommitted
    changes to tracked files, ``unknown`` outside git) and torch's thread count."""
    from types import SimpleNamespace

    from bench.execute import environment, suite_commit

    status = {"out": " M bench/execute.py\n"}

    def fake_git(cmd, **kwargs):
        if "rev-parse" in cmd:
            return SimpleNamespace(returncode=0, stdout="0123abcd\n")
        return SimpleNamespace(returncode=0, stdout=status["out"])

    monkeypatch.setattr(bench.execute.subprocess, "run", fake_git)
    assert suite_commit.__wrapped__() == "0123abcd+dirty"
    status["out"] = ""
    assert suite_commit.__wrapped__() == "0123abcd"
    monkeypatch.setattr(bench.execute.subprocess, "run", lambda cmd, **kw: SimpleNamespace(returncode=128, stdout=""))
    assert suite_commit.__wrapped__() == "unknown"
    env = environment(torch.device("cpu"))
    assert env["threads"] == torch.get_num_threads() and env["device"] == "cpu" and env["torch"] == torch.__version__


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you "
                                                                  "tried to allocate 8589934592 bytes\nmore")])
def test_a_run_out_of_the_cpus_memory_keeps_its_checkpoint_and_says_how_it_ran(monkeypatch, error):
    """The CPU allocator's out-of-memory (a MemoryError, or torch's RuntimeError "can't allocate
    memory") is a failure of where the run ran, as CUDA's is: its checkpoint is kept; a failed
    run's env says how its steps ran, as a done run's does."""
    (spec,) = specs_for(*TINY)

    def fit_out_of_memory(self, run):
        raise error

    from methods.base import Run

    monkeypatch.setattr(methods.get("ce"), "fit", fit_out_of_memory)
    monkeypatch.setattr(Run, "trained_s", lambda self: 12.3456)
    result = execute(spec, device=torch.device("cpu"), cache_dir=None)
    assert result.status == "failed" and result.keep_checkpoint
    assert result.error.startswith(f"out of memory ({type(error).__name__}: ") and "more" not in result.error
    assert result.env["steps"] == "eager" and result.env["train_s"] == 12.346


def test_a_runs_networks_start_from_its_own_seed(monkeypatch):
    """``execute`` seeds torch with the run's seed before the method builds its networks: seeds
    0 and 4 start from different weights, the same seed from the same ones."""
    def untrained(self, run):
        return run.model()  # nothing trained: only the initial weights matter

    monkeypatch.setattr(methods.get("ce"), "fit", untrained)
    models = {}
    monkeypatch.setattr(bench.execute, "summarize", lambda run, model: models.setdefault(run.spec.seed, [])
                        .append(torch.cat([p.detach().flatten() for p in model.parameters()])) or {})
    for spec in specs_for(*TINY, "--seeds", "0,4,0"):
        execute(spec, device=torch.device("cpu"), cache_dir=None)
    assert torch.equal(models[0][0], models[0][1]) and not torch.equal(models[0][0], models[4][0])


def test_a_run_asked_to_train_on_the_meta_set_gets_it_in_its_pool():
    """``train_on_meta`` (PROTOCOL.md §7's fair-data option) reaches the data a run trains on: its
    pool is the plain run's plus the meta set, which it no longer has apart."""
    from bench.execute import load_data
    from bench.spec import RunSpec

    plain = load_data(RunSpec(method="ce", meta_per_class=5))
    fair = load_data(RunSpec(method="ce", meta_per_class=5, train_on_meta=True))
    assert len(plain.y_meta) == 5 * plain.num_classes and len(fair.y_meta) == 0
    assert len(fair.train_y) == len(plain.train_y) + len(plain.y_meta)


def test_a_done_runs_samples_keep_observed_and_clean_labels_apart(monkeypatch):
    """What ``execute`` stores per sample of a noisy run: its dataset index, clean label, observed
    (noisy) label and noise flag, each from the run's own data."""
    from bench.execute import load_data

    (spec,) = specs_for("--methods", "ce", "--epochs", "1", "--imbalance", "100", "--noise", "flip2:0.4")
    monkeypatch.setattr(methods.get("ce"), "fit", lambda self, run: run.model())  # untrained: the samples matter
    result = execute(spec, device=torch.device("cpu"), cache_dir=None)
    data = load_data(spec)
    assert result.status == "done" and data.is_noisy.any()
    for name, expected in (("dataset_index", data.train_index), ("clean_label", data.train_clean_y),
                           ("observed_label", data.train_y), ("is_noisy", data.is_noisy)):
        assert np.array_equal(result.samples[name], expected), name


def test_steps_env_says_how_the_steps_ran(monkeypatch):
    """A run's ``env`` entry for its steps: captured or eager, memory format, cuDNN's search, its
    training seconds (to the millisecond); with --compile how that went, with --deterministic that
    its kernels were."""
    from types import SimpleNamespace

    from bench.execute import steps_env

    run = SimpleNamespace(step_mode="captured", channels_last=True, trained_s=lambda: 3.21049, compile_mode=None)
    monkeypatch.setattr(bench.execute, "searches_conv_algorithms", lambda device: True)
    monkeypatch.setattr(bench.execute, "deterministic_kernels", lambda: False)
    assert steps_env(run, torch.device("cpu")) == {"steps": "captured", "channels_last": True,
                                                   "cudnn_benchmark": True, "train_s": 3.21}
    run.compile_mode = "uncompiled: refused"
    monkeypatch.setattr(bench.execute, "deterministic_kernels", lambda: True)
    env = steps_env(run, torch.device("cpu"))
    assert env["compile"] == "uncompiled: refused" and env["deterministic"] is True


def test_a_failed_run_is_stored_with_its_history_its_reason_and_its_env(tmp_path):
    """``commit`` of a failed run keeps the epochs it trained (where it diverged shows in its
    curves), the reason and how it ran."""
    from bench.execute import commit

    (spec,) = specs_for(*TINY)
    store = Store(tmp_path / "s.sqlite")
    store.start(spec.key(), spec.to_dict(), "CE")
    history = [{"stage": "train", "epoch": 0, "loss": 2.5}, {"stage": "train", "epoch": 1, "loss": 1.5}]
    commit(store, RunResult(spec, "failed", history=history, env={"steps": "eager"}, error="diverged at train epoch 2"))
    assert store.history(spec.key()).to_dict("records") == history
    status, _, error, _ = rows(tmp_path / "s.sqlite")[spec.key()]
    assert (status, error) == ("failed", "diverged at train epoch 2")
    env = store.conn.execute("SELECT env_json FROM runs WHERE key = ?", (spec.key(),)).fetchone()[0]
    assert json.loads(env) == {"steps": "eager"}


def test_removing_a_checkpoint_removes_its_group_listing_and_temp_files_only(tmp_path):
    """``remove_checkpoint``: the checkpoint, a fused group's list of its runs beside it and the
    temp files of its writes go; another run's checkpoint stays."""
    from bench.execute import MEMBERS_SUFFIX, remove_checkpoint

    path = tmp_path / "checkpoints" / "0123abcd.pt"
    path.parent.mkdir()
    for leftover in (path, path.with_suffix(MEMBERS_SUFFIX), path.with_name(path.name + ".tmp4242")):
        leftover.write_text("x")
    (path.parent / "0123abce.pt").write_text("another run's")
    remove_checkpoint(path)
    assert [p.name for p in path.parent.iterdir()] == ["0123abce.pt"]


def test_execute_says_a_resume_through_the_progress_channel_when_it_has_one(monkeypatch, capsys):
    """A run resuming from a checkpoint says so as a progress note (the grid writes it between its
    bars), on stderr only without a progress channel."""
    from methods.base import Run

    (spec,) = specs_for(*TINY)
    monkeypatch.setattr(Run, "checkpoint_found", property(lambda self: True))
    monkeypatch.setattr(Run, "checkpoint_position", lambda self: "train, 3 epochs done")
    monkeypatch.setattr(methods.get("ce"), "fit", lambda self, run: run.model())  # untrained: the note matters
    notes = []
    execute(spec, device=torch.device("cpu"), cache_dir=None, progress=notes.append)
    assert notes[0] == {"note": "resuming from its checkpoint (train, 3 epochs done)"}
    assert "resuming" not in capsys.readouterr().err
    execute(spec, device=torch.device("cpu"), cache_dir=None)
    assert f"[{spec.key()}] resuming from its checkpoint (train, 3 epochs done)" in capsys.readouterr().err


# ------------------------------------------------------------------ local worker pool

def test_a_result_that_cannot_be_sent_back_fails_its_run_and_the_worker_goes_on(tmp_path):
    """A worker whose result does not pickle sends a failed result with the reason instead (the
    run is not lost as a crash, and not retried), then trains the next run."""
    store, pool = Store(tmp_path / "s.sqlite"), executors.LocalExecutor(1, task=unsendable_task)
    specs = specs_for(*TINY, "--seeds", "0,4")
    try:
        counts = run_grid(specs, store, device=torch.device("cpu"), cache_dir=tmp_path, show_progress=False,
                          executor=pool, max_retries=0)
    finally:
        pool.abort()
    assert counts["failed"] == 1 and counts["done"] == 1
    status, attempts, error = store.conn.execute("SELECT status, attempts, error FROM runs WHERE key = ?",
                                                 (specs[0].key(),)).fetchone()
    assert (status, attempts) == ("failed", 1) and error.startswith("result could not be sent back: ")
    assert "pickle" in error.lower() and store.status(specs[1].key()) == "done"


def test_a_worker_survives_a_methods_bug_goes_on_with_the_next_run_and_stops_cleanly(tmp_path):
    store, pool = Store(tmp_path / "s.sqlite"), RecordingExecutor(1)
    specs = specs_for(*TINY, "--seeds", "2,0,1,4")
    try:
        with pytest.raises(BenchError, match="seed 1: a user error"):
            run_grid(specs, store, device=torch.device("cpu"), cache_dir=tmp_path, show_progress=False,
                     executor=pool)
        exits = list(pool.exits)
    finally:
        pool.abort()
    failed = store.conn.execute("SELECT status, attempts, error FROM runs WHERE key = ?", (specs[0].key(),))
    assert failed.fetchone() == ("failed", 1, "RuntimeError: a method's bug")  # not a crash, not retried
    assert [store.status(s.key()) for s in specs] == ["failed", "done", "running", None]
    assert exits == [0]  # one worker for all three runs, told to stop when the grid ended


def test_an_interrupted_grid_stops_its_workers_at_once(tmp_path):
    class InterruptedStore(Store):
        def start(self, key, spec, display_name):
            if spec["seed"] == 5:
                raise KeyboardInterrupt  # Ctrl-C while the run of seed 3 trains in a worker
            super().start(key, spec, display_name)

    store, pool = InterruptedStore(tmp_path / "s.sqlite"), RecordingExecutor(2)
    specs = specs_for(*TINY, "--seeds", "3,5")
    try:
        with pytest.raises(KeyboardInterrupt):
            run_grid(specs, store, device=torch.device("cpu"), cache_dir=tmp_path, show_progress=False,
                     executor=pool)
        exits = list(pool.exits)
    finally:
        pool.abort()
    assert exits == [-signal.SIGTERM]  # terminated, not left training (nor killed after a grace period)
    assert store.status(specs[0].key()) == "running"


def test_a_dead_worker_is_pinned_to_its_run_retried_then_failed_and_spares_its_siblings(tmp_path):
    store_path, cache = tmp_path / "s.sqlite", tmp_path / "cache"
    specs = specs_for(*TINY, "--seeds", "0,1,2")
    task = functools.partial(crashy_task, marker_dir=str(tmp_path))
    dying = checkpoint_path(specs[1], cache)  # as a run killed out of memory would have left it
    dying.parent.mkdir(parents=True)
    dying.write_bytes(b"checkpoint of the run that keeps dying")
    counts = run_grid(specs, Store(store_path), device=torch.device("cpu"), cache_dir=cache, show_progress=False,
                      executor=executors.LocalExecutor(2, task=task), max_retries=1, checkpoint_every_s=0)
    assert counts == {"skipped": 0, "failed_earlier": 0, "done": 2, "failed": 1}
    got = {s.seed: rows(store_path)[s.key()] for s in specs}
    assert got[0][:2] == ("done", 2)  # died once, retried, done
    assert got[2][:2] == ("done", 1)  # ran beside the dying workers, untouched
    status, attempts, error, _ = got[1]
    assert (status, attempts) == ("failed", 2)
    assert "killed by SIGKILL" in error and "gave up after 2 attempts" in error
    # its checkpoint stays for --retry-failed (with more memory, fewer --jobs) to resume from
    assert "its checkpoint is kept: --retry-failed resumes it" in error and dying.exists()
    # a worker's result equals the same run trained in this process with the worker's thread count
    # (torch's CPU reductions depend on it)
    threads = torch.get_num_threads()
    torch.set_num_threads(executors.worker_threads(2))
    try:
        reference = execute(specs[2], device=torch.device("cpu"), cache_dir=None)
    finally:
        torch.set_num_threads(threads)
    assert json.loads(got[2][3])["per_class_last"] == reference.metrics["per_class_last"]
    assert not any(checkpoint_path(s, cache).exists() for s in specs if s.seed != 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_the_workers_at_once_and_the_store_stays_consistent(tmp_path):
    store_path = tmp_path / "s.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", *TINY, "--imbalance", "50", "--epochs", "60",
                             "--seeds", "0,1", "--jobs", "2", "--store", str(store_path), "--cache-dir",
                             str(tmp_path / "cache"), "--quiet"], env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,  # its own process group, as a terminal's job
                            # a shell's background job inherits SIGINT ignored; a terminal's job does not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    children = []
    deadline = time.time() + 60
    while time.time() < deadline and len(children) < 3 and proc.poll() is None:  # 2 workers + resource tracker
        time.sleep(0.2)
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        except OSError:
            pass
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err
    time.sleep(1.0)
    assert len(children) == 3 and not [c for c in children if Path(f"/proc/{c}/cmdline").exists()
                                       and Path(f"/proc/{c}/cmdline").read_bytes()]
    assert {r[0] for r in rows(store_path).values()} <= {"running", "done"}


# ------------------------------------------------------------------------------ Ray

@pytest.fixture(scope="module")
def local_ray():
    """One real local Ray instance (2 CPUs) for this module's Ray tests; skipped without Ray."""
    ray = pytest.importorskip("ray")
    executors.init_ray(num_cpus=2)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # crashy_task runs on Ray workers
    yield ray
    ray.shutdown()


def test_a_grid_runs_on_ray_and_the_driver_writes_the_store(local_ray, tmp_path, capsys):
    store_path, cache = tmp_path / "s.sqlite", tmp_path / "cache"
    args = ["run", *TINY, "--imbalance", "50,100", "--executor", "ray", "--store", str(store_path),
            "--cache-dir", str(cache), "--checkpoint-every", "0", "--quiet"]
    assert main(args) == 0
    assert "2 trained" in capsys.readouterr().err
    got = rows(store_path)
    assert len(got) == 2 and all(r[:2] == ("done", 1) for r in got.values())
    store = Store(store_path, create=False)
    for key in got:
        assert len(store.history(key)) == 1 and len(store.samples(key)) > 0
        assert json.loads(store.conn.execute("SELECT env_json FROM runs WHERE key = ?", (key,)).fetchone()[0])[
            "threads"] == 1
    assert not list(cache.glob("checkpoints/*"))
    assert main(args) == 0
    assert "0 trained, 2 already in the store" in capsys.readouterr().err
    assert local_ray.is_initialized()  # a Ray session the CLI did not start is left running


def test_a_ray_task_whose_worker_dies_is_retried_then_recorded_failed(local_ray, tmp_path):
    store_path, cache = tmp_path / "s.sqlite", tmp_path / "cache"
    specs = specs_for(*TINY, "--seeds", "0,1")
    task = functools.partial(crashy_task, marker_dir=str(tmp_path))
    counts = run_grid(specs, Store(store_path), device="auto", cache_dir=cache, show_progress=False,
                      executor=executors.RayExecutor(task=task), max_retries=1, checkpoint_every_s=0)
    assert counts == {"skipped": 0, "failed_earlier": 0, "done": 1, "failed": 1}
    got = {s.seed: rows(store_path)[s.key()] for s in specs}
    assert got[0][:2] == ("done", 2)
    status, attempts, error, _ = got[1]
    assert (status, attempts) == ("failed", 2)
    assert "Ray" in error and "gave up after 2 attempts" in error


def env_task(spec, *, marker_dir, **kwargs):
    """Writes the worker's cuBLAS workspace setting to ``marker_dir/<seed>.env``; trains nothing."""
    (Path(marker_dir) / f"{spec.seed}.env").write_text(os.environ.get("CUBLAS_WORKSPACE_CONFIG", "unset"))
    return scripted_task(spec)


def test_deterministic_ray_runs_get_workers_started_with_the_cublas_workspace(local_ray, tmp_path, monkeypatch):
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG once per process, so a --deterministic run must not land on
    a worker started without it; the driver's value goes to the task's own workers."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the driver's; the cluster started without it
    task = functools.partial(env_task, marker_dir=str(tmp_path))
    for seed, deterministic in ((0, False), (4, True), (5, False)):  # (scripted_task: other seeds fail)
        run_grid(specs_for(*TINY, "--seeds", str(seed)), Store(tmp_path / "s.sqlite"), device="auto",
                 cache_dir=None, show_progress=False, executor=executors.RayExecutor(task=task),
                 options=bench.execute.RunOptions(deterministic=deterministic))
    got = {seed: (tmp_path / f"{seed}.env").read_text() for seed in (0, 4, 5)}
    assert got[4] == ":16:8" and got[0] == got[5] != ":16:8"


# ------------------------------------------------------------------ progress off a terminal

def logging_task(spec, *, progress=None, **kwargs):
    """Two epochs reported as a run reports them, then done; nothing is trained."""
    for epoch in (0, 1):
        progress({"stage": "train", "epoch": epoch, "loss": 1.5 - epoch, "test_acc": 40.0 + epoch})
    return scripted_task(spec)


def test_off_a_terminal_progress_is_plain_lines_at_most_one_per_interval(tmp_path, capsys, monkeypatch):
    from bench import execute as execute_module

    def lines_of(spec):
        run_grid([spec], Store(tmp_path / "s.sqlite"), device=torch.device("cpu"), cache_dir=tmp_path / "cache",
                 show_progress=True, executor=executors.SerialExecutor(task=logging_task))
        return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(f"[{spec.key()}]")]

    monkeypatch.setattr(execute_module, "PLAIN_PROGRESS_EVERY_S", 0.0)
    spec = specs_for(*TINY)[0]
    lines = lines_of(spec)
    assert lines[0].endswith(": started")
    assert [ln.split(": ")[-1].split(" done")[0] for ln in lines[1:3]] == [f"train epoch {e}" for e in (1, 2)]
    assert "loss 0.5, test_acc 41" in lines[2] and "acc 50.00" in lines[3] and len(lines) == 4

    monkeypatch.setattr(execute_module, "PLAIN_PROGRESS_EVERY_S", 3600.0)  # a new run: only start and end
    lines = lines_of(specs_for(*TINY, "--seeds", "4")[0])
    assert len(lines) == 2 and lines[0].endswith(": started") and "acc 50.00" in lines[1]


def test_off_a_terminal_each_finished_run_says_how_far_the_grid_is_and_about_how_long_is_left(
        tmp_path, capsys, monkeypatch):
    from bench import execute as execute_module

    now = [0.0]

    def minute_long_task(spec, **kwargs):  # each run takes one minute of the (mock) clock
        now[0] += 60.0
        return scripted_task(spec)

    monkeypatch.setattr(execute_module.time, "time", lambda: now[0])
    run_grid(specs_for(*TINY, "--seeds", "0,4,5"), Store(tmp_path / "s.sqlite"), device=torch.device("cpu"),
             cache_dir=tmp_path / "cache", show_progress=True, executor=executors.SerialExecutor(task=minute_long_task))
    ends = [ln for ln in capsys.readouterr().err.splitlines() if "acc 50.00" in ln]
    assert [ln.split(" in ")[1] for ln in ends] == [
        "60s; 1 of 3 runs finished, about 02:00 left",
        "60s; 2 of 3 runs finished, about 01:00 left",
        "60s; 3 of 3 runs finished"]


def test_a_method_returning_no_model_or_recording_text_fails_with_the_reason(monkeypatch):
    """A new method's two common slips come back as a failed run that says what is wrong (not an
    AttributeError deep in the evaluation, nor a crash at commit with the run left 'running')."""
    import methods
    from bench.execute import execute
    from methods.base import Method

    class Forgetful(Method):
        name = "ce"  # stands in for CE in this test only

        def fit(self, run):
            if run.spec.seed == 1:
                run.record("tag", ["noisy"] * len(run.data.train_y))
            return None  # forgot `return model`

    forgot_model, recorded_text = specs_for(*TINY, "--seeds", "0,1")  # (discovers the real methods first)
    monkeypatch.setitem(methods._REGISTRY, "ce", Forgetful)
    result = execute(forgot_model, device=torch.device("cpu"), cache_dir=None)
    assert result.status == "failed"
    assert result.error == "TypeError: Forgetful.fit returned NoneType; it must return the trained model"
    result = execute(recorded_text, device=torch.device("cpu"), cache_dir=None)
    assert result.status == "failed" and "record 'tag': values must be numbers or booleans" in result.error


def test_a_bench_error_raised_while_training_fails_that_run_and_the_grid_goes_on(tmp_path, monkeypatch):
    """A one-line outcome of a run's own data (AUM flagging every sample) is stored as that run's
    failure with the message; it does not stop the grid nor leave the run 'running'."""
    import methods
    from bench.execute import run_grid
    from methods.base import Method

    real = methods.get("ce")

    class Picky(Method):
        name = "ce"

        def fit(self, run):
            if run.spec.seed == 1:
                raise BenchError("AUM removed every training sample")
            return real(real.Params()).fit(run)

    specs = specs_for(*TINY, "--seeds", "1,0")
    monkeypatch.setitem(methods._REGISTRY, "ce", Picky)
    store = Store(tmp_path / "s.sqlite")
    counts = run_grid(specs, store, device=torch.device("cpu"), cache_dir=None, show_progress=False)
    assert counts["failed"] == 1 and counts["done"] == 1
    failed = store.conn.execute("SELECT status, error FROM runs WHERE key = ?", (specs[0].key(),)).fetchone()
    assert failed == ("failed", "AUM removed every training sample")


def test_a_resuming_runs_line_comes_through_the_progress_channel(tmp_path, capsys):
    """execute() reports a resume as a progress note; the grid writes it as the run's line (between
    the bars, with the run's label), in-process and from a worker alike."""
    def resuming_task(spec, *, progress=None, **kwargs):
        progress({"note": "resuming from its checkpoint (train, 3 epochs done)"})
        return scripted_task(spec)

    spec = specs_for(*TINY)[0]
    run_grid([spec], Store(tmp_path / "s.sqlite"), device=torch.device("cpu"), cache_dir=tmp_path / "cache",
             show_progress=False, executor=executors.SerialExecutor(task=resuming_task))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(f"[{spec.key()}]")]
    assert lines[0].endswith("seed 0: resuming from its checkpoint (train, 3 epochs done)")
    assert "acc 50.00" in lines[1]


@pytest.mark.parametrize("fuse", [1, 2])
def test_a_run_out_of_memory_keeps_its_checkpoint_and_retry_failed_resumes_it_to_the_same_result(
        tmp_path, monkeypatch, capsys, fuse):
    """CUDA's out-of-memory error is a failure of where the run ran, not of the method (e.g. too
    many runs packed on one GPU): the run is recorded failed with the reason, its checkpoint (a
    fused group's too) is kept, and --retry-failed resumes it to the numbers of a run never
    stopped."""
    from methods.base import Run

    specs = specs_for("--methods", "ce", "--epochs", "3", "--imbalance", "100", "--noise", "none",
                      "--seeds", "0,1"[:1 + 2 * (fuse > 1)])
    reference = Store(tmp_path / "reference.sqlite")
    run_grid(specs, reference, device=torch.device("cpu"), cache_dir=None, show_progress=False, fuse=fuse)
    original, calls = Run._save, {"n": 0}

    def save_then_run_out_of_memory(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # after the run's (or the group's) second epoch
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore text")

    monkeypatch.setattr(Run, "_save", save_then_run_out_of_memory)
    store, cache = Store(tmp_path / "s.sqlite"), tmp_path / "cache"
    counts = run_grid(specs, store, device=torch.device("cpu"), cache_dir=cache, show_progress=False,
                      checkpoint_every_s=0, fuse=fuse)
    assert counts["failed"] == len(specs)
    errors = {r[0] for r in store.conn.execute("SELECT error FROM runs")}
    assert errors == {"out of memory (OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB); its "
                      "checkpoint is kept: --retry-failed resumes it (with fewer --jobs, a smaller --fuse, or "
                      "other runs' memory freed)"}
    assert len(list((cache / "checkpoints").glob("*.pt"))) == 1
    monkeypatch.setattr(Run, "_save", original)
    capsys.readouterr()
    counts = run_grid(specs, store, device=torch.device("cpu"), cache_dir=cache, show_progress=False,
                      retry_failed=True, fuse=fuse)
    assert counts["done"] == len(specs)
    assert "(train, 2 epochs done)" in capsys.readouterr().err
    assert not list((cache / "checkpoints").glob("*.pt"))
    for spec in specs:
        resumed = store.conn.execute("SELECT metrics_json FROM runs WHERE key = ?", (spec.key(),)).fetchone()
        alone = reference.conn.execute("SELECT metrics_json FROM runs WHERE key = ?", (spec.key(),)).fetchone()
        assert json.loads(resumed[0]) == json.loads(alone[0])

"""Where the runs of a grid execute: in this process, in local worker processes, or on Ray.

An executor only trains: :func:`bench.execute.run_grid` hands it specs one at a time (after
marking each ``running`` in the store) and commits what comes back, so the driver stays the only
writer of the store whatever the executor. ``wait()`` returns events ``(spec, kind, payload)``:

``("done", RunResult)``   the run finished (``status`` done, or failed: diverged, a method's bug)
``("crashed", reason)``   the process running it died (SIGKILL, segfault, out of memory, a lost
                          node); the driver retries it up to ``--max-retries`` times
``("error", message)``    a user error (BenchError) before the run trains (e.g. its data missing
                          on that node); the driver lets the runs in flight finish, then stops
                          with that one-line error (one raised while training is a failed run)

Executors
---------
:class:`SerialExecutor`  ``--jobs 1`` (default): one run at a time in this process.
:class:`LocalExecutor`   ``--jobs N``: N long-lived worker processes (spawn), each with its own
                         pipe, so a worker that dies is pinned to the one run it was running (a
                         ``ProcessPoolExecutor`` fails every run in flight with BrokenProcessPool
                         and terminates the innocent workers too). Workers use ``cores // N``
                         torch threads; on CUDA they share the devices round-robin. A worker dies
                         with its parent (PR_SET_PDEATHSIG, plus a watchdog thread).
:class:`RayExecutor`     ``--executor ray``: one Ray task per run (``num_cpus=1``,
                         ``num_gpus=--gpus-per-run``) on a cluster (``--address``) or on a local
                         instance. Ray does not retry by itself (``max_retries=0``): the driver
                         resubmits, so both executors share one retry rule and the store's
                         ``attempts`` counts every try. Ray is optional: ``pip install .[ray]``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.cpu import keep_freed_memory
from bench.errors import BenchError

Event = tuple[Any, str, Any]  # (spec, kind, payload)
EXECUTORS = ("local", "ray")


def default_task(item, **kwargs):
    """What a worker runs for one item: :func:`bench.execute.execute` for a spec, or
    :func:`bench.fused_runs.execute_fused` for a fused group (a list of results)."""
    from bench.execute import execute
    from bench.fused_runs import FusedGroup, execute_fused
    return execute_fused(item, **kwargs) if isinstance(item, FusedGroup) else execute(item, **kwargs)


def _failed(item, error: str):
    """The failed result of an item (one per run of a fused group)."""
    from bench.execute import RunResult
    from bench.fused_runs import FusedGroup
    if isinstance(item, FusedGroup):
        return [RunResult(spec, "failed", error=error) for spec in item.specs]
    return RunResult(item, "failed", error=error)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_threads(jobs: int, cores: int | None = None, env: dict | None = None) -> int:
    """Torch threads per worker: the cores shared out, ``max(1, cores // jobs)``, and no more
    than ``$OMP_NUM_THREADS`` when that is set (so a user's thread pinning holds in workers)."""
    cores = available_cores() if cores is None else cores
    threads = max(1, cores // jobs)
    cap = (os.environ if env is None else env).get("OMP_NUM_THREADS", "")
    if cap.strip().isdigit() and int(cap) >= 1:
        threads = min(threads, int(cap))
    return threads


def worker_device(slot: int, device: torch.device, device_count: int | None = None) -> torch.device:
    """The device of worker ``slot``: round-robin over the GPUs for ``cuda``, as given otherwise."""
    if device.type != "cuda" or device.index is not None:
        return device
    count = torch.cuda.device_count() if device_count is None else device_count
    return torch.device("cuda", slot % max(1, count))


def mps_running() -> bool:
    """Whether an NVIDIA MPS control daemon is up for this user: its pipe directory holds
    ``control`` (a daemon killed without ``quit`` may leave a stale one behind)."""
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    return os.path.exists(os.path.join(pipe, "control"))


def packing_hint(jobs: int, device: torch.device, device_count: int | None = None,
                 mps: bool | None = None) -> str | None:
    """A line for ``--jobs N`` that puts several workers on one GPU without MPS, else None.

    Without MPS the kernels of several processes take turns on a GPU; ResNet-32's small kernels
    leave most of an H200 idle, which MPS lets the other processes fill (session 11, ``bench timing
    --pack 4``: 4 packed runs took 4.1-4.2x the time of one alone, under MPS 2.4-2.6x)."""
    if device.type != "cuda" or jobs < 2:
        return None
    count = 1 if device.index is not None else (torch.cuda.device_count() if device_count is None else device_count)
    if jobs <= max(1, count) or (mps_running() if mps is None else mps):
        return None
    per_gpu = -(-jobs // max(1, count))
    return (f"bench: --jobs {jobs} puts up to {per_gpu} runs on each GPU and NVIDIA MPS is not running, so their "
            "kernels take turns; `nvidia-cuda-mps-control -d` lets them overlap (README, Scaling out)")


def describe_exit(code: int | None) -> str:
    """Why a worker process ended, in words."""
    if code is None:
        return "worker process vanished"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        text = f"worker process killed by {name}"
        if -code == signal.SIGKILL:
            text += " (out of memory? the kernel's OOM killer sends SIGKILL)"
        return text
    return f"worker process exited with code {code}"


class Executor:
    """The interface :func:`bench.execute.run_grid` drives."""

    capacity: int = 1          # runs in flight at once
    local: bool = True         # runs on this machine (device resolved here)

    def open(self) -> None:
        """Connect or prepare (may fail with a BenchError); called before the store is opened."""

    def start(self, *, device, data_dir, cache_dir, checkpoint_every_s: float,
              on_progress: Callable[[Any, dict], None] | None = None, options=None) -> None:
        """Get ready to run items; ``options``: a :class:`bench.execute.RunOptions`, for every
        run (default: ``RunOptions()``)."""
        raise NotImplementedError

    def submit(self, spec) -> None:
        raise NotImplementedError

    def wait(self) -> list[Event]:
        raise NotImplementedError

    def close(self) -> None:
        """Normal end: release workers or the Ray connection (idempotent)."""

    def abort(self) -> None:
        """Interrupted: stop every run in flight now (their checkpoints stay for the next time)."""
        self.close()


# --------------------------------------------------------------------------------- serial

class SerialExecutor(Executor):
    """One run at a time, in this process (the default, ``--jobs 1``)."""

    def __init__(self, task: Callable | None = None):
        self.task = task or default_task
        self._queue: list = []

    def start(self, *, device, data_dir, cache_dir, checkpoint_every_s, on_progress=None, options=None):
        from bench.execute import RunOptions, resolve_device
        self.kwargs = {"device": resolve_device(device) if isinstance(device, str) else device,
                       "data_dir": data_dir, "cache_dir": cache_dir, "checkpoint_every_s": checkpoint_every_s,
                       "options": options or RunOptions()}
        self.on_progress = on_progress

    def submit(self, spec):
        self._queue.append(spec)

    def wait(self):
        spec = self._queue.pop(0)
        progress = None if self.on_progress is None else (lambda row: self.on_progress(spec, row))
        try:
            return [(spec, "done", self.task(spec, progress=progress, **self.kwargs))]
        except BenchError as exc:
            return [(spec, "error", str(exc))]


# ---------------------------------------------------------------------------- local pool

def _die_with_parent(parent_pid: int) -> None:
    """End this worker as soon as the driver is gone (killed, crashed): it must never go on
    training, or writing checkpoints, behind the back of the next ``bench run``."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            threading.Event().wait(0.5)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker_main(conn, parent_pid: int, threads: int, task: Callable, kwargs: dict) -> None:
    """A local worker: receive a spec, train it, send progress rows and the result back."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    torch.set_num_threads(threads)
    keep_freed_memory()
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        if spec is None:
            return
        try:
            result = task(spec, progress=lambda row: conn.send(("progress", row)), **kwargs)
            message = ("done", result)
        except BenchError as exc:
            message = ("error", str(exc))
        except Exception as exc:  # noqa: BLE001 - the grid goes on; keep the reason
            message = ("done", _failed(spec, f"{type(exc).__name__}: {exc}"))
        try:
            conn.send(message)
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:  # noqa: BLE001 - e.g. a recorded value that does not pickle
            conn.send(("done", _failed(spec, f"result could not be sent back: {type(exc).__name__}: {exc}")))


class _Worker:
    def __init__(self, process, conn):
        self.process, self.conn, self.spec = process, conn, None


class LocalExecutor(Executor):
    """``--jobs N``: N worker processes on this machine, results back to the driver by pipe."""

    def __init__(self, jobs: int, task: Callable | None = None):
        if jobs < 1:
            raise BenchError(f"--jobs must be at least 1, got {jobs}")
        self.capacity = jobs
        self.task = task or default_task
        self._workers: list[_Worker | None] = [None] * jobs
        self._ctx = None

    def start(self, *, device, data_dir, cache_dir, checkpoint_every_s, on_progress=None, options=None):
        import multiprocessing

        from bench.execute import RunOptions, resolve_device
        self._ctx = multiprocessing.get_context("spawn")
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.kwargs = {"data_dir": data_dir, "cache_dir": cache_dir, "checkpoint_every_s": checkpoint_every_s,
                       "options": options or RunOptions()}
        self.threads = worker_threads(self.capacity)
        self.on_progress = on_progress
        hint = packing_hint(self.capacity, self.device)
        if hint:
            print(hint, file=sys.stderr)

    def _spawn(self, slot: int) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        kwargs = {**self.kwargs, "device": worker_device(slot, self.device)}
        process = self._ctx.Process(target=_worker_main, name=f"bench-worker-{slot}", daemon=True,
                                    args=(child_conn, os.getpid(), self.threads, self.task, kwargs))
        process.start()
        child_conn.close()
        worker = _Worker(process, parent_conn)
        self._workers[slot] = worker
        return worker

    def submit(self, spec):
        free = [i for i, w in enumerate(self._workers) if w is None or w.spec is None]
        if not free:
            raise RuntimeError("LocalExecutor.submit: every worker is busy")
        slot = free[0]
        worker = self._workers[slot]
        for _ in range(2):  # an idle worker may have died meanwhile: replace it once
            if worker is None or not worker.process.is_alive():
                if worker is not None:
                    self._reap(worker)
                worker = self._spawn(slot)
            try:
                worker.conn.send(spec)
                worker.spec = spec
                return
            except (BrokenPipeError, OSError):
                self._reap(worker)
                worker = None
        raise BenchError("cannot start a worker process")

    def _reap(self, worker: _Worker) -> int | None:
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=5)
        worker.conn.close()
        slot = self._workers.index(worker)
        self._workers[slot] = None
        return worker.process.exitcode

    def wait(self):
        from multiprocessing.connection import wait as wait_any

        busy = [w for w in self._workers if w is not None and w.spec is not None]
        if not busy:
            return []
        wait_any([w.conn for w in busy] + [w.process.sentinel for w in busy])
        events = []
        for worker in busy:
            spec, ended = worker.spec, False
            try:
                while worker.spec is not None and worker.conn.poll():
                    kind, payload = worker.conn.recv()
                    if kind == "progress":
                        if self.on_progress is not None:
                            self.on_progress(spec, payload)
                        continue
                    events.append((spec, kind, payload))
                    worker.spec = None
            except (EOFError, OSError):
                ended = True
            if worker.spec is not None and (ended or not worker.process.is_alive()):
                events.append((spec, "crashed", describe_exit(self._reap(worker))))
        return events

    def close(self):
        for worker in self._workers:
            if worker is None:
                continue
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for worker in list(self._workers):
            if worker is not None:
                self._reap(worker)

    def abort(self):
        for worker in self._workers:
            if worker is not None and worker.process.is_alive():
                worker.process.terminate()
        for worker in list(self._workers):
            if worker is not None:
                self._reap(worker)


# ------------------------------------------------------------------------------------ ray

RAY_MISSING = "--executor ray needs Ray, which is not installed: pip install .[ray]"


def import_ray():
    try:
        import ray
    except ImportError:
        raise BenchError(RAY_MISSING) from None
    return ray


def _ray_task(spec, device_name: str, task: Callable, kwargs: dict):
    """Body of one Ray task. Runs on a Ray worker; returns ("done", RunResult) or ("error", msg)."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    keep_freed_memory()
    if device_name != "cpu" and ray.get_gpu_ids():
        device = torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES to the GPU it assigned
    elif device_name in ("cpu", "auto"):
        device = torch.device("cpu")
    else:
        return ("error", f"--device {device_name}: this Ray task was given no GPU (use --gpus-per-run)")
    try:
        return ("done", task(spec, device=device, **kwargs))
    except BenchError as exc:
        return ("error", str(exc))
    except Exception as exc:  # noqa: BLE001 - the grid goes on; keep the reason
        return ("done", _failed(spec, f"{type(exc).__name__}: {exc}"))


def deterministic_env() -> dict[str, str]:
    """Environment of the Ray workers of a ``--deterministic`` run: cuBLAS's fixed workspace (the
    driver's value if set). cuBLAS reads it when a process first uses it, so a worker that ran
    other work before would keep its old workspace; a task with its own ``runtime_env`` gets
    workers of its own, started with it (the job's ``py_modules`` still apply: Ray merges the two)."""
    from bench.capture import CUBLAS_DETERMINISTIC_WORKSPACE
    return {"CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)}


def _package_dirs() -> list[str]:
    import bench
    import methods
    return [str(Path(bench.__file__).resolve().parent), str(Path(methods.__file__).resolve().parent)]


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """BenchError unless something listens at a ``HOST:PORT`` (or ``ray://HOST:PORT``) address.

    ``ray.init`` retries an unreachable address without end, so ``bench run`` would hang there;
    "auto" and addresses without a port are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise BenchError(f"cannot reach Ray at {address}: {reason}; is a cluster running there "
                         "(`ray start --head` prints its address)?") from None


def init_ray(address: str | None = None, *, num_cpus: int | None = None, ship_code: bool = True) -> None:
    """Join the Ray cluster at ``address``, or start a new local instance with ``num_cpus`` CPUs.

    With ``ship_code`` this checkout's ``bench`` and ``methods`` packages go to the cluster as the
    job's ``py_modules``, so every node runs the driver's code whatever it has installed.
    """
    ray = import_ray()
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if ship_code:
        kwargs["runtime_env"] = {"py_modules": _package_dirs(), "excludes": ["__pycache__", "*.pyc"]}
    if address:
        check_reachable(address)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # "local": a new instance even when another one runs on this machine
            ray.init(address="local", num_cpus=num_cpus or available_cores(), **kwargs)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError, RuntimeError ...
        where = f" at {address}" if address else ""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BenchError(f"cannot start or reach Ray{where}: {first}") from None


class RayExecutor(Executor):
    """``--executor ray``: each run is a Ray task; the driver (this process) writes the store."""

    local = False

    def __init__(self, *, address: str | None = None, jobs: int | None = None, gpus_per_run: float = 0.0,
                 task: Callable | None = None, ship_code: bool = True):
        if jobs is not None and jobs < 1:
            raise BenchError(f"--jobs must be at least 1, got {jobs}")
        self.ray = import_ray()
        self.address, self.jobs, self.gpus_per_run = address, jobs, gpus_per_run
        self.task = task or default_task
        self.ship_code = ship_code
        self._owns = False
        self._refs: dict = {}
        self._remote = None

    def open(self):
        ray = self.ray
        if not ray.is_initialized():
            init_ray(self.address, num_cpus=None if self.address else (self.jobs or available_cores()),
                     ship_code=self.ship_code)
            self._owns = True
        resources = ray.cluster_resources()
        capacity = int(resources.get("CPU", 1))
        if self.gpus_per_run > 0:
            gpus = resources.get("GPU", 0)
            if gpus < self.gpus_per_run:
                self.close()
                raise BenchError(f"--gpus-per-run {self.gpus_per_run:g}: the Ray cluster has {gpus:g} GPU(s)")
            capacity = min(capacity, int(gpus / self.gpus_per_run + 1e-9))
        self.capacity = self.jobs or max(1, capacity)
        self._remote = ray.remote(_ray_task)
        self._task_options = {"num_cpus": 1, "num_gpus": self.gpus_per_run, "max_retries": 0,
                              "retry_exceptions": False}

    def start(self, *, device, data_dir, cache_dir, checkpoint_every_s, on_progress=None, options=None):
        from bench.execute import RunOptions
        if self._remote is None:
            self.open()
        self.device_name = device if isinstance(device, str) else str(device)
        # workers may run elsewhere (another cwd, another node): absolute paths
        self.kwargs = {"data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
                       "cache_dir": None if cache_dir is None else Path(cache_dir).resolve(),
                       "checkpoint_every_s": checkpoint_every_s,
                       "options": options or RunOptions()}
        env = {"runtime_env": {"env_vars": deterministic_env()}} if self.kwargs["options"].deterministic else {}
        self._submit = self._remote.options(**self._task_options, **env)

    def submit(self, spec):
        ref = self._submit.remote(spec, self.device_name, self.task, self.kwargs)
        self._refs[ref] = spec

    def wait(self):
        ray = self.ray
        if not self._refs:
            return []
        ready, _ = ray.wait(list(self._refs), num_returns=1)
        events = []
        for ref in ready:
            spec = self._refs.pop(ref)
            try:
                kind, payload = ray.get(ref)
                events.append((spec, kind, payload))
            except ray.exceptions.RayTaskError as exc:  # the task body itself raised
                events.append((spec, "done", _failed(spec, f"{type(exc.cause).__name__}: {exc.cause}")))
            except ray.exceptions.RayError as exc:  # worker or node died, out of memory, ...
                first = (str(exc).strip().splitlines() or [""])[0]
                events.append((spec, "crashed", f"Ray {type(exc).__name__}: {first}"))
        return events

    def close(self):
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns = False

    def abort(self):
        for ref in list(self._refs):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self._refs.clear()
        self.close()


# ------------------------------------------------------------------------------------ CLI

def check_device_name(name: str) -> str:
    if name not in ("auto", "cpu") and not name.startswith("cuda"):
        raise BenchError(f"unknown device {name!r}; choose from auto, cpu, cuda, cuda:N")
    return name


def from_args(args) -> Executor:
    """The executor ``bench run`` asks for; every check here runs before anything is written."""
    jobs = getattr(args, "jobs", None)
    kind = getattr(args, "executor", None) or "local"
    address = getattr(args, "address", None)
    gpus = getattr(args, "gpus_per_run", None)
    if jobs is not None and jobs < 1:
        raise BenchError(f"--jobs must be at least 1, got {jobs}")
    if getattr(args, "max_retries", 0) < 0:
        raise BenchError(f"--max-retries must be non-negative, got {args.max_retries}")
    if not getattr(args, "checkpoint_every", 0) >= 0:  # NaN too
        raise BenchError(f"--checkpoint-every must be non-negative seconds, got {args.checkpoint_every:g}")
    if gpus is not None and (gpus != gpus or gpus < 0):
        raise BenchError(f"--gpus-per-run must be non-negative, got {gpus:g}")
    if gpus is not None and gpus > 1 and gpus != int(gpus):
        raise BenchError(f"--gpus-per-run above 1 must be a whole number, got {gpus:g}")
    if kind not in EXECUTORS:
        raise BenchError(f"unknown executor {kind!r}; choose from {', '.join(EXECUTORS)}")
    if kind == "local":
        if address is not None:
            raise BenchError("--address is for --executor ray")
        if gpus is not None:
            raise BenchError("--gpus-per-run is for --executor ray (local workers share the GPUs round-robin)")
        return SerialExecutor() if (jobs or 1) == 1 else LocalExecutor(jobs)
    device = check_device_name(getattr(args, "device", "auto"))
    if device.startswith("cuda") and not gpus:
        raise BenchError(f"--device {device} with --executor ray needs --gpus-per-run > 0")
    return RayExecutor(address=address, jobs=jobs, gpus_per_run=gpus or 0.0)

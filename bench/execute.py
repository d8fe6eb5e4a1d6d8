"""Where runs execute. One run = one pure function of its spec: ``execute(spec) -> RunResult``.

The driver (:func:`run_grid`) is the only writer of the store: it marks a run ``running``, has
:func:`execute` run it (here, in worker processes or on Ray: see :mod:`bench.executors`) and
commits the result (or the failure) in one transaction. Runs already ``done`` are skipped;
``failed`` ones are retried only when asked.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import methods
from bench.capture import deterministic_kernels, run_kernels, searches_conv_algorithms
from bench.errors import BenchError
from bench.spec import RunSpec
from bench.store import Store

DEFAULT_CACHE_DIR = Path(".bench_cache")
PLAIN_PROGRESS_EVERY_S = 30.0  # off a terminal: at most one progress line per run this often


@dataclass
class RunResult:
    """What one run produces; the driver writes it to the store."""

    spec: RunSpec
    status: str                     # "done" or "failed"
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    samples: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    error: str | None = None
    keep_checkpoint: bool = False   # given up after its process died, or out of memory: --retry-failed resumes it


@dataclass(frozen=True)
class RunOptions:
    """How runs execute, never what they compute: none of these is part of a run's key (each
    changes a run's numbers by float rounding at most); each run's ``env`` records how it ran."""

    graph: bool = True            # replay training steps as CUDA graphs on CUDA (bench/capture.py); --no-graph
    compile: bool = False         # --compile: CE-style steps' forward compiled, checked first (bench/compiled.py)
    deterministic: bool = False   # --deterministic: deterministic kernels only (bench/capture.py, run_kernels)


def check_device_name(name: str) -> torch.device | None:
    """``--device`` as written: None for auto, else the device it names (whether or not this
    machine has it); anything but auto, cpu, cuda and cuda:N is a one-line error."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise BenchError(f"unknown device {name!r}; choose from auto, cpu, cuda, cuda:N")
    return device


def resolve_device(name: str) -> torch.device:
    """The device ``--device`` names on this machine (auto: CUDA where present); one it lacks is an error."""
    device = check_device_name(name)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device {name} was asked for but no CUDA device is available (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BenchError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


@functools.lru_cache(maxsize=1)
def suite_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "device_name": name, "suite_commit": suite_commit(), "host": platform.node(),
            "threads": torch.get_num_threads()}


@functools.lru_cache(maxsize=4)
def _dataset(name: str, data_dir: str | None):
    from bench.data import load_dataset
    return load_dataset(name, data_dir)


@functools.lru_cache(maxsize=8)
def biased_data(dataset: str, imbalance: float, noise_type: str, noise_rate: float, meta_per_class: int,
                data_seed: int, data_dir: str | None):
    from bench.data import BiasSpec, make_biased
    spec = BiasSpec(imbalance=imbalance, noise_type=noise_type, noise_rate=noise_rate,
                    meta_per_class=meta_per_class, seed=data_seed)
    return make_biased(_dataset(dataset, data_dir), spec)


def dataset_files(name: str, data_dir: str | None = None):
    """Dataset ``name`` as its files hold it, before any bias: DataError where they are missing,
    damaged or malformed."""
    return _dataset(name, None if data_dir is None else str(data_dir))


def dataset_digest(name: str, data_dir: str | None = None) -> str:
    """What ``RunSpec.data_sha256`` holds for dataset ``name``: the first 16 hex digits of an
    ``npz:PATH`` file's sha256 ('' for the built-in datasets)."""
    return _dataset(name, None if data_dir is None else str(data_dir)).digest[:16]


def load_data(spec: RunSpec, data_dir: str | None = None):
    if spec.data_sha256:
        now = dataset_digest(spec.dataset, data_dir)
        if now != spec.data_sha256:
            raise BenchError(f"{spec.dataset} changed since this run was asked for (sha256 {now}..., was "
                             f"{spec.data_sha256}...): run the command again to train on the file as it is now")
    data = biased_data(spec.dataset, spec.imbalance, spec.noise_type, spec.noise_rate, spec.meta_per_class,
                       spec.data_seed, None if data_dir is None else str(data_dir))
    return data.with_meta_in_pool() if spec.train_on_meta else data


def summarize(run, model) -> dict:
    """Final metrics: last-epoch (the returned model) and best-epoch (max over the logged
    evaluations of the final stage; the papers' code reports this best-on-test figure)."""
    last = run.evaluate(model)
    evaluated = [h for h in run.history if "test_acc" in h]
    final_stage = evaluated[-1]["stage"] if evaluated else None
    candidates = [h for h in evaluated if h["stage"] == final_stage]
    best = max(candidates, key=lambda h: h["test_acc"]) if candidates else None
    metrics = {f"{k}_last": last[k] for k in ("acc", "many", "medium", "few")}
    metrics["per_class_last"] = last["per_class"]
    if best is not None:
        metrics.update({f"{k}_best": best[s] for k, s in
                        (("acc", "test_acc"), ("many", "many"), ("medium", "medium"), ("few", "few"))})
        metrics["best_epoch"] = best["epoch"]
    metrics["train_counts"] = np.asarray(run.data.train_counts).tolist()
    return metrics


MEMBERS_SUFFIX = ".members"  # beside a fused group's checkpoint: its runs' keys (bench/fused_runs.py)


def checkpoint_path(spec, cache_dir: Path | None) -> Path | None:
    """Where a run (or a fused group, bench/fused_runs.py: anything with a ``key()``) checkpoints."""
    return None if cache_dir is None else Path(cache_dir) / "checkpoints" / f"{spec.key()}.pt"


def execute(spec: RunSpec, *, device: torch.device, data_dir: str | None = None,
            cache_dir: Path | None = DEFAULT_CACHE_DIR, progress=None, checkpoint_every_s: float = 60.0,
            options: RunOptions = RunOptions()) -> RunResult:
    """Train and evaluate one run. Diverged runs and exceptions come back as ``failed``.

    With a ``cache_dir`` the run checkpoints itself (see ``Run.epochs``) and a rerun after a kill
    resumes from the last checkpoint; the caller removes the checkpoint once the result is stored.
    ``options`` say how the steps run (:class:`RunOptions`: CUDA graphs, ``--compile``,
    ``--deterministic``); the result's ``env`` keeps how they ran (:func:`steps_env`).
    """
    with run_kernels(device, deterministic=options.deterministic):  # and cuDNN's search (bench/capture.py)
        return _execute(spec, device=device, data_dir=data_dir, cache_dir=cache_dir, progress=progress,
                        checkpoint_every_s=checkpoint_every_s, options=options)


def _execute(spec: RunSpec, *, device, data_dir, cache_dir, progress, checkpoint_every_s, options) -> RunResult:
    from methods.base import Run

    method_cls = method_for(spec)
    params = method_cls.params_from_spec(spec)
    data = load_data(spec, data_dir)
    env = environment(device)
    torch.manual_seed(spec.seed)
    run = Run(spec=spec, data=data, device=device, params=params, cache_dir=cache_dir, progress=progress,
              checkpoint_path=checkpoint_path(spec, cache_dir), checkpoint_every_s=checkpoint_every_s,
              graph=options.graph, compile_steps=options.compile)
    if run.checkpoint_found:  # through the progress channel, the grid says it between its bars
        note = f"resuming from its checkpoint ({run.checkpoint_position()})"
        if progress is not None:
            progress({"note": note})
        else:
            print(f"[{spec.key()}] {note}", file=sys.stderr)
    try:
        model = method_cls(params).fit(run)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{method_cls.__name__}.fit returned {type(model).__name__}; "
                            "it must return the trained model")
        metrics = summarize(run, model)
    except BenchError as exc:  # diverged, or an outcome of this run's data (AUM flagged every sample)
        return RunResult(spec, "failed", history=run.history, env=env, error=str(exc))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a bug in a method must not stop the grid; keep the reason
        if out_of_memory(exc):  # not the method's fault: keep its checkpoint for --retry-failed
            return RunResult(spec, "failed", history=run.history, env=env, error=out_of_memory_error(exc),
                             keep_checkpoint=True)
        tb = traceback.format_exc(limit=6)
        print(tb, file=sys.stderr)
        return RunResult(spec, "failed", history=run.history, env=env, error=f"{type(exc).__name__}: {exc}")
    finally:  # every outcome's env (the RunResult holds this dict) says how the steps ran
        env.update(steps_env(run, device))
    return done_result(run, metrics, env)


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the run ran out of memory (CUDA's, or the CPU allocator's), a failure of
    where it ran rather than of the method: its checkpoint is kept and the run is not retried."""
    return (isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError))
            or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)))


def out_of_memory_error(exc: BaseException) -> str:
    """The stored reason of a run that ran out of memory: the first line of the message, and what to do."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return (f"out of memory ({type(exc).__name__}: {first}); its checkpoint is kept: --retry-failed resumes "
            "it (with fewer --jobs, a smaller --fuse, or other runs' memory freed)")


def method_for(spec: RunSpec) -> type:
    """The spec's method class; BenchError for a meta-set method asked to train on its meta set."""
    method_cls = methods.get(spec.method)
    if spec.train_on_meta and method_cls.uses_meta_set:
        raise BenchError(f"{spec.method} learns from the meta set: train_on_meta applies to the other methods")
    return method_cls


def steps_env(run, device: torch.device) -> dict:
    """How a run's steps ran, for its ``env``: captured or eager, memory format, cuDNN's search,
    and its training seconds (``run``: a ``Run``, or a fused group's ``FusedRun``); with
    ``--compile`` whether they compiled, with ``--deterministic`` that its kernels were."""
    env = dict(steps=run.step_mode, channels_last=run.channels_last,
               cudnn_benchmark=searches_conv_algorithms(device), train_s=round(run.trained_s(), 3))
    if run.compile_mode is not None:  # bench run --compile: "compiled", or why not
        env["compile"] = run.compile_mode
    if deterministic_kernels():
        env["deterministic"] = True
    return env


def done_result(run, metrics: dict, env: dict) -> RunResult:
    """A finished run's result: its metrics, history, per-sample labels and records, ``env``."""
    data = run.data
    samples = {"dataset_index": data.train_index, "clean_label": data.train_clean_y,
               "observed_label": data.train_y, "is_noisy": data.is_noisy}
    values = {k: v for k, v in run.records.items() if np.ndim(v) == 1}
    arrays = {k: v for k, v in run.records.items() if np.ndim(v) != 1}
    return RunResult(run.spec, "done", metrics=metrics, history=run.history, samples=samples, values=values,
                     arrays=arrays, env=env)


def display_name(spec: RunSpec) -> str:
    return methods.get(spec.method).display_name(spec.method_params)


def unnamed_settings(spec: RunSpec) -> dict[str, list]:
    """The method's ``--set`` settings that ``spec`` changed from its preset's defaults and that its
    display name does not show, as {name: [value, default]}: CurveNet's embedding size P
    (``curvenet.embed_dim=32``) but not its SL, which names the row ``CurveNet(SL=3)``. Kept in the
    run's ``env`` (``method_settings``), so that ``bench table``, which reads the store without
    torch, can say them under a row that would otherwise read as the plain method."""
    cls = methods.get(spec.method)
    defaults = dataclasses.asdict(cls.resolve_params(spec.preset))  # every field, those params_items omits too
    given = spec.method_params
    name = cls.display_name(given)
    return {k: [v, defaults[k]] for k, v in sorted(given.items())
            if k in defaults and v != defaults[k] and cls.display_name({**given, k: defaults[k]}) == name}


def run_labels(specs: list[RunSpec]) -> dict[str, str]:
    """Each run's name in progress lines: its row in ``bench table`` (the method, and the settings
    that set it apart from the other runs asked for on its cell, e.g. ``CE [lr=0.05]`` in a
    ``--sweep``), its cell and its seed."""
    import pandas as pd

    from bench.summary import row_labels

    if not specs:
        return {}
    frame = pd.DataFrame({"display_name": [display_name(s) for s in specs],
                          "spec_json": [json.dumps(s.to_dict()) for s in specs]})
    return {s.key(): f"{label} {s.cell.label()} seed {s.seed}" for s, label in zip(specs, row_labels(frame))}


def commit(store: Store, result: RunResult, cache_dir: Path | None = None) -> None:
    """Write the result in one transaction, then drop the run's checkpoint (and any temp file a
    killed attempt left half-written)."""
    key = result.spec.key()
    try:
        unnamed = unnamed_settings(result.spec)
    except Exception:  # noqa: BLE001 - a note for the tables must never cost a run its result
        unnamed = {}
    env = {**result.env, "method_settings": unnamed} if unnamed else result.env
    if result.status == "done":
        store.finish(key, metrics=result.metrics, history=result.history, env=env,
                     samples=result.samples, values=result.values, arrays=result.arrays)
    else:
        store.fail(key, result.error or "unknown error", history=result.history, env=env)
    if not result.keep_checkpoint:
        drop_checkpoint(result.spec, cache_dir)


def drop_checkpoint(spec, cache_dir: Path | None) -> None:
    path = checkpoint_path(spec, cache_dir)
    if path is not None:
        remove_checkpoint(path)


def remove_checkpoint(path: Path) -> None:
    """Remove a checkpoint, a fused group's list of its runs beside it, and temp files of its writes."""
    path.unlink(missing_ok=True)
    path.with_suffix(MEMBERS_SUFFIX).unlink(missing_ok=True)  # a fused group's list of its runs
    if path.parent.is_dir():
        for tmp in path.parent.glob(path.name + ".tmp*"):
            tmp.unlink(missing_ok=True)


def pending(store: Store, specs: list[RunSpec], retry_failed: bool = False) -> list[RunSpec]:
    """The specs still to run: not done, and not failed unless ``retry_failed``; duplicates dropped."""
    todo, seen = [], set()
    for spec in specs:
        key = spec.key()
        status = store.status(key)
        if key in seen or status == "done" or (status == "failed" and not retry_failed):
            continue
        seen.add(key)
        todo.append(spec)
    return todo


def run_grid(specs: list[RunSpec], store: Store, *, device: torch.device | str, data_dir: str | None = None,
             cache_dir: Path | None = DEFAULT_CACHE_DIR, retry_failed: bool = False,
             show_progress: bool = True, checkpoint_every_s: float = 60.0, executor=None,
             max_retries: int = 2, options: RunOptions = RunOptions(), fuse: int = 1) -> dict[str, int]:
    """Run every spec not yet done on ``executor`` (default: in this process, one at a time);
    returns counts by outcome: ``done`` and ``failed`` now, ``skipped`` (done before) and
    ``failed_earlier`` (recorded as failed and not retried: ``retry_failed`` runs them again).

    This process is the only writer of the store: it marks each run ``running`` when it hands it
    to the executor and commits the result when it comes back. A run whose process died (killed,
    segfault, out of memory) is handed out again, up to ``max_retries`` times, then recorded as
    failed with the reason. ``fuse`` > 1 trains up to that many seeds of one cell and method as
    one fused network where the method allows it (:mod:`bench.fused_runs`): the executor gets the
    group as one item and returns a result per run. A user error before a run trains (its data
    missing where it runs) stops the grid once the runs in flight have been committed; one a
    method raises while it trains is that run's failure (:func:`execute`). Checkpoints of runs already done (left by a
    kill between commit and clean-up) are removed.
    """
    from tqdm.auto import tqdm

    from bench.executors import SerialExecutor
    from bench.fused_runs import FusedGroup, group_runs, members, sweep_group_checkpoints, unused_group_checkpoints

    executor = executor or SerialExecutor()
    todo = pending(store, specs, retry_failed)
    items = group_runs(todo, fuse)
    for spec in specs:
        if store.status(spec.key()) == "done":
            drop_checkpoint(spec, cache_dir)
    sweep_group_checkpoints(store, cache_dir)
    unused = unused_group_checkpoints(items, cache_dir)
    if unused and show_progress:
        print(f"bench: note: {unused}", file=sys.stderr)
    keys = {s.key() for s in specs}
    failed_earlier = 0 if retry_failed else sum(store.status(k) == "failed" for k in keys)
    counts = {"skipped": len(keys) - len(todo) - failed_earlier, "failed_earlier": failed_earlier,
              "done": 0, "failed": 0}
    disable = not show_progress or None  # None: tqdm shows bars only on a terminal
    # off a terminal (a log file, CI, a batch job) the bars are off: plain lines instead, one when a
    # run starts and then at most one per run every PLAIN_PROGRESS_EVERY_S seconds
    plain = show_progress and not sys.stderr.isatty()
    last_line: dict[str, float] = {}
    grid_bar = tqdm(total=len(todo), desc="grid", unit="run", disable=disable, position=0)
    bars: dict[str, Any] = {}
    slots: dict[str, int] = {}  # progress-bar line of each run in flight
    labels = run_labels(todo)
    started: dict[str, float] = {}
    crashes: dict[str, int] = {}

    def say(key, text):
        """One line about a run, between the progress bars (or alone, off a terminal)."""
        tqdm.write(f"[{key}] {labels[key]}: {text}", file=sys.stderr)

    def progress(item, row):
        key = row.get("key") or item.key()  # a fused group's rows say which run they are about
        if "note" in row:  # a line about the run (resuming from its checkpoint), not an epoch
            if key in labels:
                say(key, row["note"])
            return
        bar = bars.get(key)
        if bar is None:
            return
        bar.set_description_str(f"  {labels[key]}: {row['stage']} epoch {row['epoch'] + 1}", refresh=False)
        bar.update(1)
        shown = {k: row[k] for k in ("loss", "test_acc") if isinstance(row.get(k), float)}
        bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()})
        now = time.time()
        if plain and now - last_line.get(key, 0.0) >= PLAIN_PROGRESS_EVERY_S:
            last_line[key] = now
            values = "".join(f", {k} {v:.3g}" for k, v in shown.items())
            say(key, f"{row['stage']} epoch {row['epoch'] + 1} done{values} ({now - started[key]:.0f}s)")

    def dispatch(item):
        runs = members(item)
        for spec in runs:
            key = spec.key()
            store.start(key, spec.to_dict(), display_name(spec))
            started.setdefault(key, time.time())
            slot = min(set(range(1, len(slots) + 2)) - set(slots.values()))
            slots[key] = slot
            bars[key] = tqdm(desc=f"  {labels[key]}: starting", bar_format="{desc} [{elapsed}{postfix}]",
                             leave=False, disable=disable, position=slot)
            if plain:
                last_line[key] = time.time()
                say(key, "started" if len(runs) == 1 else f"started, fused with {len(runs) - 1} other seed"
                    + "s" * (len(runs) > 2) + " into one network")
        executor.submit(item)

    def close_bar(key):
        slots.pop(key, None)
        bar = bars.pop(key, None)
        if bar is not None:
            bar.close()

    def finish(spec, result, drop=True):
        key = spec.key()
        close_bar(key)
        commit(store, result, cache_dir if drop else None)
        counts[result.status] += 1
        grid_bar.update(1)
        outcome = (f"acc {result.metrics['acc_last']:.2f} (best {result.metrics.get('acc_best', float('nan')):.2f})"
                   if result.status == "done" else f"FAILED: {result.error}")
        say(key, f"{outcome} in {time.time() - started[key]:.0f}s" + (grid_eta() if plain else ""))

    def grid_eta() -> str:
        """Off a terminal (where no grid bar shows it): how far the grid is, and about how long
        the rest takes at the pace so far (wall time per finished run, whatever the --jobs)."""
        finished, total = counts["done"] + counts["failed"], len(todo)
        if total < 2:
            return ""
        if finished == total:
            return f"; {finished} of {total} runs finished"
        left = (time.time() - min(started.values())) / finished * (total - finished)
        return f"; {finished} of {total} runs finished, about {tqdm.format_interval(left)} left"

    queue = list(items)
    in_flight: set[str] = set()
    user_error: str | None = None
    try:
        if queue:
            executor.start(device=device, data_dir=data_dir, cache_dir=cache_dir,
                           checkpoint_every_s=checkpoint_every_s, on_progress=progress, options=options)
        while in_flight or (queue and user_error is None):
            while queue and user_error is None and len(in_flight) < executor.capacity:
                item = queue.pop(0)
                dispatch(item)
                in_flight.add(item.key())
            for item, kind, payload in executor.wait():
                key = item.key()
                in_flight.discard(key)
                if kind == "done" and isinstance(item, FusedGroup):
                    with store.transaction():  # its runs all stored, or none (a rerun resumes the group whole)
                        for spec, result in zip(members(item), payload):
                            finish(spec, result, drop=False)
                    for result in payload:  # the checkpoints only once the results are stored
                        if not result.keep_checkpoint:
                            drop_checkpoint(result.spec, cache_dir)
                    if not any(r.keep_checkpoint for r in payload):
                        drop_checkpoint(item, cache_dir)
                elif kind == "done":
                    finish(item, payload)
                elif kind == "crashed":
                    crashes[key] = crashes.get(key, 0) + 1
                    for spec in members(item):
                        close_bar(spec.key())
                    if crashes[key] <= max_retries:
                        for spec in members(item):
                            say(spec.key(), f"{payload}; retrying ({crashes[key]}/{max_retries})")
                        queue.append(item)
                    else:
                        tries = crashes[key]
                        saved = checkpoint_path(item, cache_dir)
                        error = (f"{payload}; gave up after {tries} attempt{'s' * (tries > 1)} "
                                 f"(--max-retries {max_retries})"
                                 + ("; its checkpoint is kept: --retry-failed resumes it"
                                    if saved is not None and saved.exists() else ""))
                        with store.transaction():  # a fused group's runs all recorded, or none
                            for spec in members(item):
                                finish(spec, RunResult(spec, "failed", error=error, keep_checkpoint=True))
                else:  # a user error: let the runs in flight finish, then stop
                    user_error = user_error or payload
    except BaseException:
        executor.abort()
        raise
    finally:
        for bar in bars.values():
            bar.close()
        grid_bar.close()
    executor.close()
    if user_error is not None:
        raise BenchError(user_error)
    return counts

"""The command line: ``python -m bench run|runs-for|table|show|compare|rank|forget|merge|list|plot|timing|data``.

Every user error (unknown name, value out of range, missing data, unreadable store) is one line
on stderr, ``bench: error: ...``, and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sqlite3
import sys
import textwrap
import threading
from pathlib import Path

from bench.arguments import asked_specs, parse_shard, shard_specs
from bench.cpu import keep_freed_memory, warn_if_slow_bf16
from bench.data.bias import NOISE_TYPES
from bench.errors import BenchError, DataError, check_creatable
from bench.spec import (
    GRID_PRESET,
    GRIDS,
    PRESETS,
    RunSpec,
)
from bench.store import DEFAULT_STORE

# the shot groups of ``bench table --group``: bench.train.shot_groups (MANY_SHOT_ABOVE, FEW_SHOT_BELOW),
# written out here so that the parser needs no torch
GROUP_RULE = {"all": "any number of", "many": "more than 100", "medium": "20 to 100", "few": "fewer than 20"}


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, via main()
        raise BenchError(message)


# ------------------------------------------------------------------------------ commands

def cmd_run(args) -> int:
    from bench import execute, executors
    from bench.store import writer_lock

    if args.deterministic:  # cuBLAS reads it when it starts: before any CUDA work, here and in workers
        from bench.capture import CUBLAS_DETERMINISTIC_WORKSPACE
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    notes: list[str] = []
    specs = asked_specs(args, notes)
    for note in dict.fromkeys(notes):  # once each, over the --sweep combinations
        print(f"bench: note: {note}", file=sys.stderr)
    if args.shard:
        index, count = parse_shard(args.shard)
        asked, specs = len(specs), shard_specs(specs, index, count)
        print(f"bench: --shard {index}/{count}: {len(specs)} of the {asked} runs asked for", file=sys.stderr)
    # the options are checked on every shard, an empty one too: one bad command fails on all of them
    _check_fuse(args.fuse, specs)
    executor = executors.from_args(args)  # checks --jobs, --executor ... (and that Ray is installed)
    # on Ray the runs pick their device on the cluster; here, it must exist on this machine (a dry
    # run trains nothing: it may plan a GPU grid on a machine without one)
    execute.check_device_name(args.device)
    check_creatable(args.cache_dir, f"--cache-dir {args.cache_dir}")
    if args.shard and not specs:  # a shard without runs
        if not args.dry_run:  # an empty store, so that `bench merge` of every shard's store works
            from bench.store import Store
            Store(args.store).close()
        return 0
    _say_own_stages(specs)
    device = execute.resolve_device(args.device) if executor.local and not args.dry_run else args.device
    if executor.local and not args.dry_run and any(spec.precision == "bf16" for spec in specs):
        warn_if_slow_bf16(device, "bf16")
    unreadable: set[str] = set()
    for spec in specs:  # fail on missing data or an impossible bias before touching the store
        if spec.dataset in unreadable:
            continue
        if args.dry_run:  # a dry run plans a grid whose data files are on another machine
            try:
                execute.dataset_files(spec.dataset, args.data_dir)
            except DataError as exc:
                unreadable.add(spec.dataset)
                print(f"bench: note: {spec.dataset}'s data cannot be read here ({str(exc).split(';')[0]}); "
                      "--dry-run plans its runs without checking them", file=sys.stderr)
                continue
        execute.load_data(spec, args.data_dir)
    _say_unknown_rates(specs, args.data_dir, unreadable)
    if args.dry_run:
        return _dry_run(args, specs)
    store = _existing_store(args.store, specs, args.retry_failed)  # a broken store is refused here
    read_only = store is not None and not store.writable  # every run in it: only their table, no lock
    with contextlib.nullcontext() if read_only else writer_lock(args.store):  # one writer per store
        return _run_locked(args, specs, executor, device, store)


def _check_fuse(fuse: int, specs: list[RunSpec]) -> None:
    """BenchError for a --fuse below 1; a note when it applies to none or only some of the methods."""
    if fuse < 1:
        raise BenchError(f"--fuse must be at least 1, got {fuse}")
    if fuse == 1:
        return
    import methods

    alone = sorted({methods.get(s.method).display_name(dict(s.params)) for s in specs
                    if not methods.get(s.method).fuses(s)})
    if alone:
        print(f"bench: --fuse applies to {fusable_methods()}; runs of {', '.join(alone)} train one at a time",
              file=sys.stderr)


def fusable_methods() -> str:
    """The methods ``bench run --fuse`` trains fused, with what keeps some of their runs alone."""
    import methods

    return ", ".join(name + (f" ({methods.get(name).fuse_exceptions})" if methods.get(name).fuse_exceptions else "")
                     for name in methods.names() if methods.get(name).fusable)


def _run_locked(args, specs, executor, device, store) -> int:
    from bench import execute
    from bench.store import Store
    from bench.summary import render, results_table

    try:
        if store is None or execute.pending(store, specs, args.retry_failed):
            executor.open()  # starts or reaches Ray: a bad --address fails before the store is created
        store = store or Store(args.store)
        counts = execute.run_grid(specs, store, device=device, data_dir=args.data_dir,
                                  cache_dir=Path(args.cache_dir), retry_failed=args.retry_failed,
                                  show_progress=not args.quiet, executor=executor,
                                  max_retries=args.max_retries, checkpoint_every_s=args.checkpoint_every,
                                  options=execute.RunOptions(graph=args.graph, compile=args.compile,
                                                             deterministic=args.deterministic),
                                  fuse=args.fuse)
    finally:
        executor.close()
    earlier = counts["failed_earlier"]
    keys = sorted({s.key() for s in specs})
    print(f"{len(specs)} run{'s' * (len(specs) != 1)} requested: {counts['done']} trained, "
          f"{counts['skipped']} already in the store, {counts['failed']} failed"
          + (f", {earlier} failed earlier and not retried" if earlier else "")
          + f" (store: {args.store})", file=sys.stderr)
    if earlier:
        failed = store.runs("failed", keys=keys)
        for key, error in zip(failed["key"], failed["error"]):
            text = error.strip() if isinstance(error, str) else ""
            reason = text.splitlines()[-1] if text else "no reason stored"
            print(f"  failed earlier: run {key}: {reason}", file=sys.stderr)
        print("add --retry-failed to run them again", file=sys.stderr)
    runs = store.runs("done", keys=keys)
    title = f"test accuracy (%), {args.metric} epoch, mean ± sample std (ddof 1) over seeds"
    empty = ("the requested run did not finish" if len(specs) == 1 else
             f"none of the {len(specs)} requested runs finished")
    print(render(results_table(runs, args.metric), title=title, empty=empty))
    _say_off_preset(runs)
    return 1 if counts["failed"] or earlier else 0


def _say_own_stages(specs: list[RunSpec]) -> None:
    """Where --epochs changed a preset's length: one note per method whose own stages (CurveNet's
    probe, O2U-Net's cycles) it leaves as they are, unless --set changed those too."""
    import dataclasses

    import methods
    from bench.spec import PRESETS

    said = set()
    for spec in specs:
        cls = methods.get(spec.method)
        if not cls.own_stages or spec.method in said or spec.epochs == PRESETS[spec.preset]["epochs"]:
            continue
        said.add(spec.method)
        defaults, given = dataclasses.asdict(cls.resolve_params(spec.preset)), dict(spec.params)
        kept = [f"{spec.method}.{k}={given.get(k, defaults[k])}" for k in cls.own_stages
                if given.get(k, defaults[k]) == defaults[k]]
        if kept:
            print(f"bench: note: --epochs {spec.epochs} shortens the classifier's schedule, not "
                  f"{cls.display_name(dict(spec.params))}'s own stages ({', '.join(kept)}); shorten those with --set",
                  file=sys.stderr)


def _say_unknown_rates(specs: list[RunSpec], data_dir, unreadable: set) -> None:
    """One note per method that assumes a noise rate (Co-teaching's tau, O2U-Net's drop rate) left
    at nominal or realised on real noise whose wrong labels the file does not name: both are 0."""
    import methods
    from bench import execute
    from bench.data.bias import REAL_NOISE

    said = set()
    for spec in specs:
        cls = methods.get(spec.method)
        if (spec.noise_type != REAL_NOISE or not cls.rate_setting or spec.method in said
                or spec.dataset in unreadable):
            continue
        value = dict(spec.params).get(cls.rate_setting, "nominal")
        if value in ("nominal", "realised") and execute.dataset_files(spec.dataset, data_dir).y_train_noisy is None:
            said.add(spec.method)
            print(f"bench: note: {spec.method}.{cls.rate_setting}={value} is 0 on {spec.dataset}'s real noise (the "
                  f"file does not say which labels are wrong), so {cls.display_name(dict(spec.params))} removes "
                  f"nothing; give your estimate with --set {spec.method}.{cls.rate_setting}=R", file=sys.stderr)


def _say_off_preset(runs) -> None:
    """Under a table: which rows did not train with their preset's protocol (--epochs 2 ...)."""
    from bench.summary import off_preset_note

    note = off_preset_note(runs)
    if note:
        print(f"note: {note}", file=sys.stderr)


def _dry_run(args, specs: list[RunSpec]) -> int:
    """``bench run --dry-run``: what the command would do with each run, from the store as it is
    now (as DomainBed's sweep lists its jobs' states before it launches); nothing trains and
    nothing is written."""
    import json

    import pandas as pd

    from bench.arguments import swept
    from bench.execute import checkpoint_path, display_name, pending
    from bench.fused_runs import FusedGroup, group_runs, unused_group_checkpoints
    from bench.store import Store
    from bench.summary import row_labels, settings_key, stored_minutes, text_table

    status, todo = dict.fromkeys((spec.key() for spec in specs), None), list(specs)
    minutes: dict[str, float] = {}
    if Path(args.store).exists():
        store = Store(args.store, create=False)
        try:
            status = {key: store.status(key) for key in status}
            todo = pending(store, specs, args.retry_failed)  # what the real run would train
            minutes = stored_minutes(store.runs("done"))
        finally:
            store.close()
    cache = Path(args.cache_dir)
    would = {}
    items = group_runs(todo, args.fuse)
    unused = unused_group_checkpoints(items, cache)
    if unused:
        print(f"bench: note: {unused}", file=sys.stderr)
    for item in items:
        resumes = checkpoint_path(item, cache).exists()  # a fused group checkpoints as one
        for spec in item.specs if isinstance(item, FusedGroup) else [item]:
            group = f" in a fused group of {len(item.specs)}" if isinstance(item, FusedGroup) else ""
            would[spec.key()] = ("resume" if resumes else "train") + group
    estimate = {spec.key(): minutes.get(settings_key(spec.to_dict())) for spec in todo}
    labels = dict(zip((spec.key() for spec in specs), row_labels(pd.DataFrame({  # as bench table will label them
        "display_name": [display_name(spec) for spec in specs],
        "spec_json": [json.dumps(spec.to_dict()) for spec in specs]}))))
    rows = [{"method": labels[spec.key()], "cell": spec.cell.label(),
             **({"sweep": swept(spec, args.sweep)} if getattr(args, "sweep", None) else {}),
             "seed": spec.seed, "key": spec.key()[:12], "in store": status[spec.key()] or "-",
             "est. min": _minutes_text(estimate.get(spec.key())),
             "would": would.get(spec.key(), "skip" if status[spec.key()] == "done" else "skip (--retry-failed)")}
            for spec in specs]
    print(text_table(pd.DataFrame(rows)))
    done = sum(value == "done" for value in status.values())
    resumed = sum(value.startswith("resume") for value in would.values())
    print(f"{len(specs)} run{'s' * (len(specs) != 1)} requested: {len(todo)} to train"
          + (f" ({resumed} from a checkpoint)" if resumed else "") + f", {done} already in the "
          f"store, {len(specs) - len(todo) - done} failed earlier and not retried (store: {args.store}); "
          "--dry-run: nothing trained", file=sys.stderr)
    known = [value for value in estimate.values() if value is not None]
    if known:
        print(f"training time, from the median of stored runs with the same settings (other seeds, as and where "
              f"they were trained): about {_minutes_text(sum(known))} min for {len(known)} of the {len(todo)} runs "
              "to train" + (f"; {len(todo) - len(known)} have no such run" if len(known) < len(todo) else ""),
              file=sys.stderr)
    return 0


def _minutes_text(minutes: float | None) -> str:
    return "" if minutes is None else f"{minutes:.2f}" if minutes < 1 else f"{minutes:.1f}"


def _existing_store(path: str, specs: list[RunSpec], retry_failed: bool):
    """The store at ``path`` if it exists (None: created once a run starts; an empty file becomes
    a store). A read-only store is fine when every run asked for is already in it (the command
    only prints their table); otherwise it is refused here, before anything trains."""
    from bench import execute
    from bench.store import Store, StoreNotWritable

    if not Path(path).exists():
        return None
    try:
        return Store(path)
    except StoreNotWritable:
        reader = Store(path, create=False)
        if execute.pending(reader, specs, retry_failed):
            reader.close()
            raise
        return reader


def cmd_table(args) -> int:
    from bench.analysis import NO_SEPARATION, SEPARATION, SEPARATION_TITLES, reading_progress, with_separation
    from bench.store import Store
    from bench.summary import metric_column, render, render_records, results_records, results_table

    if args.paper:
        if args.method or args.cell:
            raise BenchError(f"--paper {args.paper} shows the table's own rows and cells; drop --method/--cell")
        if args.average:
            raise BenchError("--average is for the plain table (the paper tables give their own mean accuracy, MA)")
        if args.metric == "minutes":
            raise BenchError("--metric minutes is for the plain table (the paper tables show accuracy; "
                             "Table 8's times: python -m bench timing)")
        if args.metric in SEPARATION:
            raise BenchError(f"--metric {args.metric} is for the plain table (the paper tables show accuracy)")
        from bench import tables
        return tables.main(args)

    if args.write:
        raise BenchError("--write writes the paper tables: give --paper N (or --paper all)")
    args.metric = args.metric or "last"
    metric_column(args.metric, args.group)  # refuses a --group the metric has none of
    store = Store(args.store, create=False)
    runs = store.runs("done")
    stored = len(runs)
    if args.method or args.cell:  # whole (method, cell) groups: each row keeps its label
        from bench.plots import parse_cell
        from bench.show import absent_methods, method_selection, select

        wanted = method_selection(args.method, runs)
        absent = absent_methods(wanted, runs, args.store)
        if absent:
            print(f"bench: {absent.replace('no runs of', 'no finished runs of', 1)}", file=sys.stderr)
        runs = runs[select(runs, methods=wanted, cell=parse_cell(args.cell) if args.cell else None)]
    group = "" if args.group == "all" else f"{args.group}-shot classes"
    if args.metric in SEPARATION:
        runs = with_separation(store, runs, progress=reading_progress)
        title = f"{SEPARATION_TITLES[args.metric]}; mean ± sample std (ddof 1) over seeds"
    elif args.metric == "minutes":
        title = ("training time (minutes: set-up, training and evaluation, summed over the attempts of a resumed "
                 "run; a run fused with others, --fuse, its group's time / its size), mean ± sample std (ddof 1) "
                 "over seeds")
    else:
        title = (f"test accuracy (%), {args.metric} epoch" + (f", {group}" if group else "")
                 + ", mean ± sample std (ddof 1) over seeds")
    if runs.empty:
        named = " ".join(f"{flag} {value}" for flag, value in (("--method", args.method), ("--cell", args.cell))
                         if value)
        empty = (f"none of the {stored} finished run(s) in the store is of {named}" if stored
                 else "no finished runs in the store")
    elif args.metric in SEPARATION:
        empty = f"none of the {len(runs)} finished run(s) has a {args.metric}: {NO_SEPARATION[args.metric]}"
    else:
        empty = (f"no {group} ({GROUP_RULE[args.group]} training samples) in the cells of the {len(runs)} "
                 "finished run(s)")
    if args.format in ("csv", "json"):  # numbers, one record per (method, cell)
        records = results_records(runs, args.metric, args.group, args.average)
        if records.empty:
            print(f"bench: {empty}", file=sys.stderr)
        print(render_records(records, args.format, title))
    else:
        table = results_table(runs, args.metric, args.group, args.average)
        if table.empty and args.format == "latex":  # stdout stays a LaTeX document
            print(f"bench: {empty}", file=sys.stderr)
        else:
            print(render(table, args.format, title, empty=empty))
    _say_off_preset(runs)
    failed = store.runs("failed")
    if len(failed):
        print(f"\n{len(failed)} failed run(s): `python -m bench show --status failed` says why, "
              "`python -m bench run ... --retry-failed` retries them", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    import methods
    from bench.data import DATASET_NAMES
    from bench.models import MODELS

    lines = ["methods (and their --set NAME.KEY=VALUE settings, paper defaults; quick preset changes):"]
    for name in methods.names():  # all of it first: a broken method file is an error with no partial list
        cls = methods.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        lines.append(f"  {name:28s} {doc}")
        settings = ", ".join(f"{k}={_shown_value(v)}" for k, v in cls.settings("paper").items())
        quick = ", ".join(f"{k}={_shown_value(v)}" for k, v in cls.presets.get("quick", {}).items())
        text = (settings or "no settings") + (f"; quick: {quick}" if quick else "")
        lines.append(textwrap.fill(text, width=100, initial_indent=" " * 4, subsequent_indent=" " * 6))
    lines.append("  seeds trained as one fused network by `bench run --fuse K`: " + fusable_methods())
    print("\n".join(lines))
    print("datasets:\n  " + ", ".join(DATASET_NAMES) + ", npz:PATH")
    print("models:\n  " + ", ".join(sorted(MODELS)))
    print("grids:")
    for name, cells in GRIDS.items():
        print(f"  {name:12s} {len(cells):3d} cell{'' if len(cells) == 1 else 's'}, preset {GRID_PRESET[name]}: "
              + "; ".join(c.label() for c in cells[:4]) + (" ..." if len(cells) > 4 else ""))
    print("presets:\n  " + ", ".join(PRESETS))
    print("noise types:\n  " + ", ".join(t if t != "real" else "real (your npz file's own labels as they are, "
                                          "y_train_noisy where it has them; no rate)" for t in NOISE_TYPES))
    return 0


def _shown_value(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def cmd_merge(args) -> int:
    """``bench merge SOURCE... --store DEST``: the runs of other stores (e.g. of ``--shard`` jobs)
    copied into one (:meth:`bench.store.Store.merge_from`)."""
    from tqdm.auto import tqdm

    from bench.show import writer
    from bench.store import Store, writer_lock

    sources = []
    try:
        for path in args.sources:  # every source is a readable store, not the destination, or nothing is written
            if not Path(path).exists():
                raise BenchError(f"no store at {path} to merge (a --shard job writes its --store, empty if its "
                                 "share of the grid is)")
            if Path(path).resolve() == Path(args.store).resolve():
                raise BenchError(f"cannot merge the store {path} into itself (--store {args.store}); "
                                 "nothing was merged")
            sources.append(Store(path, create=False))
        with writer_lock(args.store):
            store = Store(args.store)
            try:
                for source in sources:
                    with tqdm(desc=f"merging {source.path.name}", unit="run", disable=None) as bar:  # a terminal only
                        def show(done: int, total: int, bar=bar) -> None:
                            bar.total = total
                            bar.update(done - bar.n)

                        n = store.merge_from(source, progress=show, runs_only=args.runs_only)
                    copied = n["done"] + n["failed"]
                    live = (writer(source.path) or {}).get("held")  # a bench run is writing the source now
                    left = (f"{n['interrupted']} running left out (a bench run is writing {source.path}: merge "
                            "again once it ends)" if live else
                            f"{n['interrupted']} interrupted left out (bench run trains them again)")
                    differ = (f"; {n['differing']} of them finished in both with other results: the same runs "
                              "trained twice (kernels that are not bit-reproducible, e.g. on a GPU)"
                              if n["differing"] else "")
                    print(f"{source.path}: {copied} run{'s' * (copied != 1)} copied ({n['done']} done, "
                          f"{n['failed']} failed{', without per-sample rows' * args.runs_only}), {n['kept']} "
                          f"already in {args.store} (kept as they are there{differ})"
                          + (f", {left}" if n["interrupted"] else ""), file=sys.stderr)
            finally:
                store.close()
    finally:
        for source in sources:
            source.close()
    return 0


def cmd_data(args) -> int:
    from bench.data import cli as data_cli
    return data_cli.main(args)


# ------------------------------------------------------------------------------- parser

def make_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m bench",
                            description="reweight-bench: train sample-reweighting methods on noisy, "
                                        "long-tailed data, and tabulate, plot and time them")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    run = sub.add_parser("run", help="train and evaluate methods on grid cells; results go to the store")
    run.add_argument("--methods", help="comma-separated method names (see `bench list`)")
    run.add_argument("--paper", help="run exactly the runs that the paper's table N needs (1, 2, 3, 6-10)")
    run.add_argument("--dataset", help="fmnist-mini (quick default), fashion-mnist, cifar10, cifar100 or npz:PATH")
    run.add_argument("--data-dir", help="where datasets live (else $BENCH_DATA_DIR, else ~/.cache/reweight-bench/data)")
    run.add_argument("--grid", help=f"a named grid: {', '.join(GRIDS)}")
    run.add_argument("--imbalance", help="comma-separated imbalance ratios n_max/n_min, e.g. 1,20")
    run.add_argument("--noise", help="comma-separated TYPE:RATE, none, or real (your npz file's own labels as "
                                     "they are), e.g. flip2:0.4,none")
    run.add_argument("--meta-per-class", type=int, help="clean meta samples per class (default: per dataset; an npz "
                                                        "file's own meta set, x_meta: its smallest class's count)")
    run.add_argument("--train-on-meta", action="store_true",
                     help="methods without a meta set (all but MW-Net and CurveNet) also train on the clean "
                          "meta samples (PROTOCOL.md §7's fair-data option; part of their runs' keys)")
    run.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    run.add_argument("--data-seed", type=int, help="fix the data seed for all runs (default: the training seed)")
    run.add_argument("--preset", help=f"{' or '.join(PRESETS)} (default quick, or the grid's preset)")
    run.add_argument("--model", help="backbone override (resnet32, wrn16_8, small_cnn)")
    run.add_argument("--epochs", type=int, help="override epochs (= --set epochs=N); warm-up and milestones "
                                              "scale with it, a method's own stages do not")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a protocol field (lr=0.05) or a method setting (focal.gamma=2); repeatable")
    run.add_argument("--sweep", action="append", metavar="KEY=V1,V2,...",
                     help="run every value of a protocol field or method setting (focal.gamma=0.5,1,2); "
                          "repeatable: every combination; each gets its own table row")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--precision", choices=("fp32", "bf16"),
                     help="fp32 (default, the papers') or bf16 autocast; part of each run's key")
    run.add_argument("--no-graph", dest="graph", action="store_false",
                     help="on CUDA, run training steps eagerly instead of replaying them as CUDA graphs")
    run.add_argument("--compile", action="store_true",
                     help="compile the classifier's forward in CE-style steps with torch.compile (kernel fusion), "
                          "checked against eager first (Co-teaching: both networks); meta steps stay uncompiled "
                          "(default off)")
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic kernels only, so that a CUDA run gives the same bits again on the same "
                          "machine (torch.use_deterministic_algorithms, cuDNN's deterministic algorithms without "
                          "its search); may be slower on a GPU; not part of a run's key (default off)")
    run.add_argument("--store", default=DEFAULT_STORE, help=f"results store (default ./{DEFAULT_STORE})")
    run.add_argument("--cache-dir", default=".bench_cache",
                     help="cache of reusable artefacts: CurveNet probe curves and run checkpoints")
    run.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    run.add_argument("--metric", choices=("last", "best"), default="last", help="accuracy shown at the end")
    run.add_argument("--quiet", action="store_true",
                     help="no progress bars or progress lines; each run's result line stays")
    run.add_argument("--jobs", type=int, help="runs at once: local worker processes (default 1: in this "
                                              "process); with --executor ray, tasks in flight")
    run.add_argument("--fuse", type=int, default=1, metavar="K",
                     help="train up to K seeds of one cell and method as one fused network (grouped "
                          "convolutions, for GPUs; every method, `bench list` names the settings that train "
                          "alone; default 1)")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local (this machine) or ray (a Ray cluster; pip install .[ray])")
    run.add_argument("--address", help="with --executor ray: the cluster to join (host:port or auto; "
                                       "default: start a local Ray instance)")
    run.add_argument("--gpus-per-run", type=float, help="with --executor ray: GPUs each run asks for (e.g. 0.25)")
    run.add_argument("--max-retries", type=int, default=2,
                     help="times a run whose worker died (killed, out of memory) is tried again (default 2)")
    run.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                     help="checkpoint a run at most this often, at epoch ends (default 60; 0: every epoch)")
    run.add_argument("--shard", metavar="I/N",
                     help="only the I-th of N parts of the runs asked for (whole groups of seeds, dealt out in "
                          "turn): N jobs of one command with their own --store, then `bench merge`")
    run.add_argument("--dry-run", action="store_true",
                     help="print what the command would do with each run (train, resume, skip) from the store "
                          "as it is, and train nothing")
    run.set_defaults(func=cmd_run)

    table = sub.add_parser("table", help="print stored results: method x cell, mean ± sample std over seeds")
    table.add_argument("--store", default=DEFAULT_STORE, help=f"results store to read (default ./{DEFAULT_STORE})")
    table.add_argument("--paper", help="the CurveNet paper's table N (1, 2, 3, 6, 7, 8, 9, 10, anchors or all), "
                                       "side by side with the published numbers")
    table.add_argument("--write", nargs="?", const="tables", default=None, metavar="DIR",
                       help="with --paper: also write each table to DIR (default ./tables) as tableN.md "
                            "(.tex, .csv, .json with --format)")
    table.add_argument("--format", choices=("md", "csv", "json", "latex"), default="md",
                       help="markdown (default), CSV, JSON or LaTeX")
    table.add_argument("--metric", choices=("last", "best", "minutes", "noise_auroc", "tail_auroc"),
                       help="last-epoch accuracy (the returned model; default of the plain table) or best-epoch "
                            "(max over epochs on the test set, as the papers report; default with --paper, so "
                            "that ours and the published numbers are the same quantity); minutes: each run's "
                            "training time (all attempts of a resumed run); noise_auroc / tail_auroc: how often "
                            "a clean (clean tail-class) training sample gets a larger final weight, or a smaller "
                            "selection score, than a mislabelled one (%%); the last three for the plain table")
    table.add_argument("--method", help="only these methods (comma-separated registry names, or the names tables show)")
    table.add_argument("--cell", help="only this cell, DATASET:IMBALANCE:NOISE, e.g. fmnist-mini:10:flip2:0.4")
    table.add_argument("--average", action="store_true",
                       help="add each method's mean over the table's cells (per seed whose runs cover every "
                            "cell, then mean ± std over those seeds, as the paper tables' MA)")
    table.add_argument("--group", choices=("all", "many", "medium", "few"), default="all",
                       help="all classes, or one shot group ("
                       + ", ".join(rule for g, rule in GROUP_RULE.items() if g != "all") + " training samples)")
    table.set_defaults(func=cmd_table)

    merge = sub.add_parser("merge", help="copy the runs of other stores (e.g. of --shard jobs) into one store")
    merge.add_argument("sources", nargs="+", metavar="SOURCE", help="stores to read")
    merge.add_argument("--store", default=DEFAULT_STORE,
                       help=f"the store to write (default ./{DEFAULT_STORE}; created if missing)")
    merge.add_argument("--runs-only", action="store_true",
                       help="copy each run's results and per-epoch history but not its per-sample rows (labels, "
                            "weights, curves): a small store to publish or share, that bench table (accuracy, "
                            "minutes), compare and rank read as they read the full one; separation and the "
                            "per-sample figures need the full store. A full copy merged later completes the run")
    merge.set_defaults(func=cmd_merge)

    lst = sub.add_parser("list", help="methods, datasets, models, grids, presets")
    lst.set_defaults(func=cmd_list)

    runs_for = sub.add_parser("runs-for", help="run exactly the runs a paper table needs (= run --paper N)",
                              parents=[], add_help=True)
    for action in run._actions:
        if action.dest not in ("help", "methods", "paper"):
            runs_for._add_action(action)
    runs_for.add_argument("--paper", required=True, help="table number (1, 2, 3, 6-10)")
    runs_for.set_defaults(func=cmd_run, methods=None)

    for name, module, text in (("plot", "plots", "figures from the store: loss curves (Fig. 1), weights (Fig. 5), "
                                                 "separation"),
                               ("timing", "timing", "ms per training iteration, CE vs MW-Net vs CurveNet SL=0..3"),
                               ("show", "show", "the runs in a store, one line each (status, accuracy, why one "
                                                "failed), or one run in full (KEY)"),
                               ("compare", "compare", "is method A better than B: per cell, A - B with a confidence "
                                                      "interval and p, paired over seeds"),
                               ("rank", "rank", "several methods over the cells: average ranks, Friedman test and "
                                                "Nemenyi critical difference, or Holm's test against a control "
                                                "(Demšar 2006)"),
                               ("forget", "forget", "remove runs from a store (listed; --yes deletes them), so that "
                                                    "bench run trains them again")):
        p = sub.add_parser(name, help=text)
        try:
            mod = importlib.import_module(f"bench.{module}")
        except ImportError:
            continue
        mod.add_arguments(p)
        p.set_defaults(func=mod.main)

    data = sub.add_parser("data", help="print the realised bias of a dataset (meta split, imbalance, noise)")
    try:
        from bench.data import cli as data_cli
        data_cli.add_arguments(data)
    except ImportError:
        pass
    data.set_defaults(func=cmd_data)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's preemption, ``kill``): stopped as Ctrl-C stops a run."""


def _raise_terminated(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # CPU steps: no page faults on every activation (bench/cpu.py)
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    else:  # signal handlers can only be set from the main thread
        previous = None
    args = None
    try:
        args = make_parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return code
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:  # the store broke mid-way: disk full, a damaged file
        print(f"bench: error: the results store failed: {exc} (runs committed before are in it; a run that "
              "was in progress keeps its checkpoint)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        trains = getattr(args, "command", None) in ("run", "runs-for")
        print(f"bench: {what}" + ("; finished runs are in the store, the rest will run next time" if trains else ""),
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:  # `bench list | head`: the reader is gone; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
        return 141  # 128 + SIGPIPE, as a shell tool killed by it
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

"""``python -m bench forget``: remove runs from a store, so that the next ``bench run`` trains
them again (after fixing a method, or to drop an experiment).

``bench forget [KEY ...] [--method M,...] [--cell DATASET:IMB:NOISE] [--status S] [--yes]``
selects runs as ``bench show`` does (every selector given must hold) and lists them; only with
``--yes`` are they deleted, each with all its rows (history, per-sample records), in one
transaction, under the store's writer lock (not while a ``bench run`` writes the store). Their
checkpoints in ``--cache-dir`` go too, and those of fused groups that hold one of them, so that
nothing resumes from them. The file is then compacted (SQLite's ``VACUUM``), so that forgetting
runs frees their space on disk, as one expects before publishing a store. CurveNet's cached
probe curves (``CACHE/curvenet_probe``) stay: they are shared by CurveNet runs that differ only
after the probe; delete that folder by hand after changing the probe's code.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from bench.errors import BenchError
from bench.show import STATUSES, absent_methods, listing, method_selection, render_listing, select, writer


def add_arguments(parser) -> None:  # (no torch: every command's parser is built at start-up)
    from bench.store import DEFAULT_STORE

    parser.add_argument("runs", nargs="*", metavar="KEY", help="runs by key (or unique prefix)")
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"results store (default ./{DEFAULT_STORE})")
    parser.add_argument("--method",
                        help="runs of these methods (comma-separated registry names, or the names tables show)")
    parser.add_argument("--cell", help="runs on this cell, DATASET:IMBALANCE:NOISE, e.g. fmnist-mini:10:flip2:0.4")
    parser.add_argument("--status", choices=STATUSES, help="runs in this state (all: any)")
    parser.add_argument("--cache-dir", default=".bench_cache",
                        help="where their checkpoints are (as for bench run; default ./.bench_cache)")
    parser.add_argument("--yes", action="store_true", help="delete them (without it: only list them)")


def kib(size: int) -> str:
    return f"{size / 1024:,.0f} KiB"


def remove_checkpoints(keys: set[str], cache_dir: Path) -> int:
    """Remove the checkpoints of the runs ``keys`` and of the fused groups holding one of them."""
    from bench.execute import MEMBERS_SUFFIX, remove_checkpoint
    from bench.fused_runs import group_listings

    paths = [Path(cache_dir) / "checkpoints" / f"{key}.pt" for key in keys]
    paths += [path for path, members in group_listings(cache_dir) if keys & set(members)]
    found = [path for path in paths if path.exists() or path.with_suffix(MEMBERS_SUFFIX).exists()]
    for path in found:
        remove_checkpoint(path)
    return len(found)


def main(args) -> int:
    from bench.plots import parse_cell
    from bench.store import Store, writer_lock

    if not (args.runs or args.method or args.cell or args.status):
        raise BenchError("name the runs to forget: KEY..., --method, --cell or --status (every run: --status all)")
    cell = parse_cell(args.cell) if args.cell else None
    store = Store(args.store, create=False)

    def named(every):  # which of the runs were named
        keep = select(every, status=args.status or "all", methods=wanted, cell=cell)
        if args.runs:
            keep &= every["key"].isin({store.resolve_key(prefix) for prefix in args.runs})
        return keep

    try:
        every = store.runs(None)
        wanted = method_selection(args.method, every)
        keep = named(every)
        chosen = every[keep]
        absent = absent_methods(wanted, every, args.store)
        if absent:
            print(f"bench: {absent}", file=sys.stderr)
        if chosen.empty:
            print(f"bench: no run in {args.store} is all of what was named; nothing to forget", file=sys.stderr)
            return 0
        print(render_listing(listing(every, writer(args.store))[keep.to_numpy()].reset_index(drop=True)))
        if not args.yes:
            print(f"{len(chosen)} run{'s' * (len(chosen) != 1)} would be forgotten; add --yes to delete them",
                  file=sys.stderr)
            return 0
        if not store.writable:
            raise BenchError(f"store {args.store} is not writable")
        with writer_lock(args.store):  # StoreInUse while a bench run writes it
            again = store.runs(None)  # a bench run may have changed a state since the listing
            if set(again.loc[named(again), "key"]) != set(chosen["key"]):
                raise BenchError(f"the runs in {args.store} changed since they were listed; "
                                 "run bench forget again to see what it would delete now")
            size = store.path.stat().st_size
            removed = store.remove(list(chosen["key"]))
            try:
                checkpoints = remove_checkpoints(set(chosen["key"]), Path(args.cache_dir))
                left = ""
            except OSError as exc:  # the runs are gone all the same: say what is left to delete
                checkpoints = 0
                left = (f"; their checkpoints in {args.cache_dir} could not all be removed ({exc}): delete "
                        "checkpoints/KEY.pt there by hand, or a later bench run of the same runs resumes from them")
            unfinished = (chosen["status"] != "done").any()  # a finished run's checkpoint went with its result
            if not checkpoints and not left and unfinished:
                left = (f"; no checkpoint of them in {args.cache_dir} (runs trained with another --cache-dir keep "
                        "theirs there, and a later bench run of the same runs with it resumes from them: delete "
                        "checkpoints/KEY.pt there)")
            try:
                file = f" (its file: {kib(size)} -> {kib(store.compact())})"
            except sqlite3.OperationalError as exc:  # e.g. no room for VACUUM's copy: the runs are gone all the same
                file = f" (its file was not compacted: {exc})"
    finally:
        store.close()
    print(f"forgot {removed} run{'s' * (removed != 1)} in {args.store}{file}"
          + (f" and {checkpoints} checkpoint{'s' * (checkpoints != 1)} in {args.cache_dir}" if checkpoints else "")
          + "; the next bench run that asks for them trains them again" + left, file=sys.stderr)
    return 0

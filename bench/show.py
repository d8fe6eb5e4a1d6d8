"""``python -m bench show``: the runs in a store, one line each, or one run in full.

``bench show [--status S] [--method M,...] [--cell DATASET:IMB:NOISE] [--format md|csv|json]``
lists the stored runs (key, method and settings as ``bench table`` labels them, cell, seeds,
status, attempts, accuracies, training minutes, when, and why a run failed or is still
``running``); ``bench show KEY`` (a unique prefix does) prints one run: its spec, environment,
result, error and per-epoch history, and what it recorded per sample (read with
``Store.samples`` / ``Store.array``).

A stored ``running`` run is one being trained now, or one whose ``bench run`` ended without
finishing it (killed, crashed): the next ``bench run`` of the same command resumes it from its
checkpoint. The store's writer lock file (``STORE.lock``) names the process that last wrote it;
while that process lives on this host, its runs are "being trained". Reads only the store (no
torch), as ``bench table`` does; only ``bench show KEY``'s command to run the run again (checked
to give its key) needs the method registry.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.analysis import run_separation, selection_quality
from bench.errors import BenchError
from bench.spec import PRESETS, comma_items
from bench.store import RUNS_ONLY
from bench.summary import (
    cell_label,
    cell_labels,
    json_ready,
    row_labels,
    settings,
    text_table,
    to_json,
    training_minutes,
)

STATUSES = ("all", "done", "failed", "running")
LIST_COLUMNS = ("key", "method", "cell", "seed", "status", "attempts", "acc_last", "acc_best", "minutes", "when",
                "commit", "note")


def add_arguments(parser) -> None:
    from bench.store import DEFAULT_STORE

    parser.add_argument("run", nargs="?", metavar="KEY", help="one run in full: its key or a unique prefix of it")
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"results store to read (default ./{DEFAULT_STORE})")
    parser.add_argument("--status", choices=STATUSES, default="all", help="only runs in this state (default all)")
    parser.add_argument("--method", help="only these methods (comma-separated registry names, e.g. curvenet,mwnet, "
                                         "or the names tables show)")
    parser.add_argument("--cell", help="only this cell, DATASET:IMBALANCE:NOISE, e.g. fmnist-mini:10:flip2:0.4")
    parser.add_argument("--format", choices=("md", "csv", "json"), default="md",
                        help="markdown (default), CSV or JSON (numbers as numbers; one run: its records)")


def _when(seconds) -> str:
    if seconds is None or pd.isna(seconds):
        return ""
    return datetime.datetime.fromtimestamp(float(seconds)).strftime("%Y-%m-%d %H:%M")


def writer(store_path) -> dict | None:
    """The process that last took the store's writer lock (``bench.store.writer_lock``), as
    ``{"pid", "host", "since" (epoch seconds), "held"}``: ``held`` says whether it holds the lock
    now (True or False on this host, None where that cannot be told: another host). None without a
    readable lock file. Nothing here takes the lock, even for a moment: that could turn away a
    ``bench run`` starting then."""
    from bench.store import lock_path

    path = lock_path(store_path)
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    parts = text.split(" ")  # "pid N on HOST, since YYYY-MM-DD HH:MM:SS" (local time)
    if len(parts) < 4 or parts[0] != "pid" or not parts[1].isdigit() or parts[2] != "on" or "since " not in text:
        return None
    try:
        since = time.mktime(time.strptime(text.split("since ", 1)[1].strip(), "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        return None
    pid, host = int(parts[1]), parts[3].rstrip(",")
    held = _flock_held(path, pid) if host == os.uname().nodename else None
    return {"pid": pid, "host": host, "since": since, "held": held}


def _flock_held(path, pid: int) -> bool:
    """Whether ``path`` is flock-ed now: from the kernel's table (/proc/locks, Linux), else whether
    ``pid`` still lives (a ``bench run`` holds its lock until it exits)."""
    try:
        st = os.stat(path)
        table = Path("/proc/locks").read_text()
    except OSError:
        table = None
    if table is not None:
        inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        return any(line.split()[1:2] == ["FLOCK"] and inode in line.split() for line in table.splitlines())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process has that pid
        pass
    return True


def running_note(lock: dict | None, started) -> str:
    """What a ``running`` run that started at ``started`` (epoch seconds) is: being trained if the
    store's writer (:func:`writer`) holds its lock and took it before the run started, else
    interrupted."""
    resumes = "interrupted (the same bench run command resumes it, from its checkpoint if it wrote one)"
    if lock is None or pd.isna(started) or float(started) < lock["since"]:  # (since: whole seconds, rounded down)
        return resumes
    if lock["held"] is None:
        return f"being trained on {lock['host']}, or {resumes}"
    return f"being trained (bench run pid {lock['pid']})" if lock["held"] else resumes


def _commit(env_json) -> str:
    """The suite's commit a run was trained with, short (``+`` for uncommitted changes)."""
    env = json.loads(env_json) if isinstance(env_json, str) and env_json else {}
    commit = str(env.get("suite_commit", ""))
    return "" if commit in ("", "unknown") else commit[:8] + ("+" if commit.endswith("+dirty") else "")


def _reason(error) -> str:
    text = error.strip() if isinstance(error, str) else ""
    return text.splitlines()[-1] if text else "no reason stored"


def method_names(text: str | None, runs: pd.DataFrame | None = None) -> list[str] | None:
    """``--method ce,focal`` as a list of registry names (None: no such option). Each name is a
    registry name (``bench list``) or, case aside, a method's name as tables show it (``Focal``,
    ``MW-Net``: the display names of ``runs``); anything else is a one-line error."""
    chosen = method_selection(text, runs)
    return None if chosen is None else list(chosen)


def _plain(display) -> str:
    """A table name without its variant, lower case: ``MW-Net(noise)`` -> ``mw-net``."""
    return str(display).split("(")[0].strip().lower()


def method_selection(text: str | None, runs: pd.DataFrame | None = None) -> dict[str, set[str] | None] | None:
    """``--method`` as {registry name: the display names (lower case) of the runs it names, or None
    for all the method's runs} (None: no such option). A registry name or a method's plain table
    name (``CurveNet``, ``MW-Net``) names every run of the method; a table name with its variant
    (``CurveNet(SL=3)``, ``MW-Net(noise)``) names only the runs shown under it, so that ``bench
    forget --method 'CurveNet(SL=3)'`` leaves the other CurveNet runs alone."""
    import methods

    if not text:
        return None
    known = set(methods.names()) | (set(runs["method"]) if runs is not None and len(runs) else set())
    shown: dict[str, set] = {}
    variants: dict[str, set] = {}
    for name in methods.names():  # each method's plain table name, whether or not the store has runs of it
        cls = methods.get(name)
        for preset in PRESETS:
            display = cls.display_name(dataclasses.asdict(cls.resolve_params(preset)))
            shown.setdefault(_plain(display), set()).add(name)
    if runs is not None and len(runs):
        for name, display in zip(runs["method"], runs["display_name"]):
            plain = _plain(display)
            shown.setdefault(plain, set()).add(name)
            if str(display).lower() != plain:
                variants.setdefault(str(display).lower(), set()).add(name)
    out: dict[str, set[str] | None] = {}
    for item in comma_items(text, "--method"):
        matches = ([item] if item in known else sorted(n for n in known if n.lower() == item.lower())
                   or sorted(shown.get(item.lower(), ())))
        if matches:
            out.update(dict.fromkeys(matches))  # every run of these methods
        elif item.lower() in variants:
            for name in sorted(variants[item.lower()]):
                shown_as = out.setdefault(name, set())
                if shown_as is not None:  # None: the method was named whole already
                    shown_as.add(item.lower())
        else:
            raise BenchError(f"unknown method {item!r}; the methods are {', '.join(methods.names())} "
                             "(`bench list`), or their names as tables show them")
    return out


def absent_methods(wanted: list[str] | None, runs: pd.DataFrame, store_path) -> str | None:
    """Where some of ``wanted`` (registry names) have no run among ``runs``: a line saying so,
    with the methods the runs are of (a method not run yet, or run into another store)."""
    absent = [m for m in wanted or [] if m not in set(runs["method"])]
    if not absent:
        return None
    return (f"no runs of {', '.join(absent)} in {store_path}"
            + (f" (its runs are of {', '.join(sorted(set(runs['method'])))})" if len(runs) else ""))


def select(runs: pd.DataFrame, *, status: str = "all", methods=None, cell=None) -> pd.Series:
    """Which runs (of a ``Store.runs(None)`` frame) are in ``status``, of ``methods``, on ``cell``.
    ``methods``: registry names, or :func:`method_selection`'s dict (a variant's runs only)."""
    from bench.plots import matches_cell

    keep = pd.Series(True, index=runs.index)
    if status != "all":
        keep &= runs["status"] == status
    if methods:
        keep &= runs["method"].isin(list(methods))
        if isinstance(methods, dict):
            keep &= pd.Series([methods.get(name) is None or str(display).lower() in methods[name]
                               for name, display in zip(runs["method"], runs["display_name"])], index=runs.index)
    if cell is not None:
        keep &= matches_cell(runs, cell)
    return keep


def listing(runs: pd.DataFrame, lock: dict | None = None) -> pd.DataFrame:
    """One row per run (``LIST_COLUMNS``), in the order they started. ``method`` is the row label of
    ``bench table`` (the settings that set a run apart, e.g. ``CE [epochs=3]``); ``cell`` adds
    ``[preset/model]`` where ``runs`` mix protocols; ``commit`` is the suite's commit it was trained
    with (``+``: with uncommitted changes); ``note`` says why a run failed (the
    error's last line) or what a ``running`` run is (:func:`running_note`)."""
    if runs.empty:
        return pd.DataFrame(columns=list(LIST_COLUMNS))
    out = pd.DataFrame(index=runs.index)
    out["key"] = runs["key"]
    out["method"] = row_labels(runs)
    out["cell"] = cell_labels(runs)
    specs = [json.loads(s) for s in runs["spec_json"]]
    out["seed"] = runs["seed"].astype(int)
    data_seeds = [int(s.get("data_seed", s["seed"])) for s in specs]
    if data_seeds != out["seed"].tolist():  # --data-seed: shown where it is not the training seed
        out.insert(out.columns.get_loc("seed") + 1, "data_seed", data_seeds)
    out["status"] = runs["status"]
    out["attempts"] = runs["attempts"].astype(int)
    for column in ("acc_last", "acc_best"):
        out[column] = runs[column] if column in runs else np.nan
    out["minutes"] = training_minutes(runs).where(runs["status"] == "done")
    out["when"] = [_when(e if s != "running" else b) for s, b, e in zip(runs["status"], runs["started"], runs["ended"])]
    out["commit"] = [_commit(text) for text in runs["env_json"]]
    out["note"] = [_reason(e) if s == "failed" else running_note(lock, b) if s == "running" else ""
                   for s, e, b in zip(runs["status"], runs["error"], runs["started"])]
    return out.reset_index(drop=True)


def render_listing(table: pd.DataFrame, fmt: str = "md") -> str:
    if fmt == "csv":
        return table.to_csv(index=False, float_format="%.4g").rstrip("\n")
    if fmt == "json":
        return to_json(table.to_dict(orient="records"))
    shown = table.copy()
    shown["key"] = shown["key"].str[:12]  # as tables and figure names show it; any unique prefix selects
    for column in ("acc_last", "acc_best", "minutes"):
        shown[column] = [f"{v:.2f}" if pd.notna(v) else "" for v in shown[column]]
    return text_table(shown)


def detail(store, prefix: str, lock: dict | None = None) -> dict:
    """Everything stored of one run (``prefix``: its key or a unique prefix): the row's fields,
    ``spec``, ``env``, ``metrics``, ``error``, the per-epoch ``history`` (records), and the names
    of its per-sample records (``sample_values``: 1-D, ``arrays``: 2-D)."""
    key = store.resolve_key(prefix)
    row = store.runs(None, keys=[key]).iloc[0]
    loads = (lambda text: json.loads(text) if isinstance(text, str) and text else {})
    names = {table: [r[0] for r in store.conn.execute(
        f"SELECT DISTINCT name FROM {table} WHERE run_key = ? ORDER BY name", (key,))]
             for table in ("sample_values", "arrays")}
    history = store.history(key)
    found = run_separation(store, key) if row["status"] == "done" else None
    kept = store.sample_record(key, "kept") if found and found["record"] == "score" else None
    if kept is not None:  # a selection method: its removed set against the true noise, and the clean tail it cost
        removed = kept["value"].to_numpy() == 0
        quality = selection_quality(kept["is_noisy"], removed)
        clean_tail = ~kept["is_noisy"].to_numpy() & np.isin(kept["clean_label"].to_numpy(), found["tail"])
        found.update(removed=quality["removed"], precision=quality["precision"], recall=quality["recall"],
                     removed_clean_tail=int((removed & clean_tail).sum()), clean_tail_pool=int(clean_tail.sum()))
    return {"key": key, "method": row["method"], "display_name": row["display_name"], "cell": cell_label(row),
            "status": row["status"], "attempts": int(row["attempts"]),
            "note": running_note(lock, row["started"]) if row["status"] == "running" else "",
            "started": _when(row["started"]), "ended": _when(row["ended"]),
            "train_minutes": float(training_minutes(row.to_frame().T).iloc[0]) if row["status"] == "done" else None,
            "spec": loads(row["spec_json"]), "env": loads(row["env_json"]), "metrics": loads(row["metrics_json"]),
            "error": row["error"] if isinstance(row["error"], str) else None,
            "samples": int(store.conn.execute("SELECT COUNT(*) FROM samples WHERE run_key = ?", (key,)).fetchone()[0]),
            **names, "separation": json_ready(found) if found else None,
            "history": [json_ready(r) for r in history.to_dict(orient="records")]}


def reproducing_command(spec: dict) -> tuple[str | None, str]:
    """The ``bench run`` command that asks for this stored run (:func:`bench.arguments.run_command`,
    checked to give its key), or None and why not (imports the method registry, so torch)."""
    from bench.arguments import run_command
    from bench.spec import RunSpec

    try:
        return shlex.join(["python", "-m", "bench", *run_command(RunSpec.from_dict(spec))]), ""
    except BenchError as exc:
        return None, str(exc)
    except (TypeError, KeyError, ValueError) as exc:  # a spec of another version of the suite
        return None, f"its spec does not fit this version of the suite ({exc})"


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]" if len(v) <= 12 else f"[{len(v)} values]"
    return "—" if v is None else str(v)


def _field(name: str, values: dict) -> str:
    """``  name      k=v, k=v, ...`` wrapped at 100 columns under the first value."""
    text = ", ".join(f"{k}={_value(v)}" for k, v in values.items())
    return textwrap.fill(text, width=100, initial_indent=f"  {name:9s} ", subsequent_indent=" " * 12,
                         break_on_hyphens=False)


def _separation_line(sep: dict) -> str:
    """How the run's per-sample trust tells clean from mislabelled samples (bench.analysis)."""
    def pct(v, scale=1.0):
        return "—" if v is None or v != v else f"{scale * v:.1f}%"
    trust = "its weight" if sep["record"] == "weight" else "minus its score"
    tail = (f"{sep['clean_tail']} clean samples of tail classes {','.join(map(str, sep['tail']))}" if sep["tail"]
            else "no tail classes: the classes are balanced")
    text = (f"noise AUROC {pct(sep['noise_auroc'])} ({sep['clean']} clean vs {sep['noisy']} mislabelled samples), "
            f"tail AUROC {pct(sep['tail_auroc'])} ({tail}), trust = {trust}")
    if sep["record"] == "weight":
        means = (sep["mean_clean"], sep["mean_noisy"], sep["mean_clean_tail"])
        text += "; mean weight: " + ", ".join(f"{name} {'—' if v is None else f'{v:.3g}'}" for name, v in
                                              zip(("clean", "mislabelled", "clean tail"), means))
    if "removed" in sep:
        text += (f"; removed {sep['removed']}: precision {pct(sep['precision'], 100)}, recall "
                 f"{pct(sep['recall'], 100)} of the mislabelled")
        if sep["tail"] and sep.get("clean_tail_pool"):  # what removing cost the tail (CurveNet, Sec. 1)
            text += (f", and {sep['removed_clean_tail']} of the {sep['clean_tail_pool']} clean tail samples "
                     f"({pct(sep['removed_clean_tail'] / sep['clean_tail_pool'], 100)})")
    return textwrap.fill(text, width=100, initial_indent="  separate  ", subsequent_indent=" " * 12,
                         break_on_hyphens=False)


def render_detail(d: dict) -> str:
    spec = d["spec"]
    seeds = f"seed {spec.get('seed')}" + (f", data seed {spec['data_seed']}"
                                          if spec.get("data_seed", spec.get("seed")) != spec.get("seed") else "")
    attempts = f"{d['attempts']} attempt{'s' * (d['attempts'] != 1)}"
    lines = [f"run {d['key']}",
             f"  method    {d['display_name']} ({d['method']})",
             f"  cell      {d['cell']}, preset {spec.get('preset')}, model {spec.get('model')}, {seeds}",
             f"  status    {d['status']} after {attempts}" + (f": {d['note']}" if d["note"] else ""),
             f"  started   {d['started'] or '—'}" + (f", ended {d['ended']}" if d["ended"] else "")
             + (f"; training {d['train_minutes']:.2f} min" if d["train_minutes"] is not None else ""),
             _field("settings", settings(spec)), _field("env", d["env"])]
    if "command" in d:
        lines.append(f"  command   {d['command']}" if d["command"] else f"  command   — {d['command_note']}")
    if d["metrics"]:  # epochs counted from 1 here, as in the progress lines (stored from 0)
        metrics = dict(d["metrics"])
        if isinstance(metrics.get("best_epoch"), int):
            metrics["best_epoch"] += 1
        lines.append(_field("result", metrics))
    if d["error"]:
        lines.append("  error     " + d["error"].strip().replace("\n", "\n            "))
    if d["status"] == "done" and not d["samples"]:
        lines.append(f"  recorded  no per-sample rows in this store ({RUNS_ONLY})")
    else:
        recorded = [f"{d['samples']} samples"] + [f"1-D {', '.join(d['sample_values'])}"] * bool(d["sample_values"]) \
            + [f"2-D {', '.join(d['arrays'])}"] * bool(d["arrays"])
        lines.append("  recorded  " + "; ".join(recorded) + " (Store.samples(key), Store.array(key, name))")
    if d.get("separation"):
        lines.append(_separation_line(d["separation"]))
    if d["history"]:
        history = pd.DataFrame(d["history"])
        if "epoch" in history.columns:
            history["epoch"] = [e + 1 if isinstance(e, (int, np.integer)) else e for e in history["epoch"]]
        for column in history.columns:
            history[column] = [_value(v) if isinstance(v, float) and pd.notna(v) else "" if v is None or pd.isna(v)
                               else str(v) for v in history[column]]
        lines += ["", f"history ({len(history)} epoch{'s' * (len(history) != 1)}, counted from 1 as in the progress "
                  "lines; --format json gives them as stored, from 0):", "", text_table(history)]
    return "\n".join(lines)


def main(args) -> int:
    from bench.plots import parse_cell
    from bench.store import Store

    store = Store(args.store, create=False)
    try:
        lock = writer(args.store)
        if args.run is not None:
            chosen = [name for name, value in (("--method", args.method), ("--cell", args.cell)) if value]
            if chosen or args.status != "all":
                raise BenchError(f"KEY shows one run; drop {', '.join(chosen + ['--status'] * (args.status != 'all'))}")
            if args.format == "csv":
                raise BenchError("one run has no CSV form: use --format json (or md)")
            d = detail(store, args.run, lock)
            d["command"], d["command_note"] = reproducing_command(d["spec"])
            print(to_json(d) if args.format == "json" else render_detail(d))
            return 0
        cell = parse_cell(args.cell) if args.cell else None
        every = store.runs(None)
        wanted = method_selection(args.method, every)
        absent = absent_methods(wanted, every, args.store)
        if absent:  # a method not run yet, or run into another store
            print(f"bench: {absent}", file=sys.stderr)
        keep = select(every, status=args.status, methods=wanted, cell=cell)
        shown = every[keep]
        # labelled by bench table's rule, but among all the store's runs, failed and unfinished ones too
        # (a failed run with --set lr=0.05 names its row apart: `CE [lr=0.05]`), whatever is shown
        print(render_listing(listing(every, lock)[keep.to_numpy()].reset_index(drop=True), args.format))
        counts = shown["status"].value_counts()
        print(f"{len(shown)} of the {len(every)} runs in {args.store}: "
              + ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATUSES[1:])
              + ("; `bench show KEY` prints one in full" if len(shown) else ""), file=sys.stderr)
        return 0
    finally:
        store.close()

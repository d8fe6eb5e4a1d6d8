"""The CurveNet paper's tables, regenerated from the store, side by side with the published numbers.

``python -m bench table --paper N [--format md|latex|csv|json] [--metric last|best] [--write]``
prints table N (1, 2, 3, 6, 7, 8, 9, 10, ``anchors`` or ``all``) in the paper's layout: for every
row (method or setting) and column (grid cell, or a whole grid for Table 1's mean accuracy MA)

* **ours**  mean ± std (sample std, ddof 1) over the training seeds of the stored runs, with the
  number of seeds ``n`` (runs differing only in ``--data-seed`` are averaged within their seed);
  ``missing`` when the store holds no run for it (never filled in), ``failed`` when its only runs
  failed (diverged, a bug, out of memory: they are never averaged in; a cell with finished runs
  says how many of its runs failed, ``(n=2, 1 failed)``, and the text under the table counts them
  and says how to retry them);
* **paper** the published value from ``tables/reference/*.csv`` (the CSV names its source);
  ``not transcribed`` where our sources hold no value, ``—`` where the paper has no such entry;
* **Δ**     ours − paper, only where both exist.

``bench table --paper N`` shows the best epoch's accuracy by default (``--metric best``: the
maximum over epochs on the test set, which the official codes print and the papers publish,
PROTOCOL.md §3), so ours and paper are the same quantity; ``--metric last`` shows the returned
model's. (:func:`build` takes the metric it is given, ``last`` unless told.)

Published numbers are never printed in an "ours" column, and a mean over a grid with a missing
cell is never printed as MA (MA needs every cell of the grid, per seed; see :func:`grid_mean`).

Which runs count for a cell
---------------------------
A row names the method (registry name), optionally the display name the method gives itself
(``MW-Net(noise)``), strict hyperparameter values (``skip_layers=2``), the backbone and the
meta-set size. Runs of the table's preset (``paper``) on the cell with those properties are
grouped by their full configuration (the spec without the seeds). One configuration is used:

1. if exactly one matches, that one;
2. else the one that ``bench run --paper N`` trains, if unique: its protocol the preset's standard
   protocol (200 epochs, ...) and its method settings the preset's defaults but those the row
   fixes (a MW-Net run with ``--set mwnet.meta_lr=0.1`` beside the default ones is not it);
3. else the cell is ``ambiguous`` (counted as missing) and the configurations are listed.

A configuration whose protocol differs from the standard one (e.g. a short ``--epochs 3`` run),
or whose method settings differ from the row's (read from the runs' env, ``method_settings``;
runs stored before commit 9149156 lack it), is used but marked ``†`` and described under the table.
The key of every run behind every cell is listed under the table ("Runs"), so every number is
traceable to ``python -m bench`` store rows.

This module reads the store only (``bench.store``, pandas); it never trains and imports no torch.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.bias import same_noise
from bench.data.cli import default_meta_per_class
from bench.errors import BenchError
from bench.paper_tables import (
    GridColumn,
    PaperTable,
    Row,
    cell_title,
    get_table,
    load_reference,
    published,
    table_numbers,
)
from bench.spec import OMITTED_WHEN_DEFAULT, PRESETS, SEED_FIELDS, Cell
from bench.store import DEFAULT_STORE
from bench.summary import mean_over_cells, method_settings, setting_text, text_table, to_json

METRIC_COLUMNS = {"last": "acc_last", "best": "acc_best"}
METRIC_TEXT = {"last": "last-epoch test accuracy (the returned model)",
               "best": "best-epoch test accuracy (max over epochs on the test set, as the official codes print)"}

# ------------------------------------------------------------------------------ aggregation


@dataclass
class CellResult:
    """Our value for one (row, column) and the runs behind it."""

    status: str                      # ok | missing | failed | ambiguous | incomplete | not run
    mean: float = float("nan")
    std: float = float("nan")
    n: int = 0
    keys: list = field(default_factory=list)
    nonstandard: str = ""            # how the configuration used differs ("epochs=3", "mwnet.meta_lr=0.1")
    detail: str = ""                 # cells covered (grid), the configurations (ambiguous)
    failed: list = field(default_factory=list)  # keys of the failed runs left out (Store.runs('failed'))
    extra: dict = field(default_factory=dict)


def _runs_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """The store's runs with the parsed spec (``spec``), params (``params``) and config signature."""
    runs = runs.copy()
    if runs.empty:
        for col in ("spec", "params", "config", "meta_per_class"):
            runs[col] = pd.Series(dtype=object)
        return runs
    specs = [json.loads(s) for s in runs["spec_json"]]
    runs["spec"] = specs
    runs["params"] = [s.get("params", {}) for s in specs]
    runs["meta_per_class"] = [s.get("meta_per_class") for s in specs]
    runs["config"] = [json.dumps({k: v for k, v in s.items() if k not in SEED_FIELDS}, sort_keys=True)
                      for s in specs]
    envs = runs["env_json"] if "env_json" in runs else [None] * len(runs)
    runs["method_settings"] = [method_settings(env) for env in envs]
    return runs


def _standard_protocol(preset: str) -> dict:
    p = dict(PRESETS[preset])
    for k in ("dataset", "imbalance", "noise_type", "noise_rate", "model"):
        p.pop(k, None)
    p["milestones"] = list(p["milestones"])
    return {**p, **OMITTED_WHEN_DEFAULT}  # fp32: a bf16 configuration is marked, and loses to fp32


def _protocol_diff(spec: dict, preset: str) -> str:
    std = _standard_protocol(preset)
    spec = {**OMITTED_WHEN_DEFAULT, **spec}
    diffs = []
    for k, v in std.items():
        got = spec.get(k)
        if isinstance(v, float) and isinstance(got, (int, float)):
            same = math.isclose(v, got)
        else:
            same = got == v
        if not same:
            shown = ",".join(map(str, got)) if isinstance(got, list) else got
            diffs.append(f"{k}={shown}")
    return " ".join(diffs)


def _settings_diff(found: pd.DataFrame, config: str, row: Row) -> str:
    """The method settings of ``config``'s runs away from the preset's defaults that the row does
    not fix (``mwnet.meta_lr=0.1`` in a MW-Net row; the runs' env records them, and the row's name
    does not show them), as ``bench run --paper N`` would not train them; "" for runs stored before
    commit 9149156 (2026-12-07 01:35 UTC), which lack that record."""
    settings = found.loc[found["config"] == config, "method_settings"].iloc[0]
    fixed = dict(row.where)
    return " ".join(f"{row.method}.{k}={setting_text(value)}" for k, (value, _) in sorted(settings.items())
                    if k not in fixed)


def _off_standard(found: pd.DataFrame, config: str, row: Row, preset: str) -> str:
    """What sets ``config`` apart from the runs ``bench run --paper N`` trains for ``row``: its
    protocol away from the preset's, and its method settings away from the row's."""
    return " ".join(filter(None, (_protocol_diff(json.loads(config), preset), _settings_diff(found, config, row))))


def matching_runs(runs: pd.DataFrame, row: Row, cell: Cell, preset: str) -> pd.DataFrame:
    """The runs of ``row`` on ``cell`` in ``runs`` (the done ones, or the failed ones) before
    choosing one configuration."""
    if runs.empty or row.method is None:
        return runs.iloc[0:0]
    meta = row.meta_per_class if row.meta_per_class is not None else default_meta_per_class(cell.dataset)
    m = ((runs["method"] == row.method) & (runs["dataset"] == cell.dataset)
         & np.isclose(runs["imbalance"].astype(float), cell.imbalance)
         & np.isclose(runs["noise_rate"].astype(float), cell.noise_rate)
         & (runs["preset"] == preset) & (runs["model"] == row.model) & (runs["meta_per_class"] == meta)
         & same_noise(runs["noise_type"], cell.noise_type, cell.noise_rate))
    if row.display is not None:
        m &= runs["display_name"] == row.display
    if row.where:
        m &= runs["params"].map(lambda p: all(k in p and p[k] == v for k, v in row.where))
    return runs[m]


def cell_result(runs: pd.DataFrame, row: Row, cell: Cell, preset: str, column: str,
                failed: pd.DataFrame | None = None) -> CellResult:
    """Mean ± std over seeds of ``column`` for ``row`` on ``cell`` (see the module docstring), with
    the keys of the failed runs (``failed``: the store's failed runs, as :func:`_runs_frame`) of the
    configuration used, or of any configuration where no run finished."""
    if row.method is None:
        return CellResult("not run")
    res = _cell_result(runs, row, cell, preset, column)
    if failed is not None:
        found = matching_runs(failed, row, cell, preset)
        if res.keys and res.status == "ok":  # only the failed runs of the configuration used
            used = set(runs.loc[runs["key"].isin(res.keys), "config"])
            found = found[found["config"].isin(used)]
        res.failed = list(found["key"])
        # no run of the cell finished (a missing result with a detail has finished runs without the metric)
        if res.status == "missing" and res.failed and not res.detail:
            res.status = "failed"
    return res


def _cell_result(runs: pd.DataFrame, row: Row, cell: Cell, preset: str, column: str) -> CellResult:
    found = matching_runs(runs, row, cell, preset)
    if found.empty:
        return CellResult("missing")
    configs = list(dict.fromkeys(found["config"]))
    if len(configs) > 1:
        standard = [c for c in configs if not _off_standard(found, c, row, preset)]
        if len(standard) != 1:
            return CellResult("ambiguous", keys=list(found["key"]),
                              detail=f"{len(configs)} configurations match; differences: "
                                     + _config_differences([json.loads(c) for c in configs]))
        configs = standard
    chosen = found[found["config"] == configs[0]]
    values = chosen[column].astype(float) if column in chosen.columns else pd.Series(np.nan, index=chosen.index)
    ok = values.notna()
    vals = values[ok].to_numpy()
    res = CellResult("ok" if len(vals) else "missing", keys=list(chosen.loc[ok, "key"]),
                     nonstandard=_off_standard(found, configs[0], row, preset))
    if len(vals):
        used = pd.DataFrame({"seed": chosen.loc[ok, "seed"].astype(int).to_numpy(), "value": vals,
                             "key": chosen.loc[ok, "key"].to_numpy()})
        # one value per training seed (runs that differ only in --data-seed are averaged first)
        res.extra["by_seed"] = used.groupby("seed")["value"].mean().to_dict()
        res.extra["keys_by_seed"] = used.groupby("seed")["key"].apply(list).to_dict()
        per_seed = np.array(list(res.extra["by_seed"].values()))
        res.mean = float(per_seed.mean())
        res.std = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan")
        res.n = len(per_seed)
    else:
        res.detail = f"no stored {column}"
    return res


def _config_differences(specs: list[dict]) -> str:
    flat = [{**{k: v for k, v in s.items() if k != "params"}, **{f"params.{k}": v for k, v in s["params"].items()}}
            for s in specs]
    keys = sorted({k for f in flat for k in f if len({json.dumps(g.get(k), sort_keys=True) for g in flat}) > 1})
    return "; ".join(f"{k}: " + " vs ".join(json.dumps(f.get(k)) for f in flat) for k in keys) or "none"


def grid_mean(results: list[CellResult]) -> CellResult:
    """MA over a grid: per seed, the mean over all cells if that seed covers every cell; then mean ±
    std over those seeds. No MA at all unless at least one seed covers the whole grid."""
    covered = sum(r.status == "ok" for r in results)
    total = len(results)
    keys = [k for r in results for k in r.keys]
    failed = [k for r in results for k in r.failed]
    if covered == 0:
        return CellResult("missing", keys=keys, detail=f"0/{total} cells", failed=failed)
    complete, ma = mean_over_cells([r.extra["by_seed"] for r in results]) if covered == total else ([], None)
    if not complete:
        return CellResult("incomplete", keys=keys, detail=f"{covered}/{total} cells" if covered < total else
                          f"{total}/{total} cells, but no seed covers every cell", failed=failed)
    nonstandard = sorted({r.nonstandard for r in results if r.nonstandard})
    used = [k for r in results for s in complete for k in r.extra["keys_by_seed"][s]]  # the MA's runs only
    return CellResult("ok", mean=float(ma.mean()), std=float(ma.std(ddof=1)) if len(ma) > 1 else float("nan"),
                      n=len(ma), keys=used, detail=f"{total}/{total} cells", nonstandard=" | ".join(nonstandard),
                      failed=failed)


# ------------------------------------------------------------------------------ building a table

@dataclass
class Entry:
    """One (row, column) of a rendered table: ours, the published value and the difference."""

    row: str
    column: str
    ours: CellResult
    paper: dict | None               # {"value", "source"} or None
    paper_text: str                  # the value, "not transcribed" or "—"
    dataset: str = ""
    imbalance: str = ""
    noise_type: str = ""
    noise_rate: str = ""

    @property
    def diff(self) -> float | None:
        if self.ours.status == "ok" and self.paper is not None:
            return self.ours.mean - self.paper["value"]
        return None


@dataclass
class Built:
    table: PaperTable
    metric: str
    entries: list
    details: dict = field(default_factory=dict)   # Table 1: per-cell results per dataset
    timing: dict = field(default_factory=dict)    # Table 8: published and stored meta ms per row


def build(number, runs: pd.DataFrame, ref: pd.DataFrame, metric: str = "last", history=None,
          failed: pd.DataFrame | None = None) -> Built:
    """Compute table ``number`` from the store's runs (``Store.runs('done')``); ``failed``
    (``Store.runs('failed')``) says which cells lost runs to failures."""
    if metric not in METRIC_COLUMNS:
        raise BenchError(f"--metric must be one of {', '.join(METRIC_COLUMNS)}")
    t = get_table(number)
    column = METRIC_COLUMNS[metric]
    runs = _runs_frame(runs)
    failed = None if failed is None else _runs_frame(failed)
    built = Built(t, metric, [])
    for row in t.rows:
        for col in t.columns:
            if isinstance(col, GridColumn):
                per_cell = [cell_result(runs, row, c, t.preset, column, failed) for c in col.cells]
                built.details.setdefault(col.label, {})[row.label] = per_cell
                ours = CellResult("not run") if row.method is None else grid_mean(per_cell)
                pub = published(ref, t.ref_table or t.number, row.reference_name, dataset=col.dataset, metric="MA")
                entry = Entry(row.label, col.label, ours, pub, _paper_text(pub, t), dataset=col.dataset,
                              imbalance="grid", noise_type="grid", noise_rate="grid")
            else:
                ours = cell_result(runs, row, col.cell, t.preset, column, failed)
                if t.kind == "ablation":  # rows are settings; Table 8's published values are MA
                    pub = published(ref, t.number, row.reference_name, metric="MA" if t.number == "8" else None,
                                    setting=row.ref_setting or row.label)
                elif t.number == "anchors":
                    pub = _anchor(ref, row, col.cell)
                else:
                    pub = published(ref, t.ref_table or t.number, row.reference_name, cell=col.cell)
                c = col.cell
                entry = Entry(row.label, col.label, ours, pub, _paper_text(pub, t), dataset=c.dataset,
                              imbalance=f"{c.imbalance:g}", noise_type=c.noise_type, noise_rate=f"{c.noise_rate:g}")
            built.entries.append(entry)
    if t.number == "8":
        base = published(ref, "8", "CurveNet", metric="meta_ms", setting="SL=0")
        for row in t.rows:
            pub = published(ref, "8", "CurveNet", metric="meta_ms", setting=row.ref_setting)
            ours = [e for e in built.entries if e.row == row.label][0].ours
            # an ambiguous cell's keys span several configurations: no one figure to show
            ours_ms = _stored_meta_ms(history, ours.keys) if ours.status == "ok" else None
            built.timing[row.label] = {"paper_ms": pub, "paper_ratio": pub["value"] / base["value"] if pub else None,
                                       "ours_ms": ours_ms}
    return built


def _anchor(ref: pd.DataFrame, row: Row, cell: Cell) -> dict | None:
    for paper, table in (("mwnet_neurips2019", "LT (ResNet-32)"), ("ldam_drw_neurips2019", "2")):
        pub = published(ref, table, row.reference_name, cell=cell, paper=paper)
        if pub is not None:
            return pub
    return None


def _paper_text(pub: dict | None, t: PaperTable) -> str:
    if pub is not None:
        return f"{pub['value']:.2f}"
    return "not transcribed" if not t.transcribed else "—"


def _stored_meta_ms(history, keys: list) -> float | None:
    """Median over epochs of a logged ``meta_ms`` (mean over runs), if the runs logged one."""
    if history is None or not keys:
        return None
    per_run = []
    for key in keys:
        h = history(key)
        for name in ("meta_ms", "meta_time_ms"):
            if name in h.columns and h[name].notna().any():
                per_run.append(float(h[name].dropna().median()))
                break
    return float(np.mean(per_run)) if per_run else None


# ------------------------------------------------------------------------------ rendering

def ours_text(r: CellResult) -> str:
    """Our value as printed: never a published number (those live only in the paper column)."""
    if r.status == "ok":
        mark = "†" if r.nonstandard else ""
        failed = f", {len(r.failed)} failed" if r.failed else ""
        if r.n == 1 or math.isnan(r.std):
            return f"{r.mean:.2f} (n=1{failed}){mark}"
        return f"{r.mean:.2f} ± {r.std:.2f} (n={r.n}{failed}){mark}"
    return r.status  # missing | failed | ambiguous | incomplete | not run


def diff_text(d: float | None) -> str:
    return "" if d is None else f"{d:+.2f}"


def counts(built: Built) -> dict:
    """How many entries have our numbers, how many (row, cell) pairs have no runs, and how many
    of the table's runs failed (``failed_runs``, left out of ours)."""
    ours = [e for e in built.entries if e.ours.status not in ("not run",)]
    out = {"entries": len(ours), "with_runs": sum(e.ours.status == "ok" for e in ours),
           "missing_entries": sum(e.ours.status != "ok" for e in ours),
           "failed_runs": len(failed_keys(built))}
    if built.details:
        cells = [r for per_row in built.details.values() for lab, rs in per_row.items() for r in rs
                 if r.status != "not run"]
        out["cells"] = len(cells)
        out["missing_cells"] = sum(r.status != "ok" for r in cells)
    return out


def failed_keys(built: Built) -> list[str]:
    """The keys of the failed runs behind the table's entries (each once)."""
    return list(dict.fromkeys(k for e in built.entries for k in e.ours.failed))


def layout(built: Built) -> pd.DataFrame:
    """The paper's layout: one row per paper row, per column three sub-columns ours | paper | Δ."""
    t = built.table
    records = []
    for row in t.rows:
        rec = {"method" if t.kind != "ablation" else "setting": row.label}
        for e in [e for e in built.entries if e.row == row.label]:
            prefix = e.column if len(t.columns) > 1 else ""
            sep = ": " if prefix else ""
            rec[f"{prefix}{sep}ours"] = ours_text(e.ours)
            if isinstance(t.columns[0], GridColumn):
                rec[f"{prefix}{sep}cells"] = e.ours.detail.split(",")[0] if e.ours.status != "not run" else ""
            rec[f"{prefix}{sep}paper"] = e.paper_text
            rec[f"{prefix}{sep}Δ"] = diff_text(e.diff)
        if t.number == "8":
            tm = built.timing[row.label]
            rec["paper meta ms"] = f"{tm['paper_ms']['value']:.2f}" if tm["paper_ms"] else "—"
            rec["paper ratio to SL=0"] = f"{tm['paper_ratio']:.2f}" if tm["paper_ratio"] else "—"
            rec["ours meta ms (stored)"] = f"{tm['ours_ms']:.2f}" if tm["ours_ms"] is not None else "—"
        records.append(rec)
    return pd.DataFrame(records)


def detail_layout(built: Built, dataset_label: str) -> pd.DataFrame:
    """Table 1's per-cell results (ours only: the paper prints MA only)."""
    t = built.table
    col = [c for c in t.columns if c.label == dataset_label][0]
    records = []
    for row in t.rows:
        per_cell = built.details[dataset_label][row.label]
        rec = {"method": row.label}
        for c, r in zip(col.cells, per_cell):
            rec[cell_title(c)] = ours_text(r)
        records.append(rec)
    return pd.DataFrame(records)


def long_records(built: Built) -> list[dict]:
    """One record per (row, column): the CSV / JSON form, with the keys of the runs used.

    ``record`` tells them apart: ``cell`` for a result on one cell, ``grid mean`` for Table 1's MA
    over a grid, whose per-cell results follow as ``cell`` records (column ``CIFAR-10: imb 10,
    flip2 0.2``; the paper prints MA only, so they have no published value)."""
    t = built.table
    out = []
    for e in built.entries:
        out.append(_record(built, e, "grid mean" if t.kind == "grid" else "cell"))
    for label, per_row in built.details.items():
        col = [c for c in t.columns if c.label == label][0]
        for row_label, results in per_row.items():
            for c, r in zip(col.cells, results):
                out.append(_record(built, Entry(row_label, f"{label}: {cell_title(c)}", r, None, _paper_text(None, t),
                                                dataset=c.dataset, imbalance=f"{c.imbalance:g}",
                                                noise_type=c.noise_type, noise_rate=f"{c.noise_rate:g}"), "cell"))
    return out


def _record(built: Built, e: Entry, record: str) -> dict:
    r = e.ours
    metric = METRIC_COLUMNS[built.metric]
    return {"table": built.table.number, "row": e.row, "column": e.column, "dataset": e.dataset,
            "imbalance": e.imbalance, "noise_type": e.noise_type, "noise_rate": e.noise_rate,
            "metric": metric if record == "cell" else f"MA of {metric}",
            "status": r.status, "ours_mean": None if r.status != "ok" else round(r.mean, 4),
            "ours_std": None if r.status != "ok" or math.isnan(r.std) else round(r.std, 4),
            "n_seeds": r.n, "published": e.paper["value"] if e.paper else None,
            "published_text": e.paper_text, "diff": None if e.diff is None else round(e.diff, 4),
            "nonstandard_protocol": r.nonstandard, "detail": r.detail,
            "published_source": e.paper["source"] if e.paper else "", "run_keys": " ".join(r.keys),
            "failed_run_keys": " ".join(r.failed), "record": record}


def render(built: Built, fmt: str = "md", store_path: str = "") -> str:
    """The table as Markdown, LaTeX, CSV (long form) or JSON."""
    t = built.table
    if fmt == "csv":
        return pd.DataFrame(long_records(built)).to_csv(index=False)
    if fmt == "json":
        return to_json({"table": t.number, "title": t.title, "metric": built.metric, "counts": counts(built),
                        "entries": long_records(built)})
    c = counts(built)
    lines = []
    title = f"Table {t.number}" if t.number != "anchors" else "Anchors"
    is_md = fmt == "md"
    h = (lambda s: f"## {s}") if is_md else (lambda s: f"% {s}")
    p = (lambda s: s) if is_md else (lambda s: "% " + s)
    lines.append(h(f"{title}: {t.title}"))
    lines.append("")
    lines.append(p(f"Metric: **{built.metric}** — {METRIC_TEXT[built.metric]} (`--metric {built.metric}`). "
                   "ours = mean ± sample std (ddof 1) over seeds (n = number of seeds) of stored runs; "
                   "paper = published value; Δ = ours − paper. Published values are never shown as ours."))
    lines.append(p(f"Runs: preset `{t.preset}` from the store `{store_path}`."
                   + (" The published numbers come from the CurveNet paper" if t.number != "anchors" else
                      " The published numbers come from the MW-Net and LDAM-DRW papers")
                   + "; the official codes print the best epoch's accuracy"
                   + (", as ours here (`--metric last` for the returned model's)." if built.metric == "best" else
                      ": Δ compares our last epoch with their best.")))
    lines.append("")
    lines.append(text_table(layout(built), fmt))
    lines.append("")
    if "cells" in c:
        lines.append(p(f"**Missing:** {c['missing_cells']} of {c['cells']} (method, cell) pairs have no usable runs; "
                       f"{c['missing_entries']} of {c['entries']} MA entries cannot be computed."))
    else:
        lines.append(p(f"**Missing:** {c['missing_entries']} of {c['entries']} cells have no usable runs."))
    missing = [e for e in built.entries if e.ours.status in ("missing", "failed", "ambiguous", "incomplete")]
    if missing and "cells" not in c and len(missing) < c["entries"]:
        lines.append(p("Not available: " + "; ".join(f"{e.row} / {e.column} ({e.ours.status})" for e in missing)))
    amb = [e for e in built.entries if e.ours.status == "ambiguous"]
    for e in amb:
        keys = ", ".join(k[:12] for k in e.ours.keys)
        lines.append(p(f"ambiguous: {e.row} / {e.column}: {e.ours.detail} (keys {keys})"))
    # Table 1: a grid mean's protocols are its cells' (joined by " | "); a cell marked † in the
    # detail tables needs its line even where its grid has no MA
    results = [e.ours for e in built.entries] + [r for per_row in built.details.values()
                                                  for rs in per_row.values() for r in rs]
    nonstd = sorted({d for r in results if r.nonstandard for d in r.nonstandard.split(" | ")})
    if nonstd:
        lines.append(p("† not the runs `runs-for` trains (protocol away from the preset's, or method settings away "
                       "from the row's): " + " | ".join(nonstd)))
    store_option = "" if store_path in ("", DEFAULT_STORE) else f" --store {shlex.quote(store_path)}"
    if c["failed_runs"]:
        retry = f"python -m bench runs-for --paper {t.number}{store_option} --retry-failed"
        lines.append(p(f"**Failed:** {c['failed_runs']} of this table's runs failed and are left out of ours "
                       "(`failed`: no run of that cell finished; `n` counts the seeds that finished). "
                       f"`python -m bench show --status failed{store_option}` says why; `{retry}` trains them again."))
    lines.append(p(f"To train what is missing: `python -m bench runs-for --paper {t.number}{store_option}`."))
    for note in t.notes:
        lines.append("")
        lines.append(p(f"Note: {note}"))
    if built.details:
        for label in built.details:
            lines.append("")
            lines.append(h(f"Table {t.number} detail: {label}, per cell (ours only; the paper prints MA only)"))
            lines.append("")
            lines.append(text_table(detail_layout(built, label), fmt))
    lines.append("")
    lines.append(h(f"Sources of the numbers in Table {t.number}"))
    lines.append("")
    sources = sorted({e.paper["source"] for e in built.entries if e.paper})
    for s in sources:
        lines.append(p(f"- paper: {s}"))
    if t.number == "8":
        for s in sorted({tm["paper_ms"]["source"] for tm in built.timing.values() if tm["paper_ms"]}):
            lines.append(p(f"- paper meta ms: {s}"))
    if not sources:
        lines.append(p("- paper: not transcribed (see tables/reference/README.md)"))
    runs_lines = []
    if built.details:
        for label, per_row in built.details.items():
            col = [c for c in t.columns if c.label == label][0]
            for row_label, results in per_row.items():
                for cell, r in zip(col.cells, results):
                    if r.keys and r.status == "ok":
                        runs_lines.append(f"- {row_label} / {cell.label()}: {' '.join(r.keys)}")
    else:
        for e in built.entries:
            if e.ours.keys and e.ours.status == "ok":
                runs_lines.append(f"- {e.row} / {e.column}: {' '.join(e.ours.keys)}")
    lines.append(p(f"- ours: {len(runs_lines)} cells from stored runs (run keys; "
                   "`bench.store.Store(path, create=False).runs(keys=[...])` reads them back):" if runs_lines
                   else "- ours: no stored runs"))
    lines.extend(p(x) for x in runs_lines)
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------ command

def main(args) -> int:
    """``python -m bench table --paper N``: print (and with ``--write`` write) paper tables."""
    from bench.store import Store

    numbers = table_numbers(args.paper)
    fmt = getattr(args, "format", "md") or "md"
    metric = getattr(args, "metric", None) or "best"  # the papers' quantity: Δ compares like with like
    if getattr(args, "group", "all") not in (None, "all"):
        raise BenchError("--group applies to the plain `bench table`; the paper tables show all classes")
    store_path = Path(args.store)
    if store_path.exists():
        store = Store(store_path, create=False)
        runs, failed, history = store.runs("done"), store.runs("failed"), store.history
    else:
        print(f"bench: note: no store at {store_path}: every cell is missing", file=sys.stderr)
        store, runs, failed, history = None, pd.DataFrame(), None, None
    ref = load_reference()
    ext = {"md": "md", "latex": "tex", "csv": "csv", "json": "json"}[fmt]
    outputs = []
    for n in numbers:
        built = build(n, runs, ref, metric, history=history, failed=failed)
        text = render(built, fmt, store_path=str(args.store))
        outputs.append(text)
        if getattr(args, "write", None):
            name = f"table{n}" if n != "anchors" else "anchors"
            path = Path(args.write) / f"{name}.{ext}"
            if Path(args.write).exists() and not Path(args.write).is_dir():
                raise BenchError(f"--write {args.write}: it is a file; give a folder to write the tables into")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            except OSError as exc:
                raise BenchError(f"cannot write {path}: {exc.strerror or exc}") from None
            print(f"wrote {path}", file=sys.stderr)
    if fmt == "csv" and len(outputs) > 1:  # one CSV: keep the header once
        first, *rest = outputs
        print(first + "".join(o.split("\n", 1)[1] for o in rest), end="")
    elif fmt == "json" and len(outputs) > 1:
        print(json.dumps([json.loads(o) for o in outputs], indent=1))
    else:
        print("\n\n".join(outputs), end="")
    if store is not None:
        store.close()
    return 0

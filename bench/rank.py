"""``python -m bench rank``: several methods over the grid's cells at once, as Demšar (JMLR 2006,
§3.2.2) recommends for comparing k classifiers over N data sets.

Each cell is one unit: a method's value there is its mean over seeds (``bench table``'s entry).
Only the cells where every compared row has a finished run take part (the others are counted and
named as left out). In each cell the rows are ranked, 1 the highest accuracy, ties sharing their
average rank; then

* the **average rank** R_j of each row over the N cells;
* the **Friedman test** of "all rows perform alike": chi2_F = 12 N / (k (k+1)) (sum_j R_j^2 -
  k (k+1)^2 / 4) (Demšar eq. for chi2_F, no tie correction, as there), and Iman and Davenport's
  F_F = (N-1) chi2_F / (N (k-1) - chi2_F) against the F distribution with k-1 and (k-1)(N-1)
  degrees of freedom, the statistic Demšar recommends (chi2_F is too conservative);
* where it rejects at ``alpha``, the **Nemenyi test**: two rows differ when their average ranks
  differ by at least the critical difference CD = q_alpha sqrt(k (k+1) / (6 N)), q_alpha the
  studentized range quantile for k groups and infinite degrees of freedom over sqrt 2 (Demšar's
  Table 5a: 2.343 for k = 3, 2.569 for 4, ..., 3.164 for 10).

The table also gives each row's mean over the cells and the cells where it alone ranked first.
Both tests are approximations that want many cells: with few (Demšar's example has 14 data sets)
read the ranks, not the p-value. Two rows: ``bench compare A B`` (per cell intervals, Wilcoxon
over cells). Reads the store only (no torch).
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd

from bench.analysis import average_ranks
from bench.compare import p_text, resolve
from bench.errors import BenchError
from bench.summary import CELL_FIELDS, GROUPS, cell_labels, json_ready, metric_column, per_seed, row_labels, text_table


def add_arguments(parser) -> None:
    from bench.store import DEFAULT_STORE

    parser.add_argument("rows", nargs="*", metavar="METHOD",
                        help="rows as `bench table` labels them (CurveNet, MW-Net(noise), 'CE [epochs=3]') or registry "
                             "names; at least 3 (default: every row of the store)")
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"results store to read (default ./{DEFAULT_STORE})")
    parser.add_argument("--metric", choices=("last", "best"), default="last",
                        help="last-epoch test accuracy (the returned model; default) or best-epoch")
    parser.add_argument("--group", choices=GROUPS, default="all", help="all classes, or one shot group")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of both tests (default 0.05)")
    parser.add_argument("--format", choices=("md", "csv", "json"), default="md",
                        help="markdown (default), CSV (one row per method) or JSON (numbers as numbers)")


def cell_means(runs: pd.DataFrame, labels: list[str], column: str = "acc_last") -> pd.DataFrame:
    """Cells x ``labels``: each row's mean of ``column`` over its seeds in the cell (NaN where it has
    no run), indexed by the cell keys, in the cells' sorted order."""
    values = per_seed(runs, column)
    values = values[values["label"].isin(labels)]
    if values.empty:
        return pd.DataFrame(columns=labels, dtype=float)
    means = values.groupby([*CELL_FIELDS, "label"], sort=True)["value"].mean().unstack("label")
    return means.reindex(columns=labels).astype(float)


def friedman_nemenyi(means: pd.DataFrame, alpha: float = 0.05) -> dict:
    """Demšar §3.2.2 on a complete cells x methods table of values (higher is better): ``ranks``
    (the per-cell ranks, 1 the best, ties averaged), ``average_rank`` per method, ``chi2``, the
    Iman-Davenport ``F`` with its degrees of freedom ``df`` and ``p``, the Nemenyi ``q`` and ``cd``,
    and ``differ``: the pairs (better, worse, rank gap) whose average ranks are at least ``cd``
    apart, listed only when ``p < alpha``."""
    from scipy import stats

    n, k = means.shape
    if k < 2 or n < 1 or means.isna().any().any():
        raise ValueError(f"needs a complete table of at least 1 cell and 2 methods, got {n} x {k}")
    ranks = pd.DataFrame([average_ranks(-row) for row in means.to_numpy(float)], index=means.index,
                         columns=means.columns)
    avg = ranks.mean(axis=0)
    chi2 = 12 * n / (k * (k + 1)) * (float((avg ** 2).sum()) - k * (k + 1) ** 2 / 4)
    df = (k - 1, (k - 1) * (n - 1))
    if n < 2:
        f_stat, p = math.nan, math.nan
    else:
        room = n * (k - 1) - chi2  # 0 when every cell ranks the methods alike
        f_stat = (n - 1) * chi2 / room if room > 1e-12 else math.inf
        p = float(stats.f.sf(f_stat, *df)) if math.isfinite(f_stat) else 0.0
    q = float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    cd = q * math.sqrt(k * (k + 1) / (6 * n))
    differ = []
    if p < alpha:
        order = avg.sort_values(kind="stable")
        for i, better in enumerate(order.index):
            for worse in order.index[i + 1:]:
                gap = float(order[worse] - order[better])
                if gap >= cd:
                    differ.append((better, worse, gap))
    return {"cells": n, "methods": k, "ranks": ranks, "average_rank": avg, "chi2": chi2, "F": f_stat, "df": df,
            "p": p, "alpha": alpha, "q": q, "cd": cd, "differ": differ}


def _resolve_rows(names: list[str], runs: pd.DataFrame) -> list[str]:
    if not names:
        return sorted(set(row_labels(runs))) if len(runs) else []
    rows = [resolve(name, runs) for name in names]
    repeated = sorted({r for r in rows if rows.count(r) > 1})
    if repeated:
        raise BenchError(f"a row is named twice: {', '.join(repeated)}")
    return rows


def main(args) -> int:
    from bench.store import Store

    if not 0 < args.alpha < 1:
        raise BenchError(f"--alpha must lie in (0, 1), got {args.alpha:g}")
    column = metric_column(args.metric, args.group)
    store = Store(args.store, create=False)
    try:
        runs = store.runs("done")
    finally:
        store.close()
    rows = _resolve_rows(args.rows, runs)
    if len(rows) < 3:
        raise BenchError(f"bench rank compares at least 3 rows, got {len(rows)} ({', '.join(rows) or 'none'}); "
                         "for two, `bench compare A B`")
    means = cell_means(runs, rows, column)
    complete = means.dropna()
    left_out = means[means.isna().any(axis=1)]
    if len(complete) < 2:
        raise BenchError(f"{len(complete)} cell{'s' * (len(complete) != 1)} where all of {', '.join(rows)} have a "
                         f"finished run ({column}); ranking needs at least 2: name fewer rows, or see which are "
                         "missing with `bench table`")
    result = friedman_nemenyi(complete, args.alpha)
    avg = result["average_rank"]
    order = list(avg.sort_values(kind="stable").index)
    table = pd.DataFrame({"method": order, "average_rank": [float(avg[r]) for r in order],
                          "mean": [float(complete[r].mean()) for r in order],
                          "first": [int((result["ranks"][r] == 1).sum()) for r in order],
                          "cells": result["cells"]})
    if args.format == "csv":
        print(table.to_csv(index=False).rstrip("\n"))
        return 0
    if args.format == "json":
        tests = {k: result[k] for k in ("cells", "methods", "chi2", "F", "p", "alpha", "q", "cd")}
        print(json.dumps({"metric": column, "rows": [json_ready(r) for r in table.to_dict(orient="records")],
                          **json_ready(tests), "df": list(result["df"]),
                          "differ": [{"better": b, "worse": w, "gap": g} for b, w, g in result["differ"]],
                          "cells_left_out": list(cell_labels(left_out.reset_index()))}, indent=1))
        return 0
    group = "" if args.group == "all" else f", {args.group}-shot classes"
    print(f"average ranks over {result['cells']} cells (1 = best in a cell; test accuracy (%), {args.metric} "
          f"epoch{group}, each method's mean over its seeds per cell)\n")
    print(text_table(pd.DataFrame({
        "method": order, "average rank": [f"{avg[r]:.2f}" for r in order],
        "mean over the cells": [f"{m:.2f}" for m in table["mean"]],
        "ranked first": [f"{f}/{result['cells']}" for f in table["first"]]})))
    k, n = result["methods"], result["cells"]
    print(f"\nFriedman test, Iman-Davenport F_F (Demšar §3.2.2): F({result['df'][0]}, {result['df'][1]}) = "
          f"{result['F']:.2f}, p = {p_text(result['p'])} (chi2_F = {result['chi2']:.2f}, {k} methods, {n} cells)")
    if result["p"] < args.alpha:
        pairs = "; ".join(f"{b} ahead of {w} (by {g:.2f})" for b, w, g in result["differ"]) or "no pair"
        print(f"Nemenyi critical difference at alpha {args.alpha:g}: CD = {result['cd']:.2f} (q = {result['q']:.3f}); "
              f"average ranks at least CD apart differ: {pairs}")
    else:
        print(f"at alpha {args.alpha:g} the Friedman test does not reject that the methods perform alike, so no "
              f"pair is tested (Nemenyi CD would be {result['cd']:.2f})")
    if n < 10:
        print(f"note: {n} cells are few for these approximate tests (Demšar's example has 14 data sets): read "
              "the ranks more than p", file=sys.stderr)
    if len(left_out):
        shown = ", ".join(cell_labels(left_out.reset_index()))
        print(f"note: {len(left_out)} cell{'s' * (len(left_out) > 1)} left out, where not every method has a "
              f"finished run: {shown}", file=sys.stderr)
    return 0

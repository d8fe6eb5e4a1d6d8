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

With ``--control C`` (a new method against the baselines, say), each other row is compared with C
alone, as Demšar recommends for that question instead of Nemenyi's all-pairs test (fewer
hypotheses, more power): z = (R_j - R_C) / sqrt(k (k+1) / (6 N)), its two-sided normal p-value,
and **Holm's step-down procedure**: the p-values in ascending order p_1 <= ... <= p_(k-1), H_i
rejected while p_i < alpha / (k - i), and every later one kept from the first that is not. The
Bonferroni-Dunn critical difference, CD = q sqrt(k (k+1) / (6 N)) with q the normal quantile at
1 - alpha / (2 (k-1)) (Demšar's Table 5b: 2.241 for k = 3, 2.394 for 4, ..., 2.773 for 10), is
given beside it (Holm rejects whatever it rejects, and more). As with Nemenyi, the verdicts are
drawn only where the Friedman test rejects (Demšar's post-hoc tests).

``--metric noise_auroc|tail_auroc`` ranks how each row separates clean from mislabelled training
samples (``bench.analysis``) instead of accuracy; rows that keep no trust (CE, Focal) have no
value there, and are left out when no rows are named.

The table also gives each row's mean over the cells and the cells where it ranked first, alone
or tied with others. Both tests are approximations that want many cells: with few (Demšar's
example has 14 data sets) read the ranks, not the p-value. Two rows: ``bench compare A B`` (per
cell intervals, Wilcoxon over cells). Reads the store only (no torch).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd

from bench.analysis import NO_SEPARATION, SEPARATION, average_ranks
from bench.compare import holm_adjusted, p_is, p_text, quantity, resolve, with_rows_separation
from bench.errors import BenchError
from bench.summary import (
    CELL_FIELDS,
    GROUPS,
    cell_labels,
    metric_column,
    per_seed,
    row_labels,
    text_table,
    to_json,
)


def add_arguments(parser) -> None:
    from bench.store import DEFAULT_STORE

    parser.add_argument("rows", nargs="*", metavar="METHOD",
                        help="rows as `bench table` labels them (CurveNet, MW-Net(noise), 'CE [epochs=3]') or registry "
                             "names; at least 3 (default: every row of the store)")
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"results store to read (default ./{DEFAULT_STORE})")
    parser.add_argument("--metric", choices=("last", "best", *SEPARATION), default="last",
                        help="last-epoch test accuracy (the returned model; default) or best-epoch; or how well the "
                             "method's trust separates clean from mislabelled training samples (all of them, or "
                             "the tail classes'; `bench table --metric noise_auroc`)")
    parser.add_argument("--group", choices=GROUPS, default="all", help="all classes, or one shot group")
    parser.add_argument("--control", metavar="METHOD",
                        help="compare every other row with this one only (Holm's step-down procedure, Demšar "
                             "§3.2.2), not every pair (Nemenyi); ranked with the rows named even if not among them")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the tests (default 0.05)")
    parser.add_argument("--plot", metavar="FILE",
                        help="also draw the critical difference diagram (Demšar's Fig. 1, or Fig. 2 with --control) "
                             "to FILE (.png, .pdf, .svg ...)")
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
    # rounded: equal means tie (share their average rank), whatever the summation order's last bits
    # (pandas gives the means of 68.85, 61.74, 56.24 and of 61.74, 68.85, 56.24 in one cell as
    # 62.276666666666664 and 62.27666666666667)
    return means.reindex(columns=labels).astype(float).round(9)


def friedman_nemenyi(means: pd.DataFrame, alpha: float = 0.05) -> dict:
    """Demšar §3.2.2 on a complete cells x methods table of values (higher is better): ``ranks``
    (the per-cell ranks, 1 the best, ties averaged), ``average_rank`` per method, ``chi2``, the
    Iman-Davenport ``F`` with its degrees of freedom ``df`` and ``p``, the Nemenyi ``q`` and ``cd``,
    ``rejects`` (p < alpha: the post-hoc tests may be read), and ``differ``: the pairs (better, worse,
    rank gap) whose average ranks are at least ``cd`` apart, listed only when it rejects."""
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
    differ, rejects = [], p < alpha
    if rejects:
        order = avg.sort_values(kind="stable")
        for i, better in enumerate(order.index):
            for worse in order.index[i + 1:]:
                gap = float(order[worse] - order[better])
                if gap >= cd:
                    differ.append((better, worse, gap))
    return {"cells": n, "methods": k, "ranks": ranks, "average_rank": avg, "chi2": chi2, "F": f_stat, "df": df,
            "p": p, "alpha": alpha, "rejects": rejects, "q": q, "cd": cd, "differ": differ}


def holm_versus_control(average_rank: pd.Series, control: str, cells: int, alpha: float = 0.05) -> dict:
    """Demšar §3.2.2's comparison of every method with a ``control`` from their average ranks over
    ``cells`` data sets: per other method (the most significant first) its ``z`` = (R_j - R_control)
    / SE with SE = sqrt(k (k+1) / (6 N)) (positive: ranked below the control), the two-sided normal
    ``p``, Holm's threshold ``alpha / (k - i)`` for the i-th smallest p, ``p_holm`` (the Holm-adjusted
    p, :func:`bench.compare.holm_adjusted`: below alpha exactly when rejected) and ``differs``
    (rejected: p under its threshold, and every smaller p under its own); and the Bonferroni-Dunn ``q`` (the normal
    quantile at 1 - alpha / (2 (k-1))) and critical difference ``cd`` = q SE."""
    from scipy import stats

    k = len(average_rank)
    if control not in average_rank.index or k < 2 or cells < 1:
        raise ValueError(f"needs the control {control!r} among at least 2 ranked methods and 1 cell")
    se = math.sqrt(k * (k + 1) / (6 * cells))
    others = [m for m in average_rank.index if m != control]
    z = {m: (float(average_rank[m]) - float(average_rank[control])) / se for m in others}
    p = {m: float(2 * stats.norm.sf(abs(z[m]))) for m in others}
    ordered = sorted(others, key=lambda m: p[m])
    adjusted = holm_adjusted([p[m] for m in ordered])  # below alpha exactly where Holm's steps reject
    rows = [{"method": m, "average_rank": float(average_rank[m]), "z": z[m], "p": p[m], "holm_alpha": alpha / (k - i),
             "p_holm": float(adjusted[i - 1]), "differs": bool(adjusted[i - 1] < alpha)}
            for i, m in enumerate(ordered, start=1)]
    q = float(stats.norm.ppf(1 - alpha / (2 * (k - 1))))
    return {"control": control, "se": se, "rows": rows, "q": q, "cd": q * se, "alpha": alpha}


def _resolve_rows(names: list[str], runs: pd.DataFrame) -> list[str]:
    if not names:
        return sorted(set(row_labels(runs))) if len(runs) else []
    rows = [resolve(name, runs) for name in names]
    repeated = sorted({r for r in rows if rows.count(r) > 1})
    if repeated:
        raise BenchError(f"a row is named twice: {', '.join(repeated)}")
    return rows


def _read(args, column: str) -> tuple[pd.DataFrame, list[str], str | None]:
    """The store's finished runs (with the separation columns of the compared rows' runs for a
    separation metric), the rows to rank, those without a value of ``column`` left out (with a
    note) when none were named, an error when one named has none, and the control's row."""
    from bench.store import Store

    store = Store(args.store, create=False)
    try:
        runs = store.runs("done")
        rows = _resolve_rows(args.rows, runs)
        control = resolve(args.control, runs) if args.control else None
        if control is not None and control not in rows:  # `bench rank ce focal --control curvenet`: all three
            rows.append(control)
        named = rows if args.rows else [control] if control else []  # rows that must have a value
        if column in SEPARATION:  # the named rows' values first: a named row without one is refused at once
            runs = with_rows_separation(store, runs, named)
        _lacking(runs, named, column, refuse=True)
        if column in SEPARATION:
            runs = with_rows_separation(store, runs, [r for r in rows if r not in named])
    finally:
        store.close()
    lacking = _lacking(runs, rows, column)
    if lacking:
        rows = [r for r in rows if r not in lacking]
        print(f"note: left out, as they have no {column} value{_why(column)}: {', '.join(lacking)}", file=sys.stderr)
    return runs, rows, control


def _why(column: str) -> str:
    return f" ({NO_SEPARATION[column]})" if column in SEPARATION else ""


def _lacking(runs: pd.DataFrame, rows: list[str], column: str, refuse: bool = False) -> list[str]:
    """The ``rows`` without a value of ``column`` in ``runs``; with ``refuse``, a BenchError naming them."""
    values = per_seed(runs, column)
    has_value = set(values.loc[values["value"].notna(), "label"])
    lacking = [r for r in rows if r not in has_value]
    if lacking and refuse:
        raise BenchError(f"no {column} value for {', '.join(lacking)}{_why(column)}")
    return lacking


def main(args) -> int:
    if not 0 < args.alpha < 1:
        raise BenchError(f"--alpha must lie in (0, 1), got {args.alpha:g}")
    if args.plot is not None:
        from bench.plots import check_out

        args.plot = check_out(args.plot, "--plot")
    column = metric_column(args.metric, args.group)
    runs, rows, control_row = _read(args, column)
    if len(rows) < 3:
        raise BenchError(f"bench rank compares at least 3 rows, got {len(rows)} ({', '.join(rows) or 'none'}); "
                         "for two, `bench compare A B`")
    means = cell_means(runs, rows, column)
    complete = means.dropna()
    left_out = means[means.isna().any(axis=1)]
    if len(complete) < 2:
        fix = ("name fewer rows, or see which are missing with `bench table`" if len(left_out)
               else "train the rows on more cells (the cells are the units ranked), or for two rows `bench compare`")
        raise BenchError(f"{len(complete)} cell{'s' * (len(complete) != 1)} where all of {', '.join(rows)} have a "
                         f"finished run ({column}); ranking needs at least 2: {fix}")
    result = friedman_nemenyi(complete, args.alpha)
    control = holm_versus_control(result["average_rank"], control_row, result["cells"],
                                  args.alpha) if control_row else None
    if control is not None and not result["rejects"]:  # post hoc: no verdict unless Friedman rejects
        control["rows"] = [{**row, "differs": None} for row in control["rows"]]
    avg = result["average_rank"]
    order = list(avg.sort_values(kind="stable").index)
    best = complete.max(axis=1)
    winners = complete.eq(best, axis=0)
    alone = winners.sum(axis=1) == 1
    table = pd.DataFrame({"method": order, "average_rank": [float(avg[r]) for r in order],
                          "mean": [float(complete[r].mean()) for r in order],
                          "first": [int((winners[r] & alone).sum()) for r in order],
                          "first_tied": [int((winners[r] & ~alone).sum()) for r in order],
                          "cells": result["cells"]})
    if control is not None:
        versus = {row["method"]: row for row in control["rows"]}
        table = table.assign(**{f"{key}_vs_control": [versus[m][key] if m in versus else None for m in order]
                                for key in ("z", "p", "holm_alpha", "p_holm", "differs")})
    if args.format == "csv":
        print(table.to_csv(index=False).rstrip("\n"))
    elif args.format == "json":
        tests = {k: result[k] for k in ("cells", "methods", "chi2", "F", "p", "alpha", "q", "cd")}
        out = {"metric": column, "rows": table.to_dict(orient="records"), **tests, "df": list(result["df"]),
               "differ": [{"better": b, "worse": w, "gap": g} for b, w, g in result["differ"]],
               "cells_left_out": list(cell_labels(left_out.reset_index()))}
        if control is not None:
            out["control"] = {"method": control["control"], "se": control["se"], "bonferroni_dunn_q": control["q"],
                              "bonferroni_dunn_cd": control["cd"], "drawn": result["rejects"],
                              "holm": control["rows"]}
        print(to_json(out))
    else:
        _print_markdown(args, result, table, order, control)
        _print_notes(result["cells"], left_out)
    if args.plot is not None:  # after the table, which a figure that cannot be written must not cost
        _plot(args, result, control)
    return 0


def _print_notes(n: int, left_out: pd.DataFrame) -> None:
    if n < 10:
        print(f"note: {n} cells are few for these approximate tests (Demšar's example has 14 data sets): read "
              "the ranks more than p", file=sys.stderr)
    if len(left_out):
        shown = ", ".join(cell_labels(left_out.reset_index()))
        print(f"note: {len(left_out)} cell{'s' * (len(left_out) > 1)} left out, where not every method has a "
              f"finished run: {shown}", file=sys.stderr)


def _plot(args, result: dict, control: dict | None) -> None:
    from pathlib import Path

    from bench.cd_diagram import draw

    test = (f"Holm against {control['control']} (* differs)" if control else "Nemenyi: ranks joined by a line do "
            "not differ")
    verdict = (f"{test} at alpha {args.alpha:g}" if result["rejects"]
               else f"the Friedman test does not reject at alpha {args.alpha:g}: no test drawn")
    title = (f"average ranks over {result['cells']} cells, {quantity(args.metric, args.group)}\n"
             f"Friedman {p_is(result['p'])}; {verdict}")
    print(f"figure: {draw(result, Path(args.plot), title, control)}", file=sys.stderr)


def _print_markdown(args, result: dict, table: pd.DataFrame, order: list[str], control) -> None:
    avg, k, n = result["average_rank"], result["methods"], result["cells"]
    print(f"average ranks over {n} cells (1 = best in a cell; {quantity(args.metric, args.group)}, each method's "
          "mean over its seeds per cell)\n")
    print(text_table(pd.DataFrame({
        "method": order, "average rank": [f"{avg[r]:.2f}" for r in order],
        "mean over the cells": [f"{m:.2f}" for m in table["mean"]],
        "ranked first": [f"{f}/{n}" + (f" (+{t} tied)" if t else "")
                         for f, t in zip(table["first"], table["first_tied"])]})))
    print(f"\nFriedman test, Iman-Davenport F_F (Demšar §3.2.2): F({result['df'][0]}, {result['df'][1]}) = "
          f"{result['F']:.2f}, {p_is(result['p'])} (chi2_F = {result['chi2']:.2f}, {k} methods, {n} cells)")
    if control is None and result["rejects"]:
        pairs = "; ".join(f"{b} ahead of {w} (by {g:.2f})" for b, w, g in result["differ"]) or "no pair"
        print(f"Nemenyi critical difference at alpha {args.alpha:g}: CD = {result['cd']:.2f} (q = {result['q']:.3f}); "
              f"average ranks at least CD apart differ: {pairs}")
    elif control is None:
        print(f"at alpha {args.alpha:g} the Friedman test does not reject that the methods perform alike, so no "
              f"pair is tested (Nemenyi CD would be {result['cd']:.2f})")
    else:
        c = control["control"]
        print(f"\nagainst the control {c} (Demšar §3.2.2): z = (R_j - R_{c}) / SE with R_{c} = {avg[c]:.2f} and SE "
              f"= sqrt(k (k+1) / (6 N)) = {control['se']:.3f}, two-sided p, Holm's step-down procedure at alpha "
              f"{args.alpha:g} (the smallest p first)\n")
        print(text_table(pd.DataFrame({
            "method": [r["method"] for r in control["rows"]],
            "average rank": [f"{r['average_rank']:.2f}" for r in control["rows"]],
            "z": [f"{r['z']:+.2f}" for r in control["rows"]], "p": [p_text(r["p"]) for r in control["rows"]],
            "Holm's alpha": [f"{r['holm_alpha']:.4f}" for r in control["rows"]],
            "Holm p": [p_text(r["p_holm"]) for r in control["rows"]],
            f"differs from {c}": ["not drawn" if r["differs"] is None else "no" if not r["differs"] else
                                  f"yes: {'below' if r['z'] > 0 else 'above'} {c}" for r in control["rows"]]})))
        if result["rejects"]:
            print(f"Bonferroni-Dunn critical difference: CD = {control['cd']:.2f} (q = {control['q']:.3f}): average "
                  f"ranks at least CD from {c}'s differ from it; Holm's procedure (above) rejects whatever this "
                  "rejects, and may reject more")
        else:
            print(f"at alpha {args.alpha:g} the Friedman test does not reject that the methods perform alike, so no "
                  "verdict is drawn from these p-values")

"""``python -m bench compare A B``: is method A better than method B, cell by cell, beyond the
spread of seeds?

For every cell (and preset, model) where both A and B have finished runs, the difference of
their accuracies Δ = A − B with a confidence interval and a two-sided p-value:

* **paired** over the training seeds both ran, when each pair saw the same data (the same data
  seeds; by default a run's data seed is its training seed, so run A and run B of seed s share
  the noise, the imbalance subset and the meta set): the mean of the per-seed differences, its
  t interval (n − 1 degrees of freedom) and the paired t-test (``scipy.stats.ttest_rel``).
  Pairing removes what the seed's data does to both methods, which is often most of the spread
  on a small cell. Seeds only one of them ran are left out of Δ (the A and B columns are over
  all of each one's seeds, as in ``bench table``; a note says where);
* **Welch** otherwise (no shared seed, a shared seed whose data differ, or one shared seed where
  each has two or more): the difference of the means, Welch's interval and t-test
  (``scipy.stats.ttest_ind(equal_var=False)``).

With fewer than two values there is no interval; where there is no spread (every seed gives the
same Δ, or, unpaired, each side the same value on every seed, up to rounding) the interval is Δ
alone and there is no p. The p-values are per cell: comparing over many
cells, some will fall below 0.05 by chance. ``p_holm`` ("Holm p") corrects them for the number of
cells by Holm's step-down procedure (:func:`holm_adjusted`): the cells whose Holm p lies below
alpha differ with at most an alpha chance that any of them does not. Over several cells, the
question "is A better than B on this grid" is answered with the cells as the units: the two-sided
Wilcoxon signed-rank test of the cells' Δ (Demšar, JMLR 2006; cells with Δ = 0 dropped, see
:func:`over_cells`). "wins" counts the seeds where A beat B (paired only). A and B are rows as
``bench table`` labels them (``CurveNet``, ``MW-Net(noise)``, ``CE [epochs=3]``) or registry names
that stand for one row. Reads the store only (no torch), as ``bench table`` does.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd

from bench.analysis import NO_SEPARATION, SEPARATION, SEPARATION_TITLES, reading_progress, with_separation
from bench.errors import BenchError
from bench.summary import (
    CELL_FIELDS,
    GROUPS,
    cell_labels,
    format_cell,
    metric_column,
    per_seed,
    row_labels,
    text_table,
    to_json,
)

# the order of a comparison's cells: as the table's columns, a cell's clean column first
CELL_ORDER = ["dataset", "imbalance", "noise_rate", "noise_type", "preset", "model"]
COLUMNS = ("cell", "dataset", "imbalance", "noise_type", "noise_rate", "preset", "model", "a_mean", "a_std", "a_n",
           "b_mean", "b_std", "b_n", "test", "n", "diff", "ci_low", "ci_high", "p", "p_holm", "wins")


def add_arguments(parser) -> None:
    from bench.store import DEFAULT_STORE

    parser.add_argument("a", metavar="A", help="a method row as `bench table` labels it (CurveNet, "
                                                "MW-Net(noise), 'CE [epochs=3]') or a registry name")
    parser.add_argument("b", metavar="B", help="the method to compare A against")
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"results store to read (default ./{DEFAULT_STORE})")
    parser.add_argument("--metric", choices=("last", "best", "noise_auroc", "tail_auroc"), default="last",
                        help="last-epoch accuracy (the returned model; default) or best-epoch; or how well the "
                             "per-sample trust tells clean (clean tail) from mislabelled samples, as `bench table "
                             "--metric noise_auroc|tail_auroc`")
    parser.add_argument("--group", choices=GROUPS, default="all", help="all classes, or one shot group")
    parser.add_argument("--confidence", type=float, default=0.95, help="of the intervals (default 0.95)")
    parser.add_argument("--format", choices=("md", "csv", "json"), default="md",
                        help="markdown (default), CSV or JSON (numbers as numbers)")


def resolve(name: str, runs: pd.DataFrame) -> str:
    """The row label ``name`` stands for: itself if a row has that label (case aside), else the one
    label that reads ``name`` (case aside) before its ``[...]`` qualifiers (``CurveNet(SL=3)`` or
    ``curvenet(sl=3)`` for ``CurveNet(SL=3) [data_sha256=...]``), else the one label with some of
    them after its table name (``CE [train_on_meta=True]`` for ``CE [data_sha256=...
    train_on_meta=True]``), or where no row shows that name, after its registry name (``cb
    [train_on_meta=True]`` for ``Class-Balanced [...]``), else the one
    label of the registry method ``name``; BenchError naming the choices otherwise."""
    from bench.show import method_names

    rows = row_labels(runs) if len(runs) else []  # each run's row
    labels = sorted(set(rows))
    if name in labels:
        return name
    same = [label for label in labels if label.lower() == name.lower()]  # case aside
    if len(same) == 1:
        return same[0]
    unqualified = sorted({row for row, shown in zip(rows, runs["display_name"])
                          if str(shown).lower() == name.lower()}) if rows else []
    if len(unqualified) == 1:  # a row as the table names it, its [...] qualifiers aside
        return unqualified[0]
    base, bracket, given = name.partition(" [")
    if bracket and given.endswith("]") and rows:  # some of its qualifiers: 'CE [train_on_meta=True]'
        wanted, base = set(given[:-1].lower().split()), base.strip()

        def qualified(named) -> list[str]:  # the rows of the runs ``named`` picks with those qualifiers
            return sorted({row for row, shown, method in zip(rows, runs["display_name"], runs["method"])
                           if named(str(shown), method) and row.endswith("]")
                           and wanted <= set(row[len(str(shown)):].strip(" []").lower().split())})
        some = qualified(lambda shown, method: shown.lower() == base.lower())  # the table's name first
        registry: set[str] = set()
        if not some:  # else the base as a registry name or a method's name: 'cb [train_on_meta=True]'
            try:
                registry = set(method_names(base, runs))
            except BenchError:
                pass
            some = qualified(lambda shown, method: method in registry)
        if len(some) == 1:
            return some[0]
        if len(some) > 1:
            raise BenchError(f"{name} stands for {len(some)} rows of the table; name one: {', '.join(some)}")
        if registry:  # a method, but none of its finished rows has these qualifiers
            raise BenchError(f"no finished runs of {name!r}; the rows are: {', '.join(labels)}")
    try:  # a registry name, or a method's name as tables show it (MW-Net for MW-Net(noise))
        named = set(method_names(name, runs))
    except BenchError:
        raise BenchError(f"unknown method or row {name!r}; the rows are: "
                         f"{', '.join(labels) or 'none finished'}") from None
    mine = sorted({row for row, method in zip(rows, runs["method"]) if method in named}) if rows else []
    if len(mine) == 1:
        return mine[0]
    if len(mine) > 1:
        raise BenchError(f"{name} stands for {len(mine)} rows of the table; name one: {', '.join(mine)}")
    raise BenchError(f"no finished runs of {name!r}; the rows are: {', '.join(labels) or 'none finished'}")


def constant(values: np.ndarray) -> bool:
    """Every value the same up to rounding: ``np.var`` of ``[60.05] * 3`` is 8e-29, not 0, and a
    test against that spread would give any difference p ~ 1e-55."""
    return bool(np.ptp(values) <= 1e-9 * max(1.0, abs(float(np.mean(values)))))


def interval(values: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    """Mean of ``values`` (per-seed differences), its t interval and the p-value of mean = 0."""
    from scipy import stats

    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    if constant(values):  # every seed gave the same difference (up to rounding, 70.3 - 70.2 !=
        return mean, mean, mean, math.nan  # 71.1 - 71.0): no spread to test against
    sem = float(np.std(values, ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    p = float(stats.ttest_1samp(values, 0.0).pvalue)  # = ttest_rel(a, b) on the pairs
    return mean, mean - half, mean + half, p


def welch(a: np.ndarray, b: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    """Difference of the means, Welch's interval (Welch-Satterthwaite degrees of freedom) and p."""
    from scipy import stats

    diff = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan, math.nan
    if constant(a) and constant(b):  # each side the same on every seed: no spread to test against
        return diff, diff, diff, math.nan
    va, vb = float(np.var(a, ddof=1)) / len(a), float(np.var(b, ddof=1)) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(va + vb)
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return diff, diff - half, diff + half, p


def with_rows_separation(store, runs: pd.DataFrame, rows: list[str]) -> pd.DataFrame:
    """``runs`` with the :data:`SEPARATION` columns, read from the samples of the runs of ``rows``
    (labels) only; NaN for the others (those of an earlier call's rows kept)."""
    mine = np.isin(row_labels(runs), rows) if len(runs) else np.array([], bool)
    if not set(SEPARATION) <= set(runs.columns):
        runs = runs.assign(**{c: np.nan for c in SEPARATION})
    if mine.any():
        read = with_separation(store, runs[mine], progress=reading_progress)
        runs.loc[mine, list(SEPARATION)] = read[list(SEPARATION)]
    return runs


def quantity(metric: str, group: str = "all") -> str:
    """What ``--metric`` and ``--group`` measure, as the comparisons' headings say it."""
    if metric in SEPARATION:
        return SEPARATION_TITLES[metric].split(":")[0]
    return f"test accuracy (%), {metric} epoch{'' if group == 'all' else f', {group}-shot classes'}"


def holm_adjusted(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), NaN kept as NaN: with the m finite p in
    ascending order p_(1) <= ... <= p_(m), p_(i) becomes min(1, max_(j <= i) (m - j + 1) p_(j)). A
    hypothesis is rejected by Holm's procedure at alpha exactly when its adjusted p is below alpha."""
    p = np.asarray(p, dtype=float)
    out = np.full(len(p), np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def compare(runs: pd.DataFrame, a: str, b: str, column: str = "acc_last", confidence: float = 0.95) -> pd.DataFrame:
    """One row per cell where both rows ``a`` and ``b`` (labels) have values (``COLUMNS``)."""
    values = per_seed(runs, column)
    cell_keys = list(CELL_FIELDS)
    rows = []
    for cell, group in values[values["label"].isin([a, b])].groupby(cell_keys, sort=True):
        va, vb = group[group["label"] == a], group[group["label"] == b]
        if va.empty or vb.empty:
            continue
        pairs = va.merge(vb, on="seed", suffixes=("_a", "_b"))
        xa, xb = va["value"].to_numpy(float), vb["value"].to_numpy(float)
        # one shared seed gives no interval: Welch over all the seeds does, where each side has two
        paired = (len(pairs) > 0 and (pairs["data_seeds_a"] == pairs["data_seeds_b"]).all()
                  and (len(pairs) > 1 or min(len(xa), len(xb)) < 2))
        if paired:
            d = pairs["value_a"].to_numpy(float) - pairs["value_b"].to_numpy(float)
            diff, low, high, p = interval(d, confidence)
            test, n, wins = "paired", len(d), f"{int((d > 0).sum())}/{len(d)}"
        else:
            diff, low, high, p = welch(xa, xb, confidence)
            test, n, wins = "Welch", len(xa) + len(xb), ""
        record = dict(zip(cell_keys, cell))
        rows.append({"cell": "", **record,  # (labelled below, all cells together)
                     "a_mean": float(xa.mean()), "a_std": float(np.std(xa, ddof=1)) if len(xa) > 1 else math.nan,
                     "a_n": len(xa), "b_mean": float(xb.mean()),
                     "b_std": float(np.std(xb, ddof=1)) if len(xb) > 1 else math.nan, "b_n": len(xb),
                     "test": test, "n": n, "diff": diff, "ci_low": low, "ci_high": high, "p": p, "wins": wins})
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    out["cell"] = cell_labels(out)  # in the table's column order: a cell's clean column first
    out["p_holm"] = holm_adjusted(out["p"])
    return out.sort_values(CELL_ORDER, kind="stable").reset_index(drop=True)


def one_sided_cells(runs: pd.DataFrame, a: str, b: str, column: str = "acc_last") -> dict[str, list[str]]:
    """The cells :func:`compare` leaves out: for each of rows ``a`` and ``b``, the labels of the
    cells where it alone has values."""
    values = per_seed(runs, column)
    values = values[values["label"].isin([a, b])]
    cells = values.groupby(list(CELL_FIELDS), sort=True)["label"].agg(lambda labels: tuple(sorted(set(labels))))
    alone = cells[cells.map(len) == 1].reset_index()
    alone = alone.sort_values(CELL_ORDER, kind="stable")
    alone["cell"] = cell_labels(alone)
    return {row: [cell for cell, labels in zip(alone["cell"], alone["label"]) if labels == (row,)] for row in (a, b)}


def over_cells(table: pd.DataFrame) -> dict:
    """The comparison over all the cells of ``table`` (:func:`compare`), each cell one unit (Demšar,
    JMLR 2006, for two methods over several data sets): ``cells``, ``ahead`` (cells with Δ > 0; a
    paired cell's Δ is over the seeds both ran, so A's mean over all its seeds may be higher there
    and the cell still not count), ``mean_diff`` (the cells weighted equally) and ``p``, the
    two-sided Wilcoxon signed-rank test of the cells' Δ (``scipy.stats.wilcoxon``; ``tested`` the
    cells it uses; exact for few cells, so with fewer than 6 p cannot fall below 0.05; where cells
    tie in |Δ|, exact by permutation up to 13 cells and the normal approximation (no continuity
    correction) from 14, as scipy >= 1.15 chooses; NaN with fewer than 2).

    Cells with Δ = 0 are dropped before ranking (Wilcoxon's own rule, scipy's default). This
    deviates from Demšar (§3.1.3), who splits the zeros' ranks evenly between the two sums and
    drops one zero only if their number is odd: with one zero the two agree; with more they can
    differ, e.g. Δ = 0, 0, +1, ..., +5 gives p = 0.0625 here and 0.031 by Demšar's rule (T = 1.5
    over n = 7, the exact distribution). Dropping keeps the null distribution exact (a zero has no
    sign to flip); exact zeros between two methods' mean accuracies are rare."""
    from scipy import stats

    diffs = np.round(table["diff"].to_numpy(float), 9)  # equal Δ tie, whatever the subtraction's last bits
    nonzero = diffs[diffs != 0]
    p = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) > 1 else math.nan
    return {"cells": len(diffs), "ahead": int((diffs > 0).sum()), "mean_diff": float(diffs.mean()) if len(diffs)
            else math.nan, "tested": len(nonzero), "p": p}


def p_text(p: float) -> str:
    """A p-value as the comparisons print it: three decimals, <0.001, or — for none."""
    if math.isnan(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_is(p: float) -> str:
    """A p-value in a sentence: ``p = 0.032``, ``p < 0.001`` or ``p = —``."""
    text = p_text(p)
    return f"p < {text[1:]}" if text.startswith("<") else f"p = {text}"


def render(table: pd.DataFrame, a: str, b: str, confidence: float, fmt: str = "md", metric: str = "acc_last") -> str:
    """The comparison as Markdown, or as CSV / JSON records that say what was compared: ``a``,
    ``b``, ``metric`` (the store's column, e.g. ``acc_last``) and ``confidence`` in every CSV row
    and at the top of the JSON; numbers unrounded."""
    if fmt == "csv":
        return pd.concat([pd.DataFrame({"a": [a] * len(table), "b": [b] * len(table), "metric": metric,
                                        "confidence": confidence}), table], axis=1).to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return to_json({"a": a, "b": b, "metric": metric, "confidence": confidence,
                        "rows": table.to_dict(orient="records"),
                        "over_cells": over_cells(table) if len(table) > 1 else None})
    ci = f"{confidence:.0%} CI"
    shown = pd.DataFrame({
        "cell": table["cell"],
        a: [format_cell(m, s, n) for m, s, n in zip(table["a_mean"], table["a_std"], table["a_n"])],
        b: [format_cell(m, s, n) for m, s, n in zip(table["b_mean"], table["b_std"], table["b_n"])],
        "Δ": [f"{d:+.2f}" for d in table["diff"]],
        ci: ["—" if math.isnan(lo) else f"[{lo:+.2f}, {hi:+.2f}]" for lo, hi in zip(table["ci_low"], table["ci_high"])],
        "p": [p_text(p) for p in table["p"]],
        "Holm p": [p_text(p) for p in table["p_holm"]],
        "test": [f"{t} (n={n})" for t, n in zip(table["test"], table["n"])],
        "A > B (seeds)": table["wins"]})
    if len(table) < 2:  # one cell: nothing to correct for
        shown = shown.drop(columns="Holm p")
    return text_table(shown)


def _say_protocols(runs: pd.DataFrame, a: str, b: str) -> None:
    """Under the comparison: the rows' runs that left their preset's protocol (as under bench
    table), and a warning where A's and B's runs did not train with the same protocol."""
    from bench.summary import off_preset, off_preset_note

    labels = np.asarray(row_labels(runs)) if len(runs) else np.array([])
    mine = np.isin(labels, [a, b])
    note = off_preset_note(runs[mine], list(labels[mine]))
    if note:
        print(f"note: {note}", file=sys.stderr)
    protocols = {row: {json.dumps(off_preset(json.loads(text)), sort_keys=True)
                       for label, text in zip(labels, runs["spec_json"]) if label == row} for row in (a, b)}
    if protocols[a] != protocols[b]:
        print(f"bench: warning: {a} and {b} did not train with the same protocol (the note above): their "
              "difference is not the methods' alone", file=sys.stderr)


def main(args) -> int:
    from bench.store import Store

    if not 0 < args.confidence < 1:
        raise BenchError(f"--confidence must lie in (0, 1), got {args.confidence:g}")
    column = metric_column(args.metric, args.group)  # refuses a --group the metric has none of
    store = Store(args.store, create=False)
    try:
        runs = store.runs("done")
        a, b = resolve(args.a, runs), resolve(args.b, runs)
        if a == b:
            raise BenchError(f"A and B are the same row ({a})")
        if args.metric in SEPARATION:
            runs = with_rows_separation(store, runs, [a, b])
    finally:
        store.close()
    table = compare(runs, a, b, column, args.confidence)
    for row, cells in one_sided_cells(runs, a, b, column).items():
        if cells:
            print(f"note: {len(cells)} cell{'s' * (len(cells) > 1)} left out, where only {row} has finished runs"
                  f"{f' with a {column} value' if args.metric in SEPARATION else ''}: {', '.join(cells)}",
                  file=sys.stderr)
    if args.format == "md":
        print(f"{a} vs {b}: {quantity(args.metric, args.group)}; Δ = {a} − {b}, mean ± sample std over seeds (n)\n")
    if table.empty:
        why = ""
        if args.metric in SEPARATION:
            why = f" ({NO_SEPARATION[args.metric]})"
        elif args.group != "all":
            from bench.cli import GROUP_RULE
            why = f" (a {args.group}-shot class has {GROUP_RULE[args.group]} training samples)"
        print(f"bench: no cell where both {a} and {b} have finished runs"
              + (f" with a {column} value{why}" if args.group != "all" or args.metric in SEPARATION else ""),
              file=sys.stderr)
        if args.format == "md":
            return 0
    print(render(table, a, b, args.confidence, args.format, column))
    if args.format == "md" and len(table) > 1:
        summary = over_cells(table)
        print(f"\nover the {summary['cells']} cells: {a} ahead in {summary['ahead']}, mean Δ "
              f"{summary['mean_diff']:+.2f} (cells weighted equally); Wilcoxon signed-rank test of the cells' Δ: "
              f"{p_is(summary['p'])}" + (f" ({summary['tested']} cells with Δ ≠ 0: with fewer than 6, p cannot "
                                                  "fall below 0.05)" if summary["tested"] < 6 else ""))
    if args.format == "md" and not table.empty:
        alpha = 1 - args.confidence
        holm = ("; Holm p corrects it for the number of cells (Holm's step-down procedure: the cells whose Holm p "
                f"lies below {alpha:.3g} differ, with at most a {alpha * 100:.3g}% chance that any of them does not)"
                if len(table) > 1 else "")
        print("\npaired: over the seeds both ran on the same data (t interval, paired t-test); Welch: unpaired "
              "(no shared seed; one, where each ran two or more; or shared seeds whose data differ). "
              f"p is per cell, two-sided{holm}; with one value per side there is no interval, and where there "
              "is no spread (every seed gives the same Δ; unpaired, each side the same value on every seed) "
              "the interval is Δ alone and there is no p.")
    _say_unpaired_seeds(table, a, b)
    _say_protocols(runs, a, b)
    return 0


def _say_unpaired_seeds(table: pd.DataFrame, a: str, b: str) -> None:
    """Where a paired cell has seeds that only one row ran: Δ and p are over the shared seeds, the
    A and B columns over all of each row's seeds, so Δ need not be their difference."""
    partial = table[(table["test"] == "paired") & ((table["a_n"] > table["n"]) | (table["b_n"] > table["n"]))]
    if len(partial):
        cells = "; ".join(f"{cell} ({a} {an}, {b} {bn}, both {n})"
                          for cell, an, bn, n in zip(partial["cell"], partial["a_n"], partial["b_n"], partial["n"]))
        print(f"note: Δ, its interval and p are over the seeds both rows ran, the {a} and {b} columns over "
              f"all of each row's seeds: {cells}", file=sys.stderr)

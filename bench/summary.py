"""Stored results as a method x cell table: mean ± sample std (ddof 1) over seeds, with the seed
count (Markdown and LaTeX), or one record per (method, cell) with the numbers (CSV and JSON).

Reads only what the store returns (a DataFrame of runs); knows nothing of torch or methods. Runs
are averaged together only when they differ in nothing but their seeds: a method run with other
settings on the same cell (``--epochs 3``, ``--precision bf16``, ``--set focal.gamma=2``) gets a
row of its own, labelled with the settings that set it apart.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from bench.data.bias import number_text
from bench.errors import BenchError
from bench.spec import OMITTED_WHEN_DEFAULT, PRESETS, SEED_FIELDS, cell_text

METRICS = {"last": "acc_last", "best": "acc_best", "minutes": "train_minutes",
           "noise_auroc": "noise_auroc", "tail_auroc": "tail_auroc"}
GROUPS = ("all", "many", "medium", "few")
TRAIN_MINUTES = "train_minutes"
# columns that are not the store's accuracies: a run's training time, and the separation of its
# per-sample trust (bench.analysis; the caller adds them with ``analysis.with_separation``)
WHOLE_RUN = {"minutes": "is a run's training time",
             "noise_auroc": "is over a run's training samples",
             "tail_auroc": "is over a run's training samples"}


def metric_column(metric: str = "last", group: str = "all") -> str:
    """Column of the runs table: ``acc_last``, ``few_best`` ..., ``train_minutes``, ``noise_auroc``
    or ``tail_auroc``."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}")
    if group not in GROUPS:
        raise ValueError(f"group must be one of {', '.join(GROUPS)}")
    if metric in WHOLE_RUN:
        if group != "all":
            raise BenchError(f"--metric {metric} {WHOLE_RUN[metric]}: it has no --group")
        return METRICS[metric]
    return f"{'acc' if group == 'all' else group}_{metric}"


def training_minutes(runs: pd.DataFrame) -> pd.Series:
    """Each run's training time in minutes: ``env["train_s"]`` (set up, training and evaluation,
    summed over the attempts of a run that was killed and resumed; methods.base.Run.trained_s),
    else, for runs stored before it was recorded, the wall time of the run's last attempt. A run
    trained in a fused group of K (``bench run --fuse``, ``env["fused"]``) gets its share, the
    group's time / K."""
    def seconds(env_json, wall_s):
        env = json.loads(env_json) if isinstance(env_json, str) and env_json else {}
        value = env.get("train_s", wall_s)
        return float("nan") if value is None else float(value) / env.get("fused", 1)
    env = runs["env_json"] if "env_json" in runs else pd.Series([None] * len(runs), index=runs.index)
    wall = runs["wall_s"] if "wall_s" in runs else pd.Series([None] * len(runs), index=runs.index)
    return pd.Series([seconds(e, w) / 60.0 for e, w in zip(env, wall)], index=runs.index, dtype=float)


def settings_key(spec: dict) -> str:
    """A stored spec (``RunSpec.to_dict()``) without its seeds: what runs of one setting share."""
    return json.dumps({k: v for k, v in spec.items() if k not in SEED_FIELDS}, sort_keys=True)


def stored_minutes(runs) -> dict[str, float]:
    """Median training minutes (``bench.summary.training_minutes``) of the done ``runs`` per
    :func:`settings_key` (``bench run --dry-run``'s estimates)."""
    if runs.empty:
        return {}
    keys = [settings_key(json.loads(text)) for text in runs["spec_json"]]
    return {key: float(value) for key, value in training_minutes(runs).groupby(keys).median().items()
            if value == value}  # a run without a time (NaN) gives none


def cell_label(row) -> str:
    return cell_text(row["dataset"], row["imbalance"], row["noise_type"], row["noise_rate"])


CELL_FIELDS = ("dataset", "imbalance", "noise_type", "noise_rate", "preset", "model")


def settings(spec: dict) -> dict:
    """A stored run's settings other than its seeds and cell, flat (method hyperparameters as
    ``method.name``) and with the fields omitted at their default filled in (``precision``)."""
    flat = {**OMITTED_WHEN_DEFAULT, **{k: v for k, v in spec.items()
                                       if k not in CELL_FIELDS + SEED_FIELDS + ("method", "params")}}
    flat.update({f"{spec['method']}.{k}": v for k, v in spec.get("params", {}).items()})
    return flat


def off_preset(spec: dict) -> dict:
    """A stored run's protocol settings away from its preset's (``bench/spec.py`` PRESETS and the
    dataset's default meta size), each as (its value, the preset's), e.g. ``{"epochs": (2, 20)}``;
    a schedule that ``--epochs`` scaled is the epochs alone. Run-wide flags (precision,
    train_on_meta) are left to the row labels."""
    from bench.data.cli import default_meta_per_class
    from bench.spec import PRESETS

    preset = PRESETS.get(spec.get("preset"))
    if preset is None:
        return {}
    standard = {k: v for k, v in preset.items() if k not in CELL_FIELDS}
    if not str(spec.get("dataset", "")).startswith("npz:"):  # an npz file's default is its own trusted set's size
        try:
            standard["meta_per_class"] = default_meta_per_class(spec["dataset"])
        except BenchError:
            pass
    standard.update(_scaled_schedule(spec))  # the warm-up and milestones its epochs give
    out = {}
    for key, want in standard.items():
        got = spec.get(key, want)
        same = (list(got) == list(want) if isinstance(want, (tuple, list)) and isinstance(got, (tuple, list))
                else bool(np.isclose(got, want)) if isinstance(want, float) and isinstance(got, (int, float))
                else got == want)
        if not same:
            out[key] = (got, want)
    return out


def away_from_preset(spec: dict, env_json) -> dict:
    """A stored run's settings away from its preset's, each as (its value, the preset's): its
    protocol (:func:`off_preset`) and its method settings that its name does not show
    (:func:`method_settings`, as ``method.name``)."""
    unnamed = method_settings(env_json)
    return {**off_preset(spec), **{f"{spec['method']}.{k}": tuple(pair) for k, pair in unnamed.items()}}


def off_preset_note(runs: pd.DataFrame, labels: list[str] | None = None) -> str | None:
    """A line for under a table of ``runs``: the rows whose runs' protocol is not their preset's
    (``--epochs 2``, ``--set lr=0.05``), or whose method settings are not its preset's defaults
    where the method's name does not show them (``--set curvenet.embed_dim=32``; the run's env
    holds them, :func:`bench.execute.unnamed_settings`), which a row's label shows only where it
    sets two rows of one method apart; None where every run follows its preset. ``labels``: the
    runs' row labels where the table labels them among more runs (default :func:`row_labels` of
    ``runs``)."""
    if runs.empty:
        return None
    rows: dict[str, list[str]] = {}
    envs = runs["env_json"] if "env_json" in runs else [None] * len(runs)
    for label, text, env in zip(row_labels(runs) if labels is None else labels, runs["spec_json"], envs):
        spec = json.loads(text)
        away = ", ".join(f"{k} {setting_text(got)} (the {spec['preset']} preset: {setting_text(want)})"
                         for k, (got, want) in sorted(away_from_preset(spec, env).items()))
        if away:
            named = rows.setdefault(away, [])
            if label not in named:
                named.append(label)
    if not rows:
        return None
    return "rows trained away from their preset's protocol: " + "; ".join(
        f"{', '.join(labels)}: {away}" for away, labels in rows.items())


def method_settings(env_json) -> dict:
    """A stored run's method settings away from its preset's defaults that its name does not show,
    {name: [value, default]}, from its env ({} for runs stored before commit 9149156, 2026-12-07
    01:35 UTC, which lack it)."""
    env = json.loads(env_json) if isinstance(env_json, str) and env_json else {}
    return env.get("method_settings") or {}


def setting_text(value) -> str:
    """A setting's value as labels and notes write it: a list joined by commas, a float by
    :func:`~bench.data.bias.number_text` (exact), anything else as ``str``."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return number_text(value) if isinstance(value, float) else str(value)


def row_labels(runs: pd.DataFrame) -> list[str]:
    """Each run's row: its method's display name, and where runs under that name on the same cell
    differ in other settings (``--epochs``, ``--set``, ``--precision`` ...) the settings that set
    it apart, e.g. ``CE [epochs=3]``: runs that differ in more than their seeds are never
    averaged together. A run-wide setting away from its default (``CE [precision=bf16]``,
    ``CE [train_on_meta=True]``), and so an npz file's version (``data_sha256``), is always
    shown. The warm-up and milestones that ``--epochs`` scaled are told by the epochs alone
    (``CE [epochs=3]``); they are shown where they are not the scaled ones.

    Across cells, a setting away from its preset's on some of a name's runs and not on others
    (``--epochs 3`` on one cell only) labels the runs away from it (``CE [epochs=3]``; the others
    stay ``CE``): one row never holds different settings in different columns, which
    ``--average`` would pool."""
    specs = [json.loads(s) for s in runs["spec_json"]]
    flat = [settings(s) for s in specs]
    names = list(runs["display_name"])
    group_of = [(name, *(s[f] for f in CELL_FIELDS)) for name, s in zip(names, specs)]
    variants: dict[tuple, list[dict]] = {}
    for group, f in zip(group_of, flat):
        variants.setdefault(group, [])
        if f not in variants[group]:
            variants[group].append(f)
    # settings that differ within a group, and always a run-wide setting away from its default
    # (precision=bf16, train_on_meta=True: a lone such run is not labelled as the plain method)
    differing = {group: sorted({k for v in vs for k in v if any(o.get(k) != v.get(k) for o in vs)}
                               | {k for v in vs for k, d in OMITTED_WHEN_DEFAULT.items() if v.get(k) != d})
                 for group, vs in variants.items()}
    # across cells: the settings away from the preset's on some of a name's runs, not on all alike
    envs = runs["env_json"] if "env_json" in runs else [None] * len(runs)
    away = [{k: got for k, (got, _) in away_from_preset(spec, env).items()} for spec, env in zip(specs, envs)]
    of_name: dict[str, list[dict]] = {}
    for name, a in zip(names, away):
        of_name.setdefault(name, []).append(a)
    varying = {name: {k for a in alike for k in a if any(o.get(k) != a.get(k) for o in alike)}
               for name, alike in of_name.items()}
    labels = []
    for name, group, f, spec, a in zip(names, group_of, flat, specs, away):
        implied = _scaled_schedule(spec)  # the schedule --epochs scales: told by the epochs alone
        raw = PRESETS.get(spec.get("preset"), {})  # a schedule left at the preset's own values is not news
        mine = {k for k in varying[name] & set(a) if not (k in raw and _same(f.get(k), raw[k]))}
        shown = " ".join(f"{k}={setting_text(f[k])}" for k in sorted(set(differing[group]) | mine)
                         if k in f and not (k in implied and _same(f[k], implied[k])))
        labels.append(f"{name} [{shown}]" if shown else name)
    return labels


def _scaled_schedule(spec: dict) -> dict:
    """The warm-up and milestones that ``--epochs`` gives a run of its epochs under its preset
    (``bench/spec.py`` scale_schedule); {} where they cannot be told."""
    from bench.spec import PRESETS, scale_schedule

    preset = PRESETS.get(spec.get("preset"))
    try:
        scaled = scale_schedule(preset, int(spec["epochs"])) if preset else {}
    except (BenchError, KeyError, TypeError, ValueError):
        return {}
    return {k: v for k, v in scaled.items() if k in ("milestones", "warmup_epochs")}


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def aggregate(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """One row per (method and settings, cell, preset, model): mean, sample std (ddof=1) and count
    of seeds; ``label`` names the method and, where needed, its settings (:func:`row_labels`).

    Runs without a value (e.g. no few-shot class in the cell) are left out of the count. Runs that
    differ only in ``--data-seed`` are averaged within their training seed first, so that ``n``
    counts training seeds, as the paper tables count them (bench/tables.py).
    """
    values = per_seed(runs, column)
    if values.empty:
        return pd.DataFrame(columns=list(ROW_KEYS) + ["mean", "std", "n"])
    grouped = values.groupby(list(ROW_KEYS), sort=True)["value"]
    out = grouped.agg(mean="mean", std=lambda s: float(np.std(s, ddof=1)) if len(s) > 1 else float("nan"),
                      n="count").reset_index()
    return out


ROW_KEYS = ("label", *CELL_FIELDS)


def per_seed(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """One value of ``column`` per (row label, cell, preset, model, training seed): the mean over the
    runs that differ only in ``--data-seed``, with ``data_seeds`` (a tuple) behind it. Runs
    without a value are left out."""
    keys = list(ROW_KEYS)
    if column == TRAIN_MINUTES and not runs.empty:
        runs = runs.assign(**{TRAIN_MINUTES: training_minutes(runs)})
    if runs.empty or column not in runs.columns:
        return pd.DataFrame(columns=keys + ["seed", "value", "data_seeds"])
    data_seeds = [int(json.loads(s).get("data_seed", seed)) for s, seed in zip(runs["spec_json"], runs["seed"])]
    runs = runs.assign(label=row_labels(runs), data_seed=data_seeds)
    values = runs[keys + ["seed", "data_seed", column]].dropna(subset=[column])
    grouped = values.groupby(keys + ["seed"], sort=True)
    out = grouped[column].mean().rename("value").to_frame()
    out["data_seeds"] = grouped["data_seed"].agg(lambda s: tuple(sorted(set(s))))
    return out.reset_index()


def format_cell(mean: float, std: float, n: int) -> str:
    if n == 0 or pd.isna(mean):
        return "—"
    if n == 1 or pd.isna(std):
        return f"{mean:.2f} (n=1)"
    return f"{mean:.2f} ± {std:.2f} (n={n})"


def cell_labels(frame: pd.DataFrame) -> pd.Series:
    """Each row's :func:`cell_label`, with ``[preset/model]`` where ``frame``'s rows mix protocols
    (the columns of ``bench table``, the cells of ``bench show`` and ``bench compare``)."""
    if frame.empty:
        return pd.Series([], index=frame.index, dtype=object)
    cells = frame.apply(cell_label, axis=1)
    if frame[["preset", "model"]].drop_duplicates().shape[0] > 1:
        cells = cells + " [" + frame["preset"] + "/" + frame["model"] + "]"
    return cells


def json_ready(record: dict) -> dict:
    """A record for JSON: numpy scalars as Python numbers, NaN and infinities as null."""
    return {k: _finite(v) for k, v in record.items()}


def _finite(value):
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return _finite(value)


def to_json(obj, indent: int | None = 1) -> str:
    """``obj`` as standard JSON, which has no NaN or Infinity (Python's json writes them, and
    other readers, e.g. JavaScript's JSON.parse, refuse them): such values, at any depth, as null."""
    return json.dumps(_json_safe(obj), indent=indent, allow_nan=False)


def _with_cells(agg: pd.DataFrame) -> pd.DataFrame:
    """``aggregate``'s rows with the ``cell`` label the table's columns show."""
    agg["cell"] = cell_labels(agg)
    return agg


RECORD_COLUMNS = ("method", "cell", "dataset", "imbalance", "noise_type", "noise_rate", "preset", "model", "metric",
                  "mean", "std", "n")


def mean_over_cells(by_seed: list[dict]) -> tuple[list, np.ndarray]:
    """The paper tables' MA over a set of cells, each given as {training seed: value}: the seeds
    every cell has, and per such seed the mean over the cells. Used by :func:`cell_average` and
    by the paper tables (bench/tables.py ``grid_mean``)."""
    seeds = sorted(set.intersection(*(set(cell) for cell in by_seed))) if by_seed else []
    return seeds, np.array([np.mean([cell[s] for cell in by_seed]) for s in seeds])


def cell_average(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per row label, the mean over the table's cells (every cell any row has a value in), by
    :func:`mean_over_cells`: per training seed the mean over the cells if that seed's runs cover
    every cell, then ``mean``, ``std`` (ddof 1) and ``n`` over those seeds. A row no seed of which
    covers every cell has ``n`` 0 and NaNs; ``cells`` is the number of cells. Rows are
    :func:`row_labels`' rows: where a method ran other settings on some cell, its runs there are
    labelled by their settings, so its plain row misses that cell and gets no mean (as the table
    shows it)."""
    values = per_seed(runs, column)
    if values.empty:
        return pd.DataFrame(columns=["label", "mean", "std", "n", "cells"])
    cell = values.groupby(list(CELL_FIELDS), dropna=False, sort=False).ngroup()
    cells = int(cell.max()) + 1
    rows = []
    for label, own in values.assign(cell=cell).groupby("label", sort=True):
        found = {c: dict(zip(part["seed"], part["value"])) for c, part in own.groupby("cell")}
        _, ma = mean_over_cells([found.get(c, {}) for c in range(cells)])
        rows.append({"label": label, "mean": float(ma.mean()) if len(ma) else float("nan"),
                     "std": float(np.std(ma, ddof=1)) if len(ma) > 1 else float("nan"), "n": len(ma),
                     "cells": cells})
    return pd.DataFrame(rows)


def average_label(cells: int) -> str:
    return f"mean over the {cells} cells" if cells != 1 else "mean over the 1 cell"


def results_records(runs: pd.DataFrame, metric: str = "last", group: str = "all",
                    average: bool = False) -> pd.DataFrame:
    """One row per (method row label, cell), the CSV / JSON form: ``mean``, ``std`` (sample std,
    ddof 1; NaN for one seed) and ``n`` (seeds) as numbers, with the cell's fields and ``metric``
    (the store's column, e.g. ``acc_last``). ``method`` and ``cell`` are as in :func:`results_table`.
    With ``average``, one more row per method: :func:`cell_average`, its ``cell`` "mean over the N
    cells" and its cell fields empty (a row no seed of which covers every cell is left out)."""
    column = metric_column(metric, group)
    agg = aggregate(runs, column)
    if agg.empty:
        return pd.DataFrame(columns=list(RECORD_COLUMNS))
    # in the Markdown table's order: rows by label, cells as its columns (a cell's clean one first)
    agg = _with_cells(agg).sort_values(["label", "dataset", "imbalance", "noise_rate", "noise_type", "preset", "model"],
                                       kind="stable").rename(columns={"label": "method"})
    if average:
        means = cell_average(runs, column)
        means = means[means["n"] > 0].rename(columns={"label": "method"})
        means["cell"] = [average_label(c) for c in means["cells"]]
        agg = pd.concat([agg, means.drop(columns="cells")], ignore_index=True)
    agg["metric"] = column
    agg["mean"], agg["std"] = agg["mean"].round(4), agg["std"].round(4)
    return agg.reindex(columns=list(RECORD_COLUMNS)).reset_index(drop=True)


def results_table(runs: pd.DataFrame, metric: str = "last", group: str = "all",
                  average: bool = False) -> pd.DataFrame:
    """Method x cell table of formatted ``mean ± std (n)`` strings; with ``average``, a last column
    "mean over the N cells" (:func:`cell_average`; ``—`` for a row no seed of which covers them all)."""
    column = metric_column(metric, group)
    agg = aggregate(runs, column)
    if agg.empty:
        return pd.DataFrame()
    agg = _with_cells(agg)
    agg["text"] = [format_cell(m, s, n) for m, s, n in zip(agg["mean"], agg["std"], agg["n"])]
    cells = list(dict.fromkeys(agg.sort_values(["dataset", "imbalance", "noise_rate", "noise_type", "preset", "model"],
                                               kind="stable")["cell"]))  # as the CSV / JSON records
    table = agg.pivot(index="label", columns="cell", values="text").reindex(columns=cells)
    table.index.name = "method"
    if average:
        means = cell_average(runs, column).set_index("label")
        table[average_label(len(cells))] = [format_cell(means.at[label, "mean"], means.at[label, "std"],
                                                        int(means.at[label, "n"])) for label in table.index]
    return table.fillna("—")


def text_table(df: pd.DataFrame, fmt: str = "md") -> str:
    """``df`` as a GitHub Markdown or a LaTeX (booktabs) table, every cell as written."""
    from tabulate import tabulate
    tablefmt = {"md": "github", "latex": "latex_booktabs"}[fmt]
    text = tabulate(df, headers="keys", tablefmt=tablefmt, showindex=False, disable_numparse=True)
    if fmt == "latex":
        for char, tex in (("±", r"\ensuremath{\pm}"), ("Δ", r"\ensuremath{\Delta}"), ("†", r"\ensuremath{^\dagger}"),
                          ("—", "---"), ("×", r"\ensuremath{\times}")):
            text = text.replace(char, tex)
    return text


def render(table: pd.DataFrame, fmt: str = "md", title: str = "", empty: str = "no finished runs in the store") -> str:
    """The table (:func:`results_table`) as Markdown (with ``title``) or LaTeX. An empty table is
    ``empty`` in Markdown and nothing in LaTeX (a document; the caller says why on stderr)."""
    if table.empty:
        return empty if fmt == "md" else ""
    text = text_table(table.reset_index(), fmt)
    return f"{title}\n\n{text}" if title and fmt == "md" else text


def render_records(records: pd.DataFrame, fmt: str = "csv", title: str = "") -> str:
    """The records (:func:`results_records`) as CSV or JSON; no results give a document with no rows
    (what their readers expect). A one-seed std is empty in CSV and null in JSON."""
    if fmt == "csv":
        return records.to_csv(index=False).rstrip("\n")  # print() ends the line
    return to_json({"title": title, "rows": records.to_dict(orient="records")})

"""How well a sample-selection method finds the mislabelled samples (numpy only, no torch).

Used on the per-sample records of O2U-Net, AUM, Co-teaching (``kept``, ``score``) against the
data's ``is_noisy``. Convention (methods/curves.py): a higher ``score`` means "more likely
mislabelled", and ``removed = ~kept``.
"""

from __future__ import annotations

import numpy as np


def average_ranks(values) -> np.ndarray:
    """1-based ranks with ties given their average rank (``scipy.stats.rankdata`` 'average')."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(positive, score) -> float:
    """Area under the ROC curve of ``score`` for the boolean ``positive``, by the rank-sum
    (Mann-Whitney U / (n_pos n_neg)); ties count one half. NaN if a class is empty."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    if positive.shape != score.shape:
        raise ValueError(f"positive and score differ in shape: {positive.shape} vs {score.shape}")
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(score)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def selection_quality(is_noisy, removed, score=None) -> dict:
    """Precision and recall of the removed set against the true noise, and the AUROC of the score.

    precision = |removed & noisy| / |removed| (NaN if nothing was removed);
    recall    = |removed & noisy| / |noisy|   (NaN if nothing is noisy);
    auroc     = P(score of a noisy sample > score of a clean one) (NaN without a score or
                without both classes). Also returns the counts.
    """
    is_noisy = np.asarray(is_noisy, dtype=bool)
    removed = np.asarray(removed, dtype=bool)
    if removed.shape != is_noisy.shape:
        raise ValueError(f"removed and is_noisy differ in shape: {removed.shape} vs {is_noisy.shape}")
    hits = int((removed & is_noisy).sum())
    n_removed, n_noisy = int(removed.sum()), int(is_noisy.sum())
    return {
        "precision": hits / n_removed if n_removed else float("nan"),
        "recall": hits / n_noisy if n_noisy else float("nan"),
        "auroc": auroc(is_noisy, score) if score is not None else float("nan"),
        "removed": n_removed,
        "noisy": n_noisy,
        "n": int(is_noisy.size),
    }


def selection_quality_by_class(is_noisy, removed, score, clean_y) -> list[dict]:
    """:func:`selection_quality` within each clean class (e.g. to see tail classes removed)."""
    clean_y = np.asarray(clean_y)
    out = []
    for c in np.unique(clean_y):
        m = clean_y == c
        row = selection_quality(np.asarray(is_noisy)[m], np.asarray(removed)[m],
                                None if score is None else np.asarray(score)[m])
        row["class"] = int(c)
        row["removed_clean"] = int((np.asarray(removed)[m] & ~np.asarray(is_noisy, bool)[m]).sum())
        out.append(row)
    return out


def selection_rows(store, methods=None) -> list[dict]:
    """:func:`selection_quality` of every finished run in ``store`` (a ``bench.store.Store`` or a
    path) whose per-sample table holds ``kept`` and ``score``, one dict per run with its cell."""
    from bench.store import Store

    if not hasattr(store, "samples"):
        store = Store(store, create=False)
    runs = store.runs()
    rows = []
    for _, r in runs.iterrows():
        if methods is not None and r["method"] not in methods:
            continue
        df = store.samples(r["key"])
        if "kept" not in df or "score" not in df:
            continue
        removed = df["kept"].to_numpy() == 0
        q = selection_quality(df["is_noisy"].to_numpy(), removed, df["score"].to_numpy())
        rows.append({"method": r["method"], "dataset": r["dataset"], "imbalance": r["imbalance"],
                     "noise": f"{r['noise_type']}:{r['noise_rate']:g}", "seed": r["seed"],
                     "acc_last": r.get("acc_last"), **q})
    return rows

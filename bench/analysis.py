"""How well a method's per-sample records tell the mislabelled samples apart (numpy and pandas, no torch).

Selection quality: the ``kept`` and ``score`` records of O2U-Net, AUM and Co-teaching against the
data's ``is_noisy``. Convention (methods/curves.py): a higher ``score`` means "more likely
mislabelled", and ``removed = ~kept``.

Separation (``bench table --metric noise_auroc|tail_auroc``, ``bench show KEY``): the conflict
CurveNet is built on (Jiang et al., AAAI 2022, Sec. 1 and Fig. 5) is that mislabelled samples and
clean samples of tail classes both have large losses, so a loss-based weight gives both small
weights. Two numbers per run measure how a method's per-sample *trust* resolves it:

``trust``        the sample's final ``weight`` record where the method keeps one (MW-Net and
                 CurveNet: the weighting network's; Class-Balanced and LDAM-DRW: the class weight
                 of the observed label), else minus its ``score`` (O2U-Net, AUM, Co-teaching).
``noise_auroc``  P(trust of a clean training sample > trust of a mislabelled one), ties counted
                 one half, in %: 50 is chance, 100 every clean sample trusted above every
                 mislabelled one (the AUROC of the trust for "clean").
``tail_auroc``   the same with the clean samples restricted to the tail classes (``tail_classes``:
                 the half of the classes with the fewest training samples by true class, the
                 imbalance profile's tail, mislabelled samples counted in their true class), against every
                 mislabelled sample: does a clean tail sample get more trust than a mislabelled
                 one? A loss-based weight scores low here however high its ``noise_auroc``.

Both are undefined (NaN, shown ``—``) for runs that record no trust (CE, Focal), cells without
noise, and ``tail_auroc`` also for cells whose classes all have as many training samples (by true
class, mislabelled ones included: a balanced cell, even where flip noise leaves the classes with
unequal numbers of clean samples). They are
our summary of the paper's Fig. 5, not numbers the papers report.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from bench.data.bias import has_noise
from bench.errors import BenchError
from bench.store import RUNS_ONLY


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


# the record a method's trust in each sample is read from, and its sign (module docstring)
TRUST_RECORDS = (("weight", 1.0), ("score", -1.0))
TRUST_KEEPERS = "MW-Net, CurveNet, Class-Balanced, LDAM-DRW, O2U-Net, AUM and Co-teaching"  # CE, Focal: none
_NEEDS_TRUST = f"it needs a per-sample weight or selection score ({TRUST_KEEPERS} record one; CE and Focal do not)"
# why a run has no noise_auroc / tail_auroc (bench table's message for an empty table)
NO_SEPARATION = {"noise_auroc": f"{_NEEDS_TRUST} and a cell with noise",
                 "tail_auroc": f"{_NEEDS_TRUST} and a cell with noise and imbalance"}
SEPARATION = ("noise_auroc", "tail_auroc")
SEPARATION_TITLES = {
    "noise_auroc": "noise AUROC (%): how often a clean training sample gets more trust (its final weight, or minus "
                   "its selection score) than a mislabelled one; 50 = chance",
    "tail_auroc": "tail AUROC (%): how often a clean sample of a tail class (the half of the classes with the fewest "
                  "training samples by true class) gets more trust than a mislabelled sample; 50 = chance",
}


def tail_classes(clean_label) -> np.ndarray:
    """The tail: the floor(C / 2) of the C classes present with the fewest training samples by true
    (clean) label, mislabelled ones included, i.e. the imbalance profile's smallest classes (ties:
    the higher class index first, as the profiles shrink the later classes), sorted; none when
    every class has as many samples (no imbalance)."""
    classes, counts = np.unique(np.asarray(clean_label), return_counts=True)
    if len(classes) < 2 or counts.min() == counts.max():
        return classes[:0]
    order = np.lexsort((-classes, counts))  # fewest first; among equal counts, the higher class first
    return np.sort(classes[order[:len(classes) // 2]])


def separation(clean_label, is_noisy, trust) -> dict:
    """``noise_auroc`` and ``tail_auroc`` in % (module docstring) of one run's per-sample ``trust``,
    with the counts they rest on (``noisy``, ``clean``, ``clean_tail``), the ``tail`` classes, and
    the mean trust of each kind of sample (``mean_noisy``, ``mean_clean``, ``mean_clean_tail``:
    the AUROCs rank, these say by how much).
    The tail is chosen from every sample's clean label; samples without a trust value (NaN) are
    left out of the AUROCs."""
    clean_label = np.asarray(clean_label)
    is_noisy = np.asarray(is_noisy, dtype=bool)
    trust = np.asarray(trust, dtype=float)
    tail = tail_classes(clean_label)
    valid = ~np.isnan(trust)
    clean_tail = ~is_noisy & np.isin(clean_label, tail)
    versus = (is_noisy | clean_tail) & valid
    noisy, clean = int((is_noisy & valid).sum()), int((~is_noisy & valid).sum())
    n_tail = int((clean_tail & valid).sum())

    def mean(mask):
        return float(trust[mask & valid].mean()) if (mask & valid).any() else float("nan")
    return {"noise_auroc": 100.0 * auroc(~is_noisy[valid], trust[valid]) if noisy and clean else float("nan"),
            "tail_auroc": 100.0 * auroc(clean_tail[versus], trust[versus]) if noisy and n_tail else float("nan"),
            "noisy": noisy, "clean": clean, "clean_tail": n_tail, "tail": [int(c) for c in tail],
            "mean_noisy": mean(is_noisy), "mean_clean": mean(~is_noisy), "mean_clean_tail": mean(clean_tail)}


def run_trust(store, key: str) -> tuple[str, pd.DataFrame, np.ndarray] | None:
    """A stored run's per-sample trust (``key``: its full key): the record it is read from
    (``TRUST_RECORDS``), the samples' labels (``Store.sample_record``) and the trust, in sample
    order; None for a run that records none."""
    for name, sign in TRUST_RECORDS:
        df = store.sample_record(key, name)
        if df is not None:
            return name, df, sign * df["value"].to_numpy()
    return None


def run_separation(store, key: str) -> dict | None:
    """:func:`separation` of a stored run (``key``: its full key) with ``record``, the record its
    trust was read from; None for a run that records none (:func:`run_trust`)."""
    found = run_trust(store, key)
    if found is None:
        return None
    name, df, trust = found
    return {"record": name, **separation(df["clean_label"], df["is_noisy"], trust)}


def reading_progress(done: int, total: int) -> None:
    """``bench table`` and ``bench compare``'s line while :func:`with_separation` reads."""
    print(f"bench: separation of {done} of {total} runs done", file=sys.stderr, flush=True)


def with_separation(store, runs: pd.DataFrame, progress=None) -> pd.DataFrame:
    """``runs`` (``Store.runs()``) with the :data:`SEPARATION` columns, NaN where undefined (runs
    of cells without noise are not read: no sample is mislabelled). About 0.1 s a run of 50,000
    samples; ``progress(done, total)`` is called every 100 runs. Runs without per-sample rows
    (a ``bench merge --runs-only`` copy) get NaN, and a note on stderr says how many; where no run
    with noise has them, a BenchError says so."""
    values = {column: [] for column in SEPARATION}
    noisy = has_noise(runs["noise_type"], runs["noise_rate"]) if len(runs) else []
    without_rows = 0
    for i, (key, noisy_cell) in enumerate(zip(runs["key"], noisy)):
        if progress and i and i % 100 == 0:
            progress(i, len(runs))
        found = (run_separation(store, key) if noisy_cell else None) or {}
        if noisy_cell and not found and not store.has_samples(key):
            without_rows += 1
        for column in SEPARATION:
            values[column].append(found.get(column, float("nan")))
    with_noise = int(sum(noisy))
    if without_rows and without_rows == with_noise:
        raise BenchError(f"none of the {without_rows} run(s) with noise has per-sample rows in {store.path} "
                         f"({RUNS_ONLY}); separation needs the store they were trained into")
    if without_rows:
        print(f"note: {without_rows} of the {with_noise} runs with noise have no per-sample rows in {store.path} "
              f"({RUNS_ONLY}): no separation for them; read the store they were trained into", file=sys.stderr)
    return runs.assign(**{column: pd.Series(v, index=runs.index, dtype=float) for column, v in values.items()})

"""AUM (Pleiss et al., NeurIPS 2020): Area Under the Margin ranking with threshold samples.

Paper §3 and the official code asappresearch/aum @892e76e (``aum/aum.py``,
``examples/paper_replication/runner.py``; notes/baselines.md §7; PROTOCOL.md §7).

- Margin of a sample at an update: its assigned logit minus the largest other logit, on the raw
  logits (eq. 1; ``aum.py`` L69-77; :func:`methods.curves.margin`). AUM = the mean margin over
  the recorded epochs (eq. 2; ``aum.py`` keeps ``sums / counts`` over all updates, one per epoch
  per sample here, so the same number).
- Threshold samples: ``m = N // (K + 1)`` training samples drawn at random are moved to an extra
  class K+1 (the network gets K+1 outputs). A sample of run r is flagged when its AUM lies below
  the 99th percentile of run r's threshold samples' AUMs (``np.percentile``, linear
  interpolation). The code's rule, "more than 1 % of the threshold samples have a larger AUM"
  (``runner.py`` ``generate_aum_details``), is the same up to interpolation between two adjacent
  order statistics.
- Two scoring runs with disjoint threshold sets (the first and second m of one permutation), so
  every sample is scored at least once; a sample is removed when it is flagged in every run in
  which it was not a threshold sample (the code's AND, ``runner.py`` L798-817).
- Each scoring run: a fresh network trained with the grid protocol until the first lr drop
  (epochs 0 .. first_drop-1, warm-up included; 80 epochs at lr 0.1 on the paper preset),
  recording margins from the training forward pass every epoch
  (:func:`methods.curves.train_and_record`).
- Retrain: a fresh network, the full protocol, on the kept samples.

Per-sample records: ``kept`` (bool), ``score`` = min over the scoring runs of (threshold - AUM),
so ``score > 0`` exactly when a sample is removed (higher = more likely mislabelled); ``aum`` =
the sample's mean AUM over its scoring runs; ``aum_run1``/``aum_run2`` (NaN where the sample is a
threshold sample of that run); ``threshold_set`` (0 none, 1 or 2).

Choices and deviations:
- Threshold count N // (K+1) as PROTOCOL.md §7 fixes it (the paper's N / (c+1), marked
  unverified in notes/baselines.md §7); the code uses N // K (``threshold_count = "code"``).
- Epochs recorded: every epoch from the first (PROTOCOL.md §7); the code skips epoch 0 ("due to
  the variability of random initialization", ``runner.py`` ``train_epoch``): ``skip_epochs=1``.
- Scoring runs: the protocol's SGD (wd 5e-4, batch 128, warm-up, until the first drop) instead of
  the code's 150 epochs at a flat 0.1, batch 64, wd 1e-4 (``aum_batch_size=64`` gives its batch).
- Retrain: the grid protocol (200 epochs, drops at 80/100) on the kept samples, not the code's
  300 epochs at batch 256 with early stopping on a noisy 5k validation split. Removed samples are
  left out of the loader; the code keeps them with weight 0 and renormalises the batch weights,
  which differs only in how batches are composed.
- Margins are not cast through float16 as the code does (``.half().float()``).
- Quick preset: nothing to scale; the scoring runs end at the quick preset's first drop (epoch 8).

``bench run --fuse K`` (bench/fused_runs.py) trains K seeds' scoring runs fused, each run with its
own threshold sets (from its own seed), AUMs and threshold; each run then retrains alone
(``Run.alone``) on its own kept subset, whose size is its own (fused batches need one size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.errors import BenchError
from bench.train import train_classifier
from methods import register
from methods.base import Method, check_int
from methods.curves import mean_ce, protocol_schedule, train_and_record


def aum_from_margins(margins: np.ndarray, skip_epochs: int = 0) -> np.ndarray:
    """AUM per sample from an ``(epochs, N)`` margin array: the mean over epochs >= ``skip_epochs``."""
    return np.asarray(margins, dtype=float)[skip_epochs:].mean(axis=0)


def threshold_sets(n: int, num_classes: int, rng, how: str = "paper") -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random sets of threshold samples, each of size N // (K+1) ("paper") or N // K
    ("code"), as the first and second slices of one permutation drawn from ``rng`` (a
    ``numpy.random.Generator``)."""
    m = n // (num_classes + 1) if how == "paper" else n // num_classes
    if 2 * m > n:
        raise BenchError(f"AUM needs two disjoint sets of {m} threshold samples, but the pool has {n}")
    perm = rng.permutation(n)
    return np.sort(perm[:m]), np.sort(perm[m:2 * m])


def aum_threshold(aum: np.ndarray, threshold_idx: np.ndarray, percentile: float = 99.0) -> float:
    """The ``percentile``-th percentile of the threshold samples' AUMs (linear interpolation)."""
    return float(np.percentile(np.asarray(aum)[threshold_idx], percentile))


def combine_runs(aums: list[np.ndarray], thresholds: list[float], sets: list[np.ndarray]):
    """Combine scoring runs: a sample is removed when it is flagged (AUM < threshold) in every run
    where it was not a threshold sample. Returns ``(removed, score, mean_aum, scored_count)`` with
    ``score = min over its scoring runs of (threshold - AUM)`` (> 0 iff removed)."""
    n = len(aums[0])
    score = np.full(n, np.inf)
    aum_sum = np.zeros(n)
    count = np.zeros(n, dtype=int)
    for aum, thr, thr_idx in zip(aums, thresholds, sets):
        scored = np.ones(n, dtype=bool)
        scored[thr_idx] = False
        score[scored] = np.minimum(score[scored], thr - np.asarray(aum)[scored])
        aum_sum[scored] += np.asarray(aum)[scored]
        count[scored] += 1
    if (count == 0).any():
        raise BenchError("AUM: some samples were threshold samples in every run and got no score")
    removed = score > 0
    return removed, score, aum_sum / count, count


@dataclass
class AUMParams:
    threshold_count: str = "paper"  # "paper": N // (K+1); "code": N // K
    percentile: float = 99.0
    runs: int = 2                   # scoring runs with disjoint threshold sets
    skip_epochs: int = 0            # 1 = the code's "from epoch 1 on"
    aum_epochs: int = 0             # 0 = up to the protocol's first lr drop
    aum_batch_size: int = 0         # 0 = the protocol's batch size

    def __post_init__(self):
        if self.threshold_count not in ("paper", "code"):
            raise BenchError(f"aum.threshold_count must be 'paper' or 'code', got {self.threshold_count!r}")
        if not (0 < self.percentile <= 100):
            raise BenchError(f"aum.percentile must lie in (0, 100], got {self.percentile!r}")
        if self.runs != 2:
            raise BenchError(f"aum.runs must be 2 (two disjoint threshold sets), got {self.runs!r}")
        for name in ("skip_epochs", "aum_epochs", "aum_batch_size"):
            check_int(getattr(self, name), f"aum.{name}", 0)


@register
class AUM(Method):
    """Rank by area under the margin, flag below the threshold samples' 99th percentile, retrain."""

    name = "aum"
    fusable = True  # bench run --fuse: the scoring runs fused; each run retrains alone on its own kept subset

    Params = AUMParams

    @classmethod
    def display_name(cls, params: dict) -> str:
        return "AUM"

    def fit(self, run):
        p = self.params
        K, members = run.runs, run.member_runs  # a fused group's runs (bench run --fuse), else this one
        n, k = len(members[0].data.train_y), run.num_classes
        epochs = p.aum_epochs or run.first_drop
        if p.skip_epochs >= epochs:
            raise BenchError(f"aum.skip_epochs ({p.skip_epochs}) leaves no epoch of {epochs} to average")
        # each run's two threshold sets, drawn from its own seed
        sets = [threshold_sets(n, k, np.random.default_rng(int(m.generator.initial_seed())), p.threshold_count)
                for m in members]
        sets_of = {id(m): own for m, own in zip(members, sets)}  # run.pooled asks run by run
        schedule = protocol_schedule(run, epochs, batch_size=p.aum_batch_size or None)
        aums, thresholds = [[] for _ in members], [[] for _ in members]  # per run: one per scoring run
        for r in range(2):
            labels = run.pooled(lambda m, r=r: with_threshold_class(m.data.train_y, sets_of[id(m)][r], k))
            model = run.model(num_classes=k + 1)
            curves = train_and_record(run, model, schedule, "margin", labels=labels, log_stage=f"aum{r + 1}")
            flagged = []
            for j in range(K):  # each run's AUMs and threshold from its own columns
                aum = aum_from_margins(curves.values[:, j::K].cpu().numpy(), p.skip_epochs)
                aums[j].append(aum)
                thresholds[j].append(aum_threshold(aum, sets[j][r], p.percentile))
                real = np.ones(n, dtype=bool)
                real[sets[j][r]] = False  # the fraction flagged among the samples scored against their own label
                flagged.append(float(np.mean(aum[real] < thresholds[j][r])))
            del model, curves
            run.log(0, stage=f"aum{r + 1}_threshold",  # one value per run
                    threshold=torch.tensor([own[r] for own in thresholds], dtype=torch.float64),
                    flagged=torch.tensor(flagged, dtype=torch.float64))
        for m, own_aums, own_thresholds, own_sets in zip(members, aums, thresholds, sets):
            record_scores(m, own_aums, own_thresholds, list(own_sets))
        return run.alone(retrain)


def with_threshold_class(labels: np.ndarray, threshold_idx: np.ndarray, num_classes: int) -> np.ndarray:
    """The observed labels with the threshold samples moved to the extra class K+1 (0-based K)."""
    labels = np.array(labels, dtype=np.int64, copy=True)
    labels[threshold_idx] = num_classes
    return labels


def record_scores(run, aums: list[np.ndarray], thresholds: list[float], sets: list[np.ndarray]) -> None:
    """Combine a run's two scoring runs (:func:`combine_runs`) and record its per-sample values."""
    removed, score, mean_aum, _ = combine_runs(aums, thresholds, sets)
    which = np.zeros(len(score), dtype=np.int64)
    own = []
    for r, thr_idx in enumerate(sets, start=1):
        which[thr_idx] = r
        own.append(aums[r - 1].copy())
        own[-1][thr_idx] = np.nan  # a threshold sample's AUM is not against its own label
    run.record("kept", ~removed)
    run.record("score", score)
    run.record("aum", mean_aum)
    run.record("aum_run1", own[0])
    run.record("aum_run2", own[1])
    run.record("threshold_set", which)


def retrain(run):
    """A fresh network, the full protocol, on the samples the run kept (each run on its own: a
    fused group's runs keep subsets of different sizes)."""
    kept = run.records["kept"]
    if not kept.any():
        raise BenchError("AUM removed every training sample")
    loader = run.loader("train", indices=np.flatnonzero(kept))
    return train_classifier(run, run.model(), mean_ce, loader=loader, stage="retrain", same_loss_every_epoch=True)

"""Bias: meta split, class imbalance and label noise, as the papers' code builds them.

Order (PROTOCOL.md §1; CurveNet ``feeder/feeder.py`` L109-208 and MW-Net
``load_corrupted_data.py`` agree): meta split first, then imbalance, then label noise.

1. **Meta split.** Per class c, the indices of class c in the training split (in file order) are
   shuffled with the data seed; the first m go to the meta set, the rest form the class's pool
   (feeder.py L164-177, load_corrupted_data.py L116-137). Meta labels are clean. *A dataset's
   own meta set* (not from the papers): where a file supplies a trusted set apart from its
   training images (an npz file's ``x_meta``, ``y_meta``, as Clothing1M has clean subsets), the
   m per class come from that set and every training image is in its class's pool.
2. **Imbalance.** Class i keeps the first n_i samples of its shuffled pool (the code shuffles
   the pool and slices: feeder.py L179-185), with
   ``n_i = int(n_max * (1/imb) ** (i / (K-1)))`` in python floats, exactly the official
   ``get_img_num_per_cls`` (feeder.py L18-46, MW-Net-LT ``data_utils.py`` L69-97; the code's
   ``imb_factor`` is our 1/imb). Class 0 is the head. n_max is the per-class pool after the
   meta split (4,900 on CIFAR-10 with m = 100). *Deviation for unequal pools* (npz data):
   n_max = the smallest pool, so every n_i fits its class; imbalance 1 keeps every pool sample
   (as the code's ``imblance: False``), so it may then be the data's natural imbalance.
3. **Noise.** A K x K matrix C (:func:`transition_matrix`); every training sample's observed
   label is drawn independently from row C[clean label] (load_corrupted_data.py L219-221,
   feeder.py L207-208): rates are expectations, not exact counts. *Real noise* (``real``, not
   from the papers): an npz file's own labels, as they are; nothing is drawn. Where the file
   also has the true ones (``y_train`` beside its noisy ``y_train_noisy``, e.g. CIFAR-10N's
   human labels, Wei et al., ICLR 2022), each pool sample's observed label is its noisy one, C
   is their realised transition matrix over the pool, the meta set keeps its true labels and
   the imbalance profile is by true class, as for synthetic noise. Without ``y_train_noisy``
   the file's ``y_train`` are the observed labels and no sample is known to be mislabelled
   (a dataset whose truth is unknown, e.g. web labels; its trusted meta set then comes with
   it, ``x_meta``, step 1).

Randomness: everything is a pure function of (dataset, spec). Two independent numpy
``Generator`` streams are spawned from ``SeedSequence(spec.seed)``: one for the meta/imbalance
shuffles, one for the noise draws, so changing the noise alone leaves the pool unchanged. No
global RNG state is read or written; the MW-Net flip matrices use a local
``RandomState(1)`` (see :func:`transition_matrix`). Results are byte-identical for a given
numpy version (``SeedSequence``/``PCG64`` streams are kept stable, ``RandomState`` is frozen).
The meta split and pool are drawn per class in label order, the noise uniforms in pool order.
*Deviation from MW-Net*: its per-sample noise draws follow the global RNG reseeded to 1 inside
``flip_labels_C`` (ignoring ``--seed``, notes §6.2 c); here they follow the data seed.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

from bench.data.datasets import Dataset
from bench.errors import DataError

SYNTHETIC_NOISE = ("uniform", "flip", "flip2", "uniform_freq")  # drawn at a rate (transition_matrix)
REAL_NOISE = "real"  # an npz file's own labels as they are (Dataset.y_train_noisy where given): no rate
NOISE_TYPES = ("none", *SYNTHETIC_NOISE, REAL_NOISE)


def has_noise(noise_type, noise_rate):
    """Whether a cell (or, elementwise, each of arrays of cells) has noise: a synthetic type at a
    rate above 0, or ``real`` (rate 0); 'flip2' at rate 0 is the noise-free cell."""
    types = np.asarray(noise_type)
    return (types == REAL_NOISE) | ((types != "none") & (np.asarray(noise_rate, dtype=float) > 0))


def same_noise(noise_types, noise_type: str, noise_rate: float) -> np.ndarray:
    """Which of the stored ``noise_types`` are a cell's noise (``noise_type``, ``noise_rate``),
    the rates compared apart: its own type where it has noise (:func:`has_noise`); any type but
    ``real`` where it is noise-free (a real-noise cell has rate 0 too)."""
    types = np.asarray(noise_types)
    if has_noise(noise_type, noise_rate):
        return types == noise_type
    return types != REAL_NOISE


def number_text(value: float) -> str:
    """``value`` as short as ``:g`` writes it where that reads back as the same float, else in
    full (``repr``): labels, commands and cell texts of values such as 12.3456789 stay exact and
    distinct (``:g`` alone writes 12.3457)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def noise_text(noise_type: str, noise_rate: float, clean: str = "clean", sep: str = ":") -> str:
    """How a cell's noise is written: ``clean`` (or ``none``) without noise, ``real`` for a
    dataset's own noisy labels, else ``TYPE:RATE`` (``sep`` between them), e.g. ``flip2:0.4``."""
    if not has_noise(noise_type, noise_rate):
        return clean
    if noise_type == REAL_NOISE:
        return REAL_NOISE
    return f"{noise_type}{sep}{number_text(noise_rate)}"


@dataclass(frozen=True)
class BiasSpec:
    """How to bias a dataset. ``imbalance`` is n_max / n_min (the code's 1 / imb_factor)."""

    imbalance: float = 1.0
    noise_type: str = "none"
    noise_rate: float = 0.0
    meta_per_class: int = 0
    seed: int = 0

    def validate(self) -> None:
        """DataError (one line, naming the valid choices) for a spec that cannot be built."""
        imb = self.imbalance
        if (isinstance(imb, bool) or not isinstance(imb, numbers.Real) or not math.isfinite(imb)
                or imb < 1):
            raise DataError(f"imbalance must be a finite number >= 1 (n_max / n_min; 1 = "
                            f"balanced), got {imb!r}")
        if self.noise_type not in NOISE_TYPES:
            raise DataError(f"unknown noise type {self.noise_type!r}; choose one of "
                            f"{', '.join(NOISE_TYPES)}")
        rate = self.noise_rate
        if (isinstance(rate, bool) or not isinstance(rate, numbers.Real)
                or not (0 <= rate < 1)):
            raise DataError(f"noise rate must lie in [0, 1), got {rate!r}")
        if self.noise_type == "none" and rate != 0:
            raise DataError(f"noise type 'none' needs rate 0, got {rate!r}; choose one of "
                            f"{', '.join(SYNTHETIC_NOISE)} for noisy labels")
        if self.noise_type == REAL_NOISE and rate != 0:
            raise DataError(f"noise type 'real' (a file's own labels as they are) has no rate, got {rate!r}")
        m = self.meta_per_class
        if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 0:
            raise DataError(f"meta_per_class must be an integer >= 0, got {m!r}")
        s = self.seed
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise DataError(f"data seed must be an integer >= 0, got {s!r}")


def imbalance_profile(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Per-class counts ``int(n_max * (1/imb) ** (i / (K-1)))``, class 0 the head.

    Exactly ``get_img_num_per_cls`` of the official code (CurveNet feeder.py L18-46, MW-Net-LT
    data_utils.py L69-97) with ``imb_factor = 1/imbalance``: python floats, ``int()`` rounds
    down. CIFAR-10, n_max 4900, imbalance 20 -> [4900, 3512, 2518, 1805, 1294, 927, 665, 476,
    341, 245].
    """
    if num_classes == 1:
        return [int(n_max)]
    imb_factor = 1.0 / float(imbalance)
    return [int(n_max * imb_factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def _mwnet_flip(rate: float, num_classes: int, two: bool) -> np.ndarray:
    """MW-Net ``flip_labels_C`` / ``flip_labels_C_two`` (load_corrupted_data.py L27-49).

    The official code calls ``np.random.seed(1)`` and then, row by row, ``np.random.choice`` over
    the other classes (one target, or two without replacement); we use a local
    ``RandomState(1)``, which gives the same stream without touching the global state.
    """
    rs = np.random.RandomState(1)
    C = np.eye(num_classes) * (1 - rate)
    row_indices = np.arange(num_classes)
    for i in range(num_classes):
        if two:
            C[i][rs.choice(row_indices[row_indices != i], 2, replace=False)] = rate / 2
        else:
            C[i][rs.choice(row_indices[row_indices != i])] = rate
    return C


def transition_matrix(noise_type: str, noise_rate: float, num_classes: int,
                      class_counts=None) -> np.ndarray:
    """The K x K float64 matrix C, C[i, j] = P(observed j | clean i).

    - ``none``: identity.
    - ``uniform`` (MW-Net ``uniform_mix_C``, load_corrupted_data.py L20-25; GLC):
      ``p * full(1/K) + (1 - p) * I``; realised flip rate p(K-1)/K.
    - ``flip`` / ``flip2`` (MW-Net, L27-49): diagonal 1 - p and p on one other class, or p/2 on
      each of two, targets drawn with ``RandomState(1)`` (:func:`_mwnet_flip`). CIFAR-10 flip:
      0->6, 1->9, 2->6, 3->0, 4->0, 5->1, 6->8, 7->6, 8->2, 9->4.
    - ``uniform_freq`` (CurveNet ``uniform_mix_C(r, K, num_list)``, feeder.py L59-70, the
      code's "unif"): ``C[i, j] = p * n_j / N`` off the diagonal, ``1 - p + p * n_i / N`` on it,
      n = ``class_counts`` (the imbalanced clean counts of the pool); flip rate p(1 - n_i/N).
    """
    K = int(num_classes)
    p = float(noise_rate)
    if noise_type == "none":
        return np.eye(K)
    if noise_type == "uniform":
        return p * np.full((K, K), 1.0 / K) + (1 - p) * np.eye(K)
    if noise_type in ("flip", "flip2"):
        need = 2 if noise_type == "flip" else 3
        if K < need:
            raise DataError(f"noise type {noise_type!r} needs at least {need} classes, got {K}")
        return _mwnet_flip(p, K, two=noise_type == "flip2")
    if noise_type == "uniform_freq":
        if class_counts is None:
            raise DataError("noise type 'uniform_freq' needs the class counts")
        n = np.asarray(class_counts, dtype=np.float64)
        if n.shape != (K,) or n.sum() <= 0:
            raise DataError(f"uniform_freq needs {K} class counts with a positive sum")
        return p * np.tile(n / n.sum(), (K, 1)) + (1 - p) * np.eye(K)
    if noise_type == REAL_NOISE:
        raise DataError("noise 'real' is a dataset's own labels, not a matrix to draw from (realised_transition)")
    raise DataError(f"unknown noise type {noise_type!r}; choose one of {', '.join(NOISE_TYPES)}")


def realised_transition(clean: np.ndarray, observed: np.ndarray, num_classes: int) -> np.ndarray:
    """C[i, j] = the fraction of the samples of true class i labelled j (noise ``real``); a class
    with no sample gets the identity row."""
    K = int(num_classes)
    counts = np.bincount(clean * K + observed, minlength=K * K).reshape(K, K).astype(np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    return np.where(rows > 0, counts / np.maximum(rows, 1), np.eye(K))


def _draw_labels(clean: np.ndarray, C: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Observed labels: sample k gets category j with probability C[clean[k], j]."""
    u = rng.random(len(clean))  # one uniform per sample, in pool order
    observed = np.empty_like(clean)
    for c in range(C.shape[0]):
        rows = clean == c
        cdf = np.cumsum(C[c])
        cdf /= cdf[-1]  # exactly 1.0 at the end, so u < 1 never runs past the last class
        observed[rows] = np.searchsorted(cdf, u[rows], side="right")
    return observed


@dataclass
class BiasedData:
    """A biased training pool, a clean meta set and the untouched test set of ``dataset``.

    ``train_index`` and ``meta_index`` index ``dataset.x_train`` and are sorted ascending (the
    original file order). ``train_y`` holds the observed (possibly noisy) labels,
    ``train_clean_y`` the clean ones, ``is_noisy`` where they differ.
    """

    dataset: Dataset
    spec: BiasSpec
    train_index: np.ndarray
    train_y: np.ndarray
    train_clean_y: np.ndarray
    is_noisy: np.ndarray
    meta_index: np.ndarray
    transition: np.ndarray
    cell_counts: np.ndarray | None = None  # the cell's pool counts where the meta set joined it

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @cached_property
    def x_train(self) -> np.ndarray:
        return self.dataset.x_train[self.train_index]

    @cached_property
    def x_meta(self) -> np.ndarray:
        return self.dataset.x_train[self.meta_index]

    @property
    def y_meta(self) -> np.ndarray:
        return self.dataset.y_train[self.meta_index]

    @property
    def x_test(self) -> np.ndarray:
        return self.dataset.x_test

    @property
    def y_test(self) -> np.ndarray:
        return self.dataset.y_test

    @property
    def train_counts(self) -> np.ndarray:
        """Per-class counts of the clean labels in the pool (the imbalance profile)."""
        return np.bincount(self.train_clean_y, minlength=self.num_classes)

    @property
    def shot_counts(self) -> np.ndarray:
        """The per-class counts that define the many/medium/few-shot groups: the cell's pool, also
        where ``--train-on-meta`` added the meta set to it (:meth:`with_meta_in_pool`), so that every
        method on a cell is scored on the same groups of classes."""
        return self.train_counts if self.cell_counts is None else self.cell_counts

    @property
    def noisy_counts(self) -> np.ndarray:
        """Per-class counts of the observed labels (what a method may use)."""
        return np.bincount(self.train_y, minlength=self.num_classes)

    def transition_counts(self) -> np.ndarray:
        """K x K int counts over the pool: row = clean label, column = observed label."""
        K = self.num_classes
        flat = self.train_clean_y * K + self.train_y
        return np.bincount(flat, minlength=K * K).reshape(K, K)

    def expected_noise_rate(self) -> float:
        """Expected fraction of flipped labels given the pool: sum_i n_i (1 - C_ii) / N."""
        n = self.train_counts
        return float(n @ (1 - np.diag(self.transition)) / n.sum())

    def with_meta_in_pool(self) -> BiasedData:
        """The same data with the meta set moved into the training pool, clean labels and all
        (PROTOCOL.md §7's option "let baselines train on it too, for a fair-data comparison":
        a method without a meta set then sees every clean sample that MW-Net and CurveNet see).
        The pool stays sorted by dataset index; the meta set is empty. Each class gains its
        ``meta_per_class`` clean samples, so the pool's imbalance is milder than the cell's."""
        index = np.concatenate([self.train_index, self.meta_index])
        order = np.argsort(index, kind="stable")
        meta_y = self.dataset.y_train[self.meta_index].astype(self.train_y.dtype)
        return BiasedData(dataset=self.dataset, spec=self.spec, train_index=index[order],
                          train_y=np.concatenate([self.train_y, meta_y])[order],
                          train_clean_y=np.concatenate([self.train_clean_y, meta_y])[order],
                          is_noisy=np.concatenate([self.is_noisy, np.zeros(len(meta_y), dtype=bool)])[order],
                          meta_index=self.meta_index[:0], transition=self.transition, cell_counts=self.shot_counts)

    @property
    def noise_known(self) -> bool:
        """Whether it is known which training labels are wrong: not for noise ``real`` on a file
        without ``y_train_noisy`` (its labels are taken as they are, of unknown truth)."""
        return not (self.spec.noise_type == REAL_NOISE and self.dataset.y_train_noisy is None)

    def summary(self) -> dict:
        """JSON-able description of the realised bias (ints, floats, strings, lists)."""
        counts = self.train_counts
        noisy_per_class = np.bincount(self.train_clean_y[self.is_noisy],
                                      minlength=self.num_classes)
        ints = lambda a: [int(v) for v in a]  # noqa: E731
        return {
            "dataset": self.dataset.name,
            "classes": list(self.dataset.classes),
            "num_train": int(len(self.train_index)),
            "num_meta": int(len(self.meta_index)),
            "num_test": int(len(self.dataset.y_test)),
            "train_per_class": ints(counts),
            "meta_per_class": ints(np.bincount(self.y_meta, minlength=self.num_classes)),
            "test_per_class": ints(np.bincount(self.y_test, minlength=self.num_classes)),
            "noisy_per_class": ints(noisy_per_class),
            "observed_per_class": ints(self.noisy_counts),
            "transition": [ints(row) for row in self.transition_counts()],
            "noise_known": self.noise_known,
            "noise_rate_realised": float(self.is_noisy.mean()),
            "noise_rate_expected": self.expected_noise_rate(),
            "imbalance_realised": float(counts.max() / counts.min()),
            "spec": asdict(self.spec),
        }


def own_meta_per_class(dataset: Dataset) -> int | None:
    """The default m of a dataset that supplies its own meta set: all of it that stays balanced
    (its smallest class's count); None for a dataset without one."""
    if dataset.meta_start is None:
        return None
    return int(np.bincount(dataset.y_train[dataset.meta_start:], minlength=dataset.num_classes).min())


def untrusted_meta_set(dataset: Dataset, noise_type: str, meta_per_class: int) -> bool:
    """Whether a meta set would be drawn from labels of unknown truth: noise ``real`` on a file
    that says neither which labels are wrong (``y_train_noisy``) nor which set to trust
    (``x_meta``)."""
    return (noise_type == REAL_NOISE and meta_per_class > 0 and dataset.y_train_noisy is None
            and dataset.meta_start is None)


UNTRUSTED_META = ("noise 'real' takes {name}'s labels as they are, of unknown truth, so they cannot give a clean meta "
                  "set: give the file a trusted set as x_meta, y_meta (or true labels beside y_train_noisy), or "
                  "use --meta-per-class 0")


def _split_own_meta(dataset: Dataset, y: np.ndarray, m: int, rng: np.random.Generator):
    """Meta split of a dataset that supplies its own trusted meta set (an npz file's ``x_meta``,
    ``y_meta``; ``Dataset.meta_start``): per class, m of its meta samples, shuffled with the data
    seed, and every training sample of the class as its pool (the rest of its meta samples go
    unused)."""
    own = np.arange(len(y)) >= dataset.meta_start
    sizes = np.bincount(y[own], minlength=dataset.num_classes)
    if m > sizes.min():
        c = int(np.argmin(sizes))
        if sizes[c] == 0:
            raise DataError(f"meta_per_class {m}: {dataset.name}'s own meta set (x_meta, y_meta) has no sample of "
                            f"class {c} ({dataset.classes[c]!r}), and a meta set holds m of every class: add some "
                            "to the file, or use --meta-per-class 0")
        raise DataError(f"meta_per_class {m}: class {c} ({dataset.classes[c]!r}) has {sizes[c]} samples in "
                        f"{dataset.name}'s own meta set (x_meta, y_meta); choose 0..{sizes.min()}")
    meta_parts, pools = [], []
    for c in range(dataset.num_classes):
        meta_parts.append(rng.permutation(np.flatnonzero((y == c) & own))[:m])
        pools.append(rng.permutation(np.flatnonzero((y == c) & ~own)))
    return meta_parts, pools


def make_biased(dataset: Dataset, spec: BiasSpec) -> BiasedData:
    """Meta split, imbalance, noise (see the module docstring); DataError on bad input."""
    spec.validate()
    K = dataset.num_classes
    if K < 2:
        raise DataError(f"{dataset.name}: biasing needs at least 2 classes, got {K}")
    y = np.asarray(dataset.y_train, dtype=np.int64)
    m = int(spec.meta_per_class)
    if spec.noise_type == REAL_NOISE and not dataset.name.startswith("npz:"):
        raise DataError(f"{dataset.name}'s labels are clean; noise 'real' is your own npz file's labels as "
                        "they are")
    if untrusted_meta_set(dataset, spec.noise_type, m):
        raise DataError(UNTRUSTED_META.format(name=dataset.name))
    split_ss, noise_ss = np.random.SeedSequence(spec.seed).spawn(2)
    rng = np.random.default_rng(split_ss)
    if dataset.meta_start is not None:
        meta_parts, pools = _split_own_meta(dataset, y, m, rng)
    else:
        sizes = np.bincount(y, minlength=K)
        if m >= sizes.min():
            c = int(np.argmin(sizes))
            raise DataError(f"meta_per_class {m} leaves class {c} ({dataset.classes[c]!r}, {sizes[c]} training "
                            f"samples) none to train on; choose 0..{sizes.min() - 1}")
        meta_parts, pools = [], []
        for c in range(K):
            perm = rng.permutation(np.flatnonzero(y == c))
            meta_parts.append(perm[:m])
            pools.append(perm[m:])
    if spec.imbalance == 1:
        keep = [len(p) for p in pools]
    else:
        keep = imbalance_profile(min(len(p) for p in pools), K, spec.imbalance)
    if min(keep) == 0:
        c = int(np.argmin(keep))
        n_max = min(len(p) for p in pools)
        raise DataError(f"class {c} ({dataset.classes[c]!r}) gets 0 training samples "
                        f"(imbalance {spec.imbalance:g}, meta_per_class {m}, n_max {n_max}: the rarest class "
                        "keeps n_max / imbalance, rounded down); lower the imbalance or take fewer meta samples")
    train_index = np.sort(np.concatenate([p[:n] for p, n in zip(pools, keep)])).astype(np.int64)
    meta_index = np.sort(np.concatenate(meta_parts)).astype(np.int64)
    clean = y[train_index]
    if spec.noise_type == REAL_NOISE:
        if dataset.y_train_noisy is not None:
            observed = np.asarray(dataset.y_train_noisy, dtype=np.int64)[train_index]
        else:  # the file's labels, true ones unknown: none can be told apart as mislabelled
            observed = clean.copy()
        C = realised_transition(clean, observed, K)
    else:
        C = transition_matrix(spec.noise_type, spec.noise_rate, K,
                              np.bincount(clean, minlength=K))
        observed = _draw_labels(clean, C, np.random.default_rng(noise_ss))
    return BiasedData(dataset=dataset, spec=spec, train_index=train_index, train_y=observed,
                      train_clean_y=clean, is_noisy=observed != clean, meta_index=meta_index,
                      transition=C)

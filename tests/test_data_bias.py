"""The bias generator: meta split, imbalance profiles, label noise, seeds, validation."""

import dataclasses
import json
import math

import numpy as np
import pytest

from bench.data import (
    NOISE_TYPES,
    BiasSpec,
    Dataset,
    imbalance_profile,
    load_dataset,
    make_biased,
    transition_matrix,
)
from bench.data.bias import has_noise, noise_text, same_noise
from bench.errors import DataError

CIFAR10_FLIP = {0: 6, 1: 9, 2: 6, 3: 0, 4: 0, 5: 1, 6: 8, 7: 6, 8: 2, 9: 4}
CIFAR10_FLIP2 = {0: {3, 9}, 1: {4, 8}, 2: {1, 8}, 3: {4, 8}, 4: {2, 5}, 5: {4, 7}, 6: {2, 9},
                 7: {5, 8}, 8: {5, 6}, 9: {4, 5}}


def labels_dataset(y_train, num_classes, name="labels", y_test=None) -> Dataset:
    """A Dataset around label arrays; 1-pixel images (the bias only reads labels)."""
    y_train = np.asarray(y_train, dtype=np.int64)
    y_test = np.arange(num_classes) if y_test is None else y_test
    return Dataset(name=name, x_train=np.zeros((len(y_train), 1, 1, 1), np.uint8),
                   y_train=y_train, x_test=np.zeros((len(y_test), 1, 1, 1), np.uint8),
                   y_test=np.asarray(y_test, dtype=np.int64),
                   classes=[str(k) for k in range(num_classes)], mean=(0.5,), std=(0.5,),
                   augment=False)


@pytest.fixture(scope="module")
def cifar10_labels(cifar10_jpeg_file):
    with np.load(cifar10_jpeg_file) as z:
        return labels_dataset(z["train_labels"], 10, "cifar10-labels")


@pytest.fixture(scope="module")
def cifar100_labels(cifar100_labels_file):
    with np.load(cifar100_labels_file) as z:
        return labels_dataset(z["y_train"], 100, "cifar100-labels", z["y_test"])


@pytest.fixture(scope="module")
def fashion_labels(shared_data):
    ds = load_dataset("fashion-mnist", shared_data)
    return labels_dataset(ds.y_train, 10, "fashion-labels")


def synthetic(num_classes, per_class, seed=0) -> Dataset:
    y = np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))
    return labels_dataset(y, num_classes, f"synthetic-{num_classes}")


# ---------------------------------------------------------------------------------------------
# imbalance


def test_published_profiles(cifar10_labels):
    d = make_biased(cifar10_labels, BiasSpec(imbalance=20, meta_per_class=100))
    assert d.train_counts.tolist() == [4900, 3512, 2518, 1805, 1294, 927, 665, 476, 341, 245]
    assert len(d.train_index) == 16683
    d = make_biased(cifar10_labels, BiasSpec(imbalance=100, meta_per_class=10))
    assert d.train_counts.tolist() == [4990, 2991, 1793, 1075, 644, 386, 231, 138, 83, 49]
    assert len(d.train_index) == 12380
    assert imbalance_profile(4900, 10, 20) == [4900, 3512, 2518, 1805, 1294, 927, 665, 476, 341,
                                               245]


def test_published_cifar100_profile(cifar100_labels):
    counts = make_biased(cifar100_labels, BiasSpec(imbalance=100, meta_per_class=10)).train_counts
    assert counts[:3].tolist() == [490, 467, 446] and counts[-3:].tolist() == [5, 5, 4]
    assert counts.sum() == 10626  # MW-Net-LT, IF 100 (notes, Appendix A)


@pytest.mark.parametrize("source,meta,n_max", [
    ("cifar10_labels", 100, 4900), ("cifar100_labels", 10, 490), ("fashion_labels", 100, 5900),
    ("synthetic10", 20, 280), ("synthetic100", 3, 97),
])
@pytest.mark.parametrize("imbalance", [1, 10, 100, 200])
def test_profile(request, source, meta, n_max, imbalance):
    if source.startswith("synthetic"):
        ds = synthetic(10, 300) if source == "synthetic10" else synthetic(100, 100)
    else:
        ds = request.getfixturevalue(source)
    K = ds.num_classes
    if int(n_max / imbalance) == 0:
        with pytest.raises(DataError, match="gets 0 training samples"):
            make_biased(ds, BiasSpec(imbalance=imbalance, meta_per_class=meta))
        return
    d = make_biased(ds, BiasSpec(imbalance=imbalance, meta_per_class=meta))
    expected = [int(n_max * (1.0 / imbalance) ** (i / (K - 1.0))) for i in range(K)]
    assert d.train_counts.tolist() == expected
    assert expected[0] == n_max and (imbalance > 1 or expected == [n_max] * K)
    assert np.all(np.diff(expected) <= 0)
    # the kept samples are really of their class, and unique
    assert np.array_equal(d.train_clean_y, ds.y_train[d.train_index])
    assert len(np.unique(d.train_index)) == len(d.train_index)
    assert np.all(np.diff(d.train_index) > 0)  # documented order: ascending file order


def test_profile_truncates_in_double_precision_as_the_official_code():
    """``get_img_num_per_cls`` (CurveNet feeder.py L18-46, MW-Net-LT data_utils.py L69-97) works in
    python floats and ``int()`` truncates: a count just above an integer keeps it, e.g. class 48 of
    100 at n_max 4990, imbalance 10: 4990 * 0.1 ** (48/99) = 1634.00003 -> 1634 (1633 in float32)."""
    assert imbalance_profile(4990, 100, 10)[48] == 1634
    for n_max, imb in ((4990, 10), (4990, 100), (490, 100), (4900, 20), (4990, 200)):
        official = [int(n_max * (1 / imb) ** (i / (100 - 1.0))) for i in range(100)]  # imb_factor = 1/imb
        assert imbalance_profile(n_max, 100, imb) == official


def test_unequal_pools_use_the_smallest():
    y = np.repeat(np.arange(3), [50, 30, 40])
    ds = labels_dataset(y, 3)
    assert make_biased(ds, BiasSpec(meta_per_class=5)).train_counts.tolist() == [45, 25, 35]
    d = make_biased(ds, BiasSpec(imbalance=5, meta_per_class=5))
    assert d.train_counts.tolist() == imbalance_profile(25, 3, 5) == [25, 11, 5]


# ---------------------------------------------------------------------------------------------
# noise


def mwnet_targets(num_classes, two):
    """Straight reimplementation of MW-Net flip_labels_C(_two): np.random.seed(1), row loop."""
    state = np.random.get_state()
    try:
        np.random.seed(1)
        out = []
        for i in range(num_classes):
            others = [j for j in range(num_classes) if j != i]
            if two:
                out.append(set(int(v) for v in np.random.choice(np.array(others), 2, replace=False)))
            else:
                out.append({int(np.random.choice(np.array(others)))})
        return out
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize("kind", ["flip", "flip2"])
@pytest.mark.parametrize("K", [10, 100])
def test_flip_targets_match_mwnet(kind, K):
    rate = 0.4
    before = np.random.get_state()[1].copy()
    C = transition_matrix(kind, rate, K)
    assert np.array_equal(np.random.get_state()[1], before)  # global RNG untouched
    targets = mwnet_targets(K, two=kind == "flip2")
    if K == 10:
        published = CIFAR10_FLIP2 if kind == "flip2" else {i: {t} for i, t in CIFAR10_FLIP.items()}
        assert targets == [published[i] for i in range(10)]
    if K == 100 and kind == "flip":
        assert [min(t) for t in targets[:5]] == [38, 13, 73, 10, 76]  # notes, Appendix A
    if K == 100 and kind == "flip2":
        assert targets[:3] == [{84, 93}, {45, 70}, {57, 60}]
    share = rate if kind == "flip" else rate / 2
    for i in range(K):
        off = {int(j) for j in np.flatnonzero(C[i]) if j != i}
        assert off == targets[i]
        assert math.isclose(C[i, i], 1 - rate) and all(math.isclose(C[i, j], share) for j in off)
    assert np.allclose(C.sum(axis=1), 1)


def test_uniform_matrices():
    C = transition_matrix("uniform", 0.4, 10)
    assert np.allclose(np.diag(C), 0.6 + 0.04) and np.allclose(C[0, 1:], 0.04)
    n = np.array([100, 50, 25, 10])
    C = transition_matrix("uniform_freq", 0.6, 4, n)
    assert np.allclose(C.sum(axis=1), 1)
    assert np.isclose(C[1, 0], 0.6 * 100 / 185) and np.isclose(C[2, 2], 0.4 + 0.6 * 25 / 185)
    assert np.allclose(n @ C, n)  # CurveNet's "unif" keeps the observed marginal
    assert np.array_equal(transition_matrix("none", 0, 5), np.eye(5))


def test_every_noise_type_at_rate_zero_is_the_clean_cell():
    """PROTOCOL.md §1 "Noise": the rate p is the off-diagonal mass of C, so at p = 0 every
    synthetic type's C is the identity and 'flip2' at rate 0 is the noise-free cell (has_noise),
    written clean and grouped with the clean runs; 'real' (a file's own labels) has no rate."""
    for kind in ("uniform", "flip", "flip2", "uniform_freq"):
        assert np.array_equal(transition_matrix(kind, 0.0, 10, np.arange(1, 11)), np.eye(10))
        assert not has_noise(kind, 0.0) and noise_text(kind, 0.0) == "clean"
        assert has_noise(kind, 0.2) and noise_text(kind, 0.2) == f"{kind}:0.2"
    assert has_noise("real", 0.0) and noise_text("real", 0.0) == "real" and not has_noise("none", 0.0)
    cells = np.array(["none", "flip2", "flip2", "real"]), np.array([0.0, 0.0, 0.4, 0.0])
    assert has_noise(*cells).tolist() == [False, False, True, True]
    assert same_noise(cells[0], "flip2", 0.0).tolist() == [True, True, True, False]


def expected_flip_probability(kind, rate, K, counts):
    """Per-class probability that the observed label differs from the clean one."""
    if kind == "uniform":
        return np.full(K, rate * (K - 1) / K)
    if kind in ("flip", "flip2"):
        return np.full(K, rate)
    if kind == "uniform_freq":
        return rate * (1 - counts / counts.sum())
    return np.zeros(K)


@pytest.mark.parametrize("source,meta,imbalance", [
    ("cifar10_labels", 100, 20), ("cifar100_labels", 10, 10), ("fashion_labels", 100, 1),
])
@pytest.mark.parametrize("kind,rate", [("uniform", 0.4), ("uniform", 0.6), ("flip", 0.2),
                                       ("flip2", 0.4), ("uniform_freq", 0.4)])
def test_noise_rates_within_three_standard_errors(request, source, meta, imbalance, kind, rate):
    ds = request.getfixturevalue(source)
    d = make_biased(ds, BiasSpec(imbalance=imbalance, noise_type=kind, noise_rate=rate,
                                 meta_per_class=meta, seed=3))
    K, counts = ds.num_classes, d.train_counts
    q = expected_flip_probability(kind, rate, K, counts)
    per_sample = q[d.train_clean_y]
    expected = per_sample.mean()
    se = math.sqrt((per_sample * (1 - per_sample)).sum()) / len(per_sample)
    assert abs(d.is_noisy.mean() - expected) <= 3 * se
    assert math.isclose(d.expected_noise_rate(), expected, rel_tol=1e-9)
    assert np.array_equal(d.is_noisy, d.train_y != d.train_clean_y)
    assert np.array_equal(d.train_counts, np.bincount(ds.y_train[d.train_index], minlength=K))
    # noisy labels only land where the matrix allows them
    allowed = d.transition[d.train_clean_y, d.train_y] > 0
    assert allowed.all()
    if kind == "flip" and K == 10:
        assert all(d.train_y[d.is_noisy & (d.train_clean_y == i)].tolist()
                   == [t] * int((d.is_noisy & (d.train_clean_y == i)).sum())
                   for i, t in CIFAR10_FLIP.items())


def test_no_noise_keeps_labels(cifar10_labels):
    d = make_biased(cifar10_labels, BiasSpec(imbalance=10, meta_per_class=100))
    assert np.array_equal(d.train_y, d.train_clean_y) and not d.is_noisy.any()
    assert np.array_equal(d.transition, np.eye(10))


# ---------------------------------------------------------------------------------------------
# meta split, determinism, summary


@pytest.mark.parametrize("source,meta", [("cifar10_labels", 100), ("cifar100_labels", 10)])
def test_meta_set_is_disjoint_balanced_clean(request, source, meta):
    ds = request.getfixturevalue(source)
    d = make_biased(ds, BiasSpec(imbalance=50, noise_type="uniform", noise_rate=0.6,
                                 meta_per_class=meta, seed=1))
    assert np.intersect1d(d.meta_index, d.train_index).size == 0
    assert np.bincount(d.y_meta, minlength=ds.num_classes).tolist() == [meta] * ds.num_classes
    assert np.array_equal(d.y_meta, ds.y_train[d.meta_index])  # clean labels
    assert d.meta_index.dtype == np.int64 and d.train_index.dtype == np.int64
    assert d.x_meta.shape == (meta * ds.num_classes, 1, 1, 1)
    assert d.x_train.shape[0] == len(d.train_y)


def test_zero_meta(cifar10_labels):
    d = make_biased(cifar10_labels, BiasSpec(meta_per_class=0))
    assert d.meta_index.shape == (0,) and d.meta_index.dtype == np.int64
    assert len(d.train_index) == 50000


ARRAYS = ("train_index", "train_y", "train_clean_y", "is_noisy", "meta_index", "transition")


def test_seed_reproduces_byte_identical(cifar10_labels):
    spec = BiasSpec(imbalance=10, noise_type="flip2", noise_rate=0.4, meta_per_class=100, seed=7)
    state = np.random.get_state()[1].copy()
    a, b = make_biased(cifar10_labels, spec), make_biased(cifar10_labels, spec)
    assert np.array_equal(np.random.get_state()[1], state)  # no global RNG use
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    c = make_biased(cifar10_labels, dataclasses.replace(spec, seed=8))
    assert not np.array_equal(a.meta_index, c.meta_index)
    assert not np.array_equal(a.train_index, c.train_index)
    assert not np.array_equal(a.train_y, c.train_y)
    # the noise has its own stream: another noise setting keeps the same split and pool
    e = make_biased(cifar10_labels, dataclasses.replace(spec, noise_type="uniform"))
    assert np.array_equal(a.train_index, e.train_index) and np.array_equal(a.meta_index, e.meta_index)


def test_summary_is_json_and_consistent(cifar100_labels):
    d = make_biased(cifar100_labels, BiasSpec(imbalance=10, noise_type="uniform_freq",
                                              noise_rate=0.4, meta_per_class=10, seed=2))
    s = json.loads(json.dumps(d.summary()))
    assert s["train_per_class"] == d.train_counts.tolist()
    assert s["observed_per_class"] == d.noisy_counts.tolist()
    assert sum(s["noisy_per_class"]) == int(d.is_noisy.sum())
    T = np.array(s["transition"])
    assert T.shape == (100, 100) and T.sum() == len(d.train_index)
    assert T.sum(axis=1).tolist() == s["train_per_class"]
    assert T.sum(axis=0).tolist() == s["observed_per_class"]
    assert (T.sum() - np.trace(T)) == sum(s["noisy_per_class"])
    assert s["meta_per_class"] == [10] * 100 and s["test_per_class"] == [100] * 100
    assert math.isclose(s["imbalance_realised"], 490 / 49)
    assert s["spec"] == {"imbalance": 10, "noise_type": "uniform_freq", "noise_rate": 0.4,
                         "meta_per_class": 10, "seed": 2}


def reference_bias(y, K, m, imbalance, C, seed):
    """The documented procedure written out by hand (module docstring of bench/data/bias.py,
    PROTOCOL.md §1): per class in label order the first m of a shuffle go to the meta set, each class
    keeps the *first* n_i of the rest, and only then is the noise drawn, one uniform per pool sample
    in file order from the second spawned stream, inverted through the row's cumulative sum."""
    split_ss, noise_ss = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(split_ss)
    meta, pools = [], []
    for c in range(K):
        perm = rng.permutation([i for i in range(len(y)) if y[i] == c])
        meta += list(perm[:m])
        pools.append(list(perm[m:]))
    n_max = min(len(p) for p in pools)
    keep = [int(n_max * (1.0 / imbalance) ** (i / (K - 1.0))) for i in range(K)]
    train = sorted(i for p, n in zip(pools, keep) for i in p[:n])
    u = np.random.default_rng(noise_ss).random(len(train))
    observed = []
    for k, i in enumerate(train):
        row = np.asarray(C[y[i]], dtype=float)
        cdf = np.cumsum(row) / row.sum()
        observed.append(next(j for j in range(K) if u[k] < cdf[j]))
    return sorted(meta), train, observed


@pytest.mark.parametrize("seed", [0, 5])
def test_split_imbalance_then_noise_follow_the_documented_streams(seed):
    """Kills re-orderings that keep every distribution but change which samples a seed picks: meta
    taken from the end of the shuffle, the pool's tail kept, noise drawn before the imbalance, one
    stream for split and noise, per-class noise draws. Results are promised byte-identical."""
    K, m, imb, p = 5, 4, 4.0, 0.5
    ds = synthetic(K, 40, seed=seed)
    C = p / K * np.ones((K, K)) + (1 - p) * np.eye(K)  # MW-Net uniform, written out
    meta, train, observed = reference_bias(ds.y_train.tolist(), K, m, imb, C, seed)
    d = make_biased(ds, BiasSpec(imbalance=imb, noise_type="uniform", noise_rate=p,
                                 meta_per_class=m, seed=seed))
    assert d.meta_index.tolist() == meta
    assert d.train_index.tolist() == train
    assert d.train_y.tolist() == observed
    assert d.is_noisy.any() and not d.is_noisy.all()  # the check above saw real flips


def test_summary_of_unequal_pools_and_noisy_counts_by_clean_class():
    # imbalance 1 keeps the data's natural imbalance: realised = largest / smallest class, not
    # first / last (45 / 25 here, while the last class holds 35)
    ds = labels_dataset(np.repeat(np.arange(3), [50, 30, 40]), 3)
    s = make_biased(ds, BiasSpec(meta_per_class=5)).summary()
    assert s["train_per_class"] == [45, 25, 35] and math.isclose(s["imbalance_realised"], 45 / 25)
    # noisy_per_class counts corrupted samples by their clean class (row sums off the diagonal)
    d = make_biased(synthetic(10, 100), BiasSpec(noise_type="flip", noise_rate=0.4, seed=4))
    s = d.summary()
    T = np.array(s["transition"])
    assert s["noisy_per_class"] == (T.sum(axis=1) - np.diag(T)).tolist()
    by_clean = [int((d.is_noisy & (d.train_clean_y == c)).sum()) for c in range(10)]
    assert s["noisy_per_class"] == by_clean and by_clean != (T.sum(axis=0) - np.diag(T)).tolist()


# ---------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("changes,match", [
    ({"imbalance": 0.5}, "imbalance"), ({"imbalance": float("nan")}, "imbalance"),
    ({"imbalance": float("inf")}, "imbalance"), ({"imbalance": "10"}, "imbalance"),
    ({"noise_type": "gaussian"}, "unknown noise type 'gaussian'; choose one of none, uniform"),
    ({"noise_type": "uniform", "noise_rate": 1.0}, r"\[0, 1\)"),
    ({"noise_type": "uniform", "noise_rate": -0.1}, r"\[0, 1\)"),
    ({"noise_type": "flip", "noise_rate": float("nan")}, r"\[0, 1\)"),
    ({"noise_type": "none", "noise_rate": 0.2}, "'none' needs rate 0"),
    ({"meta_per_class": -1}, "meta_per_class"), ({"meta_per_class": 2.5}, "meta_per_class"),
    ({"seed": -1}, "seed"),
])
def test_bad_spec(changes, match):
    spec = BiasSpec(**changes)
    with pytest.raises(DataError, match=match) as e:
        spec.validate()
    assert "\n" not in str(e.value)
    with pytest.raises(DataError):
        make_biased(synthetic(10, 30), spec)
    assert set(NOISE_TYPES) == {"none", "uniform", "flip", "flip2", "uniform_freq", "real"}


def test_bad_spec_for_the_dataset():
    ds = synthetic(10, 30)
    for m in (31, 30):  # 30: the meta set would take a whole class
        with pytest.raises(DataError, match=rf"meta_per_class {m} leaves class .* none to train on; choose 0\.\.29$"):
            make_biased(ds, BiasSpec(meta_per_class=m))
    make_biased(ds, BiasSpec(imbalance=1, meta_per_class=29))  # the largest m the message offers
    with pytest.raises(DataError, match="gets 0 training samples.*n_max 20.*lower the imbalance"):
        make_biased(ds, BiasSpec(imbalance=40, meta_per_class=10))
    with pytest.raises(DataError, match="at least 3 classes"):
        make_biased(synthetic(2, 30), BiasSpec(noise_type="flip2", noise_rate=0.2))


def test_meta_in_pool_adds_the_clean_meta_set_to_the_pool():
    """PROTOCOL.md §7's fair-data option (``--train-on-meta``): the meta samples join the pool
    with their clean labels, the pool stays in dataset order, nothing else changes."""
    ds = synthetic(5, 60)
    d = make_biased(ds, BiasSpec(imbalance=5, noise_type="uniform", noise_rate=0.5, meta_per_class=4, seed=3))
    e = d.with_meta_in_pool()
    assert e.meta_index.size == 0 and len(e.y_meta) == 0
    assert np.array_equal(e.train_index, np.sort(np.concatenate([d.train_index, d.meta_index])))
    assert np.array_equal(e.train_counts, d.train_counts + 4)
    assert np.array_equal(e.shot_counts, d.train_counts) and np.array_equal(d.shot_counts, d.train_counts)
    by_index = dict(zip(e.train_index.tolist(), zip(e.train_y.tolist(), e.train_clean_y.tolist(),
                                                    e.is_noisy.tolist())))
    for i in d.meta_index.tolist():  # meta samples: clean label observed, never noisy
        assert by_index[i] == (ds.y_train[i], ds.y_train[i], False)
    for i, y, c, n in zip(d.train_index.tolist(), d.train_y.tolist(), d.train_clean_y.tolist(), d.is_noisy.tolist()):
        assert by_index[i] == (y, c, n)  # the pool's own samples keep their observed labels
    assert e.x_train.shape[0] == len(e.train_y) and e.is_noisy.sum() == d.is_noisy.sum()

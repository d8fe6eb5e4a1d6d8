"""Focal, Class-Balanced and LDAM-DRW: formulas pinned to hand-computed values, DRW's switch, and
one short real training per method (fmnist-mini, and a slice of the JPEG-decoded CIFAR-10)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import methods
from bench.errors import BenchError
from methods.class_balanced import ClassBalanced, ClassBalancedParams, cb_per_sample
from methods.drw import DRW, drw_weights
from methods.focal import Focal, FocalParams
from methods.ldam_drw import LDAMDRW, LDAMDRWParams, NormedLinear, use_normed_linear
from methods.losses import (
    class_balanced_weights,
    ldam_margins,
    ldam_per_sample,
    reduce_weighted,
    sigmoid_focal_per_sample,
    softmax_focal_per_sample,
)


def _softmax_p(logits, t):
    exps = [math.exp(v) for v in logits]
    return exps[t] / sum(exps)


# ------------------------------------------------------------------------------------ focal

def test_focal_gamma0_is_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.3, 0.1, 1.5]])
    y = torch.tensor([0, 1])
    expected = [-math.log(_softmax_p([2.0, 0.0, -1.0], 0)), -math.log(_softmax_p([0.3, 0.1, 1.5], 1))]
    got = softmax_focal_per_sample(logits, y, gamma=0.0)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(got, F.cross_entropy(logits, y, reduction="none"), atol=1e-7)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_focal_matches_hand_value(gamma):
    p = _softmax_p([2.0, 0.0, -1.0], 0)
    got = softmax_focal_per_sample(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]), gamma)
    assert got.item() == pytest.approx(-((1 - p) ** gamma) * math.log(p), rel=1e-5)
    # gamma = 1 down-weights an easy sample (p ~ 0.84) relative to CE by exactly (1 - p_t)
    ce = -math.log(p)
    assert got.item() / ce == pytest.approx((1 - p) ** gamma, rel=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_focal_never_nan_on_confident_samples(gamma):
    logits = torch.tensor([[100.0, -100.0], [100.0, -100.0], [-100.0, 100.0]], requires_grad=True)
    y = torch.tensor([0, 1, 0])  # confidently right, confidently wrong twice
    loss = softmax_focal_per_sample(logits, y, gamma)
    assert torch.isfinite(loss).all()
    assert loss[0].item() == pytest.approx(0.0, abs=1e-30)
    assert loss[1].item() == pytest.approx(200.0) and loss[2].item() == pytest.approx(200.0)
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # the confidently wrong ones get the full CE gradient (1 - p_t = 1): -1 on the true logit
    assert logits.grad[1, 1].item() == pytest.approx(-1.0, abs=1e-5)


def test_focal_params_validation():
    with pytest.raises(BenchError):
        FocalParams(gamma=-1.0)
    with pytest.raises(BenchError):
        FocalParams(gamma=float("nan"))


# ----------------------------------------------------------------------- class-balanced weights

def test_cb_weights_by_hand_sum_to_k_and_rank_rare_first():
    counts, beta = [100, 10, 1], 0.9
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]  # 0.1000027, 0.15354, 1.0
    expected = [3 * r / sum(raw) for r in raw]
    w = class_balanced_weights(counts, beta)
    assert torch.allclose(w, torch.tensor(expected, dtype=torch.float32), rtol=1e-6)
    assert w.sum().item() == pytest.approx(3.0, rel=1e-6)
    assert w[2] > w[1] > w[0]


def test_cb_weights_beta_limits():
    counts = np.array([4900, 1000, 245, 49])
    assert torch.allclose(class_balanced_weights(counts, 0.0), torch.ones(4))
    w = class_balanced_weights(counts, 0.9999)
    assert w.sum().item() == pytest.approx(4.0, rel=1e-6)
    assert torch.all(w[1:] > w[:-1])
    # beta -> 1 approaches inverse frequency: the ratio rare/head is close to 4900/49 = 100
    assert 70 < (w[3] / w[0]).item() < 100
    # a class with no sample is counted as one, never inf/NaN
    assert torch.isfinite(class_balanced_weights([10, 0], 0.9999)).all()


def test_reduce_weighted_batch_vs_weight_by_hand():
    per = torch.tensor([1.0, 2.0, 3.0])
    y = torch.tensor([0, 1, 1])
    w = torch.tensor([0.5, 1.5])
    assert reduce_weighted(per, y, w, "batch").item() == pytest.approx((0.5 * 1 + 1.5 * 2 + 1.5 * 3) / 3)
    assert reduce_weighted(per, y, w, "weight").item() == pytest.approx((0.5 * 1 + 1.5 * 2 + 1.5 * 3) / 3.5)
    assert reduce_weighted(per, y, None, "batch").item() == pytest.approx(2.0)
    # 'weight' is exactly torch's weighted cross-entropy
    logits = torch.tensor([[1.0, -1.0], [0.2, 0.3], [2.0, 0.0]])
    ce = F.cross_entropy(logits, y, reduction="none")
    assert reduce_weighted(ce, y, w, "weight").item() == pytest.approx(F.cross_entropy(logits, y, weight=w).item())


def test_cb_softmax_loss_by_hand():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1])
    w = class_balanced_weights([90, 10], 0.9999)
    ce0 = -math.log(_softmax_p([1.0, 0.0], 0))
    ce1 = -math.log(_softmax_p([0.0, 2.0], 1))
    got = reduce_weighted(cb_per_sample(logits, y, "softmax", 1.0), y, w, "batch")
    assert got.item() == pytest.approx((w[0].item() * ce0 + w[1].item() * ce1) / 2, rel=1e-6)


def test_sigmoid_focal_by_hand_and_stable():
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    z, gamma = [1.0, -0.5, 0.25], 1.0
    # labelled class 0: p_t = sig(z0); others: p_t = 1 - sig(zj)
    pts = [sig(z[0]), 1 - sig(z[1]), 1 - sig(z[2])]
    expected = sum(-((1 - q) ** gamma) * math.log(q) for q in pts)
    got = sigmoid_focal_per_sample(torch.tensor([z]), torch.tensor([0]), gamma)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    bce = sum(-math.log(q) for q in pts)
    assert sigmoid_focal_per_sample(torch.tensor([z]), torch.tensor([0]), 0.0).item() == pytest.approx(bce, rel=1e-5)
    big = torch.tensor([[-100.0, 100.0, 100.0]], requires_grad=True)  # confidently wrong everywhere
    loss = sigmoid_focal_per_sample(big, torch.tensor([0]), 2.0)
    loss.backward()
    assert torch.isfinite(loss).all() and torch.isfinite(big.grad).all()
    assert loss.item() == pytest.approx(300.0, rel=1e-5)


def test_cb_params_validation():
    for bad in (dict(beta=1.0), dict(beta=-0.1), dict(loss="hinge"), dict(reduction="sum"), dict(gamma=-2)):
        with pytest.raises(BenchError):
            ClassBalancedParams(**bad)


# ----------------------------------------------------------------------------------- LDAM

def test_ldam_margins_by_hand():
    counts = [1000, 100, 10]
    raw = [n ** -0.25 for n in counts]
    expected = [0.5 * r / max(raw) for r in raw]  # 0.15811, 0.28117, 0.5
    m = ldam_margins(counts, 0.5)
    assert torch.allclose(m, torch.tensor(expected, dtype=torch.float32), atol=1e-7)
    assert m[2].item() == pytest.approx(0.5) and m.max().item() == pytest.approx(0.5)
    assert m[0] < m[1] < m[2]
    assert m[0].item() == pytest.approx(0.5 * 100 ** -0.25, rel=1e-6)  # (n_rare/n_head)^(1/4)
    # a class without any (observed) sample does not take the rarest real class's margin
    with_empty = ldam_margins([1000, 100, 10, 0], 0.5)
    assert torch.allclose(with_empty[:3], m) and with_empty[3].item() == pytest.approx(0.5)


def test_ldam_loss_by_hand():
    logits = torch.tensor([[0.5, 0.2], [0.1, 0.9]])
    y = torch.tensor([1, 0])
    margins = torch.tensor([0.1, 0.3])
    # sample 0: true class 1 -> [0.5, 0.2 - 0.3] * 30 = [15, -3]; sample 1: [0.1 - 0.1, 0.9] * 30 = [0, 27]
    l0 = 3.0 + math.log(math.exp(15.0) + math.exp(-3.0))  # -(s z_y - s m_y) + logsumexp
    l1 = 0.0 + math.log(math.exp(0.0) + math.exp(27.0))
    got = ldam_per_sample(logits, y, margins, s=30.0)
    assert torch.allclose(got, torch.tensor([l0, l1]), rtol=1e-5)
    # the margin only touches the labelled logit: zero margins give plain scaled CE
    assert torch.allclose(ldam_per_sample(logits, y, torch.zeros(2), 30.0),
                          F.cross_entropy(30 * logits, y, reduction="none"))


def test_normed_linear_is_cosine_without_bias():
    torch.manual_seed(0)
    layer = NormedLinear(5, 3)
    assert not any("bias" in n for n, _ in layer.named_parameters())
    assert torch.allclose(layer.weight.norm(dim=0), torch.ones(3), atol=1e-5)
    x = torch.randn(4, 5)
    out = layer(x)
    cos = torch.stack([F.cosine_similarity(x, layer.weight[:, j].expand_as(x), dim=1) for j in range(3)], 1)
    assert torch.allclose(out, cos, atol=1e-6)
    assert torch.allclose(layer(7.0 * x), out, atol=1e-6) and out.abs().max() <= 1 + 1e-6
    from bench.models import build_model
    model = use_normed_linear(build_model("small_cnn", 10, 1))
    assert isinstance(model.fc, NormedLinear) and model(torch.randn(2, 1, 28, 28)).abs().max() <= 1 + 1e-6


def test_ldam_params_validation():
    for bad in (dict(max_m=0), dict(s=-1.0), dict(beta=1.0), dict(drw_epoch=-2), dict(reduction="mean")):
        with pytest.raises(BenchError):
            LDAMDRWParams(**bad)


# ------------------------------------------------------------------------------------ DRW


def test_drw_switches_exactly_at_its_epoch():
    counts = [500, 50, 5]
    cb = class_balanced_weights(counts, 0.9999)
    assert drw_weights(7, 8, counts) is None
    assert torch.equal(drw_weights(8, 8, counts), cb)
    assert torch.equal(drw_weights(19, 8, counts), cb)  # stays on; no epoch // switch indexing
    drw = DRW(counts, switch_epoch=8)
    y = torch.tensor([0, 1, 2, 2])
    per = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert [drw.active(e) for e in (0, 7, 8, 9, 500)] == [False, False, True, True, True]
    assert torch.equal(drw.sample_weights(y, 7), torch.ones(4))
    assert torch.equal(drw.sample_weights(y, 8), cb[y])
    assert drw.reduce(per, y, 7).item() == pytest.approx(2.5)
    assert drw.reduce(per, y, 8).item() == pytest.approx(((cb[y] * per).sum() / cb[y].sum()).item())
    assert DRW(counts, 8, reduction="batch").reduce(per, y, 8).item() == pytest.approx(((cb[y] * per).sum() / 4).item())


def test_drw_from_run_uses_first_drop_and_noisy_counts():
    class _Data:
        noisy_counts = np.array([30, 3])

    class _Run:
        data, device, first_drop = _Data(), torch.device("cpu"), 8

    drw = DRW.from_run(_Run())
    assert drw.switch_epoch == 8
    assert torch.equal(drw.weights, class_balanced_weights([30, 3], 0.9999))
    assert DRW.from_run(_Run(), switch_epoch=3).switch_epoch == 3


# ------------------------------------------------------------------------------- registry

def test_registered_with_protocol_defaults():
    assert methods.get("focal") is Focal and methods.get("cb") is ClassBalanced and methods.get("ldam_drw") is LDAMDRW
    assert FocalParams().gamma == 1.0
    p = ClassBalancedParams()
    assert (p.beta, p.loss, p.reduction) == (0.9999, "softmax", "batch")
    q = LDAMDRWParams()
    assert (q.max_m, q.s, q.drw, q.beta, q.drw_epoch) == (0.5, 30.0, True, 0.9999, -1)
    assert ClassBalanced.resolve_params("quick", {"loss": "focal"}).loss == "focal"
    assert LDAMDRW.display_name({"drw": False}) == "LDAM"


# ------------------------------------------------------------------------ real training

METHODS = [(Focal, FocalParams()), (ClassBalanced, ClassBalancedParams()), (LDAMDRW, LDAMDRWParams())]


@pytest.fixture(scope="session")
def cifar10_slice_npz(cifar10_npz, tmp_path_factory) -> Path:
    """A class-balanced slice of the JPEG-decoded CIFAR-10 (conftest's ``cifar10_npz``): the first
    300 train and 100 test images per class in file order, with the CIFAR mean/std, as an npz for
    ``load_dataset("npz:PATH")``."""
    from bench.data.datasets import CIFAR_MEAN, CIFAR_STD

    arrays = {}
    with np.load(cifar10_npz) as z:
        for split, per_class in (("train", 300), ("test", 100)):
            labels = z[f"y_{split}"]
            idx = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))
            arrays[f"x_{split}"] = z[f"x_{split}"][idx]
            arrays[f"y_{split}"] = labels[idx].astype(np.int64)
        arrays["classes"] = z["classes"]
    path = tmp_path_factory.mktemp("cifar10_slice") / "cifar10_slice.npz"
    np.savez(path, mean=np.array(CIFAR_MEAN), std=np.array(CIFAR_STD), **arrays)
    return path


def _train(method_cls, params, dataset: str, *, imbalance: float, epochs: int, milestones, meta_per_class=0,
           seed=0, **protocol):
    from bench.data import BiasSpec, load_dataset, make_biased
    from bench.spec import RunSpec
    from methods.base import Run, params_items

    ds = load_dataset(dataset)
    data = make_biased(ds, BiasSpec(imbalance=imbalance, meta_per_class=meta_per_class, seed=0))
    spec = RunSpec(method=method_cls.name, dataset=dataset, imbalance=imbalance, noise_type="none", noise_rate=0.0,
                   meta_per_class=meta_per_class, seed=seed, epochs=epochs, milestones=milestones,
                   params=params_items(params), **{"warmup_epochs": 1, **protocol})
    run = Run(spec=spec, data=data, device=torch.device("cpu"), params=params)
    torch.manual_seed(seed)
    model = method_cls(params).fit(run)
    return run, model


@pytest.mark.parametrize("method_cls,params", METHODS, ids=[m.name for m, _ in METHODS])
def test_trains_on_cifar10_jpeg_slice(cifar10_slice_npz, method_cls, params):
    run, model = _train(method_cls, params, f"npz:{cifar10_slice_npz}", imbalance=5, epochs=3, milestones=(2,))
    report = run.evaluate(model)
    losses = [row["loss"] for row in run.history]
    assert losses[-1] < losses[0]
    assert report["acc"] > 20.0, report  # chance is 10%; 24-35% measured over seeds 0-2


@pytest.mark.parametrize("method_cls,params", METHODS, ids=[m.name for m, _ in METHODS])
def test_trains_on_fmnist_mini(method_cls, params):
    """Quick-preset protocol shortened to 3 epochs (warm-up 1, lr drop at 2) on imbalance 10."""
    run, model = _train(method_cls, params, "fmnist-mini", imbalance=10, epochs=3, milestones=(2,), meta_per_class=20)
    report = run.evaluate(model)
    assert report["acc"] > 60.0, report  # chance is 10%; 71-78% measured over seeds 0-2
    counts = run.data.noisy_counts
    if method_cls is ClassBalanced:  # the recorded per-sample weight is w of the observed label
        assert np.allclose(run.records["weight"], class_balanced_weights(counts).numpy()[run.data.train_y])
    if method_cls is LDAMDRW:  # cosine head, and DRW was on at the last epoch (first drop = 2)
        assert isinstance(model.fc, NormedLinear)
        assert np.allclose(run.records["weight"], class_balanced_weights(counts).numpy()[run.data.train_y])

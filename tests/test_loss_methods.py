"""CE, Focal, Class-Balanced and LDAM-DRW: formulas pinned to hand-computed values, DRW's switch, the
loss each method's ``fit`` hands to training (its settings, the observed counts, the switch epoch),
and one short real training per method (fmnist-mini, and a slice of the JPEG-decoded CIFAR-10)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

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
    REDUCTIONS,
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
    assert (p.beta, p.loss, p.gamma, p.reduction, p.sigmoid_init) == (0.9999, "softmax", 1.0, "batch", True)
    q = LDAMDRWParams()
    assert (q.max_m, q.s, q.drw, q.beta, q.drw_epoch, q.reduction) == (0.5, 30.0, True, 0.9999, -1, "weight")
    assert ClassBalanced.resolve_params("quick", {"loss": "focal"}).loss == "focal"
    assert LDAMDRW.display_name({"drw": False}) == "LDAM"


# ------------------------------------------------------- fit wiring (loss_fn captured, no training)
#
# Each method's ``fit`` builds its loss from its Params and the run's *observed* counts, then hands it
# to ``train_classifier``. These tests replace ``train_classifier`` by a recorder and check the loss
# function it receives against independent computations, on a fake run whose observed (noisy) label
# counts differ from the clean ones, so that using the wrong counts, the wrong epoch or a default
# instead of a setting changes the numbers.

_CLEAN_Y = np.array([0] * 60 + [1] * 30 + [2] * 10)
_NOISY_Y = _CLEAN_Y.copy()
_NOISY_Y[:10] = 2  # 10 head samples observed as the tail class: observed counts 50 / 30 / 20, clean 60 / 30 / 10
_LOGITS = torch.tensor([[1.0, 0.2, -0.5], [0.3, 0.1, 1.5], [-0.2, 0.4, 0.0], [0.9, -1.0, 0.6], [0.1, 0.7, -0.3]])
_Y = torch.tensor([0, 1, 2, 2, 1])


class _TinyNet(torch.nn.Module):
    def __init__(self, k: int = 3, d: int = 4):
        super().__init__()
        self.fc = torch.nn.Linear(d, k)

    def forward(self, x):
        return self.fc(x)


class _FakeRun:
    """What the loss methods' ``fit`` reads from a Run."""

    def __init__(self, epochs: int = 10, first_drop: int = 4):
        k = 3
        self.data = SimpleNamespace(train_y=_NOISY_Y, noisy_counts=np.bincount(_NOISY_Y, minlength=k),
                                    train_counts=np.bincount(_CLEAN_Y, minlength=k), num_classes=k)
        self.device, self.num_classes, self.first_drop = torch.device("cpu"), k, first_drop
        self.spec = SimpleNamespace(epochs=epochs)
        self.records = {}

    def model(self, *, adapt=None):
        torch.manual_seed(0)
        model = _TinyNet(self.num_classes)
        return adapt(model) if adapt is not None else model

    def sgd(self, params):
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)

    def record(self, name, values):
        self.records[name] = values

    # one run: a loss per run is this run's, as Run's
    member_runs = property(lambda self: [self])

    def per_run(self, make):
        return make(self)


def _fit_capture(monkeypatch, method_cls, params, run=None):
    """``method_cls(params).fit(run)`` with the module's ``train_classifier`` replaced by a recorder."""
    seen = {}

    def recorder(run_, model, loss_fn, **kwargs):
        seen.update(model=model, loss_fn=loss_fn, **kwargs)
        return model

    monkeypatch.setattr(sys.modules[method_cls.__module__], "train_classifier", recorder)
    run = run or _FakeRun()
    method_cls(params).fit(run)
    seen["run"] = run
    return seen


def _ce_by_hand(row, t):
    return -math.log(_softmax_p(row, t))


def _cb_by_hand(counts, beta):
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    return [len(counts) * r / sum(raw) for r in raw]


def test_ce_fit_loss_is_plain_mean_cross_entropy(monkeypatch):
    from methods.ce import CE

    seen = _fit_capture(monkeypatch, CE, None)
    got = seen["loss_fn"](_LOGITS, _Y, None, 0).item()
    expected = sum(_ce_by_hand(r, t) for r, t in zip(_LOGITS.tolist(), _Y.tolist())) / len(_Y)
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 0.5])
def test_focal_fit_loss_is_batch_mean_focal_with_its_gamma(monkeypatch, gamma):
    seen = _fit_capture(monkeypatch, Focal, FocalParams(gamma=gamma))
    got = seen["loss_fn"](_LOGITS, _Y, None, 0).item()
    ps = [_softmax_p(r, t) for r, t in zip(_LOGITS.tolist(), _Y.tolist())]
    per = [-((1 - p) ** gamma) * math.log(p) for p in ps]
    assert got == pytest.approx(sum(per) / len(per), rel=1e-5)


@pytest.mark.parametrize("reduction", ["batch", "weight"])
@pytest.mark.parametrize("beta", [0.9999, 0.95])
def test_cb_fit_weights_from_observed_counts_beta_and_reduction(monkeypatch, beta, reduction):
    seen = _fit_capture(monkeypatch, ClassBalanced, ClassBalancedParams(beta=beta, reduction=reduction))
    w = _cb_by_hand([50, 30, 20], beta)  # the observed counts, not the clean 60 / 30 / 10
    wy = [w[t] for t in _Y.tolist()]
    ce = [_ce_by_hand(r, t) for r, t in zip(_LOGITS.tolist(), _Y.tolist())]
    total = sum(a * b for a, b in zip(wy, ce))
    expected = total / len(ce) if reduction == "batch" else total / sum(wy)
    assert seen["loss_fn"](_LOGITS, _Y, None, 0).item() == pytest.approx(expected, rel=1e-5)
    assert seen["loss_fn"](_LOGITS, _Y, None, 150).item() == pytest.approx(expected, rel=1e-5)  # from epoch 0 on
    assert np.allclose(seen["run"].records["weight"].numpy(), np.array(w)[_NOISY_Y], rtol=1e-6)
    assert seen["optimizer"] is None  # softmax: the protocol's optimiser, no bias special case


def test_cb_per_sample_variants_by_hand():
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    z, t, gamma = [0.8, -0.4, 0.3], 1, 2.0
    logits, y = torch.tensor([z]), torch.tensor([t])
    pts = [sig(v) if j == t else 1 - sig(v) for j, v in enumerate(z)]  # one-vs-all p_t per class
    p = _softmax_p(z, t)
    expected = {
        "softmax": -math.log(p),
        "softmax_focal": -((1 - p) ** gamma) * math.log(p),
        "sigmoid": sum(-math.log(q) for q in pts),  # no modulator whatever gamma is
        "focal": sum(-((1 - q) ** gamma) * math.log(q) for q in pts),
    }
    for loss, value in expected.items():
        assert cb_per_sample(logits, y, loss, gamma).item() == pytest.approx(value, rel=1e-5), loss


@pytest.mark.parametrize("loss", ["sigmoid", "focal"])
def test_cb_sigmoid_fit_bias_init_and_no_bias_decay(monkeypatch, loss):
    seen = _fit_capture(monkeypatch, ClassBalanced, ClassBalancedParams(loss=loss))
    model, opt = seen["model"], seen["optimizer"]
    assert torch.allclose(model.fc.bias, torch.full((3,), -math.log(2.0)))  # -log(K - 1): p = 1/K at init
    bias_groups = [g for g in opt.param_groups if any(q is model.fc.bias for q in g["params"])]
    other = [g for g in opt.param_groups if not any(q is model.fc.bias for q in g["params"])]
    assert len(bias_groups) == 1 and bias_groups[0]["weight_decay"] == 0.0 and len(bias_groups[0]["params"]) == 1
    assert len(other) == 1 and other[0]["weight_decay"] == 5e-4
    assert {id(q) for q in other[0]["params"]} == {id(model.fc.weight)}
    off = _fit_capture(monkeypatch, ClassBalanced, ClassBalancedParams(loss=loss, sigmoid_init=False))
    assert off["optimizer"] is None and not torch.allclose(off["model"].fc.bias, torch.full((3,), -math.log(2.0)))


def _ldam_by_hand(counts, max_m=0.5, s=30.0, class_weights=None, reduction="weight"):
    margins = [max_m * (min(counts) / n) ** 0.25 for n in counts]  # m_c = C n_c^(-1/4), max = max_m
    per, ws = [], []
    for row, t in zip(_LOGITS.tolist(), _Y.tolist()):
        z = [s * (v - (margins[t] if j == t else 0.0)) for j, v in enumerate(row)]
        per.append(-z[t] + math.log(sum(math.exp(v) for v in z)))
        ws.append(1.0 if class_weights is None else class_weights[t])
    total = sum(w * v for w, v in zip(ws, per))
    return total / (sum(ws) if reduction == "weight" else len(per))


def test_ldam_drw_fit_loss_by_hand_before_and_after_the_switch(monkeypatch):
    seen = _fit_capture(monkeypatch, LDAMDRW, LDAMDRWParams(), _FakeRun(epochs=10, first_drop=4))
    loss_fn, counts = seen["loss_fn"], [50, 30, 20]  # observed counts, for margins and weights alike
    assert isinstance(seen["model"].fc, NormedLinear)
    plain = _ldam_by_hand(counts)
    weighted = _ldam_by_hand(counts, class_weights=_cb_by_hand(counts, 0.9999))
    assert plain != pytest.approx(weighted, rel=1e-3)
    for epoch in (0, 3):
        assert loss_fn(_LOGITS, _Y, None, epoch).item() == pytest.approx(plain, rel=1e-5), epoch
    for epoch in (4, 9):  # DRW from the first lr drop on (epoch >= 4)
        assert loss_fn(_LOGITS, _Y, None, epoch).item() == pytest.approx(weighted, rel=1e-5), epoch
    assert np.allclose(seen["run"].records["weight"].numpy(), np.array(_cb_by_hand(counts, 0.9999))[_NOISY_Y])


def test_ldam_drw_fit_settings_reach_the_loss(monkeypatch):
    counts = [50, 30, 20]

    def loss_at(params, epoch):
        seen = _fit_capture(monkeypatch, LDAMDRW, params, _FakeRun(epochs=10, first_drop=4))
        return seen["loss_fn"](_LOGITS, _Y, None, epoch).item()

    cb = _cb_by_hand(counts, 0.99)
    assert loss_at(LDAMDRWParams(max_m=0.3, s=10.0), 0) == pytest.approx(_ldam_by_hand(counts, 0.3, 10.0), rel=1e-5)
    assert loss_at(LDAMDRWParams(beta=0.99, reduction="batch"), 4) == pytest.approx(
        _ldam_by_hand(counts, class_weights=cb, reduction="batch"), rel=1e-5)
    assert loss_at(LDAMDRWParams(beta=0.99), 4) == pytest.approx(_ldam_by_hand(counts, class_weights=cb), rel=1e-5)
    # drw_epoch overrides the first drop, 0 included; drw=False never reweights
    assert loss_at(LDAMDRWParams(drw_epoch=0), 0) == pytest.approx(
        _ldam_by_hand(counts, class_weights=_cb_by_hand(counts, 0.9999)), rel=1e-5)
    assert loss_at(LDAMDRWParams(drw_epoch=6), 5) == pytest.approx(_ldam_by_hand(counts), rel=1e-5)
    assert loss_at(LDAMDRWParams(drw=False), 9) == pytest.approx(_ldam_by_hand(counts), rel=1e-5)


# ------------------------------------------------------------- formula details the above miss

def test_focal_near_one_keeps_its_tiny_modulator():
    """(1 - p_t) is floored only at the smallest normal float: a confident sample (1 - p_t ~ 6e-6)
    keeps its exact (1 - p_t)^gamma factor (float64: float32's log_softmax is itself ~1% off here)."""
    logits, y = torch.tensor([[12.0, 0.0]], dtype=torch.float64), torch.tensor([0])
    q = 1 / (1 + math.exp(12.0))  # 1 - p_t
    for gamma in (0.5, 1.0, 2.0):
        got = softmax_focal_per_sample(logits, y, gamma).item()
        assert got == pytest.approx(q ** gamma * -math.log1p(-q), rel=1e-9), gamma


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_focal_gradient_matches_the_direct_formula(gamma):
    """The gradient flows through the modulator (1 - p_t)^gamma too, as in the paper and the LDAM-DRW
    code (p = exp(-CE), not detached)."""
    logits = torch.tensor([[1.0, 0.2, -0.5], [0.3, 0.1, 1.5]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    a = logits.clone().requires_grad_(True)
    softmax_focal_per_sample(a, y, gamma).sum().backward()
    b = logits.clone().requires_grad_(True)
    p = torch.softmax(b, dim=1)[torch.arange(2), y]
    (-((1 - p) ** gamma) * torch.log(p)).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-10)


def test_normed_linear_normalises_its_weight_columns():
    torch.manual_seed(0)
    layer = NormedLinear(5, 3)
    with torch.no_grad():
        layer.weight.mul_(torch.tensor([1.0, 3.0, 0.2]))  # training changes the columns' norms
    x = torch.randn(4, 5)
    cos = torch.stack([F.cosine_similarity(x, layer.weight[:, j].expand_as(x), dim=1) for j in range(3)], 1)
    assert torch.allclose(layer(x), cos, atol=1e-6)


def test_drw_uses_its_beta_and_from_run_maps_minus_one_to_the_first_drop():
    counts = [500, 50, 5]
    cb = torch.tensor(_cb_by_hand(counts, 0.9), dtype=torch.float32)
    assert torch.allclose(DRW(counts, 0, beta=0.9).weights, cb, rtol=1e-6)
    assert torch.allclose(drw_weights(0, 0, counts, beta=0.9), cb, rtol=1e-6)

    class _Run:
        data, device, first_drop = SimpleNamespace(noisy_counts=np.array(counts)), torch.device("cpu"), 8

    assert DRW.from_run(_Run(), switch_epoch=-1).switch_epoch == 8
    assert torch.allclose(DRW.from_run(_Run(), beta=0.9).weights, cb, rtol=1e-6)


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


# ------------------------------------------------- settings that reach the loss (mutation-tested)

@pytest.mark.parametrize("loss", ["focal", "softmax_focal"])
def test_cb_focal_fit_uses_its_gamma(monkeypatch, loss):
    """The focal variants' modulator uses the cb.gamma setting (Cui et al. eq. 6-7; official
    ``--gamma``), times w_y and averaged over the batch (official SUM/B)."""
    gamma, beta = 2.0, 0.95
    seen = _fit_capture(monkeypatch, ClassBalanced, ClassBalancedParams(loss=loss, gamma=gamma, beta=beta))
    w = _cb_by_hand([50, 30, 20], beta)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    total = 0.0
    for row, t in zip(_LOGITS.tolist(), _Y.tolist()):
        if loss == "focal":  # one-vs-all sigmoid focal, summed over classes
            pts = [sig(v) if j == t else 1 - sig(v) for j, v in enumerate(row)]
            per = sum(-((1 - q) ** gamma) * math.log(q) for q in pts)
        else:
            p = _softmax_p(row, t)
            per = -((1 - p) ** gamma) * math.log(p)
        total += w[t] * per
    assert seen["loss_fn"](_LOGITS, _Y, None, 0).item() == pytest.approx(total / len(_Y), rel=1e-5)


def test_cb_softmax_focal_keeps_the_plain_head_and_optimiser(monkeypatch):
    """The -log(K-1) bias init and the bias without weight decay are the official *sigmoid* code's
    (``src/model_base.py:196``, lines 344-351); the softmax variants train the plain head."""
    seen = _fit_capture(monkeypatch, ClassBalanced, ClassBalancedParams(loss="softmax_focal"))
    assert seen["optimizer"] is None
    assert not torch.allclose(seen["model"].fc.bias, torch.full((3,), -math.log(2.0)))


class _NetWithNorm(torch.nn.Module):
    def __init__(self, k: int = 3, d: int = 4):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)  # 1-d parameters that are not the last layer's bias
        self.fc = torch.nn.Linear(d, k)

    def forward(self, x):
        return self.fc(self.norm(x))


def test_cb_sigmoid_optimiser_trains_every_parameter_with_decay_but_the_fc_bias(monkeypatch):
    """Only the last-layer bias is exempt from weight decay (official lines 344-351); every other
    parameter (norm layers' too) is trained with the protocol's decay."""
    run = _FakeRun()
    run.model = lambda **_: _NetWithNorm()
    seen = _fit_capture(monkeypatch, ClassBalanced, ClassBalancedParams(loss="sigmoid"), run)
    model, opt = seen["model"], seen["optimizer"]
    decayed = {id(q) for g in opt.param_groups if g["weight_decay"] == 5e-4 for q in g["params"]}
    undecayed = {id(q) for g in opt.param_groups if g["weight_decay"] == 0.0 for q in g["params"]}
    assert undecayed == {id(model.fc.bias)}
    assert decayed == {id(q) for q in model.parameters()} - undecayed


# ------------------------------------------- input checks, defaults and precision (mutation-tested)

@pytest.mark.parametrize("bad", [[], [10, -1, 5], [10, float("nan")], [10, float("inf")]])
def test_class_counts_must_be_a_finite_non_negative_vector(bad):
    """Empty, negative or non-finite class counts are refused by both weight formulas (a NaN count
    would otherwise slip through the n >= 1 floor and poison every weight)."""
    with pytest.raises(ValueError, match="class counts"):
        class_balanced_weights(bad, 0.9999)
    with pytest.raises(ValueError, match="class counts"):
        ldam_margins(bad, 0.5)


def test_out_of_range_beta_max_m_and_reduction_are_refused():
    """beta = 1 would give 0/0 weights; max_m = 0 all-zero margins (not LDAM); an unknown reduction
    or a negative DRW switch epoch is a mistake, not a silent default."""
    for beta in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="beta"):
            class_balanced_weights([10, 5], beta)
    for max_m in (0.0, -0.5):
        with pytest.raises(ValueError, match="max_m"):
            ldam_margins([10, 5], max_m)
    with pytest.raises(ValueError, match="unknown reduction"):
        reduce_weighted(torch.ones(2), torch.tensor([0, 1]), None, "sum")
    with pytest.raises(ValueError, match="unknown reduction"):
        DRW([10, 5], 0, reduction="mean")
    with pytest.raises(ValueError, match="switch_epoch"):
        DRW([10, 5], -1)


def test_loss_functions_default_to_the_protocols_settings():
    """Called without settings, the formulas use the protocol's values (PROTOCOL.md §7, notes §2-4):
    focal gamma 1 (softmax and sigmoid), LDAM s = 30 and max_m = 0.5, CB beta = 0.9999."""
    logits, y = torch.tensor([[1.0, 0.2, -0.5], [0.3, 0.1, 1.5]]), torch.tensor([0, 1])
    assert torch.equal(softmax_focal_per_sample(logits, y), softmax_focal_per_sample(logits, y, 1.0))
    assert torch.equal(sigmoid_focal_per_sample(logits, y), sigmoid_focal_per_sample(logits, y, 1.0))
    margins = torch.tensor([0.2, 0.4, 0.1])
    assert torch.equal(ldam_per_sample(logits, y, margins), ldam_per_sample(logits, y, margins, 30.0))
    counts = [500, 50, 5]
    assert torch.equal(ldam_margins(counts), ldam_margins(counts, 0.5))
    assert torch.equal(class_balanced_weights(counts), class_balanced_weights(counts, 0.9999))
    assert torch.equal(drw_weights(0, 0, counts), class_balanced_weights(counts, 0.9999))
    assert torch.equal(DRW(counts, 0).weights, class_balanced_weights(counts, 0.9999))
    run = SimpleNamespace(data=SimpleNamespace(noisy_counts=np.array(counts)), device=torch.device("cpu"), first_drop=3)
    drw = DRW.from_run(run)  # the LDAM-DRW code's weighted mean (torch's weight=), beta 0.9999
    assert drw.reduction == DRW(counts, 0).reduction == "weight" and drw.switch_epoch == 3
    assert torch.equal(drw.weights, class_balanced_weights(counts, 0.9999))


def test_weights_and_margins_in_float64_keep_float64_precision():
    """``dtype=float64`` gives float64 weights and margins computed in float64 (not float32 values
    cast up), and LDAM applies float64 margins without rounding them to float32."""
    counts = [1000, 100, 10]
    w = class_balanced_weights(counts, 0.9999, dtype=torch.float64)
    assert w.dtype == torch.float64
    assert torch.allclose(w, torch.tensor(_cb_by_hand(counts, 0.9999), dtype=torch.float64), rtol=1e-12, atol=0)
    m = ldam_margins(counts, 0.3, dtype=torch.float64)
    assert m.dtype == torch.float64
    expected_m = [0.3 * (10 / n) ** 0.25 for n in counts]
    assert torch.allclose(m, torch.tensor(expected_m, dtype=torch.float64), rtol=1e-12, atol=0)
    logits, y = torch.tensor([[0.5, 0.2, -0.1]], dtype=torch.float64), torch.tensor([1])
    z = [30 * (v - (expected_m[1] if j == 1 else 0.0)) for j, v in enumerate(logits[0].tolist())]
    by_hand = -z[1] + math.log(sum(math.exp(v) for v in z))
    assert ldam_per_sample(logits, y, m).item() == pytest.approx(by_hand, rel=1e-12)


def test_reduce_weighted_keeps_the_losses_dtype():
    """Class weights (float64 here) are cast to the per-sample losses' dtype, so the batch loss has
    the losses' dtype whatever the weights'."""
    per, y = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 1])
    w = torch.tensor([0.5, 1.5], dtype=torch.float64)
    for reduction in REDUCTIONS:
        assert reduce_weighted(per, y, w, reduction).dtype == torch.float32


def test_focal_floor_is_far_below_any_real_modulator():
    """1 - p_t ~ 1e-7 (a confident, right sample) keeps its own (1 - p_t)^gamma, not a floor like
    1e-6: the floor is the smallest normal float only (float64 for float64 logits)."""
    logits, y = torch.tensor([[16.0, 0.0]], dtype=torch.float64), torch.tensor([0])
    q = 1 / (1 + math.exp(16.0))  # 1 - p_t ~ 1.1e-7
    for gamma in (0.5, 1.0, 2.0):
        got = softmax_focal_per_sample(logits, y, gamma).item()
        assert got == pytest.approx(q ** gamma * -math.log1p(-q), rel=1e-6), gamma


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_sigmoid_focal_gradient_flows_through_its_modulator(gamma):
    """The one-vs-all focal modulator (1 - p_t,j)^gamma is part of the graph (the CB official code
    differentiates through it), so the gradient is that of the whole formula."""
    logits = torch.tensor([[1.0, -0.5, 0.25], [0.3, 2.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    a = logits.clone().requires_grad_(True)
    sigmoid_focal_per_sample(a, y, gamma).sum().backward()
    b = logits.clone().requires_grad_(True)
    onehot = F.one_hot(y, 3).double()
    p_t = torch.where(onehot.bool(), torch.sigmoid(b), 1 - torch.sigmoid(b))
    (-((1 - p_t) ** gamma) * torch.log(p_t)).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-10)

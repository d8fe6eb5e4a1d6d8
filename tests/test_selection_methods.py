"""Co-teaching, O2U-Net and AUM: the selection rules on hand-built tensors, the cross update, each
method's whole fit replayed by hand on a tiny full-batch run, and one short real training per
method on fmnist-mini (imbalance 50: 2,740 samples, 2 epochs)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import methods
import methods.aum as aum_module
import methods.o2u as o2u_module
from bench.errors import BenchError
from bench.spec import RunSpec
from methods.aum import AUM, AUMParams, aum_from_margins, aum_threshold, combine_runs, threshold_sets
from methods.base import Run, params_items
from methods.coteaching import (
    CoTeaching,
    CoTeachingParams,
    coteaching_losses,
    coteaching_step,
    num_remember,
    remember_rate,
)
from methods.curves import linear_cycle_schedule, margin
from methods.o2u import O2U, O2UParams, drop_highest, o2u_scores

# ----------------------------------------------------------------------------- Co-teaching


def test_remember_rate_is_papers_schedule():
    # R(T) = 1 - min(T / T_k * tau, tau), T counted from 0 (Han et al. 2018, Algorithm 1)
    assert [remember_rate(t, 0.4, 10) for t in (0, 1, 5, 10, 11, 150)] == pytest.approx(
        [1.0, 0.96, 0.8, 0.6, 0.6, 0.6])
    assert remember_rate(5, 0.4, 10, exponent=2) == pytest.approx(1 - 0.25 * 0.4)
    assert remember_rate(3, 0.0, 10) == 1.0


def test_num_remember_is_floor_of_rate_times_batch():
    assert num_remember(0.6, 128) == 76          # int(76.8)
    assert num_remember(1 - 0.29, 100) == 71
    # floor despite float rounding just below a whole number (module docstring): 0.29 * 100 and
    # 0.57 * 100 are 28.999999999999996 and 56.99999999999999 (0.71 * 100 is exactly 71.0)
    assert num_remember(0.29, 100) == 29 and num_remember(0.57, 100) == 57
    assert num_remember(0.6, 1) == 1             # never an empty batch
    assert num_remember(1.0, 16) == 16


def test_coteaching_keeps_exactly_R_of_the_batch_and_updates_the_peer():
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    # network 1 finds samples 0, 1, 2 easy; network 2 finds samples 3, 4, 5 easy
    l1 = torch.tensor([[4.0, 0.0], [0.0, 4.0], [3.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0]], requires_grad=True)
    l2 = torch.tensor([[0.0, 2.0], [2.0, 0.0], [0.0, 1.0], [0.0, 4.0], [4.0, 0.0], [0.0, 3.0]], requires_grad=True)
    keep = num_remember(0.5, 6)
    loss1, loss2, by1, by2, ce1, ce2 = coteaching_losses(l1, l2, y, keep)
    assert len(by1) == len(by2) == keep == 3
    assert set(by1.tolist()) == {0, 1, 2} and set(by2.tolist()) == {3, 4, 5}
    # network 1's loss is its own CE over the samples network 2 kept, the plain mean (one division)
    assert loss1.item() == pytest.approx(F.cross_entropy(l1[[3, 4, 5]], y[[3, 4, 5]]).item())
    assert loss2.item() == pytest.approx(F.cross_entropy(l2[[0, 1, 2]], y[[0, 1, 2]]).item())
    g1, = torch.autograd.grad(loss1, l1, retain_graph=True)
    assert (g1[:3] == 0).all() and (g1[3:].abs().sum(1) > 0).all()  # only the peer's choice moves net 1
    assert torch.autograd.grad(loss1, l2, allow_unused=True)[0] is None
    g2, = torch.autograd.grad(loss2, l2)
    assert (g2[3:] == 0).all() and (g2[:3].abs().sum(1) > 0).all()


def test_coteaching_step_moves_each_network_on_its_peers_samples():
    torch.manual_seed(0)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    net1, net2 = nn.Linear(5, 3), nn.Linear(5, 3)
    ref1, ref2 = copy.deepcopy(net1), copy.deepcopy(net2)
    opt1 = torch.optim.SGD(net1.parameters(), lr=0.1)
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1)
    with torch.no_grad():
        chosen_by_1 = torch.argsort(F.cross_entropy(net1(x), y, reduction="none"))[:7]
        chosen_by_2 = torch.argsort(F.cross_entropy(net2(x), y, reduction="none"))[:7]
    assert set(chosen_by_1.tolist()) != set(chosen_by_2.tolist())  # the peers disagree: the test can tell
    coteaching_step(net1, net2, opt1, opt2, x, y, keep=7)
    # the same updates done by hand: plain SGD on each network's mean CE over its peer's choice
    for ref, chosen, net in ((ref1, chosen_by_2, net1), (ref2, chosen_by_1, net2)):
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        F.cross_entropy(ref(x[chosen]), y[chosen]).backward()
        ref_opt.step()
        for a, b in zip(net.parameters(), ref.parameters()):
            assert torch.allclose(a, b, atol=1e-6)


def test_coteaching_params_validate():
    with pytest.raises(BenchError):
        CoTeachingParams(tau="lots")
    with pytest.raises(BenchError):
        CoTeachingParams(t_k=0)
    assert CoTeaching.resolve_params("quick").t_k == 1 and CoTeaching.resolve_params("paper").t_k == 10
    defaults = CoTeachingParams()  # PROTOCOL.md §7: c = 1, tau = the nominal noise rate
    assert (defaults.exponent, defaults.tau) == (1.0, "nominal")


# -------------------------------------------------------------------------------- O2U-Net


def test_o2u_score_is_mean_of_per_epoch_centred_losses():
    losses = torch.tensor([[1.0, 2.0, 3.0, 6.0],    # epoch mean 3
                           [0.5, 0.5, 4.5, 2.5]])   # epoch mean 2
    expected = torch.tensor([((1 - 3) + (0.5 - 2)) / 2, ((2 - 3) + (0.5 - 2)) / 2,
                             ((3 - 3) + (4.5 - 2)) / 2, ((6 - 3) + (2.5 - 2)) / 2])
    assert torch.allclose(o2u_scores(losses), expected)


@pytest.mark.parametrize("rate,n_drop", [(0.4, 400), (0.2, 200), (0.0, 0), (0.1234, 123), (0.4567, 457)])
def test_o2u_drops_exactly_the_requested_fraction_of_highest_scores(rate, n_drop):
    scores = np.random.default_rng(0).permutation(1000).astype(float)
    kept = drop_highest(scores, rate)
    assert (~kept).sum() == n_drop
    if n_drop:
        assert scores[~kept].min() > scores[kept].max()  # the removed are exactly the top scores


def test_o2u_params_validate():
    with pytest.raises(BenchError):
        O2UParams(retrain="continue")
    with pytest.raises(BenchError):
        O2UParams(cycles=0)
    quick = O2U.resolve_params("quick")
    assert (quick.cycle_length, quick.cycles, quick.cycle_batch_size) == (5, 2, 16)
    assert (O2UParams().cycle_length, O2UParams().lr_high, O2UParams().lr_low) == (10, 0.01, 0.001)


# ------------------------------------------------------------------------------------ AUM


def test_aum_on_hand_built_logit_sequences():
    # 3 epochs x 2 samples x 3 classes (the last class plays the threshold class), labels [0, 2]
    logits = torch.tensor([
        [[3.0, 1.0, 0.0], [1.0, 2.0, 0.5]],   # margins 2, 0.5 - 2 = -1.5
        [[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]],   # margins -1, 1
        [[4.0, 0.0, 1.0], [2.0, 0.0, 2.0]],   # margins 3, 0
    ])
    y = torch.tensor([0, 2])
    margins = torch.stack([margin(logits[e], y) for e in range(3)]).numpy()
    assert margins.tolist() == [[2.0, -1.5], [-1.0, 1.0], [3.0, 0.0]]
    assert aum_from_margins(margins).tolist() == pytest.approx([4 / 3, -0.5 / 3])
    assert aum_from_margins(margins, skip_epochs=1).tolist() == pytest.approx([1.0, 0.5])


def test_aum_threshold_is_99th_percentile_of_threshold_samples():
    aum = np.concatenate([np.arange(101.0), [98.9, 99.1, -5.0]])  # 101 threshold samples 0..100
    thr_idx = np.arange(101)
    thr = aum_threshold(aum, thr_idx)
    assert thr == pytest.approx(99.0) == pytest.approx(np.percentile(np.arange(101.0), 99))
    # the code's rule: flagged when more than 1 % of threshold samples have a larger AUM
    for a in (98.9, 99.1, -5.0):
        assert (a < thr) == (np.mean(np.arange(101.0) > a) > 0.01)


def test_threshold_sets_are_disjoint_and_sized():
    a, b = threshold_sets(1100, 10, np.random.default_rng(0))
    assert len(a) == len(b) == 1100 // 11 and not set(a) & set(b)
    a, b = threshold_sets(1100, 10, np.random.default_rng(0), "code")
    assert len(a) == len(b) == 110


def test_two_runs_score_every_sample_and_remove_only_if_flagged_in_both():
    sets = [np.array([0, 1]), np.array([2, 3])]
    aum1 = np.array([9, 9, 0.0, 5.0, -1.0, 2.0, -1.0, 3.0])   # threshold 1.0 (samples 0, 1 excluded)
    aum2 = np.array([0.0, 3.0, 9, 9, -1.0, -1.0, 2.0, 3.0])   # threshold 2.0 (samples 2, 3 excluded)
    removed, score, mean_aum, count = combine_runs([aum1, aum2], [1.0, 2.0], sets)
    assert (count >= 1).all() and count.tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    # 0: run 2 only, 0 < 2 -> removed; 1: 3 >= 2 kept; 2: run 1 only, 0 < 1 removed; 3: 5 kept;
    # 4: flagged in both -> removed; 5: flagged in run 2 only -> kept; 6: run 1 only -> kept; 7 kept
    assert removed.tolist() == [True, False, True, False, True, False, False, False]
    assert ((score > 0) == removed).all()
    assert score[4] == pytest.approx(min(1 - (-1), 2 - (-1))) and mean_aum[7] == 3.0


def test_aum_params_validate():
    with pytest.raises(BenchError):
        AUMParams(threshold_count="half")
    with pytest.raises(BenchError):
        AUMParams(percentile=0)
    defaults = AUMParams()  # PROTOCOL.md §7: N // (K+1) threshold samples, 99th percentile, every epoch
    assert (defaults.threshold_count, defaults.percentile, defaults.skip_epochs) == ("paper", 99.0, 0)


# ------------------------------------------------ whole fits replayed by hand on a tiny run
# A synthetic run (8x8 one-channel images, no augmentation, linear models) trained full-batch:
# with one batch per epoch the shuffling cannot change an update, so each method's fit can be
# replayed step by step with plain torch and every selection checked against that replay.


def _tiny_full_batch_run(n, k=3, epochs=3, milestones=(2,), seed=0):
    g = np.random.default_rng(seed)
    x = g.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    y = g.integers(0, k, size=n)
    data = SimpleNamespace(dataset=SimpleNamespace(mean=(0.5,), std=(0.25,), augment=False),
                           x_train=x, train_y=y, is_noisy=np.zeros(n, dtype=bool), num_classes=k)
    spec = RunSpec(method="ce", batch_size=n, epochs=epochs, milestones=milestones, warmup_epochs=0)
    run = Run(spec=spec, data=data, device=torch.device("cpu"))
    initial = []  # a copy of every network the method builds, in order, as built

    def model(num_classes=None):
        torch.manual_seed(len(initial))
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes or k))
        initial.append(copy.deepcopy(net))
        return net

    run.model = model
    run.evaluate = lambda net: {"acc": 0.0, "many": 0.0, "medium": 0.0, "few": 0.0}
    inputs = (torch.as_tensor(x).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25
    return run, initial, inputs


def _protocol_sgd(net):  # the spec's optimiser, written out
    return torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _sgd_step(opt, lr, loss):
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad()
    loss.backward()
    opt.step()


def _hand_ce(logits, y):
    return torch.logsumexp(logits, 1) - logits[torch.arange(len(y)), y]


def _hand_margin(logits, y):
    """Assigned logit minus the largest *other* logit, from the two largest logits."""
    top2 = logits.topk(2, dim=1)
    other = torch.where(top2.indices[:, 0] == y, top2.values[:, 1], top2.values[:, 0])
    return logits[torch.arange(len(y)), y] - other


def _retrain_spy(monkeypatch, module):
    """Replace the method's final retraining by a recorder of what it would train on."""
    seen = {}

    def train_classifier(run, model, loss_fn, *, loader, **kwargs):
        seen.update(model=model, loader=loader)
        return model

    monkeypatch.setattr(module, "train_classifier", train_classifier)
    return seen


def test_coteaching_fit_replayed_by_hand():
    n = 60
    run, initial, x = _tiny_full_batch_run(n, epochs=3, milestones=(2,))
    returned = CoTeaching(CoTeachingParams(tau="0.5", t_k=2)).fit(run)
    y = torch.as_tensor(run.data.train_y)
    f, g = initial[0], initial[1]  # network 1, network 2 (independent initialisations)
    opt_f, opt_g = _protocol_sgd(f), _protocol_sgd(g)
    for epoch, lr in enumerate((0.1, 0.1, 0.01)):
        rate = 1 - min(epoch / 2 * 0.5, 0.5)  # R(T) = 1 - min(T / T_k * tau, tau)
        keep = int(rate * n)
        ce_f, ce_g = _hand_ce(f(x), y), _hand_ce(g(x), y)
        by_f, by_g = ce_f.detach().argsort()[:keep], ce_g.detach().argsort()[:keep]
        _sgd_step(opt_f, lr, ce_f[by_g].mean())  # f learns from g's small-loss samples
        _sgd_step(opt_g, lr, ce_g[by_f].mean())  # and g from f's
    rows = run.history
    assert [r["remember_rate"] for r in rows] == pytest.approx([1.0, 0.75, 0.5])
    assert [r["kept"] for r in rows] == [60, 45, 30]
    expected_kept = np.zeros(n, dtype=bool)
    expected_kept[by_g.numpy()] = True  # last epoch: the samples that updated network 1, chosen by 2
    assert set(by_f.tolist()) != set(by_g.tolist())  # the two choices differ: the check can tell
    assert (run.records["kept"] == expected_kept).all()
    np.testing.assert_allclose(run.records["score"], ce_g.detach().numpy(), atol=1e-5)  # network 2's CE
    np.testing.assert_allclose(run.records["loss_net1"], ce_f.detach().numpy(), atol=1e-5)
    for a, b in zip(returned.parameters(), f.parameters()):  # network 1 is returned
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("retrain", ["scratch", "pretrained"])
def test_o2u_fit_replayed_by_hand(monkeypatch, retrain):
    n = 60
    run, initial, x = _tiny_full_batch_run(n, epochs=3, milestones=(2,))
    seen = _retrain_spy(monkeypatch, o2u_module)
    O2U(O2UParams(drop_rate="0.25", cycle_length=2, cycles=2, cycle_batch_size=n, retrain=retrain)).fit(run)
    y = torch.as_tensor(run.data.train_y)
    net = initial[0]
    opt = _protocol_sgd(net)
    for lr in (0.1, 0.1):  # stage 1: the protocol up to the first drop (epoch 2)
        _sgd_step(opt, lr, _hand_ce(net(x), y).mean())
    stage1 = copy.deepcopy(net.state_dict())
    opt = _protocol_sgd(net)  # stage 2: the same network, a fresh optimiser, the cyclical lr
    losses = []
    for e in range(4):
        t = (e % 2 + 1) / 2
        ce = _hand_ce(net(x), y)
        losses.append(ce.detach())
        _sgd_step(opt, (1 - t) * 0.01 + t * 0.001, ce.mean())
    losses = torch.stack(losses).numpy()
    score = (losses - losses.mean(axis=1, keepdims=True)).mean(axis=0)  # centred per epoch, averaged
    removed = np.zeros(n, dtype=bool)
    removed[np.argsort(score)[-15:]] = True  # the round(0.25 * 60) highest
    np.testing.assert_allclose(run.records["score"], score, atol=1e-5)
    assert (run.records["kept"] == ~removed).all()
    loader, final = seen["loader"], seen["model"]
    assert torch.equal(loader.y, y[torch.as_tensor(~removed)])  # retrained on the kept samples only
    start = stage1 if retrain == "pretrained" else initial[1].state_dict()  # else a fresh network
    assert len(initial) == 2
    for name, value in final.state_dict().items():
        assert torch.allclose(value, start[name], atol=1e-5), name


@pytest.mark.parametrize("params", [AUMParams(), AUMParams(threshold_count="code", percentile=90.0,
                                                          skip_epochs=1, aum_epochs=2)], ids=["defaults", "settings"])
def test_aum_fit_replayed_by_hand(monkeypatch, params):
    """Defaults: N // (K+1) threshold samples, every epoch up to the first drop, 99th percentile
    (PROTOCOL.md §7); the settings variant (the code's N // K, skip epoch 0, a given length and
    percentile) checks that each setting reaches the selection."""
    n, k = 400, 3
    run, initial, x = _tiny_full_batch_run(n, k, epochs=4, milestones=(3,))
    seen = _retrain_spy(monkeypatch, aum_module)
    AUM(params).fit(run)
    which = run.records["threshold_set"]
    size = n // (k + 1) if params.threshold_count == "paper" else n // k
    assert (which == 1).sum() == (which == 2).sum() == size
    y = np.asarray(run.data.train_y)
    removed = np.ones(n, dtype=bool)
    thresholds = []
    for r in (1, 2):
        labels = y.copy()
        labels[which == r] = k  # run r's threshold samples move to the extra class
        labels = torch.as_tensor(labels)
        net = initial[r - 1]
        assert net[1].out_features == k + 1
        opt = _protocol_sgd(net)
        margins = []
        for lr in (0.1,) * (params.aum_epochs or 3):  # default: every epoch up to the first drop (3)
            logits = net(x)
            margins.append(_hand_margin(logits.detach(), labels))
            _sgd_step(opt, lr, F.cross_entropy(logits, labels))
        aum = torch.stack(margins[params.skip_epochs:]).mean(0).numpy()
        thresholds.append(np.percentile(aum[which == r], params.percentile))
        np.testing.assert_allclose(run.records[f"aum_run{r}"][which != r], aum[which != r], atol=1e-5)
        # removed only when below the threshold in every run where the sample was scored
        removed &= (aum < thresholds[-1]) | (which == r)
    logged = [row["threshold"] for row in run.history if row["stage"].endswith("_threshold")]
    assert logged == pytest.approx(thresholds, abs=1e-5)
    assert 0 < removed.sum() < n  # a real selection, both ways
    assert (run.records["kept"] == ~removed).all()
    loader, final = seen["loader"], seen["model"]
    assert torch.equal(loader.y, torch.as_tensor(y[~removed]))  # observed labels, kept samples only
    assert final[1].out_features == k  # the retrained classifier has no threshold class


# --------------------------------------------------------------------- short real trainings


def _run(method, **param_overrides):
    cls = methods.get(method)
    params = cls.resolve_params("quick", {k: str(v) for k, v in param_overrides.items()})
    spec = RunSpec(method=method, imbalance=50, noise_type="flip2", noise_rate=0.4, epochs=2,
                   warmup_epochs=0, milestones=(1,), params=params_items(params))
    from bench.execute import load_data
    run = Run(spec=spec, data=load_data(spec), device=torch.device("cpu"), params=params)
    torch.manual_seed(0)
    model = cls(params).fit(run)
    return run, model


def test_coteaching_trains_and_records_selection():
    run, model = _run("coteaching", t_k=1)
    n = len(run.data.train_y)
    rows = run.history
    assert [r["remember_rate"] for r in rows] == pytest.approx([1.0, 0.6])
    # the last epoch kept floor(0.6 B) of every batch of 128 and of the final short batch
    full, rest = divmod(n, 128)
    assert rows[-1]["kept"] == full * num_remember(0.6, 128) + (num_remember(0.6, rest) if rest else 0)
    assert run.records["kept"].sum() == rows[-1]["kept"]
    assert np.isfinite(run.records["score"]).all() and run.records["score"].shape == (n,)
    assert "test_acc_net2" in rows[-1] and rows[-1]["test_acc"] > 20


def test_o2u_trains_and_drops_the_nominal_fraction():
    run, model = _run("o2u", cycle_length=2, cycles=1, cycle_batch_size=64)
    n = len(run.data.train_y)
    kept, score = run.records["kept"], run.records["score"]
    assert (~kept).sum() == round(0.4 * n)
    assert score[~kept].min() >= score[kept].max()
    stages = [(r["stage"], r.get("lr"), r.get("batch_size")) for r in run.history]
    cyc = linear_cycle_schedule(0.01, 0.001, cycle=2, cycles=1)
    assert stages == [("pretrain", 0.1, 128), ("cyclic", cyc.lr(0), 64), ("cyclic", cyc.lr(1), 64),
                      ("retrain", 0.1, None), ("retrain", pytest.approx(0.01), None)]


def test_aum_scores_every_sample_across_two_runs_and_retrains():
    run, model = _run("aum")
    n, k = len(run.data.train_y), run.num_classes
    which = run.records["threshold_set"]
    assert (which == 1).sum() == (which == 2).sum() == n // (k + 1)
    assert np.isfinite(run.records["aum"]).all()  # every sample scored at least once
    assert np.isnan(run.records["aum_run1"][which == 1]).all()
    assert np.isnan(run.records["aum_run2"][which == 2]).all()
    assert ((run.records["score"] > 0) == ~run.records["kept"]).all()
    assert [r["stage"] for r in run.history] == ["aum1", "aum1_threshold", "aum2", "aum2_threshold",
                                                 "retrain", "retrain"]
    assert model.fc.out_features == k  # the retrained classifier has no threshold class


@pytest.mark.parametrize("method, setting", [("coteaching", "tau"), ("o2u", "drop_rate")])
def test_a_rate_typed_differently_is_one_run(method, setting):
    """The rate options are texts ("nominal", "realised" or a number) and part of the run's key:
    one number typed as .35, 0.350 or 3.5e-1 must be the same run, and the usual text keeps the
    key it had."""
    cls = methods.get(method)

    def key(text):
        params = cls.resolve_params("quick", {setting: text})
        return RunSpec(method=method, params=params_items(params)).key(), getattr(params, setting)

    assert {key(t) for t in (".35", "0.350", "3.5e-1", "0.35")} == {key("0.35")}
    assert key("0.35")[1] == "0.35" and key("0.0") == key("0") == key("-0") and key("0")[1] == "0"
    assert key("nominal")[1] == "nominal" and key("realised")[1] == "realised"
    assert len({key(t) for t in ("0.35", "0.1", "nominal", "realised")}) == 4


# ------------------------------------------------- settings that reach the selection (mutation-tested)


def test_coteaching_fit_ramps_the_forget_rate_with_its_exponent():
    """R(T) = 1 - min((T / T_k)^c tau, tau) with the run's c (Han et al. 2018, Alg. 1; module
    docstring): c = 2 gives 1 - (1/4)^2 0.5 and 1 - (2/4)^2 0.5 at T = 1, 2 for T_k = 4."""
    n = 60
    run, _, _ = _tiny_full_batch_run(n, epochs=3, milestones=(2,))
    CoTeaching(CoTeachingParams(tau="0.5", t_k=4, exponent=2.0)).fit(run)
    rates = [1.0, 1 - 0.0625 * 0.5, 1 - 0.25 * 0.5]
    assert [r["remember_rate"] for r in run.history] == pytest.approx(rates)
    assert [r["kept"] for r in run.history] == [int(rate * n) for rate in rates]


def test_o2u_defaults_are_the_documented_ones():
    """PROTOCOL.md §7 / module docstring: 10-epoch cycles from r1 = 0.01 to r2 = 0.001 at batch 16,
    5 cycles, k = the nominal noise rate, stage 1 up to the first drop, retrain from scratch."""
    p = O2UParams()
    assert (p.cycle_length, p.cycles, p.lr_high, p.lr_low, p.cycle_batch_size) == (10, 5, 0.01, 0.001, 16)
    assert (p.drop_rate, p.stage1_epochs, p.retrain) == ("nominal", 0, "scratch")


def test_aum_scoring_runs_use_their_batch_size_setting(monkeypatch):
    """``aum_batch_size`` (the code's 64) sets the scoring runs' batch; 0 keeps the protocol's."""
    n, k = 400, 3
    _retrain_spy(monkeypatch, aum_module)
    for setting, expected in ((100, 100), (0, n)):
        run, _, _ = _tiny_full_batch_run(n, k, epochs=4, milestones=(3,))
        AUM(AUMParams(aum_batch_size=setting)).fit(run)
        sizes = {r["batch_size"] for r in run.history if r["stage"] in ("aum1", "aum2")}
        assert sizes == {expected}, setting

"""methods/curves.py (per-sample recording, schedules) and bench/analysis.py (selection quality).

The recording tests use a tiny synthetic run (8x8 images, a linear model, no augmentation) so the
recorded values can be checked exactly against a hand replay of the training.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.analysis import auroc, average_ranks, selection_quality
from bench.errors import BenchError
from bench.spec import RunSpec
from bench.train import lr_at
from methods.base import Run
from methods.curves import (
    CurveRecorder,
    Curves,
    Schedule,
    centre,
    constant_schedule,
    curvenet_probe_schedule,
    linear_cycle_schedule,
    margin,
    per_sample_ce,
    protocol_schedule,
    resolve_rate,
    square_wave_schedule,
    step_schedule,
    train_and_record,
)

# ------------------------------------------------------------------------------ quantities


def test_per_sample_ce_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    y = torch.tensor([0, 2])
    z = math.exp(2) + 1 + math.exp(-1)
    expected = torch.tensor([-(2 - math.log(z)), math.log(3)])
    assert torch.allclose(per_sample_ce(logits, y), expected, atol=1e-6)


def test_margin_is_assigned_minus_largest_other_logit():
    logits = torch.tensor([[2.0, 1.0, 0.5],    # assigned 0: 2 - 1 = 1
                           [0.0, 3.0, 1.0],    # assigned 0: 0 - 3 = -3
                           [0.0, 3.0, 1.0],    # assigned 1: 3 - 1 = 2
                           [1.0, 1.0, -2.0]])  # assigned 1, tie: 0
    y = torch.tensor([0, 0, 1, 1])
    assert torch.equal(margin(logits, y), torch.tensor([1.0, -3.0, 2.0, 0.0]))
    # on logits, not probabilities: a shift of all logits leaves it unchanged, a scale scales it
    assert torch.allclose(margin(logits + 5, y), margin(logits, y))
    assert torch.allclose(margin(3 * logits, y), 3 * margin(logits, y))


# ------------------------------------------------------------------------------- schedules


def test_curvenet_probe_schedule_is_the_code_schedule():
    s = curvenet_probe_schedule()
    assert len(s) == 300
    assert s.lrs[:120] == (0.1,) * 120 and s.batch_sizes[:120] == (128,) * 120
    assert s.batch_sizes[120:] == (16,) * 180
    # recognition_cycle.py adjust_lr: lr_ratio toggles whenever epoch % 15 == 0 from epoch 120
    for e in range(120, 300):
        assert s.lr(e) == (0.01 if ((e - 120) // 15) % 2 == 0 else 0.001), e
    assert s.lr(134) == 0.01 and s.lr(135) == 0.001 and s.lr(150) == 0.01 and s.lr(299) == 0.001


def test_o2u_linear_cycle_schedule_matches_main_py_formula():
    s = linear_cycle_schedule(0.01, 0.001, cycle=10, cycles=3, batch_size=16)
    assert len(s) == 30 and set(s.batch_sizes) == {16}
    expected = [(1 - ((e % 10) + 1) / 10) * 0.01 + ((e % 10) + 1) / 10 * 0.001 for e in range(30)]
    assert s.lrs == pytest.approx(expected)
    assert s.lr(0) == pytest.approx(0.0091) and s.lr(9) == pytest.approx(0.001) and s.lr(10) == pytest.approx(0.0091)
    assert all(s.lr(e) > s.lr(e + 1) for e in range(9))  # linearly decreasing within a cycle


def test_step_and_protocol_schedules_follow_lr_at():
    s = step_schedule(0.1, 200, milestones=(80, 100), lr_decay=0.1, warmup_epochs=5, batch_size=128)
    assert s.lrs == tuple(lr_at(e, lr=0.1, warmup_epochs=5, milestones=(80, 100), lr_decay=0.1) for e in range(200))
    assert s.lr(0) == pytest.approx(0.02) and s.lr(79) == 0.1 and s.lr(80) == pytest.approx(0.01)
    spec = RunSpec(method="ce")  # quick: 20 epochs, warm-up 2, drops at 8 and 10
    run = SimpleNamespace(spec=spec, lr_at=lambda e: lr_at(e, lr=spec.lr, warmup_epochs=spec.warmup_epochs,
                                                           milestones=spec.milestones, lr_decay=spec.lr_decay))
    first = protocol_schedule(run, 8)
    assert len(first) == 8 and first.lrs == (0.05,) + (0.1,) * 7 and first.batch_sizes == (128,) * 8
    assert len(protocol_schedule(run)) == 20
    assert protocol_schedule(run, 3, batch_size=16).batch_sizes == (16,) * 3


def test_schedule_composes_hashes_and_validates():
    a, b = constant_schedule(0.1, 2, 128), square_wave_schedule(0.01, 0.001, half_period=1, periods=2, batch_size=16)
    c = a + b
    assert c.lrs == (0.1, 0.1, 0.01, 0.001, 0.01, 0.001) and c.batch_sizes == (128, 128, 16, 16, 16, 16)
    assert c.key() == (a + b).key() and c.key() != (b + a).key()
    with pytest.raises(BenchError):
        Schedule((0.1,), (0,))
    with pytest.raises(BenchError):
        linear_cycle_schedule(cycle=0)


def test_schedule_validation_and_pinned_key():
    """lr 0 is a schedule (AUM's frozen checks), a negative, infinite or NaN lr, a fractional batch
    size or a missing batch size is not; the key of a schedule is pinned (cached probe curves are
    found by it)."""
    assert Schedule((0.0,), (16,)).lrs == (0.0,)
    for lrs, sizes in (((-0.1,), (16,)), ((math.inf,), (16,)), ((math.nan,), (16,)), ((0.1,), (1.5,)),
                       ((0.1, 0.1), (16,))):
        with pytest.raises(BenchError):
            Schedule(lrs, sizes)
    assert constant_schedule(0.1, 2, 128).key() == "424696cf265557a7"
    assert (constant_schedule(0.1, 1, 128) + square_wave_schedule(0.01, 0.001, half_period=1, periods=1,
                                                                   batch_size=16)).key() == "4c1114d58849515f"


# ------------------------------------------------------------------------------- recording


def test_recorder_scatters_by_sample_index():
    rec = CurveRecorder(2, 5, "cpu")
    rec.add(0, torch.tensor([3, 0]), torch.tensor([30.0, 0.0]))
    rec.add(0, torch.tensor([4, 1, 2]), torch.tensor([40.0, 10.0, 20.0]))
    rec.add(1, torch.tensor([2]), torch.tensor([21.0]))
    assert torch.equal(rec.values[0], torch.tensor([0.0, 10.0, 20.0, 30.0, 40.0]))
    assert rec.values[1, 2] == 21.0 and torch.isnan(rec.values[1, [0, 1, 3, 4]]).all()


def _tiny_run(n=48, k=3, seed=0, batch_size=16):
    """A Run over synthetic 8x8 one-channel images, no augmentation (exact replays possible)."""
    g = np.random.default_rng(seed)
    x = g.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    y = g.integers(0, k, size=n)
    clean = y.copy()
    clean[:n // 4] = (clean[:n // 4] + 1) % k
    data = SimpleNamespace(
        dataset=SimpleNamespace(mean=(0.5,), std=(0.25,), augment=False),
        x_train=x, train_y=y, train_clean_y=clean, is_noisy=clean != y, num_classes=k,
    )
    spec = RunSpec(method="ce", batch_size=batch_size, noise_type="flip2", noise_rate=0.4)
    run = Run(spec=spec, data=data, device=torch.device("cpu"))
    return run


def _linear(k=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, k))


def _inputs(run):
    x = torch.as_tensor(run.data.x_train).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.25


def test_train_and_record_records_the_training_forward_before_the_step():
    run = _tiny_run(batch_size=48)  # one batch per epoch: the update is order-independent
    model = _linear()
    replay = copy.deepcopy(model)
    schedule = constant_schedule(0.5, 3, 48)
    curves = train_and_record(run, model, schedule, "loss", evaluate_every=0)
    assert curves.values.shape == (3, 48) and curves.quantity == "loss"
    x, y = _inputs(run), torch.as_tensor(run.data.train_y)
    opt = torch.optim.SGD(replay.parameters(), lr=0.5, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for e in range(3):
        before = F.cross_entropy(replay(x), y, reduction="none").detach()
        assert torch.allclose(curves.values[e], before, atol=1e-5), e  # sample i in column i
        opt.zero_grad()
        F.cross_entropy(replay(x), y).backward()
        opt.step()
    assert [h["stage"] for h in run.history] == ["probe"] * 3
    assert [h["lr"] for h in run.history] == [0.5] * 3


def test_train_and_record_margin_with_labels_and_indices():
    run = _tiny_run()
    model = _linear(4)  # 4 outputs: labels may use an extra class, as AUM's threshold samples do
    labels = np.array(run.data.train_y)
    labels[::5] = 3
    indices = np.arange(0, 48, 2)
    curves = train_and_record(run, model, constant_schedule(0.0, 2, 16), "margin", labels=labels,
                              indices=indices, evaluate_every=0)
    x = _inputs(run)
    expected = margin(model(x), torch.as_tensor(labels)).detach()  # lr 0: the model never changes
    for e in range(2):
        assert torch.allclose(curves.values[e, indices], expected[indices], atol=1e-5)
        assert torch.isnan(curves.values[e, 1::2]).all()  # not trained on, not recorded
    assert torch.equal(curves.labels, torch.as_tensor(labels))
    assert torch.allclose(curves.mean()[indices], expected[indices], atol=1e-5)


def test_train_and_record_changes_batch_size_and_lr_per_epoch():
    run = _tiny_run()
    schedule = constant_schedule(0.1, 1, 16) + constant_schedule(0.01, 2, 5)
    curves = train_and_record(run, _linear(), schedule, "loss", evaluate_every=0)
    assert not torch.isnan(curves.values).any()  # every sample once per epoch, whatever the batch
    assert [(h["lr"], h["batch_size"]) for h in run.history] == [(0.1, 16), (0.01, 5), (0.01, 5)]


def test_train_and_record_eval_pass_on_request():
    run = _tiny_run()
    model = _linear()
    curves = train_and_record(run, model, constant_schedule(0.0, 1, 16), "loss", record="eval", evaluate_every=0)
    expected = F.cross_entropy(model(_inputs(run)), torch.as_tensor(run.data.train_y), reduction="none")
    assert torch.allclose(curves.values[0], expected.detach(), atol=1e-5)


def test_train_and_record_logs_the_per_sample_mean_loss_and_evaluates_the_last_epoch():
    """Each epoch's logged loss is the mean over samples (batches of unequal size weighted by their
    size); evaluate_every=2 evaluates epochs 1 and 2 (every second one and the last)."""
    run = _tiny_run(batch_size=20)  # batches of 20, 20 and 8
    run.evaluate = lambda model: dict(acc=0.5, many=0.5, medium=0.5, few=0.5)  # no test split here
    model = _linear()
    train_and_record(run, model, constant_schedule(0.0, 3, 20), "loss", evaluate_every=2)
    expected = F.cross_entropy(model(_inputs(run)), torch.as_tensor(run.data.train_y)).item()
    assert [h["loss"] for h in run.history] == pytest.approx([expected] * 3, rel=1e-5)
    assert [("test_acc" in h) for h in run.history] == [False, True, True]


def test_train_and_record_records_without_an_extra_forward():
    """record="train" reads the training forward's logits: BatchNorm statistics move once per batch."""
    run = _tiny_run()  # batches of 16: 3 per epoch
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    train_and_record(run, model, constant_schedule(0.0, 2, 16), "loss", evaluate_every=0)
    assert model[2].num_batches_tracked.item() == 6


def test_train_and_record_eval_pass_runs_in_eval_mode_and_restores_train_mode():
    """record="eval": the values of an eval-mode pass (BatchNorm running statistics), then the
    model is back in train mode."""
    run = _tiny_run()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    curves = train_and_record(run, model, constant_schedule(0.0, 1, 16), "loss", record="eval", evaluate_every=0)
    assert model.training
    model.eval()
    expected = F.cross_entropy(model(_inputs(run)), torch.as_tensor(run.data.train_y), reduction="none")
    assert torch.allclose(curves.values[0], expected.detach(), atol=1e-5)


def test_train_and_record_rejects_bad_options():
    run = _tiny_run()
    with pytest.raises(BenchError):
        train_and_record(run, _linear(), constant_schedule(0.1, 1, 16), labels=np.zeros(47, dtype=np.int64))
    with pytest.raises(BenchError):
        train_and_record(run, _linear(), constant_schedule(0.1, 1, 16), "entropy")
    with pytest.raises(BenchError):
        train_and_record(run, _linear(), constant_schedule(0.1, 1, 16), record="both")


def test_centre_global_and_per_group():
    v = torch.tensor([[1.0, 2.0, 3.0, 10.0], [0.0, 0.0, 4.0, float("nan")]])
    g = centre(v)
    assert torch.allclose(g[0], torch.tensor([-3.0, -2.0, -1.0, 6.0]))
    assert torch.allclose(g[1, :3], torch.tensor([-4 / 3, -4 / 3, 8 / 3])) and torch.isnan(g[1, 3])
    by = centre(v, by=[0, 0, 1, 1])
    assert torch.allclose(by[0], torch.tensor([-0.5, 0.5, -3.5, 3.5]))
    assert torch.allclose(by[1, :3], torch.tensor([0.0, 0.0, 0.0]))
    scaled = centre(v, by=[0, 0, 1, 1], scale=True)
    assert torch.allclose(scaled[0], torch.tensor([-1.0, 1.0, -1.0, 1.0]))


def test_centre_keeps_float64_and_a_constant_group_at_zero():
    """float64 stays float64 (exactness tests); with scale a group of equal values is 0, not NaN
    (std clamped at eps); one group per sample or a BenchError."""
    v = torch.tensor([[1.0, 1.0, 2.0, 1e-9]], dtype=torch.float64)
    out = centre(v, by=[0, 0, 1, 1], scale=True)
    assert out.dtype == torch.float64 and torch.equal(out[0, :2], torch.zeros(2, dtype=torch.float64))
    assert centre(v)[0, 3].item() == pytest.approx(1e-9 - (4 + 1e-9) / 4, abs=1e-15)  # float32 would lose it
    with pytest.raises(BenchError):
        centre(v, by=[0, 0, 1])


def test_resolve_rate_options():
    run = _tiny_run()
    assert resolve_rate(run, "nominal") == 0.4
    assert resolve_rate(run, "realised") == pytest.approx(np.mean(run.data.is_noisy)) == 0.25
    assert resolve_rate(run, "0.3") == 0.3
    for bad in ("half", "1.0", "-0.1"):
        with pytest.raises(BenchError):
            resolve_rate(run, bad)
    clean = Run(spec=RunSpec(method="ce", noise_type="none", noise_rate=0.4), data=run.data, device=run.device)
    assert resolve_rate(clean, "nominal") == 0.0  # clean data: nominal rate 0 whatever noise_rate says


# -------------------------------------------------------------------------------- analysis


def test_selection_quality_by_hand():
    is_noisy = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    removed = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    score = np.array([0.9, 0.8, 0.1, 0.7, 0.2, 0.3, 0.0, 0.05])
    q = selection_quality(is_noisy, removed, score)
    assert q["precision"] == pytest.approx(2 / 3) and q["recall"] == pytest.approx(2 / 3)
    # pairs (noisy, clean) with noisy scored higher: 0.9 and 0.8 beat all 5; 0.1 beats 0.0 and 0.05
    assert q["auroc"] == pytest.approx((5 + 5 + 2) / 15)
    assert (q["removed"], q["noisy"], q["n"]) == (3, 3, 8)
    assert math.isnan(selection_quality(is_noisy, np.zeros(8, bool))["precision"])



def test_selection_quality_with_unequal_removed_and_noisy():
    is_noisy = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    removed = np.array([1, 0, 0, 0, 1, 1, 0, 0, 0, 0], bool)
    q = selection_quality(is_noisy, removed)
    assert q["precision"] == pytest.approx(1 / 3) and q["recall"] == pytest.approx(1 / 4)
    assert (q["removed"], q["noisy"], q["n"]) == (3, 4, 10)


def test_auroc_matches_mann_whitney_with_ties():
    stats = pytest.importorskip("scipy.stats")
    g = np.random.default_rng(1)
    pos = g.random(300) < 0.3
    score = np.round(g.normal(size=300) + pos, 1)  # rounded: many ties
    u = stats.mannwhitneyu(score[pos], score[~pos]).statistic
    assert auroc(pos, score) == pytest.approx(u / (pos.sum() * (~pos).sum()))
    assert np.allclose(average_ranks(score), stats.rankdata(score))
    assert auroc(pos, -score) == pytest.approx(1 - auroc(pos, score))


def test_curves_mean_is_over_epochs_start_to_stop_minus_one():
    """``Curves.mean(start, stop)``: the per-sample mean over epochs start .. stop-1 (AUM's mean
    margin over a window), an empty window refused."""
    values = torch.tensor([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [8.0, 80.0]])
    curves = Curves(values, "margin", torch.zeros(2, dtype=torch.long), None, constant_schedule(0.1, 4, 16))
    assert torch.equal(curves.mean(1, 3), torch.tensor([3.0, 30.0]))
    assert torch.equal(curves.mean(2), torch.tensor([6.0, 60.0])) and torch.equal(curves.mean(0, 1), values[0])
    assert torch.equal(curves.mean(), values.mean(0))
    with pytest.raises(BenchError):
        curves.mean(3, 3)


def test_auroc_without_both_classes_is_nan_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 "invalid value" warning on the user's terminal
        assert math.isnan(auroc(np.ones(4, bool), [0.1, 0.2, 0.3, 0.4]))
        assert math.isnan(auroc(np.zeros(4, bool), [0.1, 0.2, 0.3, 0.4]))
        assert math.isnan(auroc(np.zeros(0, bool), []))

"""The shared training loop every baseline runs through (methods/base.py ``Run`` and the
``bench.train`` loop it drives): the protocol's optimiser and schedule reach the updates, the first
lr drop, and evaluation's shot groups and unaugmented test split (PROTOCOL.md §3)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.spec import RunSpec
from methods.base import Run
from methods.ce import CE


def _tiny_run(n=48, k=3, augment=False, train_counts=None, noisy_counts=None, **spec):
    """A synthetic run on 8x8 one-channel images (linear model, full batch unless ``batch_size``)."""
    g = np.random.default_rng(0)
    x = g.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    y = g.integers(0, k, size=n)
    data = SimpleNamespace(dataset=SimpleNamespace(mean=(0.5,), std=(0.25,), augment=augment),
                           x_train=x, train_y=y, x_test=x[:12], y_test=y[:12], num_classes=k,
                           train_counts=train_counts, shot_counts=train_counts, noisy_counts=noisy_counts)
    run = Run(spec=RunSpec(method="ce", **{"batch_size": n, **spec}), data=data, device=torch.device("cpu"))
    inputs = (torch.as_tensor(x).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25
    return run, inputs, torch.as_tensor(y)


def test_ce_fit_replayed_by_hand_follows_the_runs_optimiser_and_schedule():
    """PROTOCOL.md §3: SGD with the spec's momentum, Nesterov and weight decay, linear warm-up
    (lr (e+1)/W), then x lr_decay at each milestone, set at the start of every epoch. Non-default
    values throughout, so a hard-coded 0.9 / 0.1 / no warm-up / a missed lr update all show."""
    spec = dict(epochs=4, lr=0.2, momentum=0.5, nesterov=True, weight_decay=1e-3, warmup_epochs=2,
                milestones=(2, 3), lr_decay=0.5)
    run, x, y = _tiny_run(**spec)
    built = []

    def model(num_classes=None, **_):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        built.append(copy.deepcopy(net))
        return net

    run.model = model
    run.evaluate = lambda net: {"acc": 0.0, "many": 0.0, "medium": 0.0, "few": 0.0}
    trained = CE().fit(run)
    lrs = [0.1, 0.2, 0.1, 0.05]  # warm-up 0.2 * 1/2, 0.2 * 2/2; x0.5 at epoch 2, again at 3
    assert [row["lr"] for row in run.history] == pytest.approx(lrs)
    ref = built[0]
    opt = torch.optim.SGD(ref.parameters(), lr=0.0, momentum=0.5, nesterov=True, weight_decay=1e-3)
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()  # CE: the plain batch mean (one full batch)
        opt.step()
    for a, b in zip(trained.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_run_sgd_is_the_protocol_optimiser_with_an_optional_lr():
    run, _, _ = _tiny_run(lr=0.2, momentum=0.7, weight_decay=3e-4, nesterov=True)
    params = [nn.Parameter(torch.zeros(2))]
    group = run.sgd(params).param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.2, 0.7, True, 3e-4)
    assert run.sgd(params, lr=0.01).param_groups[0]["lr"] == 0.01  # O2U's stage 2 starts at r1


def test_first_drop_is_the_earliest_milestone_else_the_end():
    """DRW, AUM and O2U switch at the first lr drop (PROTOCOL.md §7): the *first* milestone."""
    run, _, _ = _tiny_run(epochs=10, milestones=(3, 6))
    assert run.first_drop == 3
    run, _, _ = _tiny_run(epochs=10, milestones=())
    assert run.first_drop == 10  # no drop: DRW never switches on, AUM scores over the whole run


def test_evaluate_groups_classes_by_the_clean_training_counts():
    """Shot groups (PROTOCOL.md §3) come from the imbalance profile, the pool's *clean* counts
    (``shot_counts``: ``train_counts``, the cell's where --train-on-meta added the meta set), not
    the observed ones."""
    run, _, _ = _tiny_run(train_counts=np.array([500, 50, 5]), noisy_counts=np.array([5, 50, 500]))

    class Always0(nn.Module):
        def forward(self, x):
            return torch.tensor([1.0, 0.0, 0.0]).expand(x.shape[0], 3)

    report = run.evaluate(Always0())
    assert report["per_class"][0] == 100.0 and report["per_class"][2] == 0.0
    assert (report["many"], report["few"]) == (100.0, 0.0)


def test_the_test_split_is_never_augmented():
    run, _, _ = _tiny_run(augment=True)
    assert run.loader("train").augment and not run.loader("train", augment=False).augment
    assert not run.loader("test").augment


# ------------------------------------------- the Run's services, one by one (mutation-tested)

def test_a_runs_model_has_the_pools_channels_the_classes_asked_for_and_its_adaptation():
    """``run.model(num_classes, adapt=...)``: the pool's channel count (1 here), K outputs unless
    asked for more (AUM's C + 1), ``adapt`` applied (LDAM's cosine head); plain memory format and
    eager steps on the CPU (channels_last is CUDA's), nothing compiled without --compile."""
    run, x, _ = _tiny_run()
    assert run.model()(x[:2]).shape == (2, 3) and run.model(4)(x[:2]).shape == (2, 4)
    marked = run.model(adapt=lambda m: setattr(m, "adapted", True) or m)
    assert getattr(marked, "adapted", False)
    assert not run.channels_last and run.step_mode == "eager" and run.compile_mode is None
    assert Run(spec=run.spec, data=run.data, device=torch.device("cuda")).channels_last  # built, not used


def test_loader_options_restrict_relabel_and_cut_the_pool():
    """``indices`` restricts images and labels alike (idx = positions in ``indices``), ``labels``
    replaces the observed labels, ``drop_last`` drops the short batch, ``augment=False`` turns the
    dataset's augmentation off; the test split comes in order even when asked to shuffle."""
    run, x, _ = _tiny_run(n=48, batch_size=8, augment=True)
    labels = np.arange(48) % 3
    keep = np.arange(5, 25)
    loader = run.loader("train", indices=keep, labels=labels, drop_last=True, shuffle=False, augment=False)
    batches = list(loader)
    assert len(batches) == 2 and not loader.augment  # 20 samples: two full batches of 8, the 4 dropped
    for i, (xb, yb, idx) in enumerate(batches):
        assert torch.equal(idx, torch.arange(8 * i, 8 * i + 8))
        assert torch.equal(yb, torch.as_tensor(labels[keep][idx.numpy()]))
        assert torch.allclose(xb, x[keep][idx.numpy()])
    order = torch.cat([idx for _, _, idx in run.loader("test", shuffle=True)])
    assert torch.equal(order, torch.arange(12))


def test_first_drop_is_the_earliest_milestone_in_whatever_order_they_are_set():
    """``--set milestones=60,30`` is a schedule with drops at 30 and 60 (``lr_at`` counts the
    milestones passed): DRW, AUM and O2U still switch at 30."""
    run, _, _ = _tiny_run(epochs=100, milestones=(60, 30))
    assert run.first_drop == 30 and run.lr_at(40) == pytest.approx(run.spec.lr * run.spec.lr_decay)


def test_sgd_without_momentum_is_plain_sgd_even_when_nesterov_is_set():
    """Nesterov needs momentum: with momentum 0 the protocol's optimiser is plain SGD (torch
    refuses nesterov=True there)."""
    run, _, _ = _tiny_run(momentum=0.0, nesterov=True)
    group = run.sgd([nn.Parameter(torch.zeros(2))]).param_groups[0]
    assert (group["momentum"], group["nesterov"]) == (0.0, False)


def test_log_rows_hold_python_numbers_and_the_reports_groups_and_reach_progress():
    """``run.log``: tensors and numpy floats become Python numbers (the store writes JSON); a test
    report adds its accuracy and shot groups under their own names; every row goes to progress."""
    run, _, _ = _tiny_run()
    shown = []
    run.progress = shown.append
    run.log(0, loss=np.float32(1.5), kept=torch.tensor(3), rate=torch.tensor(0.25))
    row = run.history[0]
    assert (type(row["loss"]), type(row["kept"]), type(row["rate"])) == (float, int, float)
    assert (row["loss"], row["kept"], row["rate"]) == (1.5, 3, 0.25)
    run.log_row(1, "train", {"loss": 1.0}, {"acc": 50.0, "many": 60.0, "medium": 40.0, "few": 20.0, "per_class": []})
    assert run.history[1] == {"stage": "train", "epoch": 1, "loss": 1.0, "test_acc": 50.0, "many": 60.0,
                              "medium": 40.0, "few": 20.0}
    run.log_row(1, "train", {"loss": 0.5})  # logged again (a resumed run replays code between stages)
    assert len(run.history) == 2 and run.history[1] == {"stage": "train", "epoch": 1, "loss": 0.5}
    assert shown == [run.history[0], {"stage": "train", "epoch": 1, "loss": 1.0, "test_acc": 50.0, "many": 60.0,
                                      "medium": 40.0, "few": 20.0}, run.history[1]]  # each row as it was logged


def test_records_need_one_number_per_pool_sample_and_take_booleans():
    run, _, _ = _tiny_run(n=48)
    run.record("flagged", np.arange(48) % 2 == 0)  # flags are numbers to the store (0.0 / 1.0)
    assert run.records["flagged"].dtype == bool
    with pytest.raises(ValueError, match="expected 48 rows"):
        run.record("short", np.zeros(47))


def test_a_runs_randomness_starts_from_its_seed_and_a_reseeded_stage_leaves_it_as_it_was():
    """The run's loader generator starts at the spec's seed; inside ``run.reseeded(seed_of)`` torch
    and the loaders draw from ``seed_of(spec)``, and after it both are as before (CurveNet's probe)."""
    run, _, _ = _tiny_run(seed=3)
    assert run.generator.initial_seed() == 3
    torch.manual_seed(11)
    outer, outer_state, global_state = run.generator, run.generator.get_state(), torch.get_rng_state()
    with run.reseeded(lambda spec: spec.seed + 100):
        inside = torch.rand(3)
        inside_loader = torch.rand(3, generator=run.generator)
        assert run.generator is not outer
    assert torch.equal(inside, torch.rand(3, generator=torch.Generator().manual_seed(103)))
    assert torch.equal(inside_loader, torch.rand(3, generator=torch.Generator().manual_seed(103)))
    assert run.generator is outer and torch.equal(outer.get_state(), outer_state)
    assert torch.equal(torch.get_rng_state(), global_state)


def test_compile_mode_says_how_many_loops_compiled_and_the_first_refusal(monkeypatch, capsys):
    """``--compile``'s env entry: ``compiled`` when every loop compiled, else ``uncompiled: <the
    first reason>`` or ``1 of 3 loops compiled: <the first reason>``; the first refusal is said once."""
    import bench.compiled

    def runs_asking(statuses):
        run, _, _ = _tiny_run()
        run.compile_steps = True
        answers = iter(statuses)
        monkeypatch.setattr(bench.compiled, "checked_forwards", lambda models, example, precision: (
            list(models), next(answers)))
        model, loader = nn.Linear(64, 3), run.loader("train")
        for _ in statuses:
            assert run.step_forward(model, loader) is model
        return run.compile_mode

    assert runs_asking(["compiled", "compiled"]) == "compiled"
    assert runs_asking(["compiled", "refused A", "refused B"]) == "1 of 3 loops compiled: refused A"
    assert runs_asking(["refused A", "refused B"]) == "uncompiled: refused A"
    err = capsys.readouterr().err
    assert err.count("refused A; this loop's steps run uncompiled") == 2 and "refused B" not in err
    run, _, _ = _tiny_run()
    assert run.compile_mode is None  # without --compile

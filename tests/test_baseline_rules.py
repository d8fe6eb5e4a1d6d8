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
                           train_counts=train_counts, noisy_counts=noisy_counts)
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
    (``train_counts``), not the observed ones."""
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

"""MW-Net (methods/mwnet.py): the weighting net, the two official variants, the reweighting rule
(samples whose gradient agrees with the clean meta gradient are up-weighted), and one short run."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import BenchError
from bench.models import build_model
from bench.spec import RunSpec
from methods import get
from methods.base import Run, params_items
from methods.meta import MetaStep
from methods.mwnet import VARIANTS, MWNet, MWNetParams, WeightNet


def test_weight_net_is_1_100_1_sigmoid():
    net = WeightNet()
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1, 100), (100, 1)]
    assert isinstance(net.net[1], nn.ReLU) and isinstance(net.net[3], nn.Sigmoid)
    w = net(torch.linspace(0, 20, 50))
    assert w.shape == (50,) and bool(((w > 0) & (w < 1)).all())


def test_each_sample_gets_the_weight_of_its_own_loss():
    """MW-Net's w_i = V(l_i; phi) (Shu et al. 2019, eq. 2): a per-sample function of the sample's
    own loss, by hand through the two layers, whatever else is in the batch."""
    torch.manual_seed(0)
    net = WeightNet()
    first, second = net.net[0], net.net[2]
    losses = torch.tensor([0.05, 0.5, 3.0, 8.0])
    by_hand = torch.sigmoid(torch.relu(losses[:, None] * first.weight.T + first.bias) @ second.weight.T
                            + second.bias).squeeze(1)
    w = net(losses)
    assert torch.allclose(w, by_hand, atol=1e-7)
    assert torch.allclose(net(losses[2:3]), w[2:3], atol=1e-7)  # (batch size changes the kernels' rounding)
    assert torch.allclose(net(losses.flip(0)), w.flip(0), atol=1e-7)
    assert len(set(w.tolist())) == 4  # one weight per loss, not one per batch


def test_variants_are_the_official_configurations():
    vnet = WeightNet()
    noise = MWNetParams()
    opt = noise.weight_optimizer(vnet.parameters())
    assert isinstance(opt, torch.optim.Adam) and not noise.normalize
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["weight_decay"] == 1e-4
    imb = MWNetParams(variant="imb")
    opt = imb.weight_optimizer(vnet.parameters())
    assert isinstance(opt, torch.optim.SGD) and imb.normalize
    assert (opt.defaults["lr"], opt.defaults["momentum"], opt.defaults["nesterov"],
            opt.defaults["weight_decay"]) == (1e-5, 0.9, True, 5e-4)
    assert MWNetParams(variant="imb", meta_lr=0.01).weight_optimizer(vnet.parameters()).defaults["lr"] == 0.01
    for variant in VARIANTS:  # mwnet.meta_weight_decay overrides either variant's
        override = MWNetParams(variant=variant, meta_weight_decay=0.0).weight_optimizer(vnet.parameters())
        assert override.defaults["weight_decay"] == 0.0
    assert MWNet.display_name({"variant": "noise"}) == "MW-Net(noise)"
    assert MWNet.display_name({"variant": "imb"}) == "MW-Net(imb)"
    assert MWNet.display_name({}) == "MW-Net(noise)"  # the default variant
    assert get("mwnet") is MWNet
    assert MWNet.resolve_params("quick", {"variant": "imb"}).variant == "imb"


@pytest.mark.parametrize("bad", [dict(variant="lt"), dict(skip_layers=4), dict(lookahead="adam"),
                                 dict(hidden=0), dict(meta_lr=-1.0)])
def test_bad_settings_raise_bench_errors(bad):
    with pytest.raises(BenchError):
        MWNetParams(**bad)


def test_meta_gradient_upweights_samples_that_agree_with_clean_data():
    """The rule that makes MW-Net (and L2RW) work: d meta / d w_i = -lr <grad meta(theta'),
    grad l_i(theta)>. With free per-sample weights, correctly labelled copies of the meta batch
    get a negative derivative (raising their weight lowers the meta loss), wrong-label copies a
    positive one."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 4, 1).double().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(8) % 4
    wrong = (y + 1 + torch.arange(8) % 3) % 4
    free = nn.Parameter(torch.ones(16, dtype=torch.float64))
    holder = nn.Module()
    holder.free = free
    step = MetaStep(model, opt, holder, None, lambda loss, yy, idx: free[idx], lookahead="sgd")
    # train batch: the meta batch with its labels and again with wrong labels (same BN statistics)
    step(torch.cat([x, x]), torch.cat([y, wrong]), torch.arange(16), x, y, update_classifier=False)
    grad = free.grad
    assert grad[:8].mean() < 0 < grad[8:].mean()
    assert (grad[:8] < 0).sum() >= 6 and (grad[8:] > 0).sum() >= 6


def make_run(method_cls, params, **spec_kw):
    from bench.data import BiasSpec, load_dataset, make_biased

    spec = RunSpec(method=method_cls.name, params=params_items(params), **spec_kw)
    data = make_biased(load_dataset(spec.dataset), BiasSpec(spec.imbalance, spec.noise_type, spec.noise_rate,
                                                            spec.meta_per_class, spec.data_seed))
    return Run(spec=spec, data=data, device=torch.device("cpu"), params=params)


def test_short_real_run_records_final_weights(monkeypatch):
    import methods.mwnet as mw

    nets = []
    monkeypatch.setattr(mw, "WeightNet", lambda *a: nets.append(WeightNet(*a)) or nets[-1])
    params = MWNetParams()
    run = make_run(MWNet, params, epochs=1, warmup_epochs=0, milestones=())
    torch.manual_seed(0)
    model = MWNet(params).fit(run)
    (row,) = run.history
    assert np.isfinite(row["meta_loss"]) and 0 < row["mean_weight"] < 1 and "test_acc" in row
    w = run.records["weight"]
    assert w.shape == (len(run.data.train_y),) and np.all((w > 0) & (w < 1))
    # the recorded weight is V applied to each sample's final (eval-mode, unaugmented) loss
    from methods.mwnet import final_losses
    assert model.training
    assert np.isfinite(final_losses(run, model).numpy()).all()
    with torch.no_grad():
        assert np.allclose(w, nets[0](final_losses(run, model)).numpy(), atol=1e-6)


def test_fit_steps_at_the_scheduled_lr_on_the_next_meta_batch(monkeypatch):
    """What MWNet.fit hands the bilevel step (the step itself is stubbed, so this is fast): one
    MetaStep built with the variant's settings (imb: weights normalised by their sum, SGD 1e-5
    on V), the look-ahead reading the epoch's scheduled lr off the optimiser (MW-Net.py L210:
    the current lr, here in warm-up), and every iteration the *next* meta batch of a cycle
    over the meta set (MW-Net.py L214-218), not one batch reused."""
    params = MWNetParams(variant="imb")
    run = make_run(MWNet, params, epochs=1, warmup_epochs=2, milestones=())
    assert run.lr_at(0) == pytest.approx(0.05) != run.spec.lr
    calls = []

    def fake_step(self, x, y, idx, x_meta, y_meta, lr=None, **kw):
        calls.append(dict(step=self, lr=self.optimizer.param_groups[0]["lr"], lr_arg=lr, y_meta=y_meta.clone()))
        zero = torch.zeros(())
        return dict(meta_loss=zero, loss=zero, weights=torch.full((len(y),), 0.5), losses=torch.zeros(len(y)))

    monkeypatch.setattr(MetaStep, "__call__", fake_step)
    torch.manual_seed(0)
    MWNet(params).fit(run)
    step = calls[0]["step"]
    assert all(c["step"] is step for c in calls)
    assert (step.normalize, step.lookahead, step.skip_layers) == (True, "sgd", 0)
    assert isinstance(step.weight_opt, torch.optim.SGD) and step.weight_opt.defaults["lr"] == 1e-5
    assert [m.out_features for m in step.weight_net.modules() if isinstance(m, nn.Linear)] == [100, 1]  # 1-100-1
    assert all(c["lr"] == pytest.approx(0.05) and c["lr_arg"] is None for c in calls)
    # the meta batches of one pass are a partition of the meta set; the next pass starts again
    y_meta = np.asarray(run.data.y_meta)
    per_pass = math.ceil(len(y_meta) / run.spec.meta_batch_size)
    assert per_pass >= 2 and len(calls) > per_pass
    first_pass = torch.cat([c["y_meta"] for c in calls[:per_pass]]).numpy()
    assert np.array_equal(np.bincount(first_pass, minlength=10), np.bincount(y_meta, minlength=10))
    assert len(calls[per_pass]["y_meta"]) == run.spec.meta_batch_size
    assert run.history[0]["mean_weight"] == pytest.approx(0.5)


def test_meta_batches_are_the_meta_sets_own_pairs_at_the_meta_batch_size_augmented_as_training_batches():
    """Run.loader('meta'): the clean meta set (its images with their own labels, not the training
    pool's), in batches of meta_batch_size, shuffled, and augmented (crops, flips) wherever the
    dataset augments its training batches, unless augment=False; the test split never is."""
    import dataclasses

    run = make_run(MWNet, MWNetParams(), batch_size=16, meta_batch_size=7)
    augmenting = dataclasses.replace(run.data, dataset=dataclasses.replace(run.data.dataset, augment=True))
    run = Run(spec=run.spec, data=augmenting, device=torch.device("cpu"), params=run.params)
    meta, train = run.loader("meta"), run.loader("train")
    assert meta.augment and train.augment and meta.shuffle
    assert not run.loader("meta", augment=False).augment and not run.loader("test").augment
    assert meta.batch_size == 7 and train.batch_size == 16 and run.loader("meta", batch_size=5).batch_size == 5
    x_meta = torch.as_tensor(np.asarray(run.data.x_meta))
    assert torch.equal(meta.y, torch.as_tensor(np.asarray(run.data.y_meta), dtype=torch.int64))
    assert torch.equal(meta.x, x_meta.reshape(*x_meta.shape[:3], -1).permute(0, 3, 1, 2))
    # unaugmented and in order, the batches are the meta images with their labels
    plain = run.loader("meta", augment=False, shuffle=False)
    ys = torch.cat([y for _, y, _ in plain])
    assert torch.equal(ys, meta.y) and len(list(plain)) == math.ceil(len(meta.y) / 7)


def test_fit_hands_every_option_to_the_bilevel_step(monkeypatch):
    """mwnet.lookahead, skip_layers, second_order, hidden and meta_weight_decay reach the step
    (stubbed); the epoch's row has the mean weighted loss per sample and meta loss per step."""
    params = MWNetParams(lookahead="full", skip_layers=2, second_order="autograd", hidden=7, meta_weight_decay=0.0)
    run = make_run(MWNet, params, epochs=1, warmup_epochs=0, milestones=(), batch_size=512)
    steps = []

    def fake_step(self, x, y, idx, x_meta, y_meta, lr=None, **kw):
        steps.append(self)
        return dict(meta_loss=torch.tensor(2.0), loss=torch.tensor(3.0), weights=torch.full((len(y),), 0.5),
                    losses=torch.zeros(len(y)))

    monkeypatch.setattr(MetaStep, "__call__", fake_step)
    MWNet(params).fit(run)
    step = steps[0]
    assert (step.lookahead, step.skip_layers, step.second_order, step.normalize) == ("full", 2, "autograd", False)
    assert [m.out_features for m in step.weight_net.modules() if isinstance(m, nn.Linear)] == [7, 1]
    assert isinstance(step.weight_opt, torch.optim.Adam) and step.weight_opt.defaults["weight_decay"] == 0.0
    (row,) = run.history
    assert len(steps) > 1 and (row["loss"], row["meta_loss"], row["mean_weight"]) == pytest.approx((3.0, 2.0, 0.5))


def test_mwnet_needs_a_clean_meta_set():
    with pytest.raises(BenchError, match="meta-per-class"):
        MWNet.check_spec(RunSpec(method="mwnet", meta_per_class=0))
    MWNet.check_spec(RunSpec(method="mwnet", meta_per_class=1))


def test_final_losses_are_eval_mode_unaugmented_and_in_pool_order(every_eighth_sample):
    """The recorded weight's input: each pool sample's CE in eval mode (running statistics, left
    unchanged), without augmentation even where training batches are augmented; train mode after."""
    from methods.mwnet import final_losses

    run = make_run(MWNet, MWNetParams())
    small = every_eighth_sample(run.data, augment=True)  # fast
    run = Run(spec=run.spec, data=small, device=torch.device("cpu"), params=run.params)
    torch.manual_seed(0)
    model = run.model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = final_losses(run, model, batch_size=100)
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    x, y, idx = next(iter(run.loader("train", batch_size=len(losses), shuffle=False, augment=False)))
    assert torch.equal(idx, torch.arange(len(losses)))
    with torch.no_grad():
        expected = F.cross_entropy(model.eval()(x), y, reduction="none")
    assert torch.allclose(losses, expected, atol=1e-5)

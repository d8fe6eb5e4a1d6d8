"""CurveNet (methods/curvenet.py): the network and its init, the curve input, the probe cache, the
pseudo-meta set, and the allocate schedule (meta-learning until the first drop, then frozen
weights), on tiny inputs plus one short real run."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import methods.curvenet as cn
from bench.errors import BenchError
from bench.spec import RunSpec
from methods.base import Run, params_items
from methods.curvenet import (
    CurveNet,
    CurveNetMethod,
    CurveNetParams,
    curve_input,
    probe_curves,
    probe_key,
    pseudo_meta_indices,
)
from methods.curves import Curves


def test_network_shape_init_and_output_range():
    torch.manual_seed(0)
    net = CurveNet(294, 10, 64)
    dims = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]
    assert dims == [(294, 128), (128, 128), (128, 64), (64, 128), (128, 64), (64, 1)]
    assert net.embed.weight.shape == (10, 64)
    assert net.after[4].bias.item() == 4.5
    for layer in (*net.before[::2], net.after[2]):
        assert torch.count_nonzero(layer.bias) == 0
    assert torch.count_nonzero(net.after[0].bias) > 0  # linear1 keeps PyTorch's default bias
    curves, y = torch.randn(64, 294) * 0.1, torch.randint(0, 10, (64,))
    w = net(curves, y)
    assert w.shape == (64,) and bool(((w >= 0.02) & (w <= 1.02)).all())
    assert abs(w.mean().item() - (torch.sigmoid(torch.tensor(4.5)).item() + 0.02)) < 0.05  # starts near 1
    # hand computation: relu(before(curve)) + 2 * embedding(observed label), then the second half
    h = F.relu(net.before(curves)) + 2 * net.embed.weight[y]
    assert torch.allclose(w, torch.sigmoid(net.after(h).squeeze(1)) + 0.02)
    # the label embedding is used: same curve, another label, another weight
    assert not torch.allclose(net(curves, y), net(curves, (y + 1) % 10))
    assert CurveNet(100, 3, 32).embed.weight.shape == (3, 32)  # embed_dim P (Table 9)


def test_curve_input_drops_epochs_and_centres_per_observed_class():
    T, N = 12, 9
    torch.manual_seed(1)
    raw = torch.rand(T, N) * 3
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    x = curve_input(raw, labels, drop_first=3, drop_last=1)
    assert x.shape == (N, T - 3 - 1)
    for c in range(3):
        members = labels == c
        # per-class mean zero at every kept epoch
        assert torch.allclose(x[members].mean(0), torch.zeros(T - 4), atol=1e-6)
        # kept values are epochs 3..T-2 minus the class mean of that epoch
        expected = raw[3:T - 1, members] - raw[3:T - 1, members].mean(1, keepdim=True)
        assert torch.allclose(x[members], expected.T, atol=1e-6)
    scaled = curve_input(raw, labels, drop_first=3, drop_last=1, std_norm=True)
    assert torch.allclose(scaled[labels == 2].std(0, unbiased=False), torch.ones(T - 4), atol=1e-5)
    with pytest.raises(BenchError):
        curve_input(raw, labels, drop_first=11, drop_last=1)


def test_paper_and_quick_presets():
    paper = CurveNetParams()
    sched = paper.schedule()
    assert len(sched) == 300 and paper.input_dim == 294
    assert sched.lrs[:120] == (0.1,) * 120 and sched.batch_sizes[119:121] == (128, 16)
    assert sched.lrs[120:150] == (0.01,) * 15 + (0.001,) * 15 and sched.lrs[-1] == 0.001
    quick = CurveNetMethod.resolve_params("quick")
    qs = quick.schedule()
    assert len(qs) == 30 and quick.input_dim == 28
    assert qs.lrs == (0.1,) * 12 + ((0.01,) * 3 + (0.001,) * 3) * 3
    assert (quick.lookahead, quick.meta_lr, quick.meta_weight_decay, quick.skip_layers) == ("full", 1e-3, 1e-4, 0)
    for bad in (dict(skip_layers=4), dict(meta_set="noisy"), dict(drop_first=300), dict(embed_dim=0)):
        with pytest.raises(BenchError):
            CurveNetParams(**bad)
    assert CurveNetMethod.display_name({}) == "CurveNet"
    assert CurveNetMethod.display_name({"skip_layers": 3, "drw": True}) == "CurveNet(SL=3, +DRW)"


def test_pseudo_meta_set_is_the_lowest_probe_loss_per_class():
    probe_mean = np.array([5.0, 1.0, 3.0, 0.5, 9.0, 2.0, 0.1, 7.0])
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    assert pseudo_meta_indices(probe_mean, labels, 2).tolist() == [1, 2, 3, 6]


# ---------------------------------------------------------------- runs on the embedded data

def make_run(params, cache_dir=None, checkpoint_path=None, **spec_kw):
    from bench.data import BiasSpec, load_dataset, make_biased

    spec = RunSpec(method="curvenet", params=params_items(params), **spec_kw)
    data = make_biased(load_dataset(spec.dataset), BiasSpec(spec.imbalance, spec.noise_type, spec.noise_rate,
                                                            spec.meta_per_class, spec.data_seed))
    return Run(spec=spec, data=data, device=torch.device("cpu"), params=params, cache_dir=cache_dir,
               checkpoint_path=checkpoint_path, checkpoint_every_s=0.0)


TINY = dict(probe_epochs=2, half_period=1, periods=1, cycle_batch_size=256, probe_batch_size=256,
            drop_first=1, drop_last=1)


def test_probe_cache_is_keyed_atomic_and_leaves_the_rng_alone(tmp_path, monkeypatch):
    params = CurveNetParams(**TINY)
    run = make_run(params, cache_dir=tmp_path)
    n = len(run.data.train_y)
    calls = []

    def fake_train(run_, model, schedule, quantity="loss", **kw):
        calls.append(len(schedule))
        torch.rand(5)  # consumes the (forked) global RNG, as a real probe does
        next(iter(run_.loader("train")))  # and the probe's loader generator
        values = torch.arange(len(schedule) * n, dtype=torch.float32).view(len(schedule), n)
        return Curves(values, "loss", torch.as_tensor(run_.data.train_y), None, schedule)

    monkeypatch.setattr(cn, "train_and_record", fake_train)
    torch.manual_seed(0)
    first = probe_curves(run, params.schedule())
    after_fresh = (torch.rand(3), torch.rand(3, generator=run.generator))
    torch.manual_seed(0)
    run2 = make_run(params, cache_dir=tmp_path)
    second = probe_curves(run2, params.schedule())
    after_cached = (torch.rand(3), torch.rand(3, generator=run2.generator))
    assert calls == [4] and torch.equal(first, second)
    assert all(torch.equal(a, b) for a, b in zip(after_fresh, after_cached))
    files = list((tmp_path / "curvenet_probe").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz" and not files[0].name.startswith(".")
    # the key covers the seed and the schedule but not allocate-stage options
    assert probe_key(make_run(params, seed=1), params.schedule()) != probe_key(run, params.schedule())
    # a bf16 probe (trained under autocast) is not an fp32 one
    assert probe_key(make_run(params, precision="bf16"), params.schedule()) != probe_key(run, params.schedule())
    other = CurveNetParams(**{**TINY, "half_period": 2})
    assert probe_key(run, other.schedule()) != probe_key(run, params.schedule())
    assert probe_key(make_run(CurveNetParams(**TINY, skip_layers=3)), params.schedule()) == probe_key(
        run, params.schedule())


def test_allocate_meta_learns_until_the_first_drop_then_weights_stay_fixed(monkeypatch):
    params = CurveNetParams(**TINY)
    run = make_run(params, epochs=2, warmup_epochs=0, milestones=(1,))
    n = len(run.data.train_y)
    torch.manual_seed(0)
    raw = torch.rand(4, n)
    monkeypatch.setattr(cn, "probe_curves", lambda run_, schedule: raw.clone())
    nets, snapshots, last_assigned, calls, initial = [], [], {}, [], {}

    class SpyNet(CurveNet):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            nets.append(self)
            initial.update({k: v.clone() for k, v in self.state_dict().items()})

    real_call = cn.MetaStep.__call__

    def spy_call(self, x, y, idx, xm, ym, lr=None, **kw):
        out = real_call(self, x, y, idx, xm, ym, lr, **kw)
        calls.append(len(y))
        for i, w in zip(idx.tolist(), out["weights"].tolist()):
            last_assigned[i] = w
        return out

    monkeypatch.setattr(cn, "CurveNet", SpyNet)
    monkeypatch.setattr(cn.MetaStep, "__call__", spy_call)
    run.progress = lambda row: snapshots.append({k: v.clone() for k, v in nets[0].state_dict().items()})
    CurveNetMethod(params).fit(run)
    # meta steps only in epoch 0 (< first drop = 1): one per batch, covering every sample once
    assert sum(calls) == n and len(last_assigned) == n
    assert [("meta_loss" in h) for h in run.history] == [True, False]
    # CurveNet is updated before the first drop and not after it
    assert not all(torch.equal(initial[k], snapshots[0][k]) for k in initial)
    for k in snapshots[0]:
        assert torch.equal(snapshots[0][k], snapshots[1][k])
    # each sample keeps its last assigned weight
    w = run.records["weight"]
    assert np.allclose(w, [last_assigned[i] for i in range(n)])
    assert run.history[1]["mean_weight"] == pytest.approx(float(np.mean(w)), rel=1e-5)
    curves = run.records["curve"]
    assert curves.shape == (n, 2)
    assert np.allclose(run.records["probe_loss_mean"], raw[1:3].mean(0).numpy())


def test_short_real_run_with_probe_and_pseudo_meta(tmp_path):
    params = CurveNetParams(**TINY, meta_set="pseudo", skip_layers=3)
    run = make_run(params, cache_dir=tmp_path, epochs=2, warmup_epochs=0, milestones=(1,))
    torch.manual_seed(0)
    CurveNetMethod(params).fit(run)
    stages = [h["stage"] for h in run.history]
    assert stages == ["probe"] * 4 + ["allocate"] * 2
    n = len(run.data.train_y)
    assert run.records["weight"].shape == (n,) and run.records["curve"].shape == (n, 2)
    assert np.all((run.records["weight"] >= 0.02) & (run.records["weight"] <= 1.02))
    assert np.isfinite(run.history[4]["meta_loss"])


def test_killed_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    """A kill during the second allocate epoch (both meta-learning) resumes from the checkpoint and ends
    as the uninterrupted run: classifier, CurveNet, its optimiser and the per-sample weights are
    all in the checkpointed state, and the meta iterator restarts each epoch."""
    params = CurveNetParams(**TINY, skip_layers=3)  # SLMO: the cheap meta step
    spec = dict(epochs=2, warmup_epochs=0, milestones=(2,), imbalance=50.0, batch_size=512)  # both meta-learn
    raw = torch.rand(4, len(make_run(params, **spec).data.train_y), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(cn, "probe_curves", lambda run_, schedule: raw.clone())

    def fit(checkpoint=None, kill_at=None):
        run = make_run(params, checkpoint_path=checkpoint, **spec)
        if kill_at is not None:
            def progress(row):
                if row["stage"] == "allocate" and row["epoch"] == kill_at:
                    raise KeyboardInterrupt
            run.progress = progress
        torch.manual_seed(0)
        model = CurveNetMethod(params).fit(run)
        return run, model

    ref_run, ref_model = fit()
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "ckpt.pt", kill_at=1)  # epoch 1 logged, not yet checkpointed
    run, model = fit(tmp_path / "ckpt.pt")
    assert run.resumed_from == ("allocate", 0)
    assert np.array_equal(run.records["weight"], ref_run.records["weight"])
    for p, q in zip(model.state_dict().values(), ref_model.state_dict().values()):
        assert torch.equal(p, q)
    assert [h["test_acc"] for h in run.history if h["stage"] == "allocate"] == [
        h["test_acc"] for h in ref_run.history if h["stage"] == "allocate"]


def test_allocate_wires_curvenet_into_the_bilevel_step(monkeypatch):
    """What the allocate stage hands the bilevel step (stubbed, so this is fast): one MetaStep
    with the *full* look-ahead (higher's DifferentiableSGD), the SLMO depth, unnormalised
    weights and CurveNet under Adam lr 1e-3, weight decay 1e-4 (recognition_curve.py L145-149);
    the look-ahead at the epoch's scheduled lr; weights w_i = CurveNet(curve_i, observed label_i),
    the curves centred per *observed* class (L454-466); the next meta batch of a cycle every
    iteration; and the weights each step returns kept per sample."""
    params = CurveNetParams(**TINY, skip_layers=2)
    run = make_run(params, epochs=1, warmup_epochs=2, milestones=())
    n = len(run.data.train_y)
    raw = torch.rand(4, n, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(cn, "probe_curves", lambda run_, schedule: raw.clone())
    calls = []

    def fake_step(self, x, y, idx, x_meta, y_meta, lr=None, **kw):
        with torch.no_grad():
            w = self.weight_fn(torch.zeros(len(y)), y, idx)
        calls.append(dict(step=self, lr=self.optimizer.param_groups[0]["lr"], lr_arg=lr, y=y.clone(),
                          idx=idx.clone(), w=w, y_meta=y_meta.clone()))
        zero = torch.zeros(())
        return dict(meta_loss=zero, loss=zero, weights=0.25 + idx / (4 * n), losses=torch.zeros(len(y)))

    monkeypatch.setattr(cn.MetaStep, "__call__", fake_step)
    torch.manual_seed(0)
    CurveNetMethod(params).fit(run)
    step = calls[0]["step"]
    assert all(c["step"] is step for c in calls)
    assert (step.lookahead, step.skip_layers, step.normalize) == ("full", 2, False)
    assert isinstance(step.weight_opt, torch.optim.Adam) and isinstance(step.weight_net, CurveNet)
    assert (step.weight_opt.defaults["lr"], step.weight_opt.defaults["weight_decay"]) == (1e-3, 1e-4)
    assert all(c["lr"] == pytest.approx(0.05) and c["lr_arg"] is None for c in calls)
    # the curve input: epochs 1..2 minus the mean of the samples with the same observed label
    observed = np.asarray(run.data.train_y)
    assert (observed != np.asarray(run.data.train_clean_y)).mean() > 0.1  # noisy: the choice matters
    expected = np.empty((n, 2))
    window = raw[1:3].numpy()
    for c in np.unique(observed):
        members = observed == c
        expected[members] = (window[:, members] - window[:, members].mean(1, keepdims=True)).T
    assert np.allclose(run.records["curve"], expected, atol=1e-6)
    # the weighting function reads each sample's curve and its observed label
    curves = torch.as_tensor(run.records["curve"])
    for c in calls[:2]:
        assert torch.equal(c["y"], torch.as_tensor(observed)[c["idx"]])
        assert torch.allclose(c["w"], step.weight_net(curves[c["idx"]], c["y"]))
    # every iteration the next meta batch: one pass is a partition of the meta set
    y_meta = np.asarray(run.data.y_meta)
    per_pass = math.ceil(len(y_meta) / run.spec.meta_batch_size)
    assert per_pass >= 2 and len(calls) > per_pass
    first_pass = torch.cat([c["y_meta"] for c in calls[:per_pass]]).numpy()
    assert np.array_equal(np.bincount(first_pass, minlength=10), np.bincount(y_meta, minlength=10))
    # each sample keeps the weight of its last meta step
    assert np.allclose(run.records["weight"], 0.25 + np.arange(n) / (4 * n))


@pytest.mark.parametrize("drw_counts", ["observed", "clean"])
def test_drw_weights_come_from_the_chosen_class_counts(monkeypatch, drw_counts):
    """Table 6 "+DRW": class-balanced weights switched on after the first drop (the code's
    ``epoch > step[0]``), from the observed-label counts or, as recognition_curve.start tallies
    them, the clean per-class counts (clean samples under their label, noisy ones under their
    true label)."""
    params = CurveNetParams(**TINY, drw=True, drw_counts=drw_counts)
    # first drop at epoch 0: no meta step (not what is tested here), DRW on from epoch 1
    run = make_run(params, epochs=2, warmup_epochs=0, milestones=(0,), noise_rate=0.4, imbalance=10)
    monkeypatch.setattr(cn, "probe_curves", lambda run_, schedule: torch.rand(4, len(run_.data.train_y)))
    made, applied = [], []

    class SpyDRW(cn.DRW):
        def __init__(self, counts, switch_epoch, *a, **k):
            super().__init__(counts, switch_epoch, *a, **k)
            made.append((np.asarray(counts).copy(), switch_epoch))

        def sample_weights(self, y, epoch):
            w = super().sample_weights(y, epoch)
            applied.append((epoch, bool((w != 1).any())))
            return w

    monkeypatch.setattr(cn, "DRW", SpyDRW)
    CurveNetMethod(params).fit(run)
    clean, observed = run.data.train_counts, run.data.noisy_counts
    assert not np.array_equal(clean, observed)  # the noise moves samples between classes
    (counts, switch), = made
    assert np.array_equal(counts, clean if drw_counts == "clean" else observed)
    assert switch == 1  # on from epoch first_drop + 1
    assert {e for e, _ in applied} == {0, 1} and all(on == (e == 1) for e, on in applied)


def test_drw_counts_does_nothing_without_drw_and_needs_a_known_value():
    # without DRW the counts are unused: bench run keeps them at their default (test_cli's inert tests)
    assert CurveNetMethod.inert_settings(CurveNetParams(drw_counts="clean")) == {
        "drw_counts": "with curvenet.drw=False", "pseudo_per_class": "with curvenet.meta_set=clean"}
    assert "drw_counts" not in CurveNetMethod.inert_settings(CurveNetParams(drw=True, drw_counts="clean"))
    with pytest.raises(BenchError, match="one of observed, clean"):
        CurveNetParams(drw=True, drw_counts="true")
    # added after runs were stored: at its default it stays out of the run's key
    assert "drw_counts" not in dict(params_items(CurveNetParams(drw=True)))
    assert dict(params_items(CurveNetParams(drw=True, drw_counts="clean")))["drw_counts"] == "clean"
    assert CurveNetMethod.display_name({"drw": True, "drw_counts": "clean"}) == "CurveNet(+DRW, clean counts)"


def test_curvenet_without_a_meta_set_says_once_that_it_is_ce(monkeypatch, capsys):
    from bench.arguments import build_specs
    from bench.cli import make_parser

    monkeypatch.setattr(CurveNetMethod, "_said_no_meta_set", False)

    def specs(*args):
        return build_specs(make_parser().parse_args(["run", "--methods", "curvenet", *args]))

    specs("--meta-per-class", "20")
    specs("--meta-per-class", "0", "--set", "curvenet.meta_set=pseudo")
    assert capsys.readouterr().err == ""  # a meta set, or the pseudo-meta set: nothing to say
    assert len(specs("--meta-per-class", "0", "--seeds", "0,1,2")) == 3  # it still trains (Table 7's row)
    assert capsys.readouterr().err.count("has no meta set to learn from") == 1


def test_the_std_norm_option_reaches_the_recorded_curve_input(monkeypatch):
    """``curvenet.std_norm=true`` (the paper's text: divide by the class's std; the official code
    centres only, notes/curvenet_mwnet.md §2.4) changes the curves CurveNet reads: each observed
    class's curve values have unit (population) std at every kept epoch."""
    params = CurveNetParams(**TINY, std_norm=True)
    run = make_run(params, epochs=1, warmup_epochs=2, milestones=())
    n = len(run.data.train_y)
    raw = torch.rand(4, n, generator=torch.Generator().manual_seed(0)) * 3
    monkeypatch.setattr(cn, "probe_curves", lambda run_, schedule: raw.clone())

    def fake_step(self, x, y, idx, x_meta, y_meta, lr=None, **kw):
        zero = torch.zeros(())
        return dict(meta_loss=zero, loss=zero, weights=torch.ones(len(y)), losses=torch.zeros(len(y)))

    monkeypatch.setattr(cn.MetaStep, "__call__", fake_step)
    CurveNetMethod(params).fit(run)
    observed = torch.as_tensor(np.asarray(run.data.train_y))
    curve = torch.as_tensor(run.records["curve"])
    assert torch.allclose(curve, curve_input(raw, observed, 1, 1, std_norm=True), atol=1e-5)
    assert not torch.allclose(curve, curve_input(raw, observed, 1, 1), atol=1e-2)
    for c in observed.unique():
        if (observed == c).sum() > 1:
            assert torch.allclose(curve[observed == c].std(0, unbiased=False), torch.ones(2), atol=1e-4)


def test_linear_weights_are_xavier_normal_and_the_embedding_xavier_uniform():
    """net/curvenet.py's init: Xavier *normal* linear weights (values beyond the uniform bound
    sqrt(6 / (fan_in + fan_out)) occur), Xavier *uniform* embedding (all within its bound)."""
    torch.manual_seed(0)
    net = CurveNet(294, 10, 64)
    for layer in (*net.before[::2], *net.after[::2]):
        bound = math.sqrt(6 / (layer.in_features + layer.out_features))
        if layer.weight.numel() > 1000:  # P(|N| > bound) = 8 %: thousands of draws
            assert layer.weight.abs().max() > bound
            assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    emb_bound = math.sqrt(6 / (10 + 64))
    assert net.embed.weight.abs().max() <= emb_bound and net.embed.weight.abs().max() > 0.9 * emb_bound


def test_the_probe_key_covers_exactly_what_the_probe_depends_on(changed_fields):
    """The cached curves are reused exactly when the probe would be the same: the key changes with
    every data, model, optimiser, seed and precision field of the spec and with nothing else (the
    allocate stage's schedule, batch sizes, method options). An fp32 key is the one cached before
    the precision entered it (a pinned value: changing the hashing orphans every cached probe)."""
    schedule = CurveNetParams(**TINY).schedule()
    data = SimpleNamespace(train_y=np.zeros(50, dtype=np.int64))
    base = RunSpec(method="curvenet", seed=3)

    def key(spec):
        return probe_key(SimpleNamespace(spec=spec, data=data), schedule)

    depends = {"dataset", "imbalance", "noise_type", "noise_rate", "meta_per_class", "seed", "data_seed", "model",
               "init", "momentum", "nesterov", "weight_decay", "precision", "data_sha256"}
    for name, other in changed_fields(base, (("drop_first", 2),)):
        assert (key(other) != key(base)) == (name in depends), name
    assert key(base) == "e475f4453d039bfd38a8"


def test_the_probe_cache_is_ignored_when_stale_or_unreadable(tmp_path):
    """_read_probe_cache returns None (train again) for another schedule length, other labels or a
    damaged file, and the curves when everything matches."""
    schedule = CurveNetParams(**TINY).schedule()
    labels = np.array([0, 1, 1, 2, 0])
    run = SimpleNamespace(data=SimpleNamespace(train_y=labels), device=torch.device("cpu"))
    values = torch.rand(len(schedule), len(labels))
    path = tmp_path / "curvenet_probe" / "k.npz"
    cn._write_probe_cache(path, run, values)
    assert torch.equal(cn._read_probe_cache(path, run, schedule), values)
    assert cn._read_probe_cache(path, run, CurveNetParams(**{**TINY, "periods": 2}).schedule()) is None
    relabelled = SimpleNamespace(data=SimpleNamespace(train_y=labels[::-1].copy()), device=run.device)
    assert cn._read_probe_cache(path, relabelled, schedule) is None
    whole = path.read_bytes()
    for damaged in (b"not an npz file", whole[: len(whole) // 2], whole[:-30], b""):  # torn, or empty
        path.write_bytes(damaged)
        assert cn._read_probe_cache(path, run, schedule) is None
    assert cn._read_probe_cache(tmp_path / "absent.npz", run, schedule) is None


def test_the_probe_seed_is_derived_from_the_training_seed():
    """The probe's own seed (a cached probe's curves depend on it: the derivation is pinned)."""
    assert [cn._probe_seed(s) for s in (0, 1)] == [137302937713759, 77053553962365]


def test_pseudo_meta_batches_and_fused_sizes(monkeypatch):
    """meta_set=pseudo: batches of meta_batch_size from the pseudo-meta set; a fused group's
    pseudo-meta size is sum over observed classes of min(pseudo_per_class, n_c)."""
    params = CurveNetParams(**TINY, meta_set="pseudo", pseudo_per_class=3)
    run = make_run(params, meta_batch_size=5, batch_size=64)
    probe_mean = torch.rand(len(run.data.train_y), generator=torch.Generator().manual_seed(0))
    loader = CurveNetMethod(params)._meta_loader(run, probe_mean)
    picks = pseudo_meta_indices(probe_mean.numpy(), np.asarray(run.data.train_y), 3)
    assert loader.batch_size == 5 and loader.num_samples == len(picks)
    small = SimpleNamespace(train_y=np.array([0, 0, 0, 0, 1, 2, 2]))
    assert CurveNetMethod.fused_sizes(params, small) == (6,)
    assert CurveNetMethod.fused_sizes(CurveNetParams(**TINY), small) == ()


def test_without_a_meta_set_every_sample_keeps_curvenets_initial_weight(monkeypatch, every_eighth_sample):
    """--meta-per-class 0 with the clean meta set: CurveNet is never updated, so each sample's
    weight is the initial network's on its curve (about 1.009), i.e. CE; the fixed-weight step's
    loss is sum_i w_i l_i / B (lr 0 and one batch: the epoch's loss is that of the returned model)."""
    params = CurveNetParams(**TINY)
    run = make_run(params, epochs=1, warmup_epochs=0, milestones=(), meta_per_class=0, batch_size=4096, lr=0.0)
    small = every_eighth_sample(run.data, test_images=200)  # fast
    run = Run(spec=run.spec, data=small, device=torch.device("cpu"), params=params)
    n = len(run.data.train_y)
    raw = torch.rand(4, n, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(cn, "probe_curves", lambda run_, schedule: raw.clone())
    nets = []
    monkeypatch.setattr(cn, "CurveNet", lambda *a, **k: nets.append(CurveNet(*a, **k)) or nets[-1])
    model = CurveNetMethod(params).fit(run)
    labels = torch.as_tensor(np.asarray(run.data.train_y))
    with torch.no_grad():
        expected = nets[0](torch.as_tensor(run.records["curve"]), labels)
    assert np.allclose(run.records["weight"], expected.numpy(), atol=1e-6)
    assert np.allclose(run.records["weight"], torch.sigmoid(torch.tensor(4.5)).item() + 0.02, atol=0.05)
    assert [("meta_loss" in h) for h in run.history] == [False]
    x, y, idx = next(iter(run.loader("train", batch_size=n, shuffle=False)))
    with torch.no_grad():
        losses = F.cross_entropy(model.train()(x), y, reduction="none")
    w = torch.as_tensor(run.records["weight"])[idx]
    assert run.history[0]["loss"] == pytest.approx((w * losses).sum().item() / n, rel=1e-5)

"""Horizontal fusion (bench/fused.py): K runs as one network compute exactly the K runs.

Each test builds K independent models (different seeds, different batches), fuses them, and
checks the fused network against the models run one by one: forwards and running statistics on
every backbone, CE steps with the protocol's SGD, and MW-Net / CurveNet meta steps (SLMO depths,
both look-aheads, normalised weights), in float64 so that agreement is to rounding."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.data.loader import Loader
from bench.errors import BenchError
from bench.fused import (
    FusedBatchNorm2d,
    FusedConv2d,
    FusedLinear,
    FusedLoader,
    GroupedConv2d,
    RunsShortcutA,
    RunsToRowsLinear,
    WideBatchNorm2d,
    fuse,
    interleave,
    run_rows,
    run_state,
    stack_runs,
)
from bench.models import build_model
from methods.curvenet import CurveNet
from methods.meta import MetaStep
from methods.mwnet import WeightNet

RUNS, N, CLASSES = 3, 4, 5


pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def models(name="small_cnn", channels=1, runs=RUNS):
    out = []
    for seed in range(runs):
        torch.manual_seed(seed)
        out.append(build_model(name, CLASSES, channels).double().train())
    return out


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def batch(xs, layout):
    """The fused network's input: rows (interleaved samples) or the runs layout (stacked channels)."""
    return interleave(xs) if layout == "rows" else stack_runs(xs)


def assert_each_runs_forward(fused, separate, xs, msg=None):
    """The fused network on the runs' interleaved batches gives each run's own output; returns it."""
    out = fused(interleave(xs))
    for k, model in enumerate(separate):
        torch.testing.assert_close(run_rows(out, RUNS, k), model(xs[k]), msg=msg)
    return out


def assert_same_state(fused, separate, rtol=1e-9, atol=1e-10):
    for k, model in enumerate(separate):
        state = run_state(fused, k)
        for name, value in model.state_dict().items():
            assert state[name].shape == value.shape, name
            torch.testing.assert_close(state[name], value, rtol=rtol, atol=atol, msg=f"run {k} {name}")


@pytest.mark.parametrize("layout", ["rows", "runs"])
@pytest.mark.parametrize("name,channels,size", [("small_cnn", 1, 12), ("resnet32", 3, 8), ("wrn16_8", 3, 8)])
def test_fused_forward_is_each_runs_forward_with_its_own_batch_statistics(name, channels, size, layout):
    separate = models(name, channels)
    fused = fuse(separate, layout)
    assert fused.runs == RUNS and fused.layout == layout
    xs = [torch.randn(N, channels, size, size) for _ in range(RUNS)]
    out = fused(batch(xs, layout))  # train mode: BatchNorm of run k over run k's N samples only
    assert out.shape == (N * RUNS, CLASSES)
    for k, model in enumerate(separate):
        torch.testing.assert_close(run_rows(out, RUNS, k), model(xs[k]))
    assert_same_state(fused, separate)  # running statistics updated per run, as alone
    fused.eval()
    for m in separate:
        m.eval()
    out = fused(batch(xs, layout))
    for k, model in enumerate(separate):
        torch.testing.assert_close(run_rows(out, RUNS, k), model(xs[k]))


@pytest.mark.parametrize("layout,expected", [("rows", {FusedConv2d, FusedLinear, FusedBatchNorm2d}),
                                             ("runs", {GroupedConv2d, RunsToRowsLinear, WideBatchNorm2d,
                                                       RunsShortcutA})])
def test_fused_layers_replace_every_layer_with_state(layout, expected):
    fused = fuse(models("resnet32", 3), layout)
    kinds = {type(m) for m in fused.modules() if not list(m.children())}
    assert not kinds & {nn.Conv2d, nn.Linear, nn.BatchNorm2d}
    assert expected <= kinds
    conv = fused.stem[0]
    assert conv.groups == RUNS and conv.out_channels == RUNS * 16  # one grouped convolution


def test_the_runs_layout_keeps_channels_last():
    """Runs layout: no view between layers, so a channels_last input stays channels_last through
    the grouped convolutions and the per-run shortcuts (cuDNN's fast layout on a GPU)."""
    separate = [m.to(memory_format=torch.channels_last) for m in models("resnet32", 3)]
    fused = fuse(separate, "runs")
    seen = []
    for module in fused.modules():
        if isinstance(module, RunsShortcutA):
            module.register_forward_hook(lambda m, a, out: seen.append(out.is_contiguous(
                memory_format=torch.channels_last)))
    xs = [torch.randn(N, 3, 8, 8).to(memory_format=torch.channels_last) for _ in range(RUNS)]
    out = fused(stack_runs(xs))
    assert seen and all(seen)
    for k, model in enumerate(separate):
        torch.testing.assert_close(run_rows(out, RUNS, k), model(xs[k]))


@pytest.mark.parametrize("layout", ["rows", "runs"])
def test_fused_ce_steps_are_each_runs_steps(layout):
    """Sum of the runs' mean CEs: each run gets its own gradient; fused SGD = K SGDs."""
    separate = models()
    fused = fuse(copy.deepcopy(separate), layout)
    opts, fused_opt = [sgd(m) for m in separate], sgd(fused)
    for _ in range(3):
        xs = [torch.randn(N, 1, 12, 12) for _ in range(RUNS)]
        ys = [torch.randint(0, CLASSES, (N,)) for _ in range(RUNS)]
        for model, opt, x, y in zip(separate, opts, xs, ys):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        fused_opt.zero_grad()
        (F.cross_entropy(fused(batch(xs, layout)), interleave(ys)) * RUNS).backward()
        fused_opt.step()
    assert_same_state(fused, separate)


def _meta_case(weighting, skip_layers, lookahead, normalize, layout):
    separate = models()
    for m in separate:  # momentum buffers and running statistics that differ per run
        opt = sgd(m)
        F.cross_entropy(m(torch.randn(N, 1, 12, 12)), torch.randint(0, CLASSES, (N,))).backward()
        opt.step()
        opt.zero_grad()
    pool = 10
    curves = [torch.randn(pool, 7) for _ in range(RUNS)]
    nets = []
    for k in range(RUNS):
        torch.manual_seed(100 + k)
        nets.append((WeightNet(8) if weighting == "mwnet" else CurveNet(7, CLASSES, 8)).double())

    def weight_fn(net, curve_table):
        if weighting == "mwnet":
            return None
        return lambda loss, y, idx: net(curve_table[idx], y)

    def build(model, opt, net, table):
        return MetaStep(model, opt, net, torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4),
                        weight_fn(net, table), lookahead=lookahead, skip_layers=skip_layers, normalize=normalize)

    fused, fused_net = fuse(copy.deepcopy(separate), layout), fuse(copy.deepcopy(nets))  # weighting nets: rows
    fused_opt = sgd(fused)  # momentum buffers from the first step on, in both
    steps = [build(m, sgd(m), net, curves[k]) for k, (m, net) in enumerate(zip(separate, nets))]
    # rows' pool indices into the runs' curves, interleaved: row n K + k reads run k's table
    table = interleave(curves)
    fused_step = build(fused, fused_opt, fused_net, table)
    return separate, nets, steps, fused, fused_net, fused_step, pool


@pytest.mark.parametrize("weighting,skip_layers,lookahead,normalize,layout", [
    ("mwnet", 0, "sgd", False, "rows"), ("mwnet", 0, "full", True, "runs"), ("mwnet", 3, "sgd", False, "rows"),
    ("mwnet", 3, "sgd", False, "runs"), ("curvenet", 0, "full", False, "rows"), ("curvenet", 3, "full", False, "runs"),
    ("curvenet", 2, "sgd", True, "rows"), ("curvenet", 2, "full", True, "runs")])
def test_fused_meta_steps_are_each_runs_meta_steps(weighting, skip_layers, lookahead, normalize, layout):
    """MetaStep on a fused classifier and fused weighting nets: per-run weights (each run's own
    net, its own B for a_i = w_i / B or its own sum), the sum of the runs' meta losses, each
    run's JVP and real step, so classifiers and weighting nets end as in K separate steps."""
    separate, nets, steps, fused, fused_net, fused_step, pool = _meta_case(weighting, skip_layers, lookahead,
                                                                           normalize, layout)
    assert fused_step.jvp == "linearized"  # the fused layers have tangent rules
    for _ in range(2):
        xs = [torch.randn(N, 1, 12, 12) for _ in range(RUNS)]
        ys = [torch.randint(0, CLASSES, (N,)) for _ in range(RUNS)]
        xms = [torch.randn(N, 1, 12, 12) for _ in range(RUNS)]
        yms = [torch.randint(0, CLASSES, (N,)) for _ in range(RUNS)]
        idx = [torch.randperm(pool)[:N] for _ in range(RUNS)]
        rows_idx = interleave([i * RUNS + k for k, i in enumerate(idx)])
        fused_args = (batch(xs, layout), interleave(ys), rows_idx, batch(xms, layout), interleave(yms))
        # meta_loss_at (no update): the sum of the runs' look-ahead meta losses
        torch.testing.assert_close(fused_step.meta_loss_at(*fused_args), sum(
            step.meta_loss_at(x, y, i, xm, ym) for step, x, y, i, xm, ym in zip(steps, xs, ys, idx, xms, yms)))
        outs = [step(x, y, i, xm, ym) for step, x, y, i, xm, ym in zip(steps, xs, ys, idx, xms, yms)]
        out = fused_step(*fused_args)
        torch.testing.assert_close(out["meta_loss"], sum(o["meta_loss"] for o in outs))
        torch.testing.assert_close(out["meta_losses"], torch.stack([o["meta_loss"] for o in outs]))  # run k's at k
        torch.testing.assert_close(out["loss"], sum(o["loss"] for o in outs))
        for k, o in enumerate(outs):
            torch.testing.assert_close(run_rows(out["weights"], RUNS, k), o["weights"])
    assert_same_state(fused, separate)
    assert_same_state(fused_net, nets)


@pytest.mark.parametrize("normalize", [False, True])
def test_a_fused_meta_steps_epoch_sums_are_each_runs_own(normalize):
    """MetaStep.on_plans on fused runs: one row per run, (run k's weighted loss x its batch size B,
    its meta loss, the sum of its recomputed weights), as each run's own step returns them."""
    separate, nets, steps, fused, fused_net, fused_step, pool = _meta_case("curvenet", 0, "full", normalize, "rows")
    xs, xms = [torch.randn(N, 1, 12, 12) for _ in range(RUNS)], [torch.randn(N, 1, 12, 12) for _ in range(RUNS)]
    ys = [torch.randint(0, CLASSES, (N,)) for _ in range(RUNS)]
    yms = [torch.randint(0, CLASSES, (N,)) for _ in range(RUNS)]
    idx = [torch.randperm(pool)[:N] for _ in range(RUNS)]
    outs = [step(x, y, i, xm, ym) for step, x, y, i, xm, ym in zip(steps, xs, ys, idx, xms, yms)]
    rows_idx = interleave([i * RUNS + k for k, i in enumerate(idx)])
    train = SimpleNamespace(assemble=lambda *plan: (interleave(xs), interleave(ys), rows_idx))
    meta = SimpleNamespace(assemble=lambda *plan: (interleave(xms), interleave(yms), None))
    rows = fused_step.on_plans(train, meta)("p", "m")
    expected = torch.stack([torch.stack([o["loss"] * N, o["meta_loss"], o["weights"].sum()]) for o in outs])
    torch.testing.assert_close(rows, expected)


def test_fusing_needs_one_architecture_and_known_layers():
    with pytest.raises(BenchError, match="one architecture"):
        fuse([build_model("small_cnn", 3, 1), build_model("small_cnn", 4, 1)])
    with pytest.raises(BenchError, match="no fused form"):
        fuse([nn.Sequential(nn.LayerNorm(3)), nn.Sequential(nn.LayerNorm(3))])
    with pytest.raises(BenchError, match="at least one"):
        fuse([])
    with pytest.raises(BenchError, match="unknown fused layout"):
        fuse(models(), "columns")
    with pytest.raises(BenchError, match="run 3"):
        run_state(fuse(models()), 3)


@pytest.mark.parametrize("layout", ["rows", "runs"])
def test_fusing_models_in_eval_mode_gives_a_network_in_eval_mode(layout):
    """A fused network of K models in eval mode is in eval mode too (its BatchNorms use each run's
    running statistics, not the batch's), without a further ``.eval()``."""
    separate = models("resnet32", 3)
    for m in separate:  # running statistics of their own, then eval mode
        m(torch.randn(N, 3, 8, 8))
        m.eval()
    fused = fuse(separate, layout)
    assert not any(m.training for m in fused.modules() if isinstance(m, nn.BatchNorm2d))
    xs = [torch.randn(N, 3, 8, 8) for _ in range(RUNS)]
    out = fused(batch(xs, layout))
    for k, model in enumerate(separate):
        torch.testing.assert_close(run_rows(out, RUNS, k), model(xs[k]))


def test_fused_layers_keep_each_layers_own_groups_eps_and_momentum():
    """Any network fuses (rows layout), not only the backbones' defaults: a grouped convolution
    stays grouped within each run, and a BatchNorm keeps its eps and momentum (running statistics
    then move as in each run alone)."""
    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, groups=2), nn.BatchNorm2d(4, eps=0.5, momentum=0.7),
                             nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, CLASSES)).double().train()

    separate = [net(seed) for seed in range(RUNS)]
    fused = fuse(copy.deepcopy(separate))
    for _ in range(2):
        assert_each_runs_forward(fused, separate, [torch.randn(N, 2, 5, 5) for _ in range(RUNS)])
    assert_same_state(fused, separate)


def test_fused_layers_keep_dilation_and_leave_out_what_the_runs_do_not_have():
    """A dilated convolution without bias, a BatchNorm without running statistics, a linear layer
    without bias: the fused network computes the runs in train and eval mode and holds exactly the
    runs' parameters (no bias of its own to train)."""
    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(2, 3, 3, padding=2, dilation=2, bias=False),
                             nn.BatchNorm2d(3, track_running_stats=False), nn.ReLU(), nn.Flatten(),
                             nn.Linear(3 * 5 * 5, CLASSES, bias=False)).double().train()

    separate = [net(seed) for seed in range(RUNS)]
    fused = fuse(copy.deepcopy(separate))
    assert sum(p.numel() for p in fused.parameters()) == RUNS * sum(p.numel() for p in separate[0].parameters())
    xs = [torch.randn(N, 2, 5, 5) for _ in range(RUNS)]
    for mode in ("train", "eval"):  # eval: still each run's batch statistics (none tracked)
        for m in (fused, *separate):
            m.train(mode == "train")
        assert_each_runs_forward(fused, separate, xs, msg=mode)


def test_fused_embeddings_give_each_run_its_own_rows_and_gradients():
    """K ``Embedding`` s as one table: row n K + k looks up run k's table, and a batch that repeats
    an index gives each run's table the gradient it gets alone (plain sums, no rescaling)."""
    separate = []
    for seed in range(RUNS):
        torch.manual_seed(seed)
        separate.append(nn.Sequential(nn.Embedding(6, 4)).double())
    fused = fuse(copy.deepcopy(separate))
    idx = [torch.tensor([1, 1, 5, 0]), torch.tensor([2, 3, 3, 3]), torch.tensor([0, 0, 0, 4])]
    scale = [torch.randn(N, 4) for _ in range(RUNS)]
    out = fused(interleave(idx))
    (out * interleave(scale)).sum().backward()
    for k, model in enumerate(separate):
        alone = model(idx[k])
        torch.testing.assert_close(run_rows(out, RUNS, k), alone)
        (alone * scale[k]).sum().backward()
        torch.testing.assert_close(fused[0].weight.grad.chunk(RUNS)[k], model[0].weight.grad)


def test_layers_without_a_faithful_fused_form_are_refused():
    """What the fused forms cannot compute exactly is a one-line error, not a silently different
    network: a padded convolution other than zeros, an Embedding with padding_idx or max_norm, a
    layer with buffers only; models of one parameter shape but different layers do not fuse."""
    def refused(make, match):
        with pytest.raises(BenchError, match=match):
            fuse([make() for _ in range(RUNS)])

    refused(lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")), "padding_mode")
    refused(lambda: nn.Sequential(nn.Embedding(5, 2, padding_idx=0)), "padding_idx or max_norm")
    refused(lambda: nn.Sequential(nn.Embedding(5, 2, max_norm=1.0)), "padding_idx or max_norm")

    class Scale(nn.Module):  # state in a buffer only
        def __init__(self):
            super().__init__()
            self.register_buffer("factor", torch.ones(1))

        def forward(self, x):
            return x * self.factor

    refused(lambda: nn.Sequential(nn.Linear(2, 2), Scale()), "no fused form")
    from collections import OrderedDict
    with pytest.raises(BenchError, match="one architecture"):
        fuse([nn.Sequential(OrderedDict(a=nn.Linear(3, 3))), nn.Sequential(OrderedDict(b=nn.Linear(3, 3)))])


def test_run_state_gives_copies_and_refuses_a_run_outside_the_group():
    """``run_state(fused, k)`` is run k's state as copies (changing it leaves the fused network as
    it was), for 0 <= k < K only (no negative index from the end)."""
    fused = fuse(models())
    before = copy.deepcopy(fused.state_dict())
    state = run_state(fused, 1)
    for value in state.values():
        value.add_(1)
    for name, value in fused.state_dict().items():
        assert torch.equal(value, before[name]), name
    for k in (-1, RUNS):
        with pytest.raises(BenchError, match=f"run {k} of a fusion of {RUNS}"):
            run_state(fused, k)


def test_the_fused_network_keeps_the_models_dtype():
    """Fused layers take the models' dtype, not torch's default (float64 in this module): float32
    models give a float32 fused network that computes each run's float32 forward."""
    separate = [m.float() for m in models()]
    fused = fuse(separate)
    assert {t.dtype for t in fused.state_dict().values() if t.is_floating_point()} == {torch.float32}
    xs = [torch.randn(N, 1, 12, 12, dtype=torch.float32) for _ in range(RUNS)]
    assert assert_each_runs_forward(fused, separate, xs).dtype == torch.float32


def test_a_methods_own_fused_layer_is_split_back_into_runs():
    """A layer class of a method's own with ``fused(parts, layout)`` (as LDAM's cosine classifier):
    its fused form is told K (``runs``), so ``run_state`` splits its tensors back into each run's."""
    class Gain(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.randn(4))

        def forward(self, x):
            return x * self.gain

        @classmethod
        def fused(cls, parts, layout):
            one = Gain()  # a form that leaves `runs` to fuse(): (N K, 4) rows times each run's gain
            one.gain = nn.Parameter(torch.cat([p.gain.detach() for p in parts]))
            one.forward = lambda x: (x.view(-1, len(parts), 4) * one.gain.view(len(parts), 4)).view(-1, 4)
            return one

    separate = [nn.Sequential(nn.Linear(3, 4), Gain()).double() for _ in range(RUNS)]
    fused = fuse(separate)
    assert fused[1].runs == RUNS
    assert_same_state(fused, separate)
    assert_each_runs_forward(fused, separate, [torch.randn(N, 3) for _ in range(RUNS)])


def _loaders(pools, seeds, **kwargs):
    from bench.data.datasets import CIFAR_MEAN, CIFAR_STD

    return [Loader(x, y, batch_size=8, device="cpu", mean=CIFAR_MEAN, std=CIFAR_STD, augment=True,
                   generator=torch.Generator().manual_seed(seed), **kwargs) for (x, y), seed in zip(pools, seeds)]


def _pools(size=21):
    out = []
    for k in range(RUNS):
        g = torch.Generator().manual_seed(k)
        out.append((torch.randint(0, 256, (size, 8, 8, 3), generator=g, dtype=torch.uint8),
                    torch.randint(0, CLASSES, (size,), generator=g)))
    return out


@pytest.mark.parametrize("layout", ["rows", "runs"])
def test_a_fused_loader_gives_each_run_the_batches_it_draws_alone(layout):
    """``bench run --fuse``: run k's part of every fused batch is the batch its own loader (its own
    pool and generator: order, crops, flips) yields alone, the last short batch included; the images
    in the classifier's layout, and row n K + k's index i K + k reads run k's sample i of a
    per-sample table of the K pools, interleaved."""
    pools, seeds = _pools(), [10, 11, 12]
    alone = [[b for _ in range(2) for b in ld] for ld in _loaders(pools, seeds)]
    fused = FusedLoader(_loaders(pools, seeds), layout)
    got = [b for _ in range(2) for b in fused]
    assert len(fused) == 3 and len(got) == 6 and [len(b[1]) for b in got] == [8 * RUNS, 8 * RUNS, 5 * RUNS] * 2
    table = interleave([y for _, y in pools])
    for step, (x, y, idx) in enumerate(got):
        for k in range(RUNS):
            xa, ya, ia = alone[k][step]
            mine = run_rows(x, RUNS, k) if layout == "rows" else x[:, 3 * k:3 * (k + 1)]
            assert torch.equal(mine, xa) and torch.equal(run_rows(y, RUNS, k), ya)
            assert torch.equal(run_rows(idx, RUNS, k), ia * RUNS + k)
        assert torch.equal(table[idx], y)
    assert not torch.equal(alone[0][0][2], alone[1][0][2])  # the runs' orders differ: the check can tell
    assert fused.num_samples == 21  # each run's pool, not the K pools together
    example = fused.example()  # a full fused batch, as a compile check feeds the classifier
    parts = [ld.example() for ld in _loaders(pools, seeds)]
    assert torch.equal(example, interleave(parts) if layout == "rows" else stack_runs(parts))


def test_a_fused_meta_cycle_is_each_runs_own_cycle_and_resumes_each_ones_position():
    """The meta sets: each run cycles through its own set (a fresh order each pass, as alone), and a
    checkpointed fused cycle resumes every run at its own position."""
    pools, seeds = _pools(20), [3, 4, 5]
    alone = [ld.cycle() for ld in _loaders(pools, seeds)]
    cycle = FusedLoader(_loaders(pools, seeds), "rows").cycle()
    for _ in range(6):  # two passes of three batches (8, 8, 4)
        _, y, idx = next(cycle)
        for k, c in enumerate(alone):
            _, ya, ia = next(c)
            assert torch.equal(run_rows(idx, RUNS, k), ia * RUNS + k) and torch.equal(run_rows(y, RUNS, k), ya)
    next(cycle)
    state = cycle.state_dict()
    rest = [next(cycle)[2] for _ in range(2)]  # the rest of the pass
    resumed = FusedLoader(_loaders(pools, [7, 8, 9]), "rows").cycle()  # other generators: orders come from state
    resumed.load_state_dict(state)
    assert all(torch.equal(idx, next(resumed)[2]) for idx in rest)


def test_a_fused_loader_needs_pools_of_one_size_batch_size_and_drop_last():
    pools = _pools()
    FusedLoader(_loaders(pools, [0, 1, 2]), "rows")
    for changed in ({"batch_size": 7}, {"drop_last": True}):
        loaders = _loaders(pools, [0, 1, 2])
        options = dict(batch_size=8, device="cpu", mean=(0.5,) * 3, std=(0.25,) * 3, augment=True)
        options.update(changed)
        loaders[1] = Loader(*pools[1], **options)
        with pytest.raises(BenchError, match="pools of one size and one batch size"):
            FusedLoader(loaders, "rows")
    shorter = _pools(20)
    with pytest.raises(BenchError, match="pools of one size"):
        FusedLoader(_loaders(pools[:2], [0, 1]) + _loaders(shorter[2:], [2]), "rows")


def test_a_batchnorm_without_affine_parameters_fuses():
    """A BatchNorm2d(affine=False) (no weight to take the device and dtype from) fuses and computes
    each run's normalisation with its own statistics."""
    separate = []
    for seed in range(RUNS):
        torch.manual_seed(seed)
        separate.append(nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, affine=False)).double().train())
    fused = fuse(copy.deepcopy(separate))
    assert sum(p.numel() for p in fused.parameters()) == RUNS * sum(p.numel() for p in separate[0].parameters())
    assert_each_runs_forward(fused, separate, [torch.randn(N, 2, 5, 5) for _ in range(RUNS)])
    assert_same_state(fused, separate)


def test_a_bare_layer_is_refused_not_returned_unfused():
    """fuse() replaces the leaves of a network; a bare layer (no submodules) is a one-line error
    rather than model 0's layer for every run."""
    with pytest.raises(BenchError, match="network of layers"):
        fuse([nn.Linear(3, 2) for _ in range(RUNS)])

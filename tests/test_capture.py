"""Captured steps (bench/capture.py): the plan/assemble split, StepGraph's bookkeeping, optimiser
preparation, precision; and, on CUDA only, captured steps equal to eager steps.

On a machine without CUDA the StepGraph tests run its bookkeeping through ``ReplayOnCPU``, which
stands in for the CUDA graph (capture = run once and keep the output tensors, replay = run on
the static inputs and write into those tensors). What only a GPU can show (that the real CUDA
graph replays the same arithmetic) is ``test_captured_steps_match_eager_on_cuda``.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from bench.capture import PRECISIONS, StepGraph, autocast, prepare_optimizer
from bench.data import Loader
from bench.errors import BenchError
from bench.models import build_model
from bench.spec import RunSpec
from bench.train import set_lr
from methods.meta import MetaStep
from methods.mwnet import WeightNet

CUDA = torch.cuda.is_available()


class ReplayOnCPU(StepGraph):
    """StepGraph with a stand-in for the CUDA graph, so its bookkeeping runs on CPU."""

    def __init__(self, fn, fail_with: Exception | None = None, **kwargs):
        super().__init__(fn, device="cpu", **kwargs)
        self.enabled = True  # StepGraph turns itself off off-CUDA; the stand-in turns it back on
        self.fail_with = fail_with
        self.fn_calls = 0
        inner = self.fn

        def counted(*a):
            self.fn_calls += 1
            return inner(*a)
        self.fn = counted

    def _warm(self, inputs):
        return self.fn(*inputs)

    def _prepare(self):
        self._prepared = True  # Adam's capturable mode exists on CUDA only

    def _record(self, static_in):
        if self.fail_with is not None:
            raise self.fail_with
        out = self.fn(*static_in)  # "capture": this call's step is done here ...
        first = [True]

        def replay():
            if first[0]:  # ... so the replay right after capture does nothing
                first[0] = False
                return
            new = self.fn(*static_in)
            for dst, src in zip(_tensors(out), _tensors(new)):
                dst.copy_(src)
        return replay, out


class _OpRecorder(TorchDispatchMode):
    """Records every aten call (function, arguments, outputs) made while it is active; refuses the
    calls that synchronise with the host, which CUDA graph capture refuses too."""

    SYNCING = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
               torch.ops.aten.is_nonzero.default, torch.ops.aten.equal.default}

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SYNCING:
            raise RuntimeError(f"{func} synchronises with the host (not capturable)")
        layouts = [_layout(t) for t in tree_flatten((args, kwargs))[0]]  # before a view op changes them
        out = func(*args, **kwargs)
        shapes = [t.shape if isinstance(t, torch.Tensor) else None for t in tree_flatten(out)[0]]
        self.ops.append((func, args, kwargs, layouts, out, shapes))
        return out


class EmulatedGraph(ReplayOnCPU):
    """A closer stand-in for a CUDA graph: capture records the step's aten calls (below autograd,
    backward and optimiser kernels included), and replay re-runs *those calls* on the same tensor
    objects, writing each result into the tensor the capture produced: no Python of the step runs
    on replay, so a value the step read from Python at capture time stays baked in, as on a GPU."""

    _prepare = StepGraph._prepare  # fused SGD with a tensor lr, capturable Adam: as on CUDA

    def _record(self, static_in):
        recorder = _OpRecorder()
        with recorder:
            out = self.fn(*static_in)  # "capture" also does this call's step ...
        first = [True]

        @torch.no_grad()
        def replay():
            if first[0]:  # ... so the replay right after capture does nothing
                first[0] = False
                return
            for func, args, kwargs, layouts, recorded, shapes in recorder.ops:
                if torch.Tag.inplace_view in func.tags:
                    continue  # metadata only (squeeze_, t_ ...): a CUDA graph has no kernel to replay
                args, kwargs = _as_captured(args, kwargs, layouts)
                new = func(*args, **kwargs)
                for dst, src, shape in zip(tree_flatten(recorded)[0], tree_flatten(new)[0], shapes):
                    if isinstance(dst, torch.Tensor) and dst is not src:
                        # against the shape at capture: a later in-place view op (squeeze_) may have
                        # changed the recorded tensor's own shape since, as it does on a GPU
                        assert src.shape == shape, f"{func}: output shape {tuple(shape)} at capture, " \
                            f"{tuple(src.shape)} on replay (a data-dependent shape cannot be captured)"
                        dst.copy_(src.view(dst.shape) if dst.shape != shape else src)
        return replay, out


def _layout(t):
    return (t.shape, t.stride(), t.storage_offset()) if isinstance(t, torch.Tensor) else None


def _as_captured(args, kwargs, layouts):
    """The op's tensor arguments with the shape and strides they had at capture (a kernel in a CUDA
    graph keeps those; a later ``squeeze_`` changed only the Python tensor's metadata)."""
    flat, spec = tree_flatten((args, kwargs))
    flat = [t.as_strided(*layout) if layout is not None and _layout(t) != layout else t
            for t, layout in zip(flat, layouts)]
    return tree_unflatten(flat, spec)


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    return [v for v in out if isinstance(v, torch.Tensor)]


def _images(n=64, size=12, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8), rng.integers(0, 10, size=n)


def _loader(x, y, *, batch_size=16, augment=True, seed=3, device="cpu", drop_last=False):
    return Loader(x, y, batch_size=batch_size, device=device, mean=(0.5,) * x.shape[-1], std=(0.25,) * x.shape[-1],
                  augment=augment, drop_last=drop_last, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------ plan / assemble

@pytest.mark.parametrize("augment", [True, False])
def test_assembled_plans_are_the_loaders_batches(augment):
    x, y = _images()
    plain = list(_loader(x, y, augment=augment))
    split = _loader(x, y, augment=augment)
    assembled = [split.assemble(*plan) for plan in split.plans()]
    assert len(plain) == len(assembled) == 4
    for a, b in zip(plain, assembled):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    cycle_a, cycle_b = _loader(x, y, augment=augment).cycle(), _loader(x, y, augment=augment).cycle()
    for _ in range(6):  # across an epoch boundary
        assert all(torch.equal(u, v) for u, v in zip(next(cycle_a), cycle_b.loader.assemble(*cycle_b.next_plan())))


def test_plan_tensors_have_fixed_shapes():
    x, y = _images()
    for augment in (True, False):
        plan = next(_loader(x, y, augment=augment).plans())
        assert plan.idx.shape == (16,) and plan.offsets.shape == (16, 2) and plan.flip.shape == (16,)
        assert plan.offsets.dtype == torch.int64 and plan.flip.dtype == torch.bool
        if augment:
            assert 0 <= int(plan.offsets.min()) and int(plan.offsets.max()) <= 8


def test_crop_flip_follows_the_plan():
    x, y = _images(n=4, size=8)
    loader = _loader(x, y, batch_size=4, augment=True)
    idx = torch.arange(4)
    centre = torch.full((4, 2), 4)  # offset 4 = no shift
    no_flip, flip = torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)
    same = loader.assemble(idx, centre, no_flip)[0]
    assert torch.equal(same, loader.normalise(loader.x[idx]))
    mirrored = loader.assemble(idx, centre, flip)[0]
    assert torch.equal(mirrored, same.flip(-1))


# ------------------------------------------------------------------------ StepGraph bookkeeping

def _sgd_step(model, loader, optimizer):
    def step(idx, offsets, flip):
        xb, yb, _ = loader.assemble(idx, offsets, flip)
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def _tiny_setup(seed=0):
    torch.manual_seed(seed)
    x, y = _images(n=80, size=10, channels=1)
    model = build_model("small_cnn", 10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return model, optimizer, _loader(x, y, batch_size=16, augment=False, seed=seed)


def test_step_graph_is_eager_on_cpu():
    model, optimizer, loader = _tiny_setup()
    calls = []
    graphed = StepGraph(lambda *plan: calls.append(1) or _sgd_step(model, loader, optimizer)(*plan),
                        name="ce", device="cpu", enabled=True)
    for plan in loader.plans():
        graphed(*plan)
    assert graphed.mode == "eager" and graphed.captures == 0 and len(calls) == 5


def test_replayed_steps_train_like_eager_steps():
    """Warm-up, capture, replays: the same parameters as five eager steps (bit for bit on CPU)."""
    model_a, opt_a, loader_a = _tiny_setup()
    model_b, opt_b, loader_b = copy.deepcopy(model_a), None, copy.deepcopy(loader_a)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    eager = StepGraph(_sgd_step(model_a, loader_a, opt_a), name="ce", device="cpu", enabled=False)
    graphed = ReplayOnCPU(_sgd_step(model_b, loader_b, opt_b), name="ce", warmup=2)
    outs_a, outs_b = [], []
    for plan_a, plan_b in zip(loader_a.plans(), loader_b.plans()):
        outs_a.append(float(eager(*plan_a)))
        outs_b.append(float(graphed(*plan_b)))
    assert graphed.captures == 1 and graphed.replays == 3  # 2 warm-up steps, capture + 2 more
    assert graphed.fn_calls == 5                           # each of the 5 batches trained once
    assert outs_a == outs_b
    for p, q in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(p, q)


def test_replays_copy_new_inputs_and_reuse_the_output_tensors():
    graphed = ReplayOnCPU(lambda a, b: a * 2 + b, name="toy", warmup=1)
    outs = [graphed(torch.full((3,), float(i)), torch.ones(3)) for i in range(4)]
    assert [o[0].item() for o in outs[:1]] == [1.0]
    assert outs[1] is outs[2] is outs[3]                   # the graph's static output
    assert outs[3].tolist() == [7.0, 7.0, 7.0]             # computed from the last inputs


def test_other_shapes_run_eagerly_and_a_new_key_captures_again():
    graphed = ReplayOnCPU(lambda a: a + 1, name="toy", warmup=1)
    for _ in range(3):
        graphed(torch.zeros(4), key=0)
    assert graphed.captures == 1
    short = graphed(torch.zeros(2), key=0)                 # an epoch's last, short batch
    assert short.shape == (2,) and graphed.captures == 1
    assert graphed(torch.zeros(4), key=0).shape == (4,)
    replays = graphed.replays
    for _ in range(3):
        graphed(torch.zeros(4), key=1)                     # e.g. the next epoch of a DRW loss
    assert graphed.captures == 2 and graphed.replays == replays + 2


def test_a_short_batch_at_capture_time_is_not_what_gets_captured():
    """A cycled meta loader can hand the capturing call its short last batch; the step then waits
    for a batch of the first call's shapes, or every later full batch would run eagerly."""
    graphed = ReplayOnCPU(lambda a: a + 1, name="toy", warmup=1)
    graphed(torch.zeros(4))
    assert graphed(torch.zeros(2)).shape == (2,) and graphed.captures == 0  # eager, not captured
    graphed(torch.zeros(4))
    assert graphed.captures == 1 and graphed._static_in[0].shape == (4,)
    graphed(torch.zeros(4))
    assert graphed.replays == 2


def test_the_lr_tensor_is_made_once_for_cuda_and_cuda_0():
    """torch.device("cuda:0") != torch.device("cuda"): a second prepare must not make a new lr
    tensor (a live graph would keep reading the old one), whichever spelling each call uses."""
    from bench.capture import _same_device

    assert _same_device(torch.device("cuda", 0), torch.device("cuda"))
    assert _same_device(torch.device("cuda", 1), torch.device("cuda", 1))
    assert not _same_device(torch.device("cuda", 1), torch.device("cuda", 0))
    assert not _same_device(torch.device("cpu"), torch.device("cuda"))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    prepare_optimizer(opt, torch.device("cpu"))
    lr = opt.param_groups[0]["lr"]
    prepare_optimizer(opt, "cpu")
    assert opt.param_groups[0]["lr"] is lr



def test_failed_capture_falls_back_to_eager_with_one_line(capsys):
    model_a, opt_a, loader_a = _tiny_setup()
    model_b, loader_b = copy.deepcopy(model_a), copy.deepcopy(loader_a)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    graphed = ReplayOnCPU(_sgd_step(model_b, loader_b, opt_b), name="CE step", warmup=1,
                          fail_with=RuntimeError("operation not permitted when stream is capturing\nmore"))
    eager = _sgd_step(model_a, loader_a, opt_a)
    for plan_a, plan_b in zip(loader_a.plans(), loader_b.plans()):
        eager(*plan_a)
        graphed(*plan_b)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bench: CUDA graph capture of CE step failed (RuntimeError: operation not permitted when "
                   "stream is capturing); running it eagerly"]
    assert graphed.mode.startswith("eager (capture failed: RuntimeError") and graphed.replays == 0
    for p, q in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------ optimisers, lr, precision

def test_prepared_sgd_matches_torch_sgd_and_reads_the_lr_tensor_in_place():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    assert prepare_optimizer(opt_b, torch.device("cpu"))
    lr_tensor = opt_b.param_groups[0]["lr"]
    x = torch.randn(16, 5)
    for i in range(6):
        for model, opt in ((a, opt_a), (b, opt_b)):
            set_lr(opt, 0.1 / (i + 1))
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    assert opt_b.param_groups[0]["lr"] is lr_tensor and lr_tensor.item() == pytest.approx(0.1 / 6)
    torch.testing.assert_close(b.weight, a.weight, rtol=1e-5, atol=1e-6)


def test_an_optimiser_that_cannot_be_captured_is_reported():
    assert not prepare_optimizer(torch.optim.RMSprop(torch.nn.Linear(2, 2).parameters()), torch.device("cpu"))


def test_precision_is_in_the_key_only_when_not_fp32():
    base = RunSpec(method="ce")
    assert "precision" not in base.to_dict()  # keys of runs stored before the field existed hold
    assert RunSpec(method="ce", precision="fp32").key() == base.key()
    bf16 = RunSpec(method="ce", precision="bf16")
    assert bf16.key() != base.key() and bf16.to_dict()["precision"] == "bf16"
    assert RunSpec.from_dict(bf16.to_dict()) == bf16 and RunSpec.from_dict(base.to_dict()) == base
    with pytest.raises(BenchError, match="unknown precision 'fp16'"):
        RunSpec(method="ce", precision="fp16")
    assert PRECISIONS == ("fp32", "bf16")


def test_bf16_autocast_runs_the_forward_in_bf16():
    layer = torch.nn.Linear(8, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert layer(torch.randn(2, 8)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert layer(torch.randn(2, 8)).dtype == torch.float32


def test_bf16_meta_step_is_close_to_fp32():
    """The bf16 meta-gradient points the same way as the fp32 one (same state, same batch)."""
    grads = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model("small_cnn", 10, 1)
        vnet = WeightNet(20)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = MetaStep(model, opt, vnet, None, precision=precision)
        g = torch.Generator().manual_seed(1)
        x, xm = torch.randn(32, 1, 28, 28, generator=g), torch.randn(32, 1, 28, 28, generator=g)
        y, ym = torch.randint(0, 10, (32,), generator=g), torch.randint(0, 10, (32,), generator=g)
        out = step(x, y, torch.arange(32), xm, ym)
        assert out["meta_loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
        grads[precision] = torch.cat([p.grad.flatten() for p in vnet.parameters()])
    cos = F.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cos > 0.95, float(cos)


# ------------------------------------------------------------------------ CUDA: captured == eager

def _equivalence_setup(kind, seed=0):
    device = torch.device("cuda")
    torch.manual_seed(seed)
    x, y = _images(n=256, size=32, channels=3, seed=seed)
    model = build_model("resnet32", 10, 3).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    train = _loader(x, y, batch_size=64, augment=True, seed=seed, device=device)
    meta = _loader(x[:128], y[:128], batch_size=64, augment=True, seed=seed + 1, device=device)
    if kind == "ce":
        return model, [opt], _sgd_step(model, train, opt), train, None
    vnet = WeightNet(100).to(device)
    vopt = torch.optim.Adam(vnet.parameters(), lr=1e-3, weight_decay=1e-4)
    skip = 3 if kind == "meta_sl3" else 0
    ms = MetaStep(model, opt, vnet, vopt, lookahead="full" if skip else "sgd", skip_layers=skip)

    def step(i, o, f, mi, mo, mf):
        xb, yb, ib = train.assemble(i, o, f)
        xm, ym, _ = meta.assemble(mi, mo, mf)
        out = ms(xb, yb, ib, xm, ym)
        return torch.stack([out["loss"], out["meta_loss"]])
    return model, [opt, vopt], step, train, meta


@pytest.mark.skipif(not CUDA, reason="needs CUDA (the eager path is covered above)")
@pytest.mark.parametrize("kind", ["ce", "meta_sl0", "meta_sl3"])
def test_captured_steps_match_eager_on_cuda(kind):
    """Same state, same 8 batch plans: parameters after eager steps and after warm-up + capture +
    replays agree within rtol 1e-3 / atol 1e-4 (float rounding: cuDNN may pick other kernels)."""
    results = []
    for enabled in (False, True):
        model, opts, fn, train, meta = _equivalence_setup(kind)
        for opt in opts:  # the same (fused / capturable) update kernels on both sides
            prepare_optimizer(opt, torch.device("cuda"))
        graphed = StepGraph(fn, name=kind, device="cuda", enabled=enabled, optimizers=opts, warmup=2)
        train_plans = train.cycle()
        meta_plans = meta.cycle() if meta is not None else None
        for _ in range(8):
            inputs = [*train_plans.next_plan()] + ([*meta_plans.next_plan()] if meta_plans is not None else [])
            graphed(*inputs)
        torch.cuda.synchronize()
        assert graphed.mode == ("captured" if enabled else "eager"), graphed.mode
        if enabled:
            assert graphed.captures == 1 and graphed.replays == 6  # 2 warm-up, capture + 5 replays
        results.append({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    for name in results[0]:
        torch.testing.assert_close(results[1][name], results[0][name], rtol=1e-3, atol=1e-4, msg=name)


# ------------------------------------------------------------------------ every method's step plumbing

def eager_then_replayed(train, monkeypatch):
    """``train()`` twice: every training step eager (the same prepared optimisers, never captured),
    then through :class:`EmulatedGraph` (one eager call, capture, replays); returns both results.
    Checks that a step was replayed and that none synchronised with the host."""
    import importlib

    from methods.base import Run

    # capturable Adam is a CUDA feature; its tensor-only code path runs on CPU as well
    monkeypatch.setattr(importlib.import_module("torch.optim.adam"), "_get_capturable_supported_devices",
                        lambda *a, **k: ["cpu"])
    made = []

    def stepper(eager_calls):
        def step_graph(self, fn, *, name, optimizers=(), **_):
            step = EmulatedGraph(fn, name=name, optimizers=optimizers, warmup=eager_calls)
            self.steps.append(step)
            made.append(step)
            return step
        return step_graph

    monkeypatch.setattr(Run, "step_graph", stepper(10**9))
    eager = train()
    made.clear()
    monkeypatch.setattr(Run, "step_graph", stepper(1))
    replayed = train()
    assert made and sum(s.replays for s in made) > 0, "no step was replayed"
    assert all(s.failure is None for s in made), [s.failure for s in made]  # nothing synchronised
    return eager, replayed


@pytest.mark.usefixtures("small_pools")  # every 8th sample: the same loops and steps, fewer of them
@pytest.mark.parametrize("name", __import__("methods").names())
def test_every_method_trains_the_same_through_replayed_steps(name, monkeypatch):
    """Each method's training loops, with their steps replayed by :class:`EmulatedGraph` (warm-up,
    capture of the aten calls, replays that run no Python, new keys, short batches): the same
    results as eager, bit for bit on CPU. Catches a step that synchronises with the host, a loop
    that reads a step's output after the next call, and a value read from Python at capture time
    that changes later without a new key (e.g. an lr that is not a tensor filled in place)."""

    from test_resume_methods import quick_spec  # tests/ is on sys.path (pytest rootdir-less layout)

    from bench import execute as ex

    spec = quick_spec(name)
    eager, graphed = eager_then_replayed(lambda: ex.execute(spec, device=torch.device("cpu"), cache_dir=None),
                                         monkeypatch)
    assert eager.status == "done", eager.error
    assert graphed.status == "done", graphed.error
    assert graphed.metrics == eager.metrics
    for record, values in eager.values.items():
        np.testing.assert_array_equal(graphed.values[record], values, err_msg=record)


def test_the_emulated_graph_allows_in_place_view_ops_and_refuses_data_dependent_shapes():
    """The CPU stand-in judges a replayed op's output by its shape at capture, not by the recorded
    tensor's shape now: a later in-place ``squeeze_`` (torch.quantile ends with one) is fine, as on
    a GPU; an output whose shape follows the data is not. (torch.quantile itself is no test here:
    on CPU torch 2.11 checks its q with aten.equal, a host synchronisation.)"""
    def squeezing_step(x):
        top = torch.sort(x, dim=0).values[-2:-1].mul(2.0)  # shape (1, 3) when recorded ...
        return top.squeeze_(0)  # ... (3,) once squeezed in place

    graph = EmulatedGraph(squeezing_step, name="squeeze_", warmup=1)
    x = torch.randn(8, 3)
    for _ in range(3):
        graph(x)
    x2 = torch.randn(8, 3)
    out = graph(x2)
    assert graph.replays and graph.failure is None and out.shape == (3,)
    assert torch.equal(out, torch.sort(x2, dim=0).values[-2] * 2.0)

    def unique_step(x):
        return torch.unique(x.round())

    graph = EmulatedGraph(unique_step, name="unique", warmup=1)
    graph(torch.zeros(4))
    graph(torch.zeros(4))  # captured on one distinct value
    with pytest.raises(AssertionError, match="data-dependent shape"):
        graph(torch.arange(4.0))


def test_release_frees_the_graph_and_keeps_the_mode():
    graphed = ReplayOnCPU(lambda a: a + 1, name="toy", warmup=1)
    for _ in range(3):
        graphed(torch.zeros(2))
    assert graphed._graph is not None and graphed.mode == "captured"
    graphed.release()
    assert graphed._graph is None and graphed._static_in == [] and graphed.mode == "captured"
    assert graphed(torch.zeros(2)).tolist() == [1.0, 1.0] and graphed.captures == 1  # warm-up again


# ------------------------------------------------------------------------ kernels, autocast cache, keys, shapes, dtypes

def test_prepared_optimisers_use_the_capturable_kernels():
    sgd = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
    assert prepare_optimizer(sgd, torch.device("cpu"))
    group = sgd.param_groups[0]
    assert (group["fused"], group["foreach"]) == (True, False)
    assert group["lr"].dtype == torch.float32 and group["lr"].item() == pytest.approx(0.1)
    p = torch.nn.Parameter(torch.zeros(2, device="meta"))  # another device than the optimiser state's
    adam = torch.optim.Adam([p], lr=1e-3)
    adam.state[p]["step"] = torch.tensor(3.0)  # e.g. a state loaded on the CPU for a model on the GPU
    assert prepare_optimizer(adam, torch.device("cpu"))
    assert adam.param_groups[0]["capturable"] is True and adam.state[p]["step"].device == p.device


def test_bf16_autocast_casts_the_weights_again_at_every_use():
    """Autocast's weight cache is off: an in-place update between two forward passes is seen (a
    captured graph, and a meta step's look-ahead, change weights inside one autocast region)."""
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast(torch.device("cpu"), "bf16"):
        before = layer(x)
        with torch.no_grad():
            layer.weight.add_(1.0)
        after = layer(x)
    assert not torch.equal(before, after)


def test_warmup_is_at_least_one_eager_call():
    graphed = ReplayOnCPU(lambda a: a + 1, name="toy", warmup=0)
    assert graphed.warmup == 1
    graphed(torch.zeros(2))
    assert graphed.captures == 0 and graphed.fn_calls == 1


def test_a_new_key_captures_on_its_own_shapes_and_release_forgets_them():
    graphed = ReplayOnCPU(lambda a: a + 1, name="toy", warmup=1)
    for _ in range(2):
        graphed(torch.zeros(4), key=0)
    for _ in range(2):
        graphed(torch.zeros(3), key=1)  # another key, other shapes
    assert graphed.captures == 2 and graphed._static_in[0].shape == (3,)
    graphed.release()
    for _ in range(2):
        graphed(torch.zeros(5), key=1)  # the same key as before the release, other shapes
    assert graphed.captures == 3 and graphed._static_in[0].shape == (5,)
    graphed = ReplayOnCPU(lambda a: a + 1, name="toy", warmup=1)  # the same with no key (None)
    for _ in range(2):
        graphed(torch.zeros(4))
    graphed.release()
    for _ in range(2):
        graphed(torch.zeros(5))  # the next loop's shapes: captured again, not run eagerly for good
    assert graphed.captures == 2 and graphed._static_in[0].shape == (5,)


def test_inputs_of_another_dtype_or_not_tensors_run_eagerly():
    graphed = ReplayOnCPU(lambda a: a * 2, name="toy", warmup=1)
    for _ in range(2):
        graphed(torch.ones(3))
    out = graphed(torch.ones(3, dtype=torch.int64))
    assert out.dtype == torch.int64 and graphed.replays == 1  # not copied into the float input
    graphed = ReplayOnCPU(lambda a, n: a * n, name="toy", warmup=1)
    for _ in range(3):
        assert graphed(torch.ones(2), 3).tolist() == [3.0, 3.0]
    assert graphed.captures == 0  # a Python number would be baked into the graph


def test_cudnn_searches_its_algorithms_on_cuda_only(monkeypatch):
    """Training and ``bench timing`` let cuDNN time its convolution algorithms on CUDA (fixed shapes:
    once per shape, before capture); a CPU run leaves torch's setting alone."""
    from bench.capture import search_conv_algorithms

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    search_conv_algorithms(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    search_conv_algorithms(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is True
    search_conv_algorithms("cuda", enabled=False)  # bench timing --no-cudnn-benchmark
    assert torch.backends.cudnn.benchmark is False

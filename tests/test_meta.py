"""The shared bilevel step (methods/meta.py): the weighting-net gradient against finite
differences of an independent reference (a deep copy of the classifier stepped by
``torch.optim.SGD``), SLMO's restricted problem, and the real step. Everything in float64 on a
tiny model, so the whole file runs in a few seconds."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import methods.jvp as jvp_module
from bench.errors import BenchError
from bench.models import build_model
from methods.meta import MetaStep, TopOfNetwork, meta_step

B, BM, K = 6, 5, 3


pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def make_problem(seed=0, momentum_state=True, model_name="small_cnn", size=8, make_opt=None):
    """A tiny float64 problem: classifier, its SGD, a 1-4-1 weighting net, a batch and a meta batch
    (not named `setup`: pytest 7 calls a module-level `setup` as nose's module fixture)."""
    torch.manual_seed(seed)
    model = build_model(model_name, K, 1).double().train()
    opt = (make_opt(model) if make_opt is not None else
           torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4))
    x, y = torch.randn(B, 1, size, size), torch.randint(0, K, (B,))
    xm, ym = torch.randn(BM, 1, size, size), torch.randint(0, K, (BM,))
    if momentum_state:  # a few real steps: momentum buffers and running statistics are non-trivial
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(B, 1, size, size)), torch.randint(0, K, (B,))).backward()
            opt.step()
    vnet = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1), nn.Sigmoid()).double()  # 13 params
    return model, opt, vnet, (x, y, torch.arange(B)), (xm, ym)


def reference_meta_loss(model, opt, vnet, batch, meta, lookahead, skip_layers, normalize):
    """Independent reference: freeze blocks[:SL] of a deep copy as CurveNet's ``froze`` does
    (requires_grad False, eval mode), take the virtual step with plain tensor arithmetic (sgd) or
    a real torch.optim.SGD carrying the original momentum buffers (full), then the meta CE."""
    x, y, _ = batch
    m = copy.deepcopy(model)
    for _, block in m.blocks()[:skip_layers]:
        block.eval()
        block.requires_grad_(False)
    trainable = [p for p in m.parameters() if p.requires_grad]
    losses = F.cross_entropy(m(x), y, reduction="none")
    w = vnet(losses.detach()[:, None]).squeeze(1)
    a = w / w.sum() if normalize else w / len(w)
    grads = torch.autograd.grad((a * losses).sum(), trainable)
    lr = opt.param_groups[0]["lr"]
    with torch.no_grad():
        if lookahead == "sgd":
            for p, g in zip(trainable, grads):
                p -= lr * g
        else:
            g0 = opt.param_groups[0]
            virt = torch.optim.SGD(trainable, lr=lr, momentum=g0["momentum"], nesterov=g0["nesterov"],
                                   weight_decay=g0["weight_decay"])
            originals = dict(zip(m.parameters(), model.parameters()))
            for p, g in zip(trainable, grads):
                buf = opt.state.get(originals[p], {}).get("momentum_buffer")
                if buf is not None:
                    virt.state[p]["momentum_buffer"] = buf.clone()
                p.grad = g
            virt.step()
        return F.cross_entropy(m(meta[0]), meta[1])


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def analytic_grad(model, opt, vnet, batch, meta, **kw):
    step = MetaStep(model, opt, vnet, None, **kw)
    out = step(*batch, *meta, update_classifier=False)
    return flat([p.grad for p in vnet.parameters()]), out


def fd_grad(model, opt, vnet, batch, meta, eps=1e-6, **kw):
    params = list(vnet.parameters())
    base = flat(params).detach().clone()
    grad = torch.zeros_like(base)

    def set_flat(vec):
        with torch.no_grad():
            i = 0
            for p in params:
                p.copy_(vec[i:i + p.numel()].view_as(p))
                i += p.numel()

    for i in range(len(base)):
        vals = []
        for sign in (1, -1):
            vec = base.clone()
            vec[i] += sign * eps
            set_flat(vec)
            vals.append(reference_meta_loss(model, opt, vnet, batch, meta, **kw))
        grad[i] = (vals[0] - vals[1]) / (2 * eps)
    set_flat(base)
    return grad


@pytest.mark.parametrize("lookahead,skip_layers", [("sgd", 0), ("full", 0), ("sgd", 3), ("full", 2)])
def test_weight_net_gradient_matches_finite_differences(lookahead, skip_layers):
    model, opt, vnet, batch, meta = make_problem(seed=skip_layers)
    kw = dict(lookahead=lookahead, skip_layers=skip_layers, normalize=False)
    before = copy.deepcopy(model.state_dict())
    g, out = analytic_grad(model, opt, vnet, batch, meta, **kw)
    # the model (parameters and running statistics) is untouched by the look-ahead and meta forward
    # when SL > 0; with SL = 0 the shared forward is the real one and updates the running stats once
    for name, t in model.state_dict().items():
        if skip_layers or "running" not in name and "num_batches" not in name:
            assert torch.equal(t, before[name]), name
    model.load_state_dict(before)
    ref = reference_meta_loss(model, opt, vnet, batch, meta, **kw)
    assert out["meta_loss"].item() == pytest.approx(ref.item(), rel=1e-12)
    g_fd = fd_grad(model, opt, vnet, batch, meta, **kw)
    assert g.norm() > 1e-8
    assert (g - g_fd).norm() / g_fd.norm() < 1e-3


def test_normalised_weights_gradient_and_fresh_optimiser():
    # MW-Net(imb): weights divided by their sum; a fresh optimiser has no momentum buffers yet
    # (torch's SGD then takes buf = d, so the Nesterov slope is still 1 + momentum)
    model, opt, vnet, batch, meta = make_problem(seed=7, momentum_state=False)
    kw = dict(lookahead="full", skip_layers=1, normalize=True)
    g, _ = analytic_grad(model, opt, vnet, batch, meta, **kw)
    g_fd = fd_grad(model, opt, vnet, batch, meta, **kw)
    assert (g - g_fd).norm() / g_fd.norm() < 1e-3


@pytest.mark.parametrize("skip_layers", [0, 1, 2, 3])
@pytest.mark.parametrize("lookahead", ["sgd", "full"])
def test_jvp_and_create_graph_paths_agree(skip_layers, lookahead):
    results = []
    for second_order in ("jvp", "autograd"):
        model, opt, vnet, batch, meta = make_problem(seed=3)
        g, out = analytic_grad(model, opt, vnet, batch, meta, lookahead=lookahead,
                               skip_layers=skip_layers, second_order=second_order)
        results.append((g, out["meta_loss"]))
    (g1, m1), (g2, m2) = results
    assert torch.allclose(g1, g2, rtol=1e-9, atol=1e-14)
    assert m1 == m2


def test_skip_layers_zero_is_the_full_unrestricted_step():
    model, opt, vnet, batch, meta = make_problem(seed=4)
    step = MetaStep(model, opt, vnet, None, lookahead="full", skip_layers=0)
    assert step.bottom == []
    assert step.names == [n for n, _ in model.named_parameters()]
    x = batch[0]
    assert torch.equal(TopOfNetwork(model, 0)(x), model(x))
    # the meta loss equals that of an unfrozen deep copy stepped by torch.optim.SGD
    ref = reference_meta_loss(model, opt, vnet, batch, meta, "full", 0, False)
    assert step.meta_loss_at(*batch, *meta).item() == pytest.approx(ref.item(), rel=1e-12)


@pytest.mark.parametrize("skip_layers", [1, 2, 3])
def test_slmo_freezes_only_the_bottom_of_the_lookahead(skip_layers):
    model, opt, vnet, batch, meta = make_problem(seed=5)
    step = MetaStep(model, opt, vnet, None, lookahead="full", skip_layers=skip_layers)
    frozen = {n for n, _ in model.named_parameters()
              if n.split(".")[0] in [b for b, _ in model.blocks()[:skip_layers]]}
    assert frozen and not frozen & set(step.names)
    assert set(step.names) | frozen == {n for n, _ in model.named_parameters()}
    # the look-ahead moves exactly the top's parameters
    grads = [torch.ones_like(p) for p in step.params]
    virtual = step.lookahead_params(grads)
    assert set(virtual) == set(step.names)
    # the frozen BatchNorms use running statistics: changing them changes the meta loss,
    # while the top's running statistics (batch statistics in train mode) do not matter
    m0 = step.meta_loss_at(*batch, *meta).item()
    bottom_bn = next(m for _, blk in model.blocks()[:skip_layers] for m in blk.modules()
                     if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        bottom_bn.running_var.mul_(2.0)
    assert step.meta_loss_at(*batch, *meta).item() != pytest.approx(m0, rel=1e-9)
    with torch.no_grad():
        bottom_bn.running_var.div_(2.0)
        model.fc.weight.add_(0.0)
        top_bn = [m for m in step.top.modules() if isinstance(m, nn.BatchNorm2d)][0]
        top_bn.running_mean.add_(5.0)
    assert step.meta_loss_at(*batch, *meta).item() == pytest.approx(m0, rel=1e-12)


@pytest.mark.parametrize("skip_layers", [0, 3])
@pytest.mark.parametrize("normalize", [False, True])
def test_real_step_uses_recomputed_weights_and_never_freezes(skip_layers, normalize):
    model, opt, vnet, batch, meta = make_problem(seed=6)
    x, y, idx = batch
    ref_model, ref_opt = copy.deepcopy(model), None
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    wopt = torch.optim.SGD(vnet.parameters(), lr=0.5)
    out = meta_step(model, vnet, batch, meta, opt, wopt, lookahead="full", skip_layers=skip_layers,
                    normalize=normalize)
    # reference: the updated weighting net on the real forward's losses, then one SGD step
    losses = F.cross_entropy(ref_model(x), y, reduction="none")
    with torch.no_grad():
        w = vnet(losses.detach()[:, None]).squeeze(1)
    a = w / w.sum() if normalize else w / len(w)
    ref_opt.zero_grad()
    (a * losses).sum().backward()
    ref_opt.step()
    assert torch.allclose(out["weights"], w, rtol=1e-12)
    for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12), n
        assert p.requires_grad
    for (n, b), c in zip(model.named_buffers(), ref_model.buffers()):
        assert torch.allclose(b.double(), c.double(), rtol=1e-10), n  # running stats updated once


def test_bad_options_raise_bench_errors():
    model, opt, vnet, _, _ = make_problem(momentum_state=False)
    with pytest.raises(BenchError):
        MetaStep(model, opt, vnet, None, skip_layers=4)
    with pytest.raises(BenchError):
        MetaStep(model, opt, vnet, None, lookahead="adam")
    with pytest.raises(BenchError):
        MetaStep(model, torch.optim.Adam(model.parameters()), vnet, None, lookahead="full")


def test_forward_mode_jvp_equals_reverse_over_reverse_fallback():
    model, opt, vnet, batch, meta = make_problem(seed=8)
    for skip_layers in (0, 2):
        step = MetaStep(model, opt, vnet, None, skip_layers=skip_layers)
        h = step.bottom_features(batch[0])
        tangents = [torch.randn_like(p) for p in step.params]
        c_fwd = step._jvp_losses(h, batch[1], tangents)
        c_rev = step._jvp_losses_reverse(h, batch[1], tangents)
        assert torch.allclose(c_fwd, c_rev, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("name,size,channels", [("small_cnn", 12, 1), ("resnet32", 8, 3), ("wrn16_8", 8, 3)])
def test_split_into_frozen_bottom_and_top_reproduces_every_backbone(name, size, channels):
    torch.manual_seed(0)
    model = build_model(name, K, channels).double().eval()  # eval: bottom and top agree on BN mode
    x = torch.randn(2, channels, size, size)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = model(x)
    for skip_layers in range(4):
        step = MetaStep(model, opt, nn.Linear(1, 1), None, skip_layers=skip_layers)
        with torch.no_grad():
            out = step.top(step.bottom_features(x))
        assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)
        bottom_names = {b for b, _ in model.blocks()[:skip_layers]}
        assert {n.split(".")[0] for n in step.names}.isdisjoint(bottom_names)


def both_jvps(step, x, y, tangents):
    """c = J t for the training losses of (x, y), linearised (after a recorded forward) and by
    forward-mode AD."""
    h = step.bottom_features(x)
    with step.linearization.record():
        logits = step._top_call(dict(zip(step.names, step.params)), h)
    return step._jvp_linearized(logits, h, y, tangents), step._jvp_losses(h, y, tangents)


@pytest.mark.parametrize("name,size,channels", [("small_cnn", 12, 1), ("resnet32", 8, 3), ("wrn16_8", 8, 3)])
@pytest.mark.parametrize("skip_layers", [0, 1, 2, 3])
@pytest.mark.parametrize("saved_statistics", [True, False], ids=["bn-stats-saved", "bn-stats-recomputed"])
def test_linearized_jvp_equals_forward_mode_ad(name, size, channels, skip_layers, saved_statistics, monkeypatch):
    """methods/jvp.py (tangents through the saved activations, train-mode BN) against torch's
    forward-mode AD, on every backbone and SLMO depth, to float64 precision; the BatchNorm rule
    with the batch statistics read from the forward's autograd node and computed again (what it
    does where the node is none it knows)."""
    read = jvp_module._saved_statistics
    kept = []
    monkeypatch.setattr(jvp_module, "_saved_statistics",
                        lambda y: kept.append(read(y) if saved_statistics else None) or kept[-1])
    torch.manual_seed(skip_layers)
    model = build_model(name, K, channels).double().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = MetaStep(model, opt, nn.Linear(1, 1), None, skip_layers=skip_layers, lookahead="full")
    assert step.jvp == "linearized"
    x, y = torch.randn(4, channels, size, size), torch.randint(0, K, (4,))
    tangents = [torch.randn_like(p) for p in step.params]
    c_lin, c_fwd = both_jvps(step, x, y, tangents)
    assert torch.allclose(c_lin, c_fwd, rtol=1e-9, atol=1e-11), (c_lin - c_fwd).abs().max()
    assert kept and all((k is not None) == saved_statistics for k in kept)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only")
@pytest.mark.parametrize("name,size,channels", [("small_cnn", 28, 1), ("resnet32", 32, 3)])
@pytest.mark.parametrize("skip_layers", [0, 3])
def test_linearized_jvp_equals_forward_mode_ad_on_cuda(name, size, channels, skip_layers, monkeypatch):
    """The same on CUDA as training runs there: float32, channels_last, cuDNN where torch picks
    it; the BatchNorm rule reads the statistics cuDNN (or the native kernel) saved."""
    read = jvp_module._saved_statistics
    kept = []
    monkeypatch.setattr(jvp_module, "_saved_statistics", lambda y: kept.append(read(y)) or kept[-1])
    torch.manual_seed(skip_layers)
    model = build_model(name, K, channels).cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = MetaStep(model, opt, nn.Linear(1, 1).cuda(), None, skip_layers=skip_layers, lookahead="full")
    assert step.jvp == "linearized"
    x = torch.randn(32, channels, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, K, (32,), device="cuda")
    tangents = [1e-2 * torch.randn_like(p) for p in step.params]
    c_lin, c_fwd = both_jvps(step, x, y, tangents)
    assert torch.allclose(c_lin, c_fwd, rtol=1e-3, atol=1e-5), (c_lin - c_fwd).abs().max()
    assert kept and all(k is not None for k in kept)  # no BatchNorm computed its statistics twice


@pytest.mark.parametrize("node_name", jvp_module._STATISTICS_NODES)
def test_batch_statistics_are_read_from_every_known_batch_norm_node(node_name):
    """Native, cuDNN and MIOpen nodes save (mean, 1/sqrt(var + eps)) as result1 / result2; the
    rule reads them in training mode, and nothing from eval-mode or unknown nodes."""
    mean, invstd = torch.randn(3), torch.rand(3)

    def output_of(name, **saved):
        node = type(name, (), dict(_saved_result1=mean, _saved_result2=invstd, **saved))()
        return SimpleNamespace(grad_fn=node)

    assert jvp_module._saved_statistics(output_of(node_name, _saved_training=True)) == (mean, invstd)
    if node_name != "BatchNormWithUpdateBackward0":  # that op always uses batch statistics
        assert jvp_module._saved_statistics(output_of(node_name, _saved_training=False)) is None
    assert jvp_module._saved_statistics(output_of("AddBackward0", _saved_training=True)) is None
    for name in jvp_module._STATISTICS_NODES:  # torch's own nodes of these names save both tensors
        node_class = getattr(torch._C._functions, name)
        assert {"_saved_result1", "_saved_result2"} <= set(dir(node_class)), name


def test_linearized_and_forward_mode_meta_steps_agree():
    """Whole steps with either JVP give the same weighting-net gradient and classifier update."""
    results = []
    for jvp in ("linearized", "forward_ad"):
        model, opt, vnet, batch, meta = make_problem(seed=5)
        step = MetaStep(model, opt, vnet, None, skip_layers=0)
        step.jvp = jvp
        step(*batch, *meta)
        results.append(([p.grad.clone() for p in vnet.parameters()], [p.detach().clone() for p in model.parameters()]))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_a_backbone_with_functional_nonlinearity_falls_back_to_forward_mode():
    class Opaque(nn.Module):
        def forward(self, x):
            return torch.tanh(x)  # not a module with a tangent rule

    model = build_model("small_cnn", K, 1).double()
    model.layer3.append(Opaque())
    step = MetaStep(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.Linear(1, 1), None)
    assert step.jvp == "forward_ad"


# ------------------------------------------------------------ every SGD setting, every param group


def torch_sgd_meta_loss(model, opt, vnet, batch, meta, lookahead, skip_layers=0, normalize=False, lr=None):
    """A second independent reference covering every ``torch.optim.SGD`` setting: the look-ahead
    of a deep copy is a real SGD loaded with the classifier optimiser's own state dict (each
    group's *current* lr, momentum, dampening, Nesterov flag, weight decay and momentum buffers);
    "sgd" is ``p -= group lr * g``. ``lr`` replaces every group's lr (the explicit argument)."""
    x, y, _ = batch
    m = copy.deepcopy(model)
    for _, block in m.blocks()[:skip_layers]:
        block.eval()
        block.requires_grad_(False)
    losses = F.cross_entropy(m(x), y, reduction="none")
    w = vnet(losses.detach()[:, None]).squeeze(1)
    a = w / w.sum() if normalize else w / len(w)
    trainable = [p for p in m.parameters() if p.requires_grad]
    grads = torch.autograd.grad((a * losses).sum(), trainable)
    copy_of = dict(zip(model.parameters(), m.parameters()))
    virt = torch.optim.SGD([{"params": [copy_of[p] for p in g["params"]]} for g in opt.param_groups], lr=1.0)
    virt.load_state_dict(copy.deepcopy(opt.state_dict()))
    with torch.no_grad():
        for p, g in zip(trainable, grads):
            p.grad = g
        for group in virt.param_groups:
            group["lr"] = group["lr"] if lr is None else lr
            if lookahead == "sgd":
                for p in group["params"]:
                    if p.grad is not None:
                        p -= group["lr"] * p.grad
        if lookahead == "full":
            virt.step()  # frozen parameters have no grad: skipped, buffers untouched
        return F.cross_entropy(m(meta[0]), meta[1])


def fd_grad_of(loss_fn, vnet, eps=1e-6):
    """Central differences of ``loss_fn()`` in the weighting net's parameters."""
    params = list(vnet.parameters())
    grads = []
    for p in params:
        g = torch.zeros_like(p).reshape(-1)
        for i in range(p.numel()):
            vals = []
            for sign in (1, -1):
                with torch.no_grad():
                    p.view(-1)[i] += sign * eps
                vals.append(loss_fn())
                with torch.no_grad():
                    p.view(-1)[i] -= sign * eps
            g[i] = (vals[0] - vals[1]) / (2 * eps)
        grads.append(g)
    return torch.cat(grads)


def two_group_sgd(model):
    """The classifier layer in its own param group with its own lr."""
    fc = [p for n, p in model.named_parameters() if n.startswith("fc.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    assert fc and rest
    return torch.optim.SGD([{"params": rest}, {"params": fc, "lr": 0.3}], lr=0.1, momentum=0.9, nesterov=True,
                           weight_decay=5e-4)


@pytest.mark.parametrize("lookahead,skip_layers", [("sgd", 0), ("full", 2)])
def test_lookahead_steps_at_each_groups_current_lr(lookahead, skip_layers):
    """MW-Net.py L210 / higher's DifferentiableSGD: the virtual step uses the lr the classifier
    optimiser holds *now* (set_lr changes it every epoch: warm-up, decays), per param group, not
    the lr it was built with; an explicit ``lr`` replaces it."""
    model, opt, vnet, batch, meta = make_problem(seed=9, make_opt=two_group_sgd)
    step = MetaStep(model, opt, vnet, None, lookahead=lookahead, skip_layers=skip_layers)
    for group, lr in zip(opt.param_groups, (0.04, 0.015)):  # as set_lr does between epochs
        group["lr"] = lr
    kw = dict(lookahead=lookahead, skip_layers=skip_layers)
    before = copy.deepcopy(model.state_dict())
    g, out = analytic_grad(model, opt, vnet, batch, meta, **kw)
    model.load_state_dict(before)
    ref = torch_sgd_meta_loss(model, opt, vnet, batch, meta, **kw)
    assert out["meta_loss"].item() == pytest.approx(ref.item(), rel=1e-12)
    # the look-ahead at the construction-time lrs (0.1, 0.3) is measurably another point
    current = [group["lr"] for group in opt.param_groups]
    for group, lr in zip(opt.param_groups, (0.1, 0.3)):
        group["lr"] = lr
    stale = torch_sgd_meta_loss(model, opt, vnet, batch, meta, **kw).item()
    for group, lr in zip(opt.param_groups, current):
        group["lr"] = lr
    assert stale != pytest.approx(ref.item(), rel=1e-6)
    g_fd = fd_grad_of(lambda: torch_sgd_meta_loss(model, opt, vnet, batch, meta, **kw), vnet)
    assert (g - g_fd).norm() / g_fd.norm() < 1e-4
    explicit = step.meta_loss_at(*batch, *meta, lr=0.07).item()
    ref_explicit = torch_sgd_meta_loss(model, opt, vnet, batch, meta, lr=0.07, **kw).item()
    assert explicit == pytest.approx(ref_explicit, rel=1e-12)


@pytest.mark.parametrize("momentum_state", [False, True], ids=["fresh-optimiser", "with-buffers"])
def test_heavy_ball_lookahead_with_dampening_matches_torch_sgd(momentum_state):
    """lookahead="full" with heavy-ball momentum (nesterov=False, as MW-Net.py's classifier) and
    dampening: torch's SGD takes buf = d on its first step and buf = mu buf + (1 - dampening) d
    after, so the slope of the step in the gradient is 1, then 1 - dampening (not 1 + momentum)."""
    def heavy_ball(model):
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.3, weight_decay=5e-4)

    model, opt, vnet, batch, meta = make_problem(seed=10, momentum_state=momentum_state, make_opt=heavy_ball)
    assert bool(opt.state) == momentum_state
    before = copy.deepcopy(model.state_dict())
    g, out = analytic_grad(model, opt, vnet, batch, meta, lookahead="full")
    model.load_state_dict(before)
    ref = torch_sgd_meta_loss(model, opt, vnet, batch, meta, "full")
    assert out["meta_loss"].item() == pytest.approx(ref.item(), rel=1e-12)
    g_fd = fd_grad_of(lambda: torch_sgd_meta_loss(model, opt, vnet, batch, meta, "full"), vnet)
    assert g.norm() > 1e-8
    assert (g - g_fd).norm() / g_fd.norm() < 1e-4


@pytest.mark.parametrize("skip_layers", [0, 2])
def test_linearized_jvp_with_eval_mode_batch_norm_equals_forward_mode_ad(skip_layers):
    """The eval-mode BatchNorm rule (running statistics: dy = g r dx + dg x_hat + db, no batch
    terms), used when the step runs on a model in eval mode, against forward-mode AD."""
    model, opt, vnet, batch, meta = make_problem(seed=12)  # two real steps: running stats differ from batch stats
    model.eval()
    step = MetaStep(model, opt, vnet, None, lookahead="full", skip_layers=skip_layers)
    assert step.jvp == "linearized"
    bns = [m for m in step.top.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training and m.num_batches_tracked.item() == 2 for m in bns)
    tangents = [torch.randn_like(p) for p in step.params]
    c_lin, c_fwd = both_jvps(step, batch[0], batch[1], tangents)
    assert torch.allclose(c_lin, c_fwd, rtol=1e-9, atol=1e-11), (c_lin - c_fwd).abs().max()


# ------------------------------------------------------------ validation, bookkeeping, weight-net update


def test_meta_step_refuses_options_and_optimisers_it_cannot_step():
    """One-line BenchErrors: a bool SLMO depth, an unknown second_order, a classifier optimiser that
    does not hold every look-ahead parameter, and maximize=True."""
    model, opt, vnet, _, _ = make_problem(momentum_state=False)
    for bad in (dict(skip_layers=True), dict(second_order="hessian")):
        with pytest.raises(BenchError):
            MetaStep(model, opt, vnet, None, **bad)
    without_fc = torch.optim.SGD([p for n, p in model.named_parameters() if not n.startswith("fc.")], lr=0.1)
    with pytest.raises(BenchError, match="does not hold 'fc.weight'"):
        MetaStep(model, without_fc, vnet, None)
    with pytest.raises(BenchError, match="maximize"):
        MetaStep(model, torch.optim.SGD(model.parameters(), lr=0.1, maximize=True), vnet, None)


def test_normalised_weights_that_sum_to_zero_are_kept():
    """MW-Net(imb): a_i = w_i / sum_j w_j, but w itself when the sum is 0 (no division by 0)."""
    model, opt, vnet, _, _ = make_problem(momentum_state=False)
    step = MetaStep(model, opt, vnet, None, normalize=True)
    assert torch.equal(step.coefficients(torch.zeros(4)), torch.zeros(4))
    assert torch.allclose(step.coefficients(torch.tensor([1.0, 3.0])), torch.tensor([0.25, 0.75]))


def test_the_weighting_net_takes_one_step_on_the_fresh_meta_gradient():
    """Each call leaves d meta / d phi of *this* step in .grad (not summed over calls) and steps the
    weighting net's optimiser once with it; the real step then reads the updated net."""
    model, opt, vnet, batch, meta = make_problem(seed=11)
    wopt = torch.optim.SGD(vnet.parameters(), lr=0.5)
    step = MetaStep(model, opt, vnet, wopt)
    for _ in range(2):
        state = copy.deepcopy((model, opt, vnet))
        expected, _ = analytic_grad(*state, batch, meta)  # weight_opt None: the gradient alone
        before = flat(vnet.parameters()).detach().clone()
        out = step(*batch, *meta)
        assert torch.allclose(flat([p.grad for p in vnet.parameters()]), expected, rtol=1e-9, atol=1e-14)
        assert expected.norm() > 1e-8
        assert torch.allclose(flat(vnet.parameters()), before - 0.5 * expected, rtol=1e-12, atol=1e-14)
        with torch.no_grad():
            assert torch.allclose(out["weights"], vnet(out["losses"][:, None]).squeeze(1), rtol=1e-12)


def test_frozen_parameters_of_either_network_are_left_out():
    """Parameters with requires_grad=False (a frozen stem, a frozen weighting-net bias) are not in
    the look-ahead nor in d meta / d phi, and stay as they are."""
    model, opt, vnet, batch, meta = make_problem(seed=13)
    model.stem.requires_grad_(False)
    vnet[0].bias.requires_grad_(False)
    frozen = [t.detach().clone() for t in (*model.stem.parameters(), vnet[0].bias)]
    step = MetaStep(model, opt, vnet, torch.optim.SGD(vnet.parameters(), lr=0.5), skip_layers=0)
    assert not any(n.startswith("stem.") for n in step.names)
    step(*batch, *meta)
    assert vnet[0].bias.grad is None and vnet[0].weight.grad is not None
    for before, after in zip(frozen, (*model.stem.parameters(), vnet[0].bias)):
        assert torch.equal(before, after)


@pytest.mark.parametrize("skip_layers", [0, 2])
def test_an_eval_mode_model_stays_in_eval_mode(skip_layers):
    """The frozen bottom is switched to eval for its no_grad pass and back to each module's own mode."""
    model, opt, vnet, batch, meta = make_problem(seed=12)
    model.eval()
    step = MetaStep(model, opt, vnet, None, skip_layers=skip_layers)
    step.meta_loss_at(*batch, *meta)
    step(*batch, *meta, update_classifier=False)
    assert not any(m.training for m in model.modules())


def test_on_plans_returns_the_epoch_sums_and_fills_weights_into():
    """The captured step's row: (weighted loss x B, meta loss, sum of the recomputed weights), and
    each sample's recomputed weight written at its pool index."""
    model, opt, vnet, (x, y, _), meta = make_problem(seed=14)
    idx = torch.tensor([9, 2, 7, 0, 4, 5])
    ref = copy.deepcopy((model, opt, vnet))
    out = MetaStep(*ref[:3], None)(x, y, idx, *meta)
    train = SimpleNamespace(assemble=lambda *plan: (x, y, idx))
    meta_loader = SimpleNamespace(assemble=lambda *plan: (*meta, None))
    into = torch.full((10,), -1.0)
    row = MetaStep(model, opt, vnet, None).on_plans(train, meta_loader, weights_into=into)("p", "m")
    expected = torch.stack([out["loss"] * B, out["meta_loss"], out["weights"].sum()])
    assert torch.allclose(row, expected, rtol=1e-12)
    assert torch.allclose(into[idx], out["weights"], rtol=1e-12)
    assert torch.equal(into[[1, 3, 6, 8]], torch.full((4,), -1.0))

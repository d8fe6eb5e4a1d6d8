"""methods/jvp.py's pieces on their own (tests/test_meta.py checks the whole linearised JVP
against forward-mode AD on every backbone): the queue of a leaf called twice, the recorded
activations consumed, the batch statistics read (not computed again) wherever torch saved them,
and the loss tangent's precision. Float64 and tiny networks: fast."""

import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import methods.jvp as jvp_module
from methods.jvp import Linearization, NotLinearizable, ce_tangent


def _exact_jvp(net, x, tangents):
    """Forward-mode AD (on a copy: the forward updates running statistics)."""
    net = copy.deepcopy(net)
    with fwAD.dual_level():
        duals = {n: fwAD.make_dual(p.detach(), t) for (n, p), t in zip(net.named_parameters(), tangents)}
        return fwAD.unpack_dual(functional_call(net, duals, (x,))).tangent


def _linearized(net, x, tangents):
    lin = Linearization(net, [n for n, _ in net.named_parameters()])
    with lin.record():
        net(x)
    return lin, lin.jvp(torch.zeros_like(x), tangents)


def test_a_leaf_called_twice_gets_its_recordings_in_call_order():
    """A ReLU module used at two places of the forward: the rule pops its two recordings first
    in, first out, so each call's tangent gets its own mask."""
    torch.manual_seed(0)
    relu = nn.ReLU()
    net = nn.Sequential(nn.Linear(3, 6), relu, nn.Linear(6, 6), relu, nn.Linear(6, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    tangents = [torch.randn_like(p) for p in net.parameters()]
    _, out = _linearized(net, x, tangents)
    assert torch.allclose(out, _exact_jvp(net, x, tangents), rtol=1e-10, atol=1e-12)


def test_jvp_consumes_the_recorded_activations_and_restores_the_forwards():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    tangents = [torch.randn_like(p) for p in net.parameters()]
    lin, _ = _linearized(net, x, tangents)
    assert lin.saved == {}
    with pytest.raises(NotLinearizable, match="not recorded"):
        lin.jvp(torch.zeros_like(x), tangents)
    assert all("forward" not in m.__dict__ for m in net.modules())


def test_jvp_builds_no_graph_even_for_tangents_that_require_grad():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)).double()
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    tangents = [torch.randn_like(p).requires_grad_() for p in net.parameters()]
    _, out = _linearized(net, x, tangents)
    assert not out.requires_grad


@pytest.mark.parametrize("view", [False, True], ids=["output", "view-of-output"])
def test_saved_statistics_are_the_batch_mean_and_inverse_std(view):
    """Read from the train-mode BatchNorm's autograd node, also through a view of its output (a
    fused BatchNorm's output), in the order (mean, 1/sqrt(var + eps))."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3).double().train()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    y = bn(x)
    if view:
        y = y.view(4, 3, 25)
        assert type(y.grad_fn).__name__ == "ViewBackward0"
    mean, invstd = jvp_module._saved_statistics(y)
    assert torch.allclose(mean, x.mean((0, 2, 3)), rtol=1e-12)
    assert torch.allclose(invstd, torch.rsqrt(x.var((0, 2, 3), unbiased=False) + bn.eps), rtol=1e-10)


def test_a_batch_norm_node_without_a_training_flag_is_batch_statistics():
    """``_batch_norm_with_update``'s node has no ``training`` flag: always batch statistics."""
    mean, invstd = torch.randn(3), torch.rand(3)
    node = type("BatchNormWithUpdateBackward0", (), dict(_saved_result1=mean, _saved_result2=invstd))()
    out = type("Out", (), dict(grad_fn=node))()
    assert jvp_module._saved_statistics(out) == (mean, invstd)


def test_the_batch_norm_rule_uses_the_saved_statistics_and_computes_them_only_when_none(monkeypatch):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 3),
                        nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double().train()
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    tangents = [torch.randn_like(p) for p in net.parameters()]
    expected = _exact_jvp(net, x, tangents)
    calls = []
    real = torch.native_batch_norm
    monkeypatch.setattr(torch, "native_batch_norm", lambda *a: calls.append(1) or real(*a))
    _, out = _linearized(net, x, tangents)
    assert calls == [] and torch.allclose(out, expected, rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(jvp_module, "_saved_statistics", lambda y: None)
    _, out = _linearized(net, x, tangents)
    assert len(calls) == 2 and torch.allclose(out, expected, rtol=1e-10, atol=1e-12)


def test_loss_tangent_is_float32_for_bf16_logits():
    torch.manual_seed(0)
    logits, dz = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.randint(0, 4, (6,))
    exact = ce_tangent(logits.double(), y, dz.double())
    assert torch.allclose(exact, ((F.softmax(logits.double(), 1) - F.one_hot(y, 4)) * dz.double()).sum(1))
    out = ce_tangent(logits.bfloat16(), y, dz.bfloat16())
    assert out.dtype == torch.float32
    reference = ce_tangent(logits.bfloat16().double(), y, dz.bfloat16().double())
    assert torch.allclose(out.double(), reference, rtol=1e-5, atol=1e-6)


def test_the_batch_norm_rule_computes_in_float32_for_bf16_activations():
    """bf16 activations (autocast): the statistics and the tangent in float32, not rounded to
    bf16 (against float64 forward-mode AD on the same bf16 values)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3).train()
    with torch.no_grad():
        bn.weight.add_(torch.randn(3))
    x = (3 + torch.randn(8, 3, 4, 4)).bfloat16()
    tangents = [torch.randn_like(p) for p in bn.parameters()]
    _, out = _linearized(bn, x, tangents)
    expected = _exact_jvp(copy.deepcopy(bn).double(), x.double(), [t.double() for t in tangents])
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-5), (out.double() - expected).abs().max()


def test_a_bias_only_tangent_on_a_layer_without_input_tangent_is_the_bias_broadcast():
    """A first layer whose weight is frozen but whose bias is a tangent parameter: its output tangent
    is db broadcast to the output (it raised TypeError from ``expand_as(None)``)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    net[0].weight.requires_grad_(False)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    assert names == ["0.bias", "2.weight", "2.bias"]
    x = torch.randn(5, 3, dtype=torch.float64)
    tangents = [torch.randn_like(p) for p in net.parameters() if p.requires_grad]
    lin = Linearization(net, names)
    with lin.record():
        net(x)
    out = lin.jvp(torch.zeros_like(x), tangents)
    ref = copy.deepcopy(net)
    with fwAD.dual_level():
        duals = {n: fwAD.make_dual(p.detach(), t) for (n, p), t in
                 zip(((n, p) for n, p in ref.named_parameters() if n in names), tangents)}
        expected = fwAD.unpack_dual(functional_call(ref, duals, (x,))).tangent
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)

"""methods/jvp.py's pieces on their own (tests/test_meta.py checks the whole linearised JVP
against forward-mode AD on every backbone)."""

import copy

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
from torch.func import functional_call

from methods.jvp import Linearization


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

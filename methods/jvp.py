"""The meta step's Jacobian-vector product, re-using the training forward's activations.

``methods.meta.MetaStep`` needs ``c_i = <grad_theta l_i(theta), t>`` for every sample i of the
training batch (the exact rewriting of the look-ahead's second-order term, see meta.py). Torch's
forward-mode AD computes it by running the network again with dual tensors: the primal forward
a second time plus the tangents, about 4 forwards' worth of work on the quick CPU model. But the
primal values at ``theta`` are exactly those of the training forward that the step has just run,
so the tangents can be pushed through the network using the saved activations (a "linearised"
forward, as ``torch.func.linearize`` does in general):

    Conv2d / Linear   dy = W * dx + dW * x (+ db)       (two convolutions; one where dx = 0)
    BatchNorm2d       train mode, batch statistics, x_hat = (x - mean) r, r = 1/sqrt(var + eps):
                      dy = (g r) dx + x_hat (dg - g r mean(x_hat dx)) + (db - g r mean(dx))
                      eval mode (running statistics): dy = (g r) dx + dg x_hat + db
                      (computed without materialising x_hat: mean(x_hat dx) = r (mean(x dx) -
                      mean(x) mean(dx)) and x_hat B + C = x (r B) + (C - mean r B))
    ReLU              dy = dx * [y > 0]
    linear glue       identity, option-A shortcut (subsample, zero-pad), residual sums,
                      average pooling, flatten: the module's own forward applied to dx
    CE loss           dl_i = <softmax(z_i) - onehot(y_i), dz_i>

How: a global forward hook records each leaf module's input and output (a BatchNorm's batch
statistics instead of its output) during the training forward (:meth:`Linearization.record`);
:meth:`Linearization.jvp` then calls the network's own forward on the input tangent with each
leaf's ``forward`` swapped for its tangent rule above, so the containers' wiring (residual
blocks, shortcuts, pooling) is reused as written. This is exact only when everything between
leaf modules is linear; that holds for the suite's backbones (``bench.models``: ReLUs are
modules there), which declare it with ``linearizable = True``. Any other network, or a leaf
without a rule, raises :class:`NotLinearizable` and the caller falls back to forward-mode AD.
tests/test_meta.py checks both against each other on every backbone and SLMO depth.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.fused import RunsLayout
from bench.models import _ShortcutA

LINEAR_LEAVES = (nn.Identity, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AvgPool2d, _ShortcutA)


class NotLinearizable(RuntimeError):
    """The network has a leaf (or glue) without a tangent rule here."""


def is_linearizable(model: nn.Module) -> bool:
    """The backbone declares linear glue between its modules; :class:`Linearization` then checks
    the leaves it needs (raising :class:`NotLinearizable`)."""
    return bool(getattr(model, "linearizable", False))


def _rule_kind(module: nn.Module) -> str | None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return "affine"
    if isinstance(module, nn.BatchNorm2d):
        return "bn"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, LINEAR_LEAVES):
        return "linear"
    return None


class Linearization:
    """Tangents of ``net``'s outputs at the recorded activations (module docstring).

    ``net`` is the part of the model whose parameters get tangents (``MetaStep.top``);
    ``names`` its trainable parameter names, in the order of the tangents passed to :meth:`jvp`.
    """

    def __init__(self, net: nn.Module, names: list[str]):
        self.net = net
        self.leaves: dict[int, nn.Module] = {}
        self.param_index: dict[int, dict[str, int]] = {}
        position = {name: i for i, name in enumerate(names)}
        for qualified, module in net.named_modules():
            if list(module.children()):
                continue
            if _rule_kind(module) is None:
                raise NotLinearizable(f"no tangent rule for {type(module).__name__} ({qualified})")
            self.leaves[id(module)] = module
            prefix = f"{qualified}." if qualified else ""
            self.param_index[id(module)] = {p: position[prefix + p] for p, _ in module.named_parameters(recurse=False)
                                            if prefix + p in position}
        self.saved: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @contextlib.contextmanager
    def record(self):
        """Save every leaf's (input, output) of the forwards run inside the block."""
        self.saved = {}

        def hook(module, args, output):
            if id(module) in self.leaves:  # a BatchNorm keeps its batch statistics, not its output
                kept = _saved_statistics(output) if isinstance(module, nn.BatchNorm2d) else output
                self.saved.setdefault(id(module), []).append((args[0], kept))

        handle = nn.modules.module.register_module_forward_hook(hook)
        try:
            yield self
        finally:
            handle.remove()

    def jvp(self, h: torch.Tensor, tangents: list[torch.Tensor]) -> torch.Tensor:
        """The tangent of ``net(h)`` for parameter tangents ``tangents`` (no tangent on ``h``),
        at the activations recorded by the last :meth:`record` block; consumes them."""
        zero = torch.zeros_like(h)
        queues = {k: list(v) for k, v in self.saved.items()}
        originals = {}
        try:
            for key, module in self.leaves.items():
                originals[key] = module.__dict__.get("forward")
                module.forward = self._rule(module, queues.get(key, []), tangents, zero)
            with torch.no_grad():
                return self.net(zero)
        finally:
            for key, module in self.leaves.items():
                if originals.get(key) is None:
                    module.__dict__.pop("forward", None)
                else:
                    module.forward = originals[key]
            self.saved = {}

    def _rule(self, module: nn.Module, queue: list, tangents: list[torch.Tensor], zero: torch.Tensor):
        kind = _rule_kind(module)
        index = self.param_index[id(module)]

        def param_tangent(name):
            i = index.get(name)
            return None if i is None else tangents[i]

        def pop():
            if not queue:
                raise NotLinearizable(f"{type(module).__name__} was not recorded in the training forward")
            return queue.pop(0)

        if kind == "linear":
            forward = type(module).forward
            return lambda dx: forward(module, dx)
        if kind == "relu":
            def relu(dx):
                _, y = pop()
                return torch.ops.aten.threshold_backward(dx, y, 0)  # dx where y > 0, else 0 (one kernel)
            return relu
        if kind == "affine":
            def affine(dx):
                x, _ = pop()
                dw, db = param_tangent("weight"), param_tangent("bias")
                out = None if dx is zero else _affine(module, dx, module.weight, None)
                if isinstance(module, RunsLayout) and db is not None:  # a fused layer: db by the layer's op
                    dw = torch.zeros_like(module.weight) if dw is None else dw
                    term = _affine(module, x, dw, db)
                    return term if out is None else out + term
                if dw is not None:
                    term = _affine(module, x, dw, None)
                    out = term if out is None else out + term
                if out is None:  # no input tangent and no weight tangent: the layer's output is constant but its bias
                    out = torch.zeros_like(_affine(module, x, module.weight, None))
                if db is not None:
                    out = out + db.view((1, -1) + (1,) * (x.dim() - 2))
                return out
            return affine

        def batch_norm(dx):
            x, statistics = pop()
            if isinstance(module, RunsLayout):  # a fused BatchNorm: its rule in the runs layout
                return module.to_rows(batch_norm_runs(module.to_runs(x), statistics,
                                                      dx if dx is zero else module.to_runs(dx)))
            return batch_norm_runs(x, statistics, dx)

        def batch_norm_runs(x, statistics, dx):
            if x.dtype in (torch.bfloat16, torch.float16):  # bf16 autocast: statistics in float32
                x = x.float()
                dx = dx if dx is zero else dx.float()
            dims = [0] + list(range(2, x.dim()))
            shape = (1, -1) + (1,) * (x.dim() - 2)
            batch_stats = module.training or module.running_mean is None
            if batch_stats:  # those of the training forward (saved, else computed again)
                mean, r = statistics or torch.native_batch_norm(x, None, None, None, None, True, 0.0, module.eps)[1:]
                mean, r = mean.to(x.dtype), r.to(x.dtype)
            else:
                mean, r = module.running_mean, torch.rsqrt(module.running_var + module.eps)
            g = module.weight if module.affine else torch.ones_like(r)
            a = g * r
            dg, dbeta = param_tangent("weight"), param_tangent("bias")
            b = torch.zeros_like(r) if dg is None else dg
            c = torch.zeros_like(r) if dbeta is None else dbeta
            if dx is not zero and batch_stats:  # mean(x_hat dx) = r (mean(x dx) - mean mean(dx))
                dx_mean = dx.mean(dims)
                b = b - a * r * ((x * dx).mean(dims) - mean * dx_mean)
                c = c - a * dx_mean
            # x_hat b + c with x_hat = (x - mean) r, never materialised: x (r b) + (c - mean r b)
            scale = r * b
            out = torch.addcmul((c - mean * scale).view(shape), x, scale.view(shape))
            return out if dx is zero else out.addcmul_(a.view(shape), dx)
        return batch_norm


# Autograd nodes of train-mode BatchNorm whose saved result1 / result2 are the batch mean and
# 1 / sqrt(var + eps): torch's native kernel (CPU; CUDA without cuDNN), cuDNN and MIOpen (torch's
# decompositions, torch/_decomp/decompositions.py, compute ``cudnn_batch_norm`` with
# ``native_batch_norm`` and hand ``cudnn_`` / ``miopen_batch_norm_backward``'s save_var to
# ``native_batch_norm_backward`` as its save_invstd), and ``_batch_norm_with_update`` (batch
# statistics always; its node has no ``training`` flag).
_STATISTICS_NODES = ("NativeBatchNormBackward0", "CudnnBatchNormBackward0", "MiopenBatchNormBackward0",
                     "BatchNormWithUpdateBackward0")


def _saved_statistics(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The batch mean and 1/sqrt(var + eps) a train-mode BatchNorm normalised with, as its kernel
    saved them on the output's autograd node (:data:`_STATISTICS_NODES`), else None (the rule
    then computes them again with ``native_batch_norm``, about 1 ms a layer on CPU)."""
    node = y.grad_fn
    if type(node).__name__ == "ViewBackward0":  # a fused BatchNorm's output: a view of the kernel's
        node = node.next_functions[0][0]
    if type(node).__name__ not in _STATISTICS_NODES or not getattr(node, "_saved_training", True):
        return None
    return node._saved_result1, node._saved_result2


def _affine(module, x, weight, bias):
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


def ce_tangent(logits: torch.Tensor, y: torch.Tensor, dlogits: torch.Tensor) -> torch.Tensor:
    """d CE(z_i, y_i) = <softmax(z_i) - onehot(y_i), dz_i> for each sample i (at least float32)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    p = torch.softmax(logits.detach().to(dtype), dim=1)
    dz = dlogits.to(dtype)
    return (p * dz).sum(1) - dz.gather(1, y.view(-1, 1)).squeeze(1)

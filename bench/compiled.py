"""The classifier under ``torch.compile``, checked against eager first: ``bench timing --steps
ce_compiled`` (what kernel fusion buys the CE step) and ``bench run --compile`` (training's
CE-style steps: :func:`checked_forwards`; off by default).

TorchInductor fuses each BatchNorm's element-wise work with the ReLU and residual sum after it,
in the forward and the backward, so a step launches fewer kernels and reads activations fewer
times. Only the classifier's forward is compiled (its backward follows); the loss, the optimiser
step and the loader stay eager.

Checked before use, since the compiler generates code for this machine's CPU or GPU and the code
may be less accurate than eager torch's: :func:`compile_checked` runs :data:`CHECK_STEPS` forward
and backward passes of the compiled model and of an eager copy from the same parameters, on
standard-normal batches of the timed shape, updating both alike between passes, and compares
every parameter's gradient. On the 2-core AMD EPYC CPU of session 13 (torch 2.14.1, small_cnn,
against a float64 reference on such batches) eager fp32 was within 3e-6 of float64 at batch 16
and 128; the compiled model was too at batch 16, but at batch 128 it was off by 5e-3 to 1e-2 in
every convolution's gradient on two of three batches, so there the check refuses it (a
``--compile`` run's loops at that batch size run uncompiled; see the README).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.capture import autocast
from bench.errors import BenchError

CHECK_STEPS = 3
# the largest relative gradient error (in norm, per parameter) accepted. fp32 on the check's
# standard-normal batches: eager is within 3e-6 of float64 (session 13, CPU), TF32 convolutions on
# CUDA ~1e-3; bf16 rounds each op to 8 bits, and eager and compiled kernels round at different places
TOLERANCE = {"fp32": 5e-3, "bf16": 5e-2}
CHECK_LR = 0.1  # the plain SGD update applied between the check's passes


class CompileMismatch(BenchError):
    """The compiled model's gradients differ from the eager model's beyond :data:`TOLERANCE`."""


class CompileFailed(BenchError):
    """Compiling failed on this machine (no C++ compiler or Triton, an unsupported op, ...)."""


def gradient_errors(compiled: nn.Module, eager: nn.Module) -> dict[str, float]:
    """Relative error (in norm) of each parameter's gradient in ``compiled`` against ``eager``'s."""
    errors = {}
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
        if p.grad is None and q.grad is None:
            continue
        if p.grad is None or q.grad is None:
            errors[name] = float("inf")
            continue
        scale = q.grad.float().norm().clamp_min(torch.finfo(torch.float32).tiny)
        errors[name] = float((p.grad.float() - q.grad.float()).norm() / scale)
    return errors


def compile_checked(model: nn.Module, example: torch.Tensor, *, precision: str = "fp32",
                    compiler=torch.compile) -> nn.Module:
    """``model`` under ``compiler`` (``torch.compile``) after :data:`CHECK_STEPS` checked passes.

    ``example`` is a batch of the training shape, device and memory format (its values are not
    used). Each pass draws a standard-normal batch (from a generator of its own: the run's random
    streams are not touched), runs the compiled model and an eager copy from the same parameters
    under the ``precision``'s autocast, and compares the gradients of the mean cross-entropy; then
    both take the same plain SGD step (a miscompilation may show from the second call on). After
    the check ``model``'s parameters and buffers are as before and its gradients cleared. Raises
    :class:`CompileMismatch` (naming the parameter, the error and the pass) when a gradient is off
    by more than ``TOLERANCE[precision]``, :class:`CompileFailed` (one line) when compiling fails.
    """
    if example.device.type == "cpu":  # TorchInductor's C++ toolchain says, on every CPU-only machine,
        # that it found no CUDA runtime: nothing a user of a CPU run needs to read
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    saved = copy.deepcopy(model.state_dict())
    eager = copy.deepcopy(model)
    compiled = compiler(model)
    generator = torch.Generator().manual_seed(0)
    device = example.device
    tolerance = TOLERANCE[precision]
    try:
        for step in range(CHECK_STEPS):
            # the example's device, dtype and memory format (empty_like keeps its strides)
            x = torch.empty_like(example).copy_(torch.randn(example.shape, generator=generator))
            for net in (model, eager):
                net.zero_grad(set_to_none=True)
            with autocast(device, precision):
                out_eager = eager(x)
            y = torch.randint(out_eager.shape[1], (out_eager.shape[0],), generator=generator).to(device)
            F.cross_entropy(out_eager.float(), y).backward()
            try:  # the first call compiles the forward, the first backward the backward
                with autocast(device, precision):
                    out_compiled = compiled(x)
                F.cross_entropy(out_compiled.float(), y).backward()
            except Exception as exc:  # one line for the user, not the compiler's traceback
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                raise CompileFailed(f"torch.compile failed on this machine: {type(exc).__name__}: {first}") from exc
            name, worst = max(gradient_errors(model, eager).items(), key=lambda kv: kv[1])
            if not worst <= tolerance:
                raise CompileMismatch(
                    f"torch.compile disagrees with eager on this machine: the gradient of {name} is off by "
                    f"{worst:.1e} (relative, in norm; tolerance {tolerance:g} in {precision}) at check pass "
                    f"{step + 1} of {CHECK_STEPS}")
            with torch.no_grad():  # the same step for both, then the same parameters and buffers
                for q in eager.parameters():
                    if q.grad is not None:
                        q -= CHECK_LR * q.grad
                for p, q in zip(model.parameters(), eager.parameters()):
                    p.copy_(q)
                for b, c in zip(model.buffers(), eager.buffers()):
                    b.copy_(c)
    finally:
        with torch.no_grad():
            model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
    return compiled


def _compile(model: nn.Module) -> nn.Module:
    """``torch.compile`` for a fixed shape (a new shape compiles again instead of compiling a
    dynamic-shape graph, which would then serve the checked shape too, unchecked)."""
    return torch.compile(model, dynamic=False)


class CheckedForward:
    """The classifier's forward in a step under ``bench run --compile``: the compiled model for
    batches of the checked shape, the model itself for any other (an epoch's last, short batch,
    which the check did not see)."""

    def __init__(self, model: nn.Module, compiled: nn.Module, shape: torch.Size):
        self.model, self.compiled, self.shape = model, compiled, shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled(x) if x.shape == self.shape else self.model(x)


def checked_forwards(models: list[nn.Module], example: torch.Tensor, precision: str) -> tuple[list, str]:
    """``(forwards, status)`` for one training loop's steps: a :class:`CheckedForward` of each of
    ``models`` (Co-teaching's two networks; most loops have one), compiled and checked
    (:func:`compile_checked`) on batches of ``example``'s shape, and status ``"compiled"``; or,
    where the check refuses or compiling fails for any of them, the models themselves (a loop's
    models run alike) and the one-line reason. Each call compiles afresh (a loop's models are new;
    dynamo's caches are reset first, so that a grid's many models do not reach its recompilation
    limit, past which it would fall back to eager without a word; so one loop's compiled models at
    a time, as the loops run)."""
    torch._dynamo.reset()
    forwards = []
    for model in models:
        try:
            compiled = compile_checked(model, example, precision=precision, compiler=_compile)
        except BenchError as exc:
            return list(models), str(exc)
        forwards.append(CheckedForward(model, compiled, example.shape))
    return forwards, "compiled"

"""Horizontal fusion: K runs of one architecture trained as one network (packing without MPS).

On a GPU, one ResNet-32 step at batch 128 is hundreds of small kernels, each too small to fill the
device: ``--jobs 4`` on one H200 made every run 4.1-4.2x slower (its kernels take turns), 2.4-2.6x
under NVIDIA MPS (session 11; README, Speed). Fusing the K runs into one network makes every
kernel K times larger instead of K times more numerous (HFTA: Wang et al., "Horizontally Fused
Training Array", MLSys 2021): each convolution of the K models becomes one grouped convolution
(``groups = K``) whose group k holds run k's weights, each BatchNorm one BatchNorm over K times
the channels, each linear layer a grouped 1x1 convolution.

Layout: a fused network takes and returns *rows*: row ``n * K + k`` of a batch of ``N * K`` rows is
sample n of run k (:func:`interleave` builds it from K batches, :func:`run_rows` takes run k's rows
back out). Inside, each fused layer views its rows as the *runs* layout ``(N, K * C, ...)`` (run
k's channels in block k; a free view for contiguous tensors), applies the grouped op and views the
result back as rows. Everything between layers is per sample (ReLUs, option-A shortcuts, residual
sums, pooling), so it needs no change, and neither does code that treats the fused network as a
classifier of ``N * K`` samples: per-sample losses, SLMO's frozen bottom over
``cat([x, x_meta])``, and ``methods.jvp``'s tangent rules (FusedBatchNorm2d applies its rule in the
runs layout).

What is exact: run k's rows see only run k's weights and its own batch statistics (a BatchNorm
channel of block k averages over run k's N samples), so the fused forward is the K forwards. A
loss that is the *sum* over runs of each run's loss gives each run exactly its own gradient
(``cross_entropy(rows) * K`` for K mean losses), and an element-wise optimiser (SGD with momentum,
Nesterov and weight decay; Adam) then steps each run as it would alone. Results agree with the K
separate runs up to float rounding (another kernel adds the same products in another order),
not bit for bit; tests/test_fused.py checks forwards, CE steps and meta steps against separate
runs on every backbone.

Memory format: the rows <-> runs views are free only for contiguous (NCHW) tensors; a
channels_last input is copied at each layer, so fused networks run contiguous (``bench timing
--pack-mode fused``).

Status: a measurement (``python -m bench timing --pack N --pack-mode fused``); ``bench run`` does
not train fused runs yet.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import BenchError


class RunsLayout:
    """Mixin of the fused layers: ``runs`` = K and the two views between rows and runs."""

    runs: int

    def to_runs(self, x: torch.Tensor) -> torch.Tensor:
        """Rows ``(N * K, C, ...)`` -> runs ``(N, K * C, ...)``."""
        return x.reshape(x.shape[0] // self.runs, self.runs * x.shape[1], *x.shape[2:])

    def to_rows(self, y: torch.Tensor) -> torch.Tensor:
        """Runs ``(N, K * C, ...)`` -> rows ``(N * K, C, ...)``."""
        return y.reshape(y.shape[0] * self.runs, y.shape[1] // self.runs, *y.shape[2:])


class FusedConv2d(RunsLayout, nn.Conv2d):
    """K ``Conv2d(C_in, C_out)`` as one ``Conv2d(K C_in, K C_out, groups = K g)`` on rows.

    ``_conv_forward`` (which ``methods.jvp`` calls with tangent weights) does the layout views, so
    the tangent rule of a convolution applies unchanged."""

    def _conv_forward(self, x, weight, bias):
        return self.to_rows(super()._conv_forward(self.to_runs(x), weight, bias))


class FusedLinear(RunsLayout, nn.Conv2d):
    """K ``Linear(D, O)`` as a grouped 1x1 convolution: rows ``(N K, D)`` -> rows ``(N K, O)``."""

    def _conv_forward(self, x, weight, bias):
        h = self.to_runs(x)[:, :, None, None]
        return self.to_rows(F.conv2d(h, weight, bias, groups=self.groups).flatten(1))


class FusedBatchNorm2d(RunsLayout, nn.BatchNorm2d):
    """K ``BatchNorm2d(C)`` as one ``BatchNorm2d(K C)``: channel block k normalises run k's rows
    with run k's batch statistics and running statistics."""

    def forward(self, x):
        return self.to_rows(super().forward(self.to_runs(x)))


class FusedEmbedding(RunsLayout, nn.Embedding):
    """K ``Embedding(M, P)`` as one table of K M rows: row ``n K + k`` looks up run k's block."""

    def forward(self, index):
        run = torch.arange(index.shape[0], device=index.device) % self.runs
        return super().forward(index + run.view(-1, *([1] * (index.dim() - 1))) * (self.num_embeddings // self.runs))


def _cat(parts, attr: str) -> torch.Tensor:
    return torch.cat([getattr(p, attr).detach() for p in parts])


def _fuse_leaf(parts: list[nn.Module]) -> nn.Module | None:
    """The fused layer of K corresponding leaves, None for a per-sample leaf without state."""
    first, runs = parts[0], len(parts)
    if isinstance(first, nn.Conv2d):
        if first.padding_mode != "zeros":
            raise BenchError(f"cannot fuse a Conv2d with padding_mode={first.padding_mode!r}")
        fused = FusedConv2d(runs * first.in_channels, runs * first.out_channels, first.kernel_size, first.stride,
                            first.padding, first.dilation, runs * first.groups, first.bias is not None)
        tensors = {"weight": _cat(parts, "weight"), "bias": _cat(parts, "bias") if first.bias is not None else None}
    elif isinstance(first, nn.Linear):
        fused = FusedLinear(runs * first.in_features, runs * first.out_features, 1, groups=runs,
                            bias=first.bias is not None)
        tensors = {"weight": _cat(parts, "weight")[:, :, None, None],
                   "bias": _cat(parts, "bias") if first.bias is not None else None}
    elif isinstance(first, nn.BatchNorm2d):
        fused = FusedBatchNorm2d(runs * first.num_features, first.eps, first.momentum, first.affine,
                                 first.track_running_stats)
        tensors = {name: _cat(parts, name) for name in ("weight", "bias", "running_mean", "running_var")
                   if getattr(first, name, None) is not None}
        if first.num_batches_tracked is not None:
            tensors["num_batches_tracked"] = first.num_batches_tracked.detach().clone()
    elif isinstance(first, nn.Embedding):
        if first.padding_idx is not None or first.max_norm is not None:
            raise BenchError("cannot fuse an Embedding with padding_idx or max_norm")
        fused = FusedEmbedding(runs * first.num_embeddings, first.embedding_dim)
        tensors = {"weight": _cat(parts, "weight")}
    elif any(True for _ in first.parameters(recurse=False)) or any(True for _ in first.buffers(recurse=False)):
        raise BenchError(f"cannot fuse {type(first).__name__}: no fused form of a layer with state")
    else:
        return None
    fused.runs = runs
    device, dtype = first.weight.device, first.weight.dtype
    fused.to(device=device, dtype=dtype)
    with torch.no_grad():
        for name, value in tensors.items():
            if value is not None:
                getattr(fused, name).copy_(value)
    fused.train(first.training)
    return fused


def _leaves(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if name and not list(m.children())]


def fuse(models: Sequence[nn.Module]) -> nn.Module:
    """One network that computes the K ``models`` (same architecture) on rows (module docstring).

    A copy of ``models[0]`` whose convolutions, linear layers, BatchNorms and embeddings are
    replaced by their fused forms holding every model's weights and buffers; attribute ``runs`` = K.
    """
    models = list(models)
    if not models:
        raise BenchError("fuse needs at least one model")
    names = _leaves(models[0])
    for m in models[1:]:
        if _leaves(m) != names or [p.shape for p in m.parameters()] != [p.shape for p in models[0].parameters()]:
            raise BenchError("fuse needs models of one architecture")
    fused = copy.deepcopy(models[0])
    for name in names:
        replacement = _fuse_leaf([m.get_submodule(name) for m in models])
        if replacement is not None:
            parent, _, leaf = name.rpartition(".")
            setattr(fused.get_submodule(parent) if parent else fused, leaf, replacement)
    fused.runs = len(models)
    return fused


def run_state(fused: nn.Module, k: int) -> dict[str, torch.Tensor]:
    """Run k's ``state_dict`` in the unfused architecture's names and shapes (copies)."""
    runs = fused.runs
    if not 0 <= k < runs:
        raise BenchError(f"run {k} of a fusion of {runs}")
    state = {}
    for name, value in fused.state_dict().items():
        owner = fused.get_submodule(name.rpartition(".")[0]) if "." in name else fused
        if isinstance(owner, RunsLayout) and value.dim() > 0:
            value = value.chunk(runs)[k]
            if isinstance(owner, FusedLinear) and name.endswith("weight"):
                value = value[:, :, 0, 0]
        state[name] = value.clone()
    return state


def interleave(batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """K batches of N -> the rows ``(N K, ...)`` of a fused network (row n K + k = batches[k][n]), contiguous."""
    return torch.stack(list(batches), 1).flatten(0, 1).contiguous()


def run_rows(rows: torch.Tensor, runs: int, k: int) -> torch.Tensor:
    """Run k's rows of a fused batch or output (the inverse of :func:`interleave` for one run)."""
    return rows[k::runs]

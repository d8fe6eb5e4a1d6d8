"""Horizontal fusion: K runs of one architecture trained as one network (packing without MPS).

On a GPU, one ResNet-32 step at batch 128 is hundreds of small kernels, each too small to fill the
device: ``--jobs 4`` on one H200 made every run 4.1-4.2x slower (its kernels take turns), 2.4-2.6x
under NVIDIA MPS (session 11; README, Speed). Fusing the K runs into one network makes every
kernel K times larger instead of K times more numerous (HFTA: Wang et al., "Horizontally Fused
Training Array", MLSys 2021): each convolution of the K models becomes one grouped convolution
(``groups = K``) whose group k holds run k's weights, each BatchNorm one BatchNorm over K times
the channels, each linear layer a grouped 1x1 convolution.

Two layouts (``fuse(models, layout)``); both return the logits as *rows*: row ``n * K + k`` of
``N * K`` rows is sample n of run k (:func:`interleave` builds rows from K batches, :func:`run_rows`
takes run k's rows back out), so per-sample losses, weights and ``methods.meta.MetaStep`` treat
the fused network as a classifier of ``N * K`` samples.

``rows``   rows in as well. Each fused layer views its rows as the runs layout ``(N, K * C, ...)``
           (a free view for contiguous tensors only), applies the grouped op and views the result
           back; everything between layers is per sample and unchanged. Works for any of the
           suite's networks (the weighting nets too); contiguous (NCHW) only.
``runs``   the backbones: the input in the runs layout (:func:`stack_runs`: run k's channels in
           block k), plain grouped convolutions and wide BatchNorms with no views in between (so
           channels_last, cuDNN's fast layout, stays), a per-run option-A shortcut
           (:class:`RunsShortcutA`), and the classifier mapping runs to rows. SLMO's frozen
           bottom over ``cat([x, x_meta])`` still splits by batch, and ``methods.jvp``'s rules
           apply as they are.

What is exact: run k's rows see only run k's weights and its own batch statistics (a BatchNorm
channel of block k averages over run k's N samples), so the fused forward is the K forwards. A
loss that is the *sum* over runs of each run's loss gives each run exactly its own gradient
(``cross_entropy(rows) * K`` for K mean losses), and an element-wise optimiser (SGD with momentum,
Nesterov and weight decay; Adam) then steps each run as it would alone. Results agree with the K
separate runs up to float rounding (another kernel adds the same products in another order),
not bit for bit; tests/test_fused.py checks forwards, CE steps and meta steps against separate
runs on every backbone.

``bench timing --pack N --pack-mode fused`` uses the runs layout in channels_last (the CUDA
default) and the rows layout with ``--memory-format contiguous`` (and on CPU).

Used by ``python -m bench timing --pack N --pack-mode fused`` (a measurement) and by ``bench run
--fuse K`` (bench/fused_runs.py: K seeds of one cell, for the methods that support it), whose
batches come from :class:`FusedLoader`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import BenchError
from bench.models import _ShortcutA


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


class FusedBatchNorm2d(RunsLayout, nn.BatchNorm2d):
    """K ``BatchNorm2d(C)`` as one ``BatchNorm2d(K C)``: channel block k normalises run k's rows
    with run k's batch statistics and running statistics."""

    def forward(self, x):
        return self.to_rows(super().forward(self.to_runs(x)))


class GroupedConv2d(nn.Conv2d):
    """Runs layout: K ``Conv2d(C_in, C_out)`` as one ``Conv2d(K C_in, K C_out, groups = K g)`` on
    ``(N, K C_in, H, W)``, no views (so channels_last works)."""

    runs: int


class WideBatchNorm2d(nn.BatchNorm2d):
    """Runs layout: K ``BatchNorm2d(C)`` as one ``BatchNorm2d(K C)`` on ``(N, K C, H, W)``."""

    runs: int


class RunsShortcutA(_ShortcutA):
    """Runs layout: the option-A shortcut of each run (subsample by 2, zero-pad each run's own
    channel block), keeping the input's memory format."""

    def __init__(self, planes: int, runs: int):
        super().__init__(planes)
        self.runs = runs

    def forward(self, x):
        n, channels, h, w = x.shape
        y = x.view(n, self.runs, channels // self.runs, h, w)[:, :, :, ::2, ::2]
        y = F.pad(y, (0, 0, 0, 0, self.pad, self.pad))
        y = y.reshape(n, -1, *y.shape[-2:])
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            y = y.contiguous(memory_format=torch.channels_last)
        return y


class RunsToRowsLinear(RunsLayout, nn.Conv2d):
    """Runs layout's classifier: K ``Linear(D, O)`` as a grouped 1x1 convolution from the runs
    layout ``(N, K D)`` to rows ``(N K, O)`` (the logits, one row per sample of each run)."""

    def _conv_forward(self, x, weight, bias):
        return self.to_rows(F.conv2d(x[:, :, None, None], weight, bias, groups=self.groups).flatten(1))


class FusedLinear(RunsToRowsLinear):
    """K ``Linear(D, O)`` as a grouped 1x1 convolution: rows ``(N K, D)`` -> rows ``(N K, O)``."""

    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(self.to_runs(x), weight, bias)


class FusedEmbedding(RunsLayout, nn.Embedding):
    """K ``Embedding(M, P)`` as one table of K M rows: row ``n K + k`` looks up run k's block."""

    def forward(self, index):
        run = torch.arange(index.shape[0], device=index.device) % self.runs
        return super().forward(index + run.view(-1, *([1] * (index.dim() - 1))) * (self.num_embeddings // self.runs))


def _cat(parts, attr: str) -> torch.Tensor:
    return torch.cat([getattr(p, attr).detach() for p in parts])


def _fuse_leaf(parts: list[nn.Module], layout: str) -> nn.Module | None:
    """The fused layer of K corresponding leaves, None for a per-sample leaf without state."""
    first, runs = parts[0], len(parts)
    rows = layout == "rows"
    if hasattr(type(first), "fused"):  # a layer of a method's own that knows its fused form
        fused = type(first).fused(parts, layout)
        fused.runs = runs
        return fused
    if isinstance(first, _ShortcutA) and not rows:
        return RunsShortcutA(4 * first.pad, runs)  # no state: nothing to copy
    if isinstance(first, nn.Conv2d):
        if first.padding_mode != "zeros":
            raise BenchError(f"cannot fuse a Conv2d with padding_mode={first.padding_mode!r}")
        fused = (FusedConv2d if rows else GroupedConv2d)(
            runs * first.in_channels, runs * first.out_channels, first.kernel_size, first.stride, first.padding,
            first.dilation, runs * first.groups, first.bias is not None)
        tensors = {"weight": _cat(parts, "weight"), "bias": _cat(parts, "bias") if first.bias is not None else None}
    elif isinstance(first, nn.Linear):
        fused = (FusedLinear if rows else RunsToRowsLinear)(runs * first.in_features, runs * first.out_features, 1,
                                                            groups=runs, bias=first.bias is not None)
        tensors = {"weight": _cat(parts, "weight")[:, :, None, None],
                   "bias": _cat(parts, "bias") if first.bias is not None else None}
    elif isinstance(first, nn.BatchNorm2d):
        fused = (FusedBatchNorm2d if rows else WideBatchNorm2d)(
            runs * first.num_features, first.eps, first.momentum, first.affine, first.track_running_stats)
        tensors = {name: _cat(parts, name) for name in ("weight", "bias", "running_mean", "running_var")
                   if getattr(first, name, None) is not None}
        if first.num_batches_tracked is not None:
            tensors["num_batches_tracked"] = first.num_batches_tracked.detach().clone()
    elif isinstance(first, nn.Embedding) and rows:
        if first.padding_idx is not None or first.max_norm is not None:
            raise BenchError("cannot fuse an Embedding with padding_idx or max_norm")
        fused = FusedEmbedding(runs * first.num_embeddings, first.embedding_dim)
        tensors = {"weight": _cat(parts, "weight")}
    elif any(True for _ in first.parameters(recurse=False)) or any(True for _ in first.buffers(recurse=False)):
        raise BenchError(f"cannot fuse {type(first).__name__}: no fused form of a layer with state")
    else:
        return None
    fused.runs = runs
    # the layer's floating state gives device and dtype (a BatchNorm without affine has no weight)
    ref = next((t for t in (*first.parameters(recurse=False), *first.buffers(recurse=False))
                if t.is_floating_point()), None)
    if ref is not None:
        fused.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        for name, value in tensors.items():
            if value is not None:
                getattr(fused, name).copy_(value)
    fused.train(first.training)
    return fused


def _leaves(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if name and not list(m.children())]


LAYOUTS = ("rows", "runs")


def fuse(models: Sequence[nn.Module], layout: str = "rows") -> nn.Module:
    """One network that computes the K ``models`` (same architecture) (module docstring).

    A copy of ``models[0]`` whose convolutions, linear layers, BatchNorms and embeddings are
    replaced by their fused forms holding every model's weights and buffers; attributes ``runs`` =
    K and ``layout``. A layer class of a method's own with a classmethod ``fused(parts, layout)``
    (LDAM's cosine classifier) gives its fused form itself: its tensors the K layers' concatenated
    along the first dimension (as :func:`run_state` splits them). ``layout="rows"``: rows in, rows
    out (any of the suite's networks).
    ``layout="runs"`` (the suite's backbones, whose only linear layer is the classifier at the
    end): the input in the runs layout (:func:`stack_runs`), the logits as rows.
    """
    models = list(models)
    if not models:
        raise BenchError("fuse needs at least one model")
    if layout not in LAYOUTS:
        raise BenchError(f"unknown fused layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    names = _leaves(models[0])
    if not names:  # a bare layer has no leaves to replace: refuse it rather than return model 0 unfused
        raise BenchError(f"fuse needs a network of layers, got a bare {type(models[0]).__name__}")
    for m in models[1:]:
        if _leaves(m) != names or [p.shape for p in m.parameters()] != [p.shape for p in models[0].parameters()]:
            raise BenchError("fuse needs models of one architecture")
    fused = copy.deepcopy(models[0])
    for name in names:
        replacement = _fuse_leaf([m.get_submodule(name) for m in models], layout)
        if replacement is not None:
            parent, _, leaf = name.rpartition(".")
            setattr(fused.get_submodule(parent) if parent else fused, leaf, replacement)
    fused.runs, fused.layout = len(models), layout
    return fused


def run_state(fused: nn.Module, k: int) -> dict[str, torch.Tensor]:
    """Run k's ``state_dict`` in the unfused architecture's names and shapes (copies)."""
    runs = fused.runs
    if not 0 <= k < runs:
        raise BenchError(f"run {k} of a fusion of {runs}")
    state = {}
    for name, value in fused.state_dict().items():
        owner = fused.get_submodule(name.rpartition(".")[0]) if "." in name else fused
        if owner is not fused and getattr(owner, "runs", None) and value.dim() > 0:
            value = value.chunk(runs)[k]
            if isinstance(owner, RunsToRowsLinear) and name.endswith("weight"):  # FusedLinear too
                value = value[:, :, 0, 0]
        state[name] = value.clone()
    return state


def interleave(batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """K batches of N -> the rows ``(N K, ...)`` of a fused network (row n K + k = batches[k][n]), contiguous."""
    return torch.stack(list(batches), 1).flatten(0, 1).contiguous()


def stack_runs(batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """K image batches of N -> the runs layout ``(N, K C, H, W)`` of a ``layout="runs"`` network
    (run k's channels in block k), in the batches' memory format."""
    return torch.cat(list(batches), 1)


def run_rows(rows: torch.Tensor, runs: int, k: int) -> torch.Tensor:
    """Run k's rows of a fused batch or output (the inverse of :func:`interleave` for one run)."""
    return rows[k::runs]


def runs_images(images: Sequence[torch.Tensor], layout: str) -> torch.Tensor:
    """K runs' image batches as a fused classifier of ``layout`` takes them: rows
    (:func:`interleave`) or the runs layout (:func:`stack_runs`)."""
    return interleave(images) if layout == "rows" else stack_runs(images)


def runs_batch(parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], layout: str
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K runs' batches ``(x, y, idx)`` as one fused batch: the images as the fused classifier takes
    them (rows, or the runs layout), labels as rows, and each row's index ``i * K + k`` for sample
    i of run k's pool (so a per-sample table of the K pools, interleaved, is indexed directly)."""
    runs = len(parts)
    return (runs_images([x for x, _, _ in parts], layout),
            interleave([y for _, y, _ in parts]),
            interleave([i * runs + k for k, (_, _, i) in enumerate(parts)]))


class FusedPlan(tuple):
    """The K runs' batch plans of one step, flattened (three tensors per run: the inputs of a
    captured step); ``idx`` is run 0's sample positions (every run's batch has its length)."""

    @property
    def idx(self) -> torch.Tensor:
        return self[0]


class FusedLoader:
    """K runs' :class:`bench.data.Loader` as one: each run draws its own order, crops and flips
    from its own generator (as it would alone), :meth:`assemble` makes them one fused batch
    (:func:`runs_batch`). The pools must have one size and one batch size, so every run has the
    same batches per epoch."""

    def __init__(self, loaders: Sequence, layout: str):
        self.loaders, self.layout = list(loaders), layout
        shapes = {(ld.num_samples, ld.batch_size, ld.drop_last) for ld in self.loaders}
        if len(shapes) != 1:
            raise BenchError("fused runs need pools of one size and one batch size, got (size, batch, drop_last) "
                             + ", ".join(map(str, sorted(shapes))))

    def __len__(self) -> int:
        return len(self.loaders[0])

    @property
    def num_samples(self) -> int:
        return self.loaders[0].num_samples

    def plans(self):
        for plans in zip(*(ld.plans() for ld in self.loaders)):
            yield FusedPlan(t for plan in plans for t in plan)

    def assemble(self, *plan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return runs_batch([ld.assemble(*plan[3 * k:3 * k + 3]) for k, ld in enumerate(self.loaders)], self.layout)

    def __iter__(self):
        for plan in self.plans():
            yield self.assemble(*plan)

    def example(self) -> torch.Tensor:
        """A full fused batch's images (:meth:`bench.data.Loader.example` of each run's, fused)."""
        return runs_images([ld.example() for ld in self.loaders], self.layout)

    def cycle(self) -> FusedCycle:
        """Endless fused batches over epochs (the meta sets), each run cycling through its own."""
        return FusedCycle(self)


class FusedCycle:
    """The runs' :class:`bench.data.loader.Cycle` s as one, with a state to checkpoint."""

    def __init__(self, loader: FusedLoader):
        self.loader = loader
        self.cycles = [ld.cycle() for ld in loader.loaders]

    def __iter__(self) -> FusedCycle:
        return self

    def next_plan(self) -> FusedPlan:
        return FusedPlan(t for c in self.cycles for t in c.next_plan())

    def __next__(self):
        return self.loader.assemble(*self.next_plan())

    def state_dict(self) -> dict:
        return {"cycles": [c.state_dict() for c in self.cycles]}

    def load_state_dict(self, state: dict) -> None:
        for c, saved in zip(self.cycles, state["cycles"]):
            c.load_state_dict(saved)

"""Per-sample training dynamics: record a loss or margin per sample per epoch, under a schedule.

Shared by the sample-selection baselines (O2U-Net, AUM) and CurveNet's probe stage
(PROTOCOL.md §5 and §7; DESIGN.md "Two-stage methods ... share the probe code"). Co-teaching
uses the quantity functions and the noise-rate option.

What is recorded, and when
--------------------------
The value for a sample at epoch ``e`` is computed from the logits of **the training forward
pass** that updates the model with that sample: train mode (BatchNorm batch statistics),
augmented input, before that batch's optimizer step, exactly where CurveNet's probe code takes
it (``recognition_cycle.py`` L231-237, notes/curvenet_mwnet.md §2.5), where O2U-Net's code takes
it (hjimce/O2U-Net ``main.py`` ``second_stage``, ``example_loss[idx]`` from the batch's loss) and
where AUM's code takes it (asappresearch/aum ``runner.py`` ``train_epoch``; notes/baselines.md
§7). No extra pass over the data is made unless ``train_and_record(..., record="eval")`` asks for
one (then the value comes from an eval-mode, unaugmented pass after the epoch's updates).
Every sample is seen once per epoch (``drop_last=False``), so there is one value per sample per
epoch; the values are scattered by sample index into an ``(epochs, N)`` tensor on the run's
device (no per-sample ``.item()`` or host copies in the loop).

The quantities
--------------
``per_sample_ce(logits, y)``  the unreduced softmax cross-entropy (CurveNet, O2U-Net).
``margin(logits, y)``         the assigned logit minus the largest other logit, on the raw
                              logits (Pleiss et al. 2020, eq. 1; ``aum/aum.py`` L69-77). The
                              official code casts the logits ``.half().float()`` first; we do not.

Schedules
---------
A :class:`Schedule` is an explicit per-epoch list of (learning rate, batch size), so schedules
compose (``a + b``), hash (``schedule.key()``, for caches) and print. Constructors:

``constant_schedule``      one lr and batch size (AUM's own runs use 0.1 for 150 epochs at 64).
``step_schedule``          warm-up then x decay at milestones (the grid protocol, §3).
``protocol_schedule(run)`` the run's protocol schedule, optionally truncated (O2U stage 1 and
                           AUM stop at the first lr drop).
``square_wave_schedule``   lr alternating high/low every ``half_period`` epochs (CurveNet's
                           probe, ``adjust_lr`` L118-132: 0.01 for 15 epochs, 0.001 for 15, ...).
``linear_cycle_schedule``  O2U-Net's cyclical lr: within each cycle of ``c`` epochs,
                           lr = (1 - t) r1 + t r2 with t = ((e mod c) + 1) / c, i.e. linearly
                           from just below r1 down to r2 (Huang et al. 2019, eq. 1; ``main.py``
                           L187-188). Deviation: the official loop starts at epoch 1, so its
                           first cycle is shifted by one epoch; here e counts from 0.
``curvenet_probe_schedule`` 120 epochs at lr 0.1, batch 128, then the square wave 0.01 / 0.001,
                           15 epochs each, six periods, at batch 16 (PROTOCOL.md §5): 300 epochs.

Score convention for selection methods
--------------------------------------
Selection methods record ``run.record("kept", bool[N])`` and ``run.record("score", float[N])``
where **a higher score means "more likely mislabelled"** (O2U: mean centred loss; AUM: threshold
minus AUM; Co-teaching: the peer network's final loss), so ``bench.analysis.selection_quality``
reads every method the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.data.bias import REAL_NOISE
from bench.errors import BenchError
from bench.train import lr_at, set_lr
from methods.base import PerRun, check_int

# ----------------------------------------------------------------------------- quantities


def per_sample_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unreduced softmax cross-entropy, one value per sample: ``-log softmax(logits)[y]``."""
    return F.cross_entropy(logits, y, reduction="none")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """AUM's margin: the assigned logit minus the largest other logit (Pleiss et al. 2020, eq. 1).

    Computed on the raw logits (not probabilities): positive when the sample is classified as
    its assigned label, negative otherwise.
    """
    assigned = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, y.view(-1, 1), float("-inf"))
    return assigned - others.max(dim=1).values


QUANTITIES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "loss": per_sample_ce,
    "margin": margin,
}

# ------------------------------------------------------------------------------ schedules


@dataclass(frozen=True)
class Schedule:
    """Per-epoch learning rates and batch sizes: epoch ``e`` trains at ``lrs[e]`` with
    ``batch_sizes[e]``. ``len(schedule)`` is the number of epochs; ``a + b`` runs ``a`` then ``b``.
    """

    lrs: tuple[float, ...]
    batch_sizes: tuple[int, ...]

    def __post_init__(self):
        if len(self.lrs) != len(self.batch_sizes):
            raise BenchError("a schedule needs one batch size per epoch")
        if any(not (math.isfinite(v) and v >= 0) for v in self.lrs):
            raise BenchError(f"learning rates must be finite and >= 0, got {self.lrs}")
        if any(int(b) != b or b < 1 for b in self.batch_sizes):
            raise BenchError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        object.__setattr__(self, "lrs", tuple(float(v) for v in self.lrs))
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in self.batch_sizes))

    def __len__(self) -> int:
        return len(self.lrs)

    def __add__(self, other: Schedule) -> Schedule:
        return Schedule(self.lrs + other.lrs, self.batch_sizes + other.batch_sizes)

    def lr(self, epoch: int) -> float:
        return self.lrs[epoch]

    def batch_size(self, epoch: int) -> int:
        return self.batch_sizes[epoch]

    def key(self) -> str:
        """A stable 16-hex-digit hash (for cache keys of recorded curves)."""
        blob = json.dumps([self.lrs, self.batch_sizes], separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def constant_schedule(lr: float, epochs: int, batch_size: int) -> Schedule:
    check_int(epochs, "epochs", 0)
    return Schedule((lr,) * epochs, (batch_size,) * epochs)


def step_schedule(lr: float, epochs: int, *, milestones: Sequence[int] = (), lr_decay: float = 0.1,
                  warmup_epochs: int = 0, batch_size: int = 128) -> Schedule:
    """The grid protocol's shape (``bench.train.lr_at``): linear warm-up, then x ``lr_decay`` at
    each milestone."""
    check_int(epochs, "epochs", 0)
    lrs = tuple(lr_at(e, lr=lr, warmup_epochs=warmup_epochs, milestones=milestones, lr_decay=lr_decay)
                for e in range(epochs))
    return Schedule(lrs, (batch_size,) * epochs)


def protocol_schedule(run, epochs: int | None = None, batch_size: int | None = None) -> Schedule:
    """The run's protocol schedule (``run.lr_at``) for its first ``epochs`` epochs (all by default).

    ``protocol_schedule(run, run.first_drop)`` is "the protocol's training up to the first lr
    drop" (O2U-Net stage 1 and AUM's scoring runs, PROTOCOL.md §7).
    """
    epochs = run.spec.epochs if epochs is None else epochs
    check_int(epochs, "epochs", 0)
    size = batch_size or run.spec.batch_size
    return Schedule(tuple(run.lr_at(e) for e in range(epochs)), (size,) * epochs)


def square_wave_schedule(high: float = 0.01, low: float = 0.001, *, half_period: int = 15,
                         periods: int = 6, batch_size: int = 16) -> Schedule:
    """``half_period`` epochs at ``high``, then ``half_period`` at ``low``, ``periods`` times
    (CurveNet probe ``adjust_lr``: ``lr_ratio`` toggles whenever epoch % 15 == 0)."""
    check_int(half_period, "half_period", 0)
    check_int(periods, "periods", 0)
    lrs = ((high,) * half_period + (low,) * half_period) * periods
    return Schedule(lrs, (batch_size,) * len(lrs))


def linear_cycle_schedule(high: float = 0.01, low: float = 0.001, *, cycle: int = 10, cycles: int = 1,
                          batch_size: int = 16) -> Schedule:
    """O2U-Net's cyclical lr (Huang et al. 2019, eq. 1): epoch e of a cycle of length c runs at
    ``(1 - t) * high + t * low`` with ``t = ((e mod c) + 1) / c`` (0.0091 ... 0.001 for c = 10)."""
    check_int(cycle, "cycle length", 1)
    check_int(cycles, "cycles", 0)
    lrs = []
    for e in range(cycle * cycles):
        t = ((e % cycle) + 1) / cycle
        lrs.append((1 - t) * high + t * low)
    return Schedule(tuple(lrs), (batch_size,) * len(lrs))


def curvenet_probe_schedule(lr: float = 0.1, base_epochs: int = 120, base_batch_size: int = 128, *,
                            high: float = 0.01, low: float = 0.001, half_period: int = 15,
                            periods: int = 6, cycle_batch_size: int = 16) -> Schedule:
    """CurveNet's probe stage (PROTOCOL.md §5; notes/curvenet_mwnet.md §3.1): ``lr`` for
    ``base_epochs`` at ``base_batch_size``, then the square wave at ``cycle_batch_size`` (the code
    divides the batch by 8). Defaults give the paper's 300 epochs."""
    return (constant_schedule(lr, base_epochs, base_batch_size)
            + square_wave_schedule(high, low, half_period=half_period, periods=periods,
                                   batch_size=cycle_batch_size))


# ------------------------------------------------------------------------------- recording


class CurveRecorder:
    """An ``(epochs, N)`` tensor on ``device``, NaN until written, filled by sample index."""

    def __init__(self, epochs: int, num_samples: int, device, dtype=None):
        dtype = dtype or torch.get_default_dtype()  # float32 unless a float64 exactness test set it
        self.values = torch.full((epochs, num_samples), float("nan"), device=device, dtype=dtype)

    def add(self, epoch: int, idx: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``values[k]`` to sample ``idx[k]`` at ``epoch`` (detached, no host sync)."""
        self.values[epoch].index_copy_(0, idx.to(self.values.device),
                                       values.detach().to(self.values.dtype))


@dataclass
class Curves:
    """What :func:`train_and_record` returns.

    ``values``   float tensor ``(epochs, N)`` on the run's device, N = the whole training pool;
                 column i is training-pool sample i. Columns of samples outside ``indices``
                 stay NaN. Row e is epoch e of ``schedule``.
    ``quantity`` "loss", "margin" or the callable's name.
    ``labels``   int64 tensor ``(N,)``: the labels the values were computed against (the observed
                 labels unless ``labels=`` replaced them, e.g. AUM's threshold class).
    ``indices``  the pool positions trained on (None = all).
    ``schedule`` the :class:`Schedule` trained under.
    """

    values: torch.Tensor
    quantity: str
    labels: torch.Tensor
    indices: np.ndarray | None
    schedule: Schedule

    @property
    def epochs(self) -> int:
        return self.values.shape[0]

    def mean(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Mean over epochs ``start .. stop-1`` per sample, shape (N,) (e.g. AUM = mean margin)."""
        window = self.values[start:stop]
        if window.shape[0] == 0:
            raise BenchError(f"no recorded epochs in [{start}, {stop}) of {self.epochs}")
        return window.mean(0)


def centre(values: torch.Tensor, by=None, *, scale: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise centring of an ``(epochs, N)`` tensor, globally or within groups ``by`` (N,).

    NaN entries are ignored in the means and stay NaN. With ``scale`` the centred values are
    divided by the (population) standard deviation of their row / group (clamped at ``eps``).
    """
    values = values if values.dtype == torch.float64 else values.float()
    valid = ~torch.isnan(values)
    filled = torch.where(valid, values, torch.zeros_like(values))
    if by is None:
        groups = torch.zeros(values.shape[1], dtype=torch.long, device=values.device)
    else:
        groups = torch.as_tensor(np.asarray(by) if not isinstance(by, torch.Tensor) else by)
        groups = groups.to(values.device, torch.long)
        if groups.shape != (values.shape[1],):
            raise BenchError(f"centre: need one group per sample ({values.shape[1]}), got {tuple(groups.shape)}")
    num_groups = int(groups.max().item()) + 1 if groups.numel() else 1
    index = groups.expand_as(values)
    count = torch.zeros(values.shape[0], num_groups, device=values.device, dtype=values.dtype
                        ).scatter_add_(1, index, valid.to(values.dtype))
    total = torch.zeros_like(count).scatter_add_(1, index, filled)
    mean = total / count.clamp_min(1)
    out = values - mean.gather(1, index)
    if scale:
        sq = torch.where(valid, out * out, torch.zeros_like(out))
        var = torch.zeros_like(count).scatter_add_(1, index, sq) / count.clamp_min(1)
        out = out / var.sqrt().clamp_min(eps).gather(1, index)
    return out


def _resolve_quantity(quantity):
    if quantity is None:
        return None, "none"
    if callable(quantity):
        return quantity, getattr(quantity, "__name__", "custom")
    if quantity not in QUANTITIES:
        raise BenchError(f"unknown quantity {quantity!r}; choose from {', '.join(QUANTITIES)} or pass a callable")
    return QUANTITIES[quantity], quantity


def train_and_record(run, model: nn.Module, schedule: Schedule, quantity="loss", *,
                     labels: np.ndarray | None = None, indices: np.ndarray | None = None,
                     optimizer: torch.optim.Optimizer | None = None,
                     loss_fn: Callable | None = None, record: str = "train",
                     log_stage: str = "probe", evaluate_every: int = 1) -> Curves:
    """Train ``model`` in place for ``len(schedule)`` epochs, recording a per-sample quantity.

    Parameters
    ----------
    run        the :class:`methods.base.Run` (data, device, loaders, optimiser, logging), or a
               fused group's (bench/fused_runs.py: under ``bench run --fuse``;
               then the values' columns are the K pools interleaved, column i K + k run k's
               sample i, ``labels`` too, and ``indices`` and ``record="eval"`` are refused).
    model      the network (on ``run.device``), trained in place.
    schedule   per-epoch lr and batch size (:class:`Schedule`); the lr is set on every param
               group at the start of each epoch; one loader per distinct batch size.
    quantity   "loss" (:func:`per_sample_ce`), "margin" (:func:`margin`), a callable
               ``f(logits, y) -> Tensor[B]``, or None to record nothing.
    labels     int array over the whole training pool replacing the observed labels for
               training and recording (AUM's threshold class); default ``run.data.train_y``.
    indices    training-pool positions to train on (a kept subset); default all.
    optimizer  default a fresh ``run.sgd(model.parameters())`` (the protocol's SGD: momentum,
               Nesterov, weight decay).
    loss_fn    ``loss_fn(logits, y, idx, epoch) -> scalar`` with ``idx`` the training-pool
               positions; default the plain mean CE (CurveNet probe, O2U-Net, AUM).
    record     "train" (default): the value of the training forward pass, train mode, augmented
               input, before the batch's optimizer step (no extra pass). "eval": an extra
               eval-mode, unaugmented, unshuffled pass after each epoch's updates.
    log_stage  the ``stage`` of the ``run.log`` rows (one per epoch: lr, batch_size, loss).
    evaluate_every  evaluate on the test set every this many epochs (and at the last); 0 never.

    Returns :class:`Curves` (values ``(len(schedule), N)`` on the run's device).
    Raises ``bench.train.Diverged`` (through ``run.log``) when an epoch's mean loss is not finite.
    """
    if record not in ("train", "eval"):
        raise BenchError(f"record must be 'train' or 'eval', got {record!r}")
    fn, qname = _resolve_quantity(quantity)
    device = run.device
    if run.runs > 1 and (indices is not None or record == "eval"):
        raise BenchError("train_and_record: a fused group trains on its runs' whole pools, recorded in training")
    # a fused group's (bench/fused_runs.py) pools are one of N K samples, row i K + k run k's sample i
    pool_y = run.pooled(lambda r: r.data.train_y)
    n = len(pool_y)
    y_all = np.asarray(pool_y if labels is None else labels)
    if y_all.shape != (n,):
        raise BenchError(f"labels must have one entry per training-pool sample ({n}), got {y_all.shape}")
    # each run's loader reads its own labels (a fused group's: its rows of the pooled labels)
    loader_labels = None if labels is None else (
        y_all if run.runs == 1 else PerRun(y_all[k::run.runs] for k in range(run.runs)))
    if indices is not None:
        indices = np.asarray(indices, dtype=np.int64)
        pool_of = torch.as_tensor(indices, device=device)
    else:
        pool_of = None
    recorder = CurveRecorder(len(schedule), n, device) if fn is not None else None
    optimizer = optimizer if optimizer is not None else run.sgd(model.parameters())
    loaders: dict[int, tuple] = {}  # batch size -> (loader, forward)
    epochs = len(schedule)
    model.train()
    state = {"model": model, "optimizer": optimizer}
    if recorder is not None:
        state["curves"] = recorder.values

    def step(*plan):  # one step on a batch plan (a fused group's: one per run; captured on CUDA, bench/capture.py)
        x, y, idx = loader.assemble(*plan)
        pool_idx = idx if pool_of is None else pool_of[idx]
        with run.autocast():
            logits = forward(x)  # one loss per run: a fused group's K runs each get their own gradient
            losses = run.run_losses(loss_fn or mean_ce, logits, y, pool_idx, epoch)
        if recorder is not None and record == "train":
            with torch.no_grad():
                recorder.add(epoch, pool_idx, fn(logits.detach().to(recorder.values.dtype), y))
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        return losses.detach()

    graphed = run.step_graph(step, name=f"{log_stage} step", optimizers=[optimizer])
    for epoch in run.epochs(epochs, stage=log_stage, state=state):  # resumable after a kill
        lr, bs = schedule.lr(epoch), schedule.batch_size(epoch)
        set_lr(optimizer, lr)
        if bs not in loaders:  # each with the model's forward for its batches (compiled under --compile)
            made = run.loader("train", batch_size=bs, indices=indices, labels=loader_labels)
            loaders[bs] = made, run.step_forward(model, made)
        loader, forward = loaders[bs]
        total = torch.zeros(run.runs, device=device)
        seen = 0
        for plan in loader.plans():
            # the step reads this epoch's loader and recorder row: a new epoch captures it again
            total += graphed(*plan, key=epoch) * len(plan.idx)
            seen += len(plan.idx)
        if recorder is not None and record == "eval":
            _eval_pass(run, model, fn, recorder, epoch, y_all, indices)
        last = epoch == epochs - 1
        evaluate = evaluate_every > 0 and ((epoch + 1) % evaluate_every == 0 or last)
        run.log(epoch, model if evaluate else None, stage=log_stage, lr=lr, batch_size=bs,
                loss=total.double() / max(seen, 1))
    graphed.release()
    values = recorder.values if recorder is not None else torch.empty(0, n, device=device)
    return Curves(values=values, quantity=qname, labels=torch.as_tensor(y_all, device=device, dtype=torch.long),
                  indices=indices, schedule=schedule)


def mean_ce(logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
    """The plain mean cross-entropy as a ``loss_fn`` (the default training loss here; the selection
    methods' retrains)."""
    return F.cross_entropy(logits, y)


@torch.no_grad()
def _eval_pass(run, model, fn, recorder, epoch, y_all, indices, batch_size: int = 1000) -> None:
    """The extra pass a method may ask for: eval mode, no augmentation, every (kept) sample."""
    pool = np.arange(len(y_all)) if indices is None else indices
    loader = run.loader("train", batch_size=batch_size, shuffle=False, augment=False, indices=pool, labels=y_all)
    pool_t = torch.as_tensor(pool, device=run.device)
    was_training = model.training
    model.eval()
    for xb, yb, idx in loader:
        recorder.add(epoch, pool_t[idx], fn(model(xb), yb))
    model.train(was_training)


# ----------------------------------------------------------------------- shared options


def check_rate_option(value: str, what: str) -> str:
    """Validate a noise-rate option, "nominal", "realised" or a number in [0, 1), and return it as
    one text per value (``.35``, ``0.350`` and ``3.5e-1`` all read ``0.35``), so that the same
    setting typed differently is one run (the text is part of the run's key)."""
    if value in ("nominal", "realised"):
        return value
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise BenchError(f"{what} must be 'nominal', 'realised' or a number in [0, 1), got {value!r}") from None
    if not (0 <= rate < 1):
        raise BenchError(f"{what} must lie in [0, 1), got {value!r}")
    text = repr(rate + 0.0)  # -0 as 0
    return text.removesuffix(".0")  # 0 as "0"


def resolve_rate(run, value: str) -> float:
    """The noise rate a method assumes (Co-teaching's tau, O2U-Net's k; PROTOCOL.md §7).

    "nominal": the spec's noise rate (0 for clean data), as the official codes do (they take
    ``forget_rate = noise_rate``); for a dataset's own noisy labels (noise ``real``), which have
    no rate to set, the rate such a dataset states: the fraction of them that are wrong, here
    over the training pool (as "realised"; 0 where the file does not say which are wrong, so give
    an estimate there). "realised": the fraction of training-pool samples
    whose observed label differs from the clean one (an oracle; e.g. p(K-1)/K under uniform
    noise). A number: that estimate.
    """
    check_rate_option(value, "noise-rate option")
    if value == "nominal" and run.spec.noise_type != REAL_NOISE:
        return 0.0 if run.spec.noise_type == "none" else float(run.spec.noise_rate)
    if value in ("nominal", "realised"):
        return float(np.mean(run.data.is_noisy))
    return float(value)

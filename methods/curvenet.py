"""CurveNet (Jiang et al., AAAI 2022): sample weights from each sample's loss curve, meta-learned.

Two stages (PROTOCOL.md §5; notes/curvenet_mwnet.md §2.4-§4, the official CurveNet-V1 code):

**Probe** (``recognition_cycle.py``): plain mean CE on the whole noisy, imbalanced training pool,
SGD momentum 0.9, Nesterov, weight decay 5e-4; lr 0.1 at batch 128 for 120 epochs, then a square
wave 0.01 / 0.001, 15 epochs each, six periods, at batch 16: 300 epochs. One loss per sample per
epoch, from the training forward pass (train mode, augmented, before the batch's step), recorded
by :func:`methods.curves.train_and_record` under :func:`methods.curves.curvenet_probe_schedule`.
The raw curves are cached under ``run.cache_dir`` keyed by a hash of everything the probe depends
on (dataset, bias spec with data seed and meta size, model, init, optimiser, probe schedule,
training seed), written atomically, so the allocate stage, figures and ablations reuse them.

**Curve input** (``recognition_curve.py`` L454-477): at every epoch subtract the mean loss of
the training samples with the same *observed* label (``curvenet.std_norm=true`` also divides by
that class's std, as the paper's text says), then keep epochs S .. T-2 (``drop_first`` = S = 5,
``drop_last`` = 1: the code drops the last epoch too): 294 values in the paper preset.

**CurveNet** (``net/curvenet.py``), P = ``embed_dim`` (hiddim, 64):
Linear(D, 2P), ReLU, Linear(2P, 2P), ReLU, Linear(2P, P), ReLU; + 2 x Embedding(K, P)(observed
label) (the code adds the embedding twice); Linear(P, 2P), ReLU, Linear(2P, P), ReLU, Linear(P, 1);
output sigmoid(z) + 0.02 in [0.02, 1.02]. Init: Xavier normal on the six linear weights, Xavier
uniform on the embedding, zero biases, except the last bias = 4.5 (initial weight about 1.009)
and the first linear of the second half (``linear1``), whose bias keeps PyTorch's default as in
the code. Weights are not normalised; both losses are sum(w l)/B.

**Allocate** (``recognition_curve.py`` L247-333): a fresh classifier with the grid protocol
(§3). While ``epoch < first lr drop`` every iteration runs :class:`methods.meta.MetaStep` with
CurveNet as the weighting net, a *full* look-ahead (current lr, the real optimiser's momentum
buffers, Nesterov, weight decay; ``higher``'s DifferentiableSGD) and CurveNet trained by Adam,
lr 1e-3, weight decay 1e-4, on the next clean meta batch (augmented, cycled). Each sample's
weight is the one recomputed after CurveNet's update in its last meta iteration; from the first
drop on CurveNet stops and every sample keeps that last weight (``alpha = 0``: L309-312, L480-483).

Options (the paper's ablations): ``skip_layers`` SLMO 0-3 (eq. 10, Table 8); ``embed_dim`` P
(Table 9); ``drop_first`` S (Table 10); the meta-set size is the spec's ``meta_per_class``
(Table 7) and ``meta_set=pseudo`` replaces the clean meta set by the ``pseudo_per_class`` = 10
training samples of each observed class with the lowest mean probe loss over the curve window,
with their observed labels (Table 7); ``drw=true`` (Table 6, "+DRW") multiplies each sample's
weight by the class-balanced DRW weight of its observed label (methods/drw.py, beta 0.9999) once
DRW is on: from epoch first_drop + 1, as the code's ``epoch > step[0]`` (L210-220). The class
counts behind those weights are ``drw_counts``: ``observed`` (default; the observed-label counts
of the pool, all a method may know) or ``clean`` (the official code's: ``recognition_curve.start``
counts each sample whose observed label equals its true label under that label and each other
sample under its *true* label, so ``cls_num_list`` is the clean per-class count, oracle
information). ``bench run --paper 6`` uses ``clean`` to reproduce the paper's "+DRW" rows.

Recorded per training sample: ``weight`` (each sample's last assigned weight), ``curve`` (the
normalised curve input, (N, D)), ``probe_loss_mean`` (mean raw probe loss over the window).

Deviations from the official code (each an explicit choice):
- Data and the classifier protocol follow PROTOCOL.md (flip2 noise as the paper says; the code
  can only make frequency-weighted uniform noise). The model init is the spec's ``init``
  (``--set init=curvenet`` gives the code's N(0, 0.02) convs, in both stages).
- The weighting-net gradient is computed exactly by a forward-mode JVP instead of ``higher``'s
  second-order backward (methods/meta.py; ``curvenet.second_order=autograd`` gives the latter).
- "+DRW" uses the observed-label counts by default; the code's clean counts (oracle) are
  ``drw_counts=clean`` (above; notes §6.2 h describes the code's two tallies).
- With ``meta_per_class = 0`` and a clean meta set there is nothing to meta-learn on: CurveNet is
  never updated and every sample keeps its initial weight (about 1.009), which is CE (the code
  would crash on an empty meta loader).
- The probe's randomness (model init, batch order, augmentation) comes from its own seed derived
  from the training seed, so a cached probe and a fresh one leave the allocate stage identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import BenchError
from bench.fused import interleave
from bench.train import set_lr
from methods import register
from methods.base import Method, PerRun, check_int, check_number
from methods.curves import Schedule, centre, curvenet_probe_schedule, train_and_record
from methods.drw import DRW  # Table 6 "+DRW"
from methods.meta import MetaStep, check_options

PROBE_CACHE_VERSION = "curvenet-probe-v1"
META_SETS = ("clean", "pseudo")
DRW_COUNTS = ("observed", "clean")


class CurveNet(nn.Module):
    """The weighting network of ``net/curvenet.py``: curve (B, D) and observed label (B,) -> w (B,)."""

    def __init__(self, input_dim: int, num_classes: int, embed_dim: int = 64, *, out_bias: float = 0.02,
                 embed_times: int = 2, last_bias: float = 4.5):
        super().__init__()
        P = embed_dim
        self.before = nn.Sequential(nn.Linear(input_dim, 2 * P), nn.ReLU(), nn.Linear(2 * P, 2 * P), nn.ReLU(),
                                    nn.Linear(2 * P, P))
        self.embed = nn.Embedding(num_classes, P)
        self.after = nn.Sequential(nn.Linear(P, 2 * P), nn.ReLU(), nn.Linear(2 * P, P), nn.ReLU(), nn.Linear(P, 1))
        self.out_bias = out_bias
        self.embed_times = embed_times
        for layer in (*self.before[::2], *self.after[::2]):
            nn.init.xavier_normal_(layer.weight)
        nn.init.xavier_uniform_(self.embed.weight)
        for layer in (*self.before[::2], self.after[2]):
            nn.init.zeros_(layer.bias)
        nn.init.constant_(self.after[4].bias, last_bias)  # sigmoid(4.5) + 0.02 = 1.009

    def forward(self, curve: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.before(curve)) + self.embed_times * self.embed(y)
        return torch.sigmoid(self.after(h).squeeze(1)) + self.out_bias


def curve_input(values: torch.Tensor, labels, drop_first: int, drop_last: int = 1, *,
                std_norm: bool = False) -> torch.Tensor:
    """CurveNet's input (N, T - S - drop_last) from raw probe losses ``values`` (T, N).

    Per epoch, subtract the mean over the samples with the same observed label (and divide by the
    class's std with ``std_norm``), then keep epochs ``drop_first .. T - drop_last - 1``.
    """
    T = values.shape[0]
    if drop_first < 0 or drop_last < 0 or T - drop_first - drop_last < 1:
        raise BenchError(f"curve window [{drop_first}, {T - drop_last}) of a {T}-epoch probe is empty")
    normalised = centre(values, by=labels, scale=std_norm)
    return normalised[drop_first:T - drop_last].T.contiguous()


@dataclass
class CurveNetParams:
    # probe stage (PROTOCOL.md §5): base_epochs at probe_lr/probe_batch_size, then the square wave
    probe_lr: float = 0.1
    probe_epochs: int = 120
    probe_batch_size: int = 128
    cycle_high: float = 0.01
    cycle_low: float = 0.001
    half_period: int = 15
    periods: int = 6
    cycle_batch_size: int = 16
    # curve input
    drop_first: int = 5
    drop_last: int = 1
    std_norm: bool = False
    # CurveNet and its optimiser
    embed_dim: int = 64
    meta_lr: float = 1e-3
    meta_weight_decay: float = 1e-4
    lookahead: str = "full"
    skip_layers: int = 0
    second_order: str = "jvp"
    # ablations
    meta_set: str = "clean"
    pseudo_per_class: int = 10
    drw: bool = False
    drw_counts: str = "observed"  # or "clean": the official code's class counts (oracle)
    # added after runs were stored: left out of a run's key at its default, so their keys hold
    OMITTED_WHEN_DEFAULT: ClassVar[tuple[str, ...]] = ("drw_counts",)

    def __post_init__(self):
        for name in ("probe_batch_size", "cycle_batch_size", "embed_dim", "pseudo_per_class"):
            check_int(getattr(self, name), f"curvenet.{name}", 1)
        for name in ("probe_epochs", "half_period", "periods", "drop_first", "drop_last"):
            check_int(getattr(self, name), f"curvenet.{name}", 0)
        for name in ("probe_lr", "cycle_high", "cycle_low", "meta_lr", "meta_weight_decay"):
            check_number(getattr(self, name), f"curvenet.{name}")
        check_options(self.lookahead, self.skip_layers, self.second_order)
        if self.drw_counts not in DRW_COUNTS:
            raise BenchError(f"curvenet.drw_counts must be one of {', '.join(DRW_COUNTS)}, got {self.drw_counts!r}")
        if self.meta_set not in META_SETS:
            raise BenchError(f"curvenet.meta_set must be one of {', '.join(META_SETS)}, got {self.meta_set!r}")
        if self.input_dim < 1:
            raise BenchError(f"the curve window is empty: a {self.probe_total}-epoch probe minus "
                             f"drop_first={self.drop_first} and drop_last={self.drop_last}")

    def schedule(self) -> Schedule:
        return curvenet_probe_schedule(self.probe_lr, self.probe_epochs, self.probe_batch_size,
                                       high=self.cycle_high, low=self.cycle_low, half_period=self.half_period,
                                       periods=self.periods, cycle_batch_size=self.cycle_batch_size)

    @property
    def probe_total(self) -> int:
        return self.probe_epochs + 2 * self.half_period * self.periods

    @property
    def input_dim(self) -> int:
        return self.probe_total - self.drop_first - self.drop_last


# --------------------------------------------------------------------------------- probe stage


def probe_key(run, schedule: Schedule) -> str:
    """Hash of everything the probe's curves depend on (not the allocate-stage options). The
    precision (the probe trains under the run's autocast) enters only when it is not fp32, so the
    keys of fp32 probes cached before it was added still hold; so does an npz file's digest, for
    the built-in datasets' keys."""
    s = run.spec
    blob = dict(version=PROBE_CACHE_VERSION, dataset=s.dataset, imbalance=s.imbalance, noise_type=s.noise_type,
                noise_rate=s.noise_rate, meta_per_class=s.meta_per_class, data_seed=s.data_seed, model=s.model,
                init=s.init, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay,
                schedule=schedule.key(), seed=s.seed, num_train=int(len(run.data.train_y)))
    if s.precision != "fp32":
        blob["precision"] = s.precision
    if s.data_sha256:  # your own npz file: its version (two versions may differ in images alone)
        blob["data_sha256"] = s.data_sha256
    text = json.dumps(blob, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _probe_seed(seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"curvenet-probe:{seed}".encode()).digest()[:6], "little")


def probe_curves(run, schedule: Schedule) -> torch.Tensor:
    """Raw probe losses (T, N) on the run's device: from the cache when present, else trained.

    The probe runs under its own seed (``run.reseeded``: global RNG forked, the run's loader
    generator swapped), so it is a function of the spec and the allocate stage sees the same RNG
    state either way. A fused group's (``bench run --fuse``, bench/fused_runs.py) probes train as
    one fused network, each run's from its own probe seed, unless every run's curves are cached;
    the table is then (T, N K), column i K + k run k's sample i. A run whose curves were cached
    keeps them (and no probe rows in its history) when the others' probes train.
    """
    members = run.member_runs
    paths = [_probe_cache_path(member, schedule) for member in members]
    cached = [_read_probe_cache(path, member, schedule) for path, member in zip(paths, members)]
    if all(values is not None for values in cached):
        return _columns(cached)
    with run.reseeded(lambda spec: _probe_seed(spec.seed)):
        model = run.model()
        every = max(1, len(schedule) // 10)
        curves = train_and_record(run, model, schedule, "loss", log_stage="probe", evaluate_every=every)
    values = curves.values
    if len(members) == 1:
        _write_probe_cache(paths[0], members[0], values)
        return values
    trained = [values[:, k::len(members)] for k in range(len(members))]
    for path, member, old, new in zip(paths, members, cached, trained):
        if old is None:
            _write_probe_cache(path, member, new)
        else:  # as alone: its curves from the cache, no probe trained
            member.history = [row for row in member.history if row["stage"] != "probe"]
    return _columns([new if old is None else old for old, new in zip(cached, trained)])


def _columns(tables: list[torch.Tensor]) -> torch.Tensor:
    """Runs' (T, N) tables as one (T, N K), column i K + k run k's sample i (one run's as it is)."""
    return tables[0] if len(tables) == 1 else torch.stack(tables, 2).flatten(1)


def _probe_cache_path(run, schedule: Schedule) -> Path | None:
    if run.cache_dir is None:
        return None
    return Path(run.cache_dir) / "curvenet_probe" / f"{probe_key(run, schedule)}.npz"


def _read_probe_cache(path: Path | None, run, schedule: Schedule) -> torch.Tensor | None:
    """The cached curves (T, N) of ``run``'s probe, None when absent, unreadable or stale."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as f:
            values, labels = f["values"], f["labels"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # unreadable (a torn or empty file among them): train again and overwrite
    if values.shape == (len(schedule), len(run.data.train_y)) and np.array_equal(labels, run.data.train_y):
        return torch.as_tensor(values, device=run.device)
    return None


def _write_probe_cache(path: Path | None, run, values: torch.Tensor) -> None:
    """Write the curves atomically: readers see the old file or the whole new one (written to a
    temporary file, flushed to disk, then renamed over the old one)."""
    if path is None:
        return
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as written:
            np.savez(written, values=values.cpu().numpy(), labels=np.asarray(run.data.train_y))
            written.flush()
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not cache the CurveNet probe curves at {path}: {exc}", stacklevel=3)
        tmp.unlink(missing_ok=True)


def pseudo_meta_indices(probe_mean: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
    """The ``per_class`` training samples of each observed class with the lowest mean probe loss."""
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = np.argsort(probe_mean[members], kind="stable")
        picked.append(members[order[:per_class]])
    return np.sort(np.concatenate(picked))


# ------------------------------------------------------------------------------ allocate stage


@register
class CurveNetMethod(Method):
    """CurveNet: meta-learned weights from probe-stage loss curves, frozen at the first lr drop."""

    name = "curvenet"
    uses_meta_set = True
    fusable = True  # bench run --fuse: probe and allocate stages, each run's curves and pseudo-meta set its own
    Params = CurveNetParams
    # quick: the paper's 300-epoch probe scaled by 1/10, like the 200 -> 20 epoch protocol:
    # 12 epochs at lr 0.1 / batch 128 (120/10), then 3 periods of 3 + 3 epochs at 0.01 / 0.001
    # (the code's 6 periods of 15 + 15 would scale to 1.5-epoch halves): 30 epochs in all. The
    # square wave runs at batch 32 = 128 / 4 instead of the code's 128 / 8 = 16 (CPU time: about
    # 1.6x faster per epoch here). S = 1 (5/300 of 30 = 0.5, rounded up); the last epoch is
    # dropped as in the code: 28 curve values. The allocate stage is the quick protocol itself
    # (20 epochs, CurveNet until the first drop at epoch 8 = 80/200).
    presets = {"quick": dict(probe_epochs=12, half_period=3, periods=3, cycle_batch_size=32, drop_first=1)}
    own_stages = ("probe_epochs", "half_period", "periods")  # the probe: --epochs leaves it as it is

    _said_no_meta_set = False

    @classmethod
    def check_spec(cls, spec) -> None:
        """Trains on any spec; says once that without a meta set it is CE (Table 7's '0' row)."""
        if spec.meta_per_class == 0 and dict(spec.params).get("meta_set", "clean") == "clean" \
                and not cls._said_no_meta_set:
            cls._said_no_meta_set = True
            print("bench: note: CurveNet with --meta-per-class 0 has no meta set to learn from: every sample "
                  "keeps its initial weight (1.009), i.e. CE (give --meta-per-class N, or "
                  "--set curvenet.meta_set=pseudo)", file=sys.stderr)

    @classmethod
    def fused_sizes(cls, params, data) -> tuple:
        """The pseudo-meta set's size, sum over observed classes of min(pseudo_per_class, n_c)
        (:func:`pseudo_meta_indices`): a fused group's runs draw their meta batches together."""
        if params.meta_set != "pseudo":
            return ()
        return (int(np.minimum(np.bincount(np.asarray(data.train_y)), params.pseudo_per_class).sum()),)

    @classmethod
    def inert_settings(cls, params) -> dict[str, str]:
        """drw_counts enters only DRW (``drw=true``), pseudo_per_class only the pseudo-meta set."""
        inert = {} if params.drw else {"drw_counts": "with curvenet.drw=False"}
        if params.meta_set != "pseudo":
            inert["pseudo_per_class"] = f"with curvenet.meta_set={params.meta_set}"
        return inert

    @classmethod
    def display_name(cls, params: dict) -> str:
        extras = []
        if params.get("skip_layers", 0):
            extras.append(f"SL={params['skip_layers']}")
        if params.get("meta_set", "clean") == "pseudo":
            extras.append("pseudo-meta")
        if params.get("drw", False):
            extras.append("+DRW" + (", clean counts" if params.get("drw_counts") == "clean" else ""))
        return "CurveNet" + (f"({', '.join(extras)})" if extras else "")

    def fit(self, run):
        p = self.params
        device = run.device
        K = run.runs  # a fused group's runs (bench run --fuse): per-sample tables interleave their pools
        raw = probe_curves(run, p.schedule())
        labels = torch.as_tensor(run.pooled(lambda r: np.asarray(r.data.train_y)), device=device, dtype=torch.long)
        # each run's curves centred within its own classes (rows interleaved again: row i K + k run k's sample i)
        curves = interleave([curve_input(raw[:, k::K], labels[k::K], p.drop_first, p.drop_last, std_norm=p.std_norm)
                             for k in range(K)])
        window_mean = raw[p.drop_first:raw.shape[0] - p.drop_last].mean(0)
        run.record("curve", curves)
        run.record("probe_loss_mean", window_mean)

        cnet = run.net(lambda: CurveNet(curves.shape[1], run.num_classes, p.embed_dim))
        copt = torch.optim.Adam(cnet.parameters(), lr=p.meta_lr, weight_decay=p.meta_weight_decay)
        model = run.model()
        optimizer = run.sgd(model.parameters())
        step = MetaStep(model, optimizer, cnet, copt, lambda loss, y, idx: cnet(curves[idx], y),
                        lookahead=p.lookahead, skip_layers=p.skip_layers, normalize=False,
                        second_order=p.second_order, precision=run.spec.precision)
        meta_loader = self._meta_loader(run, window_mean)
        with torch.no_grad():  # never-visited samples (none when every epoch sees all) keep the init
            last = cnet(curves, labels)
        drw = None
        if p.drw:  # each run's class weights from its own counts (a fused group: one DRW per run)
            drw = run.per_run(lambda member: DRW(member.data.train_counts if p.drw_counts == "clean"
                                                 else member.data.noisy_counts, run.first_drop + 1,
                                                 reduction="batch", device=device))
        train = run.loader("train")

        def fixed_step(*plan):  # after the first drop: the weights frozen (notes §3)
            x, y, idx = train.assemble(*plan)
            w = last[idx]
            if drw is not None:  # the allocate loop's current epoch; each run's weights on its own rows
                w = w * (drw.sample_weights(y, epoch) if K == 1 else
                         interleave([drw[k].sample_weights(y[k::K], epoch) for k in range(K)]))
            with run.autocast():
                losses = F.cross_entropy(model(x), y, reduction="none")
            if K == 1:
                loss = (w * losses.to(w.dtype)).sum() / len(y)
                terms, weight_sums = loss.detach().reshape(1) * len(y), w.sum().reshape(1)
            else:  # each run's sum(w l) / B over its own rows (row n K + k: run k's), summed over runs
                terms = (w * losses.to(w.dtype)).view(-1, K).sum(0)
                loss = terms.sum() / (len(y) // K)
                weight_sums = w.view(-1, K).sum(0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return torch.stack([terms.detach(), torch.zeros_like(terms), weight_sums], 1)

        graphed_meta = run.step_graph(step.on_plans(train, meta_loader, weights_into=last),  # eqs. 3-5
                                      name="CurveNet meta step", optimizers=[optimizer, copt])
        graphed_fixed = run.step_graph(fixed_step, name="CurveNet fixed-weight step", optimizers=[optimizer])
        model.train()
        state = {"model": model, "optimizer": optimizer, "curvenet": cnet, "curvenet_opt": copt, "weights": last}
        for epoch in run.epochs(run.spec.epochs, stage="allocate", state=state):  # resumable after a kill
            lr = run.lr_at(epoch)
            set_lr(optimizer, lr)
            learning = meta_loader is not None and epoch < run.first_drop
            # a fresh meta iterator each epoch, as recognition_curve.py's train() builds it
            meta = meta_loader.cycle() if learning else None
            if not learning:
                graphed_meta.release()  # the weights are frozen from here on
            total = torch.zeros(K, 3, device=device)  # weighted loss * B, meta loss, weight sum; per run
            seen = steps = 0
            for plan in train.plans():
                if learning:
                    total += graphed_meta(*plan, *meta.next_plan())
                    steps += 1
                else:  # DRW's class weights change with the epoch: captured again per epoch
                    total += graphed_fixed(*plan, key=epoch)
                seen += len(plan.idx)
            loss_sum, meta_sum, weight_sum = total.double().unbind(-1)  # one value per run
            metrics = dict(lr=lr, loss=loss_sum / max(seen, 1), mean_weight=weight_sum / max(seen, 1))
            if learning:
                metrics["meta_loss"] = meta_sum / max(steps, 1)
            run.log(epoch, model, stage="allocate", **metrics)
        graphed_fixed.release()
        run.record("weight", last)
        return model

    def _meta_loader(self, run, probe_mean: torch.Tensor):
        """The loader of the meta set (clean, or the pseudo-meta set), or None without meta data."""
        p = self.params
        if p.meta_set == "pseudo":  # each run's picks from its own probe (a fused group: rows k::K run k's)
            means, K = probe_mean.cpu().numpy(), run.runs
            picks = PerRun(pseudo_meta_indices(means[k::K], np.asarray(member.data.train_y), p.pseudo_per_class)
                           for k, member in enumerate(run.member_runs))
            return run.loader("train", indices=picks[0] if K == 1 else picks, batch_size=run.spec.meta_batch_size)
        if len(run.member_runs[0].data.y_meta) == 0:  # a fused group's meta sets have one size
            return None
        return run.loader("meta")

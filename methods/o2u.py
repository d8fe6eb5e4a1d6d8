"""O2U-Net (Huang et al., ICCV 2019): detect noisy labels from losses under a cyclical lr.

Three stages (paper §3; PROTOCOL.md §7; notes/baselines.md §6). No official code exists; the
only public implementation, hjimce/O2U-Net @ef89d99 ``main.py``, is cited for its details.

1. Pre-train on the noisy pool: the grid protocol up to the first lr drop (epochs
   0 .. first_drop-1 with the protocol's warm-up; 80 epochs on the paper preset).
2. Cyclical training, continuing from the stage-1 weights with a fresh protocol SGD: within each
   cycle of c = 10 epochs the lr falls linearly from r1 = 0.01 to r2 = 0.001,
   lr = (1 - t) r1 + t r2, t = ((e mod c) + 1) / c (paper eq. 1; ``main.py`` L187-188), at batch
   16 (L171). Every epoch each sample's CE from its training forward pass is recorded
   (:func:`methods.curves.train_and_record`), centred by subtracting that epoch's mean over all
   samples (L210) and averaged over the epochs (L211 accumulates the sum: same ranking).
3. Drop the ``round(k N)`` samples with the highest mean centred loss, k = the nominal noise rate
   (``drop_rate = "nominal" | "realised" | "0.35"``), and retrain a fresh network on the rest
   with the full protocol (``retrain = "scratch"``), or from the stage-1 weights as the public
   code does (``retrain = "pretrained"``, L133-136: it reloads the stage-1 checkpoint).

Per-sample records: ``kept`` (bool), ``score`` = ``o2u_loss`` = the mean centred stage-2 loss
(higher = more likely mislabelled).

Choices and deviations:
- Number of cycles: PROTOCOL.md §7 fixes the cycle (10 epochs, 0.01 -> 0.001, batch 16) but not
  how many. Default 5 cycles (50 epochs; notes/baselines.md proposes 5-10): at batch 16 that is
  already about twice the iterations of the 200-epoch batch-128 classifier run. The public code
  runs 249 epochs (about 25 cycles): ``--set o2u.cycles=25``.
- Stage 1 and 3 use the grid protocol (SGD lr 0.1, Nesterov, wd 5e-4, warm-up, x0.1 at the
  milestones), not the public code's lr 0.01 -> 0.005 -> 0.001 at 25 % / 50 % of 250 epochs
  without Nesterov. Stage 2 uses the protocol's momentum, Nesterov and weight decay (the code:
  momentum 0.9, wd 5e-4, no Nesterov).
- Augmentation: the protocol's, in all stages (the code's default ``--transforms false`` has
  none; its author recommends ``true``, issue #1).
- Drop count: ``round(k N)``; the code keeps ``int((1 - k) N)``, i.e. drops ``N - int((1-k)N)``,
  which is ``ceil(k N)`` for a kN that is not whole: one sample more than here where kN's
  fraction lies below one half (k = 0.4, N = 16,683: 6,673 here, 6,674 there).
- The cycle starts at epoch 0 (the code's loop starts at 1, so its first cycle is one epoch short).
- Quick preset: 2 cycles of 5 epochs (lr 0.0082, 0.0064, 0.0046, 0.0028, 0.001), batch 16.

``bench run --fuse K`` trains K seeds fused (bench/fused_runs.py): each run's losses are centred
among its own samples, it drops its own ``round(k N)`` and retrains on its own kept subset (the
runs' pools have one size, so with one rate k the subsets have one size and the retrains are
fused too; with ``drop_rate=realised`` each run's k is its own and each run retrains alone,
``Run.alone``, from a fresh network: ``retrain=pretrained`` then trains unfused).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from bench.data.bias import REAL_NOISE
from bench.errors import BenchError
from bench.train import train_classifier
from methods import register
from methods.base import Method, PerRun, check_int
from methods.curves import (
    check_rate_option,
    linear_cycle_schedule,
    mean_ce,
    protocol_schedule,
    resolve_rate,
    train_and_record,
)


def o2u_scores(loss_curves: torch.Tensor) -> torch.Tensor:
    """Mean over epochs of the per-epoch centred losses: ``mean_e (l[e, i] - mean_j l[e, j])``."""
    return (loss_curves - loss_curves.mean(dim=1, keepdim=True)).mean(dim=0)


def drop_highest(scores, rate: float) -> np.ndarray:
    """Boolean ``kept`` mask that removes the ``round(rate * N)`` highest scores (ties by index)."""
    scores = np.asarray(scores, dtype=float)
    n_drop = int(round(rate * len(scores)))
    kept = np.ones(len(scores), dtype=bool)
    if n_drop > 0:
        order = np.argsort(-scores, kind="stable")
        kept[order[:n_drop]] = False
    return kept


@dataclass
class O2UParams:
    drop_rate: str = "nominal"   # k: "nominal", "realised" or a number in [0, 1)
    cycle_length: int = 10       # c, epochs per cycle
    cycles: int = 5              # number of cycles in stage 2
    lr_high: float = 0.01        # r1
    lr_low: float = 0.001        # r2
    cycle_batch_size: int = 16
    stage1_epochs: int = 0       # 0 = up to the protocol's first lr drop
    retrain: str = "scratch"     # "scratch" or "pretrained" (the public code)

    def __post_init__(self):
        self.drop_rate = check_rate_option(self.drop_rate, "o2u.drop_rate")
        for name in ("cycle_length", "cycles", "cycle_batch_size"):
            check_int(getattr(self, name), f"o2u.{name}", 1)
        check_int(self.stage1_epochs, "o2u.stage1_epochs", 0)
        if not (0 < self.lr_low <= self.lr_high):
            raise BenchError(f"o2u needs 0 < lr_low <= lr_high, got {self.lr_low} and {self.lr_high}")
        if self.retrain not in ("scratch", "pretrained"):
            raise BenchError(f"o2u.retrain must be 'scratch' or 'pretrained', got {self.retrain!r}")


@register
class O2U(Method):
    """Pre-train, record centred losses under a cyclical lr, drop the highest, retrain."""

    name = "o2u"
    fusable = True  # bench run --fuse: stages 1-2 fused, each run's scores and kept subset its own
    fuse_exceptions = "not with drop_rate=realised, or nominal on real noise, and retrain=pretrained"

    Params = O2UParams

    presets = {"quick": {"cycle_length": 5, "cycles": 2}}
    own_stages = ("cycle_length", "cycles")  # stage 2's cycles: --epochs leaves them as they are
    rate_setting = "drop_rate"

    @classmethod
    def display_name(cls, params: dict) -> str:
        return "O2U-Net"

    @classmethod
    def fuses(cls, spec) -> bool:
        """Not with ``drop_rate=realised`` (or ``nominal`` on real noise, whose rate is the realised
        one: methods.curves.resolve_rate) and ``retrain=pretrained``: each run's realised rate is its
        own, so its kept subset has a size of its own and it retrains alone (``Run.alone``), from a
        fresh network (a pre-trained one would be its part of the fused stage-1 network)."""
        p = cls.params_from_spec(spec)
        own_rate = p.drop_rate == "realised" or (p.drop_rate == "nominal" and spec.noise_type == REAL_NOISE)
        return not (own_rate and p.retrain == "pretrained")

    def fit(self, run):
        p = self.params
        K = run.runs  # a fused group's runs (bench run --fuse): the curves' columns interleave their pools
        rates = [resolve_rate(member, p.drop_rate) for member in run.member_runs]  # "realised": each run's own
        # stage 1: the protocol up to the first lr drop
        stage1 = p.stage1_epochs or run.first_drop
        model = run.model()
        train_and_record(run, model, protocol_schedule(run, stage1), quantity=None, log_stage="pretrain")
        pretrained = copy.deepcopy(model.state_dict()) if p.retrain == "pretrained" else None
        # stage 2: cyclical lr, record each sample's training loss every epoch
        schedule = linear_cycle_schedule(p.lr_high, p.lr_low, cycle=p.cycle_length, cycles=p.cycles,
                                         batch_size=p.cycle_batch_size)
        curves = train_and_record(run, model, schedule, "loss", optimizer=run.sgd(model.parameters(), lr=p.lr_high),
                                  log_stage="cyclic")
        subsets = []
        for k, member in enumerate(run.member_runs):  # each run's losses centred among its own samples
            scores = o2u_scores(curves.values[:, k::K]).cpu().numpy()
            kept = drop_highest(scores, rates[k])
            member.record("kept", kept)
            member.record("score", scores)
            member.record("o2u_loss", scores)
            subsets.append(np.flatnonzero(kept))
        del curves
        # stage 3: retrain on the kept samples with the full protocol (a fused group: each run on its own)
        del model
        if len({len(kept) for kept in subsets}) > 1:  # realised rates: subsets of sizes of their own
            return run.alone(lambda member: retrain(member, np.flatnonzero(member.records["kept"])))
        return retrain(run, subsets[0] if K == 1 else PerRun(subsets), pretrained)


def retrain(run, indices, pretrained: dict | None = None):
    """Stage 3: a network (fresh, or with the ``pretrained`` weights) trained with the full protocol
    on the kept samples ``indices`` (a fused group's: a ``PerRun``, one subset per run)."""
    final = run.model()
    if pretrained is not None:
        final.load_state_dict(pretrained)
    loader = run.loader("train", indices=indices)
    return train_classifier(run, final, mean_ce, loader=loader, stage="retrain", same_loss_every_epoch=True)
